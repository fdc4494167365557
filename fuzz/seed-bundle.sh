#!/bin/sh
# Makes the seed corpora of the bundle fuzz targets (gitignored):
#   fuzz/corpus/tar_read       tiny GNU tar archives in every format it writes
#                              (ustar, v7, oldgnu/gnu with old sparse maps,
#                              PAX sparse 0.0, 0.1 and 1.0, long names, links)
#   fuzz/corpus/machine_parse  machine.json, version 1 and version 0
#   fuzz/corpus/bundle_import  tiny real bundles: disk.img, a layer.qcow2 over
#                              it (qemu-img, 512-byte clusters) and
#                              machine.json, tarred and compressed with zstd,
#                              and two stored in raw zstd blocks
# Needs GNU tar, qemu-img, qemu-io and zstd. Sparse files are scanned for
# holes at 512-byte granularity (--hole-detection=raw, GNU tar refuses it
# for the formats without sparse entries) and archives are blocked at 512
# bytes (-b 1), so the seeds stay a few KiB.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
corpus="$here/corpus"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$corpus/tar_read" "$corpus/machine_parse" "$corpus/bundle_import"
cd "$work"

# ---- machine.json ----------------------------------------------------------
m="$corpus/machine_parse"
cat >"$m/v1-full.json" <<'EOF'
{
  "version": 1,
  "uuid": "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9",
  "chipset": "pc-i440fx-2.8",
  "cpu": "host",
  "flags": [],
  "threads": 2,
  "cores": 4,
  "sockets": 255,
  "memory": 1048576,
  "usb": "piix4-usb-uhci",
  "network": "rtl8139",
  "mac": "02:00:5e:10:00:01",
  "storage": "virtio-blk-pci",
  "graphics": "virtio-vga",
  "vgaMemory": 1,
  "graphicsRam": 128,
  "graphicsVRam": 1048576,
  "sound": "hda-output/ich9-intel-hda",
  "keyboard": "PS/2",
  "keyboardLayout": "pt-br",
  "mouse": "PS/2",
  "tablet": "none"
}
EOF
printf '{"version": 1}\n' >"$m/v1-minimal.json"
printf '{"version": 1.0, "threads": 2.0, "memory": 4e3, "graphics": "VGA", "cores": 2}' >"$m/v1-floats.json"
printf '{"version":1,"usb":"piix3-usb-uhci","sound":"AC97","keyboardLayout":"fr-ch","tablet":"usb-tablet","graphics":"qxl-vga"}' \
    >"$m/v1-compact.json"
cat >"$m/v0-test-image.json" <<'EOF'
{
  "uuid": "52bab607-10f1-4049-a0f8-ee4725cb715b",
  "network": {
    "device": "e1000",
    "mac": "aa:54:1a:30:5c:de"
  },
  "keyboard": {
    "layout": "en-us"
  }
}
EOF
cat >"$m/v0-sound.json" <<'EOF'
{
  "uuid": "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9",
  "memory": 4096,
  "cpu": {"threads": 2, "cores": 3, "sockets": 1},
  "network": {"device": "rtl8139", "mac": "02:00:00:00:00:01"},
  "keyboard": {"layout": "de-ch"},
  "sound": {"device": "hda-duplex", "controller": "ich9-intel-hda"}
}
EOF
cat >"$m/v0-zero-counts.json" <<'EOF'
{
  "version": 0,
  "uuid": "52bab607-10f1-4049-a0f8-ee4725cb715b",
  "memory": 0,
  "cpu": {"threads": 0, "cores": 0, "sockets": null, "speed": "fast"},
  "network": {"mac": "aa:54:1a:30:5c:de", "bridge": "br0"},
  "keyboard": {"layout": "en-us"},
  "sound": {"device": "AC97", "controller": "pci"},
  "display": "vnc"
}
EOF

# ---- tar archives ----------------------------------------------------------
# Files to archive: a sparse file with five data runs (so an old GNU map
# needs an extension block), one with a single run and a trailing hole,
# a plain file, a long name, a symlink with a long target, a hard link, a
# directory.
mkdir src
cd src
# GNU tar stores a file sparse only when it has fewer blocks allocated than
# its size says: the files are 64 and 16 KiB with data in the first 4 KiB
# and, for sparse.img, one more block at 40 KiB.
printf 'head' >sparse.img
for at in 2 4 6 80; do printf 'data %d' "$at" | dd of=sparse.img bs=512 seek="$at" conv=notrunc status=none; done
truncate -s 64k sparse.img
printf 'one run' >tail-hole.img
truncate -s 16k tail-hole.img
printf '{"version": 1}\n' >machine.json
long=$(printf 'long-name-%.0s' 1 2 3 4 5 6 7 8 9 10 11 12)
printf 'long' >"$long"
ln -s "$long" link-long
ln -s machine.json link
ln machine.json hard
mkdir dir
cd ..

t="$corpus/tar_read"
mk() { # NAME TAR-OPTIONS-AND-FILES...
    name=$1
    shift
    tar -C src -b 1 --owner=0 --group=0 --numeric-owner --mtime=@1700000000 -cf "$t/$name.tar" "$@"
}
mk v7 --format=v7 machine.json link hard dir
mk ustar --format=ustar machine.json link hard dir
mk ustar-sparse-as-data --format=ustar tail-hole.img
mk oldgnu-sparse --format=oldgnu -S --hole-detection=raw sparse.img tail-hole.img
mk gnu-sparse --format=gnu -S --hole-detection=raw sparse.img tail-hole.img
mk gnu-long --format=gnu machine.json "$long" link-long hard dir
mk pax-sparse-0.0 --format=posix --sparse-version=0.0 -S --hole-detection=raw sparse.img tail-hole.img
mk pax-sparse-0.1 --format=posix --sparse-version=0.1 -S --hole-detection=raw sparse.img tail-hole.img
mk pax-sparse-1.0 --format=posix --sparse-version=1.0 -S --hole-detection=raw sparse.img tail-hole.img
mk pax-long --format=posix "$long" link-long machine.json
# Odd mtime: the target skips these entries' data instead of reading it.
tar -C src -b 1 --owner=0 --group=0 --numeric-owner --mtime=@1700000001 --hole-detection=raw \
    --format=gnu -S -cf "$t/gnu-sparse-skipped.tar" sparse.img machine.json

# ---- bundles ---------------------------------------------------------------
b="$corpus/bundle_import"
mkdir bundle
cd bundle
cp --sparse=always ../src/sparse.img disk.img
qemu-img create -q -f qcow2 -b disk.img -F raw -o cluster_size=512 layer.qcow2 64k
cp "$m/v1-minimal.json" machine.json
pack() { # NAME ZSTD-OPTIONS... (bundles the current directory)
    name=$1
    shift
    tar -b 1 --owner=0 --group=0 --numeric-owner --mtime=@1700000000 --hole-detection=raw \
        --format=posix -S -cf "$work/$name.tar" machine.json layer.qcow2 disk.img
    zstd -q -f "$@" -o "$b/$name.tar.zst" "$work/$name.tar"
}
# An empty layer, as vmimg export writes it (PAX 1.0 sparse).
pack empty-layer --no-check -19
# A layer with data, zeroes over the disk's data and a larger virtual size.
qemu-io -f qcow2 -c 'write -P 0x5a 512 1k' -c 'write -z 1k 512' "layer.qcow2" >/dev/null
qemu-img resize -q -f qcow2 layer.qcow2 80k
pack layer-data --no-check -19
pack layer-data-checksum -3
cp "$work/layer-data.tar" "$t/bundle-layer-data.tar"
# The same tar in one zstd frame of raw (stored) blocks: its bytes appear
# as they are, so the fuzzer's mutations reach the tar, its PAX records,
# the layer and machine.json directly. Frame: magic, a descriptor with no
# content size or checksum, a 128 KiB window; block: 3-byte header (size,
# raw, last).
byte() { printf "\\$(printf %o "$1")"; }
raw_zstd() { # TAR OUT
    size=$(wc -c <"$1")
    [ "$size" -le 131072 ]
    h=$(((size << 3) | 1))
    { printf '\050\265\057\375\000\070'; byte $((h & 255)); byte $(((h >> 8) & 255)); byte $((h >> 16)); cat "$1"; } >"$2"
}
raw_zstd "$work/layer-data.tar" "$b/layer-data-raw-blocks.tar.zst"
zstd -q -t "$b/layer-data-raw-blocks.tar.zst"
# Version 0 machine.json, GNU sparse format, "./" names.
cp "$m/v0-test-image.json" machine.json
tar -b 1 --owner=0 --group=0 --numeric-owner --mtime=@1700000000 --hole-detection=raw \
    --format=gnu -S -cf "$work/gnu-dot.tar" .
zstd -q -f --no-check -19 -o "$b/gnu-dot.tar.zst" "$work/gnu-dot.tar"
raw_zstd "$work/gnu-dot.tar" "$b/gnu-dot-raw-blocks.tar.zst"
cp "$work/gnu-dot.tar" "$t/bundle-gnu-dot.tar"
cd ..

ls -l "$t" "$m" "$b"
