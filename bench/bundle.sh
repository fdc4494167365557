#!/usr/bin/env bash
# Benchmark: image bundles (image.tar.zst), vmimg against GNU tar + zstd on
# the same input in the same run.
#
# Pulls the realistic raw root filesystem of bench/convert.sh (built there,
# once: an ext4 of 1.4 GiB of files from /usr in a 2.9 GiB sparse image)
# into an empty store, then times, best of RUNS:
#   export: vmimg bundle export IMAGE out.tar.zst
#           against  tar -S -cf - disk.img layer.qcow2 machine.json | zstd -T0 -o out.tar.zst; sync out.tar.zst
#   import: vmimg bundle import out.tar.zst --name N
#           against  zstd -dc out.tar.zst | tar -xSf - -C dir; sync dir/disk.img
# vmimg flushes what it writes before publishing it (and import hashes the
# bundle and checks every entry), so the rivals' times include a `sync` of
# their output. Both use zstd level 3 on all cores. It checks that both
# imports give the source disk back, byte for byte, and prints sizes,
# ratios and vmimg's peak RSS.
#
# Usage: bench/bundle.sh [RUNS]     (RUNS defaults to 3)
set -euo pipefail

runs=${1:-3}
source "$(dirname "$0")/lib.sh"

store=$work/bundle-store
rival=$work/bundle-rival
rm -rf "$store" "$rival"
trap 'rm -rf "$store" "$rival"' EXIT
base=$("$vmimg" -q --store "$store" pull "$work/rootfs.raw")
image=$(basename "$(dirname "$base")")

# The rival's input: the same disk (a hard link), an empty layer over it, a machine.json.
mkdir -p "$rival/in" "$rival/out"
ln "$base" "$rival/in/disk.img"
qemu-img create -q -f qcow2 -b disk.img -F raw "$rival/in/layer.qcow2"
scratch=$("$vmimg" -q --store "$store" image new scratch --size 1M)
cp "$(dirname "$scratch")/machine.json" "$rival/in/machine.json"

ours_bundle=$work/ours.tar.zst
theirs_bundle=$work/theirs.tar.zst
vmimg_export() { "$vmimg" -q --store "$store" bundle export "$image" "$ours_bundle"; }
rival_export() {
    tar -S -cf - -C "$rival/in" disk.img layer.qcow2 machine.json | zstd -q -T0 -f -o "$theirs_bundle"
    sync "$theirs_bundle"
}
vmimg_import() { "$vmimg" -q --store "$store" bundle import "$ours_bundle" --name imported; }
rival_import() {
    zstd -dc "$theirs_bundle" | tar -xSf - -C "$rival/out"
    sync "$rival/out/disk.img"
}
clear_exports() { rm -f "$ours_bundle" "$theirs_bundle"; }
clear_imports() {
    "$vmimg" -q --store "$store" rm imported 2>/dev/null || true
    rm -rf "${rival:?}/out" && mkdir -p "$rival/out"
}
warm() { cat "$base" >/dev/null; }

warm
t_export=$(best_of clear_exports vmimg_export)
t_export_rival=$(best_of warm rival_export)
cat "$ours_bundle" "$theirs_bundle" >/dev/null
t_import=$(best_of clear_imports vmimg_import)
t_import_rival=$(best_of clear_imports rival_import)
clear_imports
imported=$(vmimg_import)
rival_import
cmp "$imported" "$base" || { echo "bench: vmimg's import differs" >&2; exit 1; }
cmp "$rival/out/disk.img" "$base" || { echo "bench: tar's import differs" >&2; exit 1; }
rss_export=$(peak_rss_mib "$vmimg" -q --store "$store" bundle export "$image" "$work/rss.tar.zst")
"$vmimg" -q --store "$store" rm imported
rss_import=$(peak_rss_mib "$vmimg" -q --store "$store" bundle import "$ours_bundle" --name imported)
rm -f "$work/rss.tar.zst"

echo "disk: $(du -h --apparent-size "$base" | cut -f1) raw, $(du -h "$base" | cut -f1) allocated; $(nproc) cores; best of $runs;" \
    "$(tar --version | head -1), zstd $(zstd --version | grep -o 'v[0-9.]*')"
echo "bundles: vmimg $(du -h "$ours_bundle" | cut -f1), tar+zstd $(du -h "$theirs_bundle" | cut -f1)"
printf '%-7s %9s %11s %8s %9s\n' '' vmimg 'tar + zstd' ratio 'RSS MiB'
printf '%-7s %8ss %10ss %7.2fx %9s\n' export "$t_export" "$t_export_rival" \
    "$(echo "$t_export_rival / $t_export" | bc -l)" "$rss_export"
printf '%-7s %8ss %10ss %7.2fx %9s\n' import "$t_import" "$t_import_rival" \
    "$(echo "$t_import_rival / $t_import" | bc -l)" "$rss_import"
rm -f "$ours_bundle" "$theirs_bundle"
