#!/usr/bin/env bash
# Benchmark: a verified pull over HTTP, vmimg against the sequential way.
#
# Serves the realistic zlib qcow2 of bench/convert.sh (built there, once)
# from a local HTTP server (vmimg-testserver, on 127.0.0.1), then times, in
# the same run, best of $RUNS:
#   sequential:  curl -o disk.qcow2 URL; sha256sum disk.qcow2; qemu-img convert -O raw
#   vmimg:       vmimg pull URL --digest sha256:… into an empty store
#                (download, hashing and conversion overlap; the blob and the
#                disk are fsynced before they are published, which the
#                sequential commands do not do)
# and prints the ratio and both peak RSS figures. It checks the disks match.
#
# Usage: bench/pull.sh [RUNS]     (RUNS defaults to 3)
set -euo pipefail

runs=${1:-3}
root=$(cd "$(dirname "$0")/.." && pwd)
work=$root/bench/work
cargo build --release --quiet --manifest-path "$root/Cargo.toml" -p vmimg -p vmimg-testserver
bin=$root/target/release
[[ -f $work/inputs.done ]] || VMIMG=$bin/vmimg "$root/bench/convert.sh" 1 >/dev/null

serve=$work/serve
mkdir -p "$serve"
ln -f "$work/zlib.qcow2" "$serve/disk.qcow2"
"$bin/vmimg-testserver" --dir "$serve" >"$work/server.url" &
server=$!
trap 'kill $server 2>/dev/null; rm -rf "$work/pull-store" "$work/seq"' EXIT
while [[ ! -s $work/server.url ]]; do sleep 0.1; done
url=$(head -1 "$work/server.url")/disk.qcow2
digest=sha256:$(sha256sum "$serve/disk.qcow2" | cut -d' ' -f1)

sequential() {
    mkdir -p "$work/seq"
    curl -sSf -o "$work/seq/disk.qcow2" "$url"
    sha256sum "$work/seq/disk.qcow2" >/dev/null
    qemu-img convert -O raw "$work/seq/disk.qcow2" "$work/seq/disk.raw"
}

with_vmimg() {
    "$bin/vmimg" -q --store "$work/pull-store" pull "$url" --digest "$digest" >/dev/null
}

clean() { rm -rf "$work/pull-store" "$work/seq" && sync; }

# Best wall time of $runs runs of function "$1".
best_of() {
    local best="" t start
    for ((i = 0; i < runs; i++)); do
        clean
        start=$(date +%s.%N)
        "$1"
        t=$(echo "$(date +%s.%N) - $start" | bc)
        if [[ -z $best ]] || (($(echo "$t < $best" | bc))); then best=$t; fi
    done
    printf '%.3f' "$best"
}

peak_rss_mib() {
    clean
    local kib
    kib=$( { /usr/bin/time -f %M "$@" >/dev/null; } 2>&1 | tail -1)
    echo $((kib / 1024))
}

cat "$serve/disk.qcow2" >/dev/null
t_seq=$(best_of sequential)
t_vmimg=$(best_of with_vmimg)
cmp "$work/pull-store"/images/*/disk.raw "$work/rootfs.raw" || { echo "bench: the pulled disk differs" >&2; exit 1; }
rss_vmimg=$(peak_rss_mib "$bin/vmimg" -q --store "$work/pull-store" pull "$url" --digest "$digest")
rss_qemu=$(peak_rss_mib qemu-img convert -O raw "$serve/disk.qcow2" "$work/seq.raw")
rm -f "$work/seq.raw"
echo "input: $(du -h "$serve/disk.qcow2" | cut -f1) zlib qcow2 of bench/convert.sh over http://127.0.0.1; $(nproc) cores; best of $runs"
printf '%-34s %8ss\n' "curl; sha256sum; qemu-img convert" "$t_seq"
printf '%-34s %8ss\n' "vmimg pull --digest" "$t_vmimg"
printf 'ratio: %.2fx faster; peak RSS: vmimg %s MiB, qemu-img convert %s MiB\n' \
    "$(echo "$t_seq / $t_vmimg" | bc -l)" "$rss_vmimg" "$rss_qemu"
