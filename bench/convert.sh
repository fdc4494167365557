#!/usr/bin/env bash
# Benchmark: qcow2 -> sparse raw, vmimg against qemu-img on the same input in the same run.
#
# Builds (once, cached under bench/work/) a realistic input: an ext4 root
# filesystem made with `mkfs.ext4 -d` over at least 1 GiB of real system files
# copied from /usr, in an image about twice the size of its content, then
# turned into qcow2 three ways with `qemu-img convert`: uncompressed, zlib
# (-c) and zstd (-c -o compression_type=zstd). For each, it times
#   vmimg convert --no-sync         (qemu-img convert does not fsync either)
#   qemu-img convert -O raw
#   qemu-img convert -m 16 -W -O raw (qemu-img's fastest settings)
# best of $RUNS runs each, with the page cache of the input warm and the
# output's writeback flushed (sync) before every run, and prints the ratios,
# vmimg's peak RSS, and checks that the outputs are byte-identical and that
# vmimg allocates no more than qemu-img.
#
# Usage: bench/convert.sh [RUNS]       (RUNS defaults to 3)
# Env:   BENCH_MIB   size of the file tree in MiB (default 1100)
#        VMIMG       vmimg binary (default: cargo build --release)
set -euo pipefail

runs=${1:-3}
tree_mib=${BENCH_MIB:-1100}
root=$(cd "$(dirname "$0")/.." && pwd)
work=$root/bench/work
mkdir -p "$work"

if [[ -z ${VMIMG:-} ]]; then
    cargo build --release --quiet --manifest-path "$root/Cargo.toml" -p vmimg
    VMIMG=$root/target/release/vmimg
fi

# A tree of real files: whole directories of /usr, in a fixed order, until the
# tree holds at least $tree_mib MiB.
make_tree() {
    local tree=$work/tree
    rm -rf "$tree" && mkdir -p "$tree"
    local dir
    for dir in /usr/bin /usr/sbin /usr/lib/x86_64-linux-gnu /usr/lib/aarch64-linux-gnu \
        /usr/share /usr/lib /usr/libexec /usr/include /usr/local; do
        [[ -d $dir ]] || continue
        mkdir -p "$tree$(dirname "$dir")"
        cp -a "$dir" "$tree$dir" 2>/dev/null || true
        (($(du -sm "$tree" | cut -f1) >= tree_mib)) && return
    done
    echo "bench: only $(du -sm "$tree" | cut -f1) MiB of files found under /usr" >&2
}

make_inputs() {
    [[ -f $work/inputs.done ]] && return
    echo "bench: building the input (once) under $work" >&2
    make_tree
    local content_mib
    content_mib=$(du -sm "$work/tree" | cut -f1)
    rm -f "$work/rootfs.raw"
    truncate -s "$((content_mib * 2))M" "$work/rootfs.raw"
    mkfs.ext4 -q -F -d "$work/tree" "$work/rootfs.raw"
    rm -rf "$work/tree"
    qemu-img convert -f raw -O qcow2 "$work/rootfs.raw" "$work/plain.qcow2"
    qemu-img convert -f raw -O qcow2 -c "$work/rootfs.raw" "$work/zlib.qcow2"
    qemu-img convert -f raw -O qcow2 -c -o compression_type=zstd "$work/rootfs.raw" "$work/zstd.qcow2"
    echo "$content_mib" >"$work/inputs.done"
}

# Best wall time in seconds of $runs runs of "$@" (which writes $out).
best_of() {
    local out=$1 best="" t start
    shift
    for ((i = 0; i < runs; i++)); do
        rm -f "$out" && sync
        start=$(date +%s.%N)
        "$@" >/dev/null
        t=$(echo "$(date +%s.%N) - $start" | bc)
        if [[ -z $best ]] || (($(echo "$t < $best" | bc))); then best=$t; fi
    done
    printf '%.3f' "$best"
}

peak_rss_mib() {
    local out=$1 kib
    shift
    rm -f "$out" && sync
    kib=$( { /usr/bin/time -f %M "$@" >/dev/null; } 2>&1 | tail -1)
    echo $((kib / 1024))
}

allocated_kib() { du -k "$1" | cut -f1; }

make_inputs
content_mib=$(cat "$work/inputs.done")
nproc=$(nproc)
echo "input: ext4 of ${content_mib} MiB of files from /usr in a $(du -h --apparent-size "$work/rootfs.raw" | cut -f1) image;" \
    "$nproc cores; best of $runs runs; $(qemu-img --version | head -1)"
printf '%-6s %9s %8s %8s %8s %10s %10s %9s\n' input qcow2 vmimg qemu-img '-m16 -W' 'vs qemu' 'vs -m16 -W' 'RSS MiB'
for kind in plain zlib zstd; do
    src=$work/$kind.qcow2
    cat "$src" >/dev/null # warm the page cache for every contender alike
    ours=$work/out.vmimg.raw theirs=$work/out.qemu.raw
    t_vmimg=$(best_of "$ours" "$VMIMG" -q convert --no-sync "$src" "$ours")
    t_qemu=$(best_of "$theirs" qemu-img convert -O raw "$src" "$theirs")
    t_qemu_fast=$(best_of "$theirs" qemu-img convert -m 16 -W -O raw "$src" "$theirs")
    sync # allocation is final only once writeback is done
    cmp "$ours" "$theirs" || { echo "bench: $kind: outputs differ" >&2; exit 1; }
    if (($(allocated_kib "$ours") > $(allocated_kib "$theirs"))); then
        echo "bench: $kind: vmimg allocated more than qemu-img" >&2
        exit 1
    fi
    rss=$(peak_rss_mib "$ours" "$VMIMG" -q convert --no-sync "$src" "$ours")
    printf '%-6s %9s %7ss %7ss %7ss %9.2fx %9.2fx %9s\n' "$kind" "$(du -h "$src" | cut -f1)" \
        "$t_vmimg" "$t_qemu" "$t_qemu_fast" \
        "$(echo "$t_qemu / $t_vmimg" | bc -l)" "$(echo "$t_qemu_fast / $t_vmimg" | bc -l)" "$rss"
done
rm -f "$work"/out.*.raw
