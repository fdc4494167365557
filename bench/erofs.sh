#!/usr/bin/env bash
# Benchmark: a container image made into an erofs disk (LZ4HC, level 9),
# `vmimg build --format erofs` against the way bookworm's tools make one, on
# the same image in the same run.
#
# The input: bench/container.sh's image (4 gzip layers, a tree of 1.1 GB in
# 39k files; built and cached by that script, which must have run once),
# read by both sides from its local OCI layout, so no registry is in the way.
# Taking turns, RUNS times each, every run from empty directories:
#   vmimg:    vmimg --store EMPTY build oci:LAYOUT:1 --format erofs
#             (merge the layers, write the image, fsck.erofs --extract)
#   baseline: umoci unpack --image LAYOUT:1 B;
#             mkfs.erofs -zlz4hc,9 IMG B/rootfs; fsck.erofs --extract IMG
#             (the check vmimg runs too)
# It prints the best times, peak RSS, the ratio, both images' sizes and
# vmimg's peak disk use (free space sampled every 0.1 s) against its image
# and layer cache, then mounts both images (as root; else it says the check
# did not run) and compares them path by path: type, mode, owner, size, link
# count, mtime, symlink target, content, xattrs.
#
# Usage: bench/erofs.sh [RUNS]     (RUNS defaults to 3)
# Env:   SETTLE  seconds to wait before the first run (default 65; 0: no wait)
set -euo pipefail

runs=${1:-3}
source "$(dirname "$0")/lib.sh"
for tool in umoci mkfs.erofs fsck.erofs python3; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is missing (apt-get install $tool)" >&2; exit 1; }
done
layout=$work/container/layout
[[ -f $work/container/input.done ]] || { echo "bench: run bench/container.sh once first (it builds the image)" >&2; exit 1; }

tmp=$(mktemp -d "$work/erofs-run.XXXXXX")
cleanup() {
    for mounted in "$tmp"/mnt/*; do mountpoint -q "$mounted" 2>/dev/null && umount "$mounted"; done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

best_vmimg="" rss_vmimg=0 disk_vmimg=0 best_base="" rss_base=0 all_vmimg="" all_base=""
settle
for ((run = 0; run < runs; run++)); do
    store=$tmp/store.$run base=$tmp/base.$run
    sync
    read -r t rss <<<"$(watch_disk measure "$vmimg" -q --store "$store" build "oci:$layout:1" --format erofs)"
    took=$(cat "$tmp/took") && ((took > disk_vmimg)) && disk_vmimg=$took
    rss_vmimg=$((rss > rss_vmimg ? rss : rss_vmimg)) all_vmimg+=" $(printf %.1f "$t")"
    if [[ -z $best_vmimg ]] || (($(echo "$t < $best_vmimg" | bc))); then best_vmimg=$t; fi

    mkdir -p "$base" && sync
    total=0 steps=()
    for step in unpack mkfs fsck; do
        case $step in
        unpack) read -r t rss <<<"$(measure umoci unpack --image "$layout:1" "$base/bundle")" ;;
        mkfs) read -r t rss <<<"$(measure mkfs.erofs -zlz4hc,9 "$base/disk.img" "$base/bundle/rootfs")" ;;
        fsck) read -r t rss <<<"$(measure fsck.erofs --extract "$base/disk.img")" ;;
        esac
        total=$(echo "$total + $t" | bc) steps+=("$t") rss_base=$((rss > rss_base ? rss : rss_base))
    done
    all_base+=" $(printf %.1f "$total")"
    if [[ -z $best_base ]] || (($(echo "$total < $best_base" | bc))); then best_base=$total best_steps=("${steps[@]}"); fi
done

image=$("$vmimg" -q --store "$tmp/store.0" build "oci:$layout:1" --format erofs) # already built: its path
# Peak disk use is bounded as in bench/container.sh: image, layer cache and
# 16 MiB for the filesystem's own metadata and the store's records.
cache=$(du -s -B1 "$tmp/store.0/layers" | cut -f1)
bound=$(($(du -B1 "$image" | cut -f1) + cache + (16 << 20)))
printf '2 cores, best of %d (taking turns); erofs-utils %s\n' "$runs" "$(dpkg-query -W -f '${Version}' erofs-utils)"
printf '%-46s %9s %14s\n' tool seconds "peak RSS MiB"
printf '%-46s %9.3f %14s\n' "vmimg build --format erofs" "$best_vmimg" "$rss_vmimg"
printf '%-46s %9.3f %14s\n' "baseline (umoci, mkfs.erofs, fsck.erofs)" "$best_base" "$rss_base"
names=("umoci unpack" "mkfs.erofs -zlz4hc,9" "fsck.erofs --extract")
for i in 0 1 2; do printf '  %-44s %9.3f\n' "${names[$i]}" "${best_steps[$i]}"; done
echo "every run, in seconds: vmimg$all_vmimg; baseline$all_base"
echo "vmimg is $(echo "scale=2; $best_base / $best_vmimg" | bc)x faster (baseline/vmimg)"
printf 'image %-8s %12d bytes\n' vmimg "$(stat -c %s "$image")" baseline "$(stat -c %s "$tmp/base.0/disk.img")"
echo "disk: vmimg's peak use $((disk_vmimg >> 20)) MiB (image $(($(du -B1 "$image" | cut -f1) >> 20)) MiB" \
    "+ layer cache $((cache >> 20)) MiB + 16 MiB = $((bound >> 20)) MiB);" \
    "the baseline holds $(($(du -s -B1 "$tmp/base.0" | cut -f1) >> 20)) MiB at its end"
if ((disk_vmimg <= bound)); then verdict=pass; else verdict=FAIL; fi
echo "check: vmimg's peak disk use within its image and layer cache: $verdict"

# ---- Same tree in both images?
if [[ $(id -u) != 0 ]]; then
    echo "check: the trees were not compared (mounting the images needs root)"
    [[ $verdict == pass ]]
    exit
fi
mkdir -p "$tmp/mnt/vmimg" "$tmp/mnt/base"
mount -o loop,ro -t erofs "$image" "$tmp/mnt/vmimg"
mount -o loop,ro -t erofs "$tmp/base.0/disk.img" "$tmp/mnt/base"
python3 - "$tmp/mnt/vmimg" "$tmp/mnt/base" <<'EOF'
import hashlib, os, stat, sys
def describe(root):
    out = {}
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(top, name)
            st = os.lstat(path)
            digest = target = ""
            if stat.S_ISREG(st.st_mode):
                h = hashlib.sha256()
                with open(path, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
                digest = h.hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                target = os.readlink(path)
            xattrs = sorted((n, os.getxattr(path, n, follow_symlinks=False))
                            for n in os.listxattr(path, follow_symlinks=False))
            out[os.path.relpath(path, root)] = (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_nlink,
                                                 st.st_mtime_ns, st.st_rdev, target, digest, xattrs)
    return out
a, b = describe(sys.argv[1]), describe(sys.argv[2])
differ = sorted(p for p in a.keys() | b.keys() if a.get(p) != b.get(p))
print(f"check: {len(a)} paths in vmimg's image, {len(b)} in the baseline's;",
      "the same tree" if not differ else f"{len(differ)} differ, e.g. {differ[:5]}")
sys.exit(1 if differ else 0)
EOF
[[ $verdict == pass ]]
