#!/usr/bin/env bash
# Benchmark: raw -> compressed qcow2, vmimg against qemu-img on the same input in the same run.
#
# Input: bench/work/rootfs.raw, the ext4 root filesystem bench/convert.sh
# builds (run once if missing). For zstd and zlib it times
#   vmimg (the qcow2-compress example: vmimg_disk::convert_to_qcow2, not flushed)
#   qemu-img convert -c -O qcow2 -o compression_type=...
#   qemu-img convert -c -m 16 -W -O qcow2 -o compression_type=... (qemu-img's fastest settings)
# best of $RUNS runs each, with the input's page cache warm and writeback
# flushed (sync) before every run, and prints the times, the speed ratios,
# the output sizes (and ours over qemu-img's), the compression ratio (input
# data over output), and the peak RSS and CPU time (user + system, which
# other load on the machine does not inflate as it does wall time) of vmimg
# and of qemu-img's default run. Every output must pass `qemu-img check`
# and read back as the input (`qemu-img compare`).
#
# Usage: bench/qcow2-write.sh [RUNS]     (RUNS defaults to 3)
# Env:   BIN   the qcow2-compress binary (default: cargo build --release)
set -euo pipefail

runs=${1:-3}
root=$(cd "$(dirname "$0")/.." && pwd)
work=$root/bench/work
src=$work/rootfs.raw

if [[ ! -f $src ]]; then
    echo "bench: $src is missing; building it with bench/convert.sh 1" >&2
    "$root/bench/convert.sh" 1
fi

if [[ -z ${BIN:-} ]]; then
    cargo build --release --quiet --manifest-path "$root/Cargo.toml" -p vmimg-disk --example qcow2-compress
    BIN=$root/target/release/examples/qcow2-compress
fi

# Best wall time in seconds of $runs runs of "$@" (which writes $out).
best_of() {
    local out=$1 best="" t start
    shift
    for ((i = 0; i < runs; i++)); do
        rm -f "$out" && sync
        start=$(date +%s.%N)
        "$@" >/dev/null 2>&1
        t=$(echo "$(date +%s.%N) - $start" | bc)
        if [[ -z $best ]] || (($(echo "$t < $best" | bc))); then best=$t; fi
    done
    printf '%.3f' "$best"
}

# "peak RSS in MiB" "CPU seconds (user + system)" of one run of "$@" (which writes $out).
rss_and_cpu() {
    local out=$1 stats
    shift
    rm -f "$out" && sync
    stats=$(mktemp)
    /usr/bin/time -o "$stats" -f '%M %U %S' "$@" >/dev/null 2>&1
    awk '{ printf "%d %.1f", $1 / 1024, $2 + $3 }' "$stats"
    rm -f "$stats"
}

# The output must be a clean qcow2 image of the input's bytes.
verify() {
    local image=$1 what=$2 report
    report=$(qemu-img check "$image" 2>&1) || { echo "bench: $what: qemu-img check failed: $report" >&2; exit 1; }
    qemu-img compare -q -f qcow2 -F raw "$image" "$src" ||
        { echo "bench: $what: does not read back as the input" >&2; exit 1; }
}

mib() { echo "$(($1 / 1048576))"; }

data_bytes=$(($(du -B1 "$src" | cut -f1)))
cat "$src" >/dev/null # warm the page cache for every contender alike
echo "input: $(du -h --apparent-size "$src" | cut -f1) raw ext4 image, $(mib "$data_bytes") MiB allocated;" \
    "$(nproc) cores; best of $runs runs; $(qemu-img --version | head -1)"
printf '%-5s %9s %9s %9s %8s %10s %10s %9s %6s %6s %10s %10s %8s %8s\n' codec vmimg qemu-img '-m16 -W' 'vs qemu' \
    'vs -m16 -W' 'vmimg MiB' 'qemu MiB' size ratio 'vmimg CPU' 'qemu CPU' 'RSS vmimg' 'RSS qemu'
for codec in zstd zlib; do
    ours=$work/out.vmimg.qcow2 theirs=$work/out.qemu.qcow2
    qemu=(qemu-img convert -c -f raw -O qcow2 -o "compression_type=$codec" "$src" "$theirs")
    qemu_fast=(qemu-img convert -c -m 16 -W -f raw -O qcow2 -o "compression_type=$codec" "$src" "$theirs")
    t_ours=$(best_of "$ours" "$BIN" "$src" "$ours" "$codec")
    t_qemu=$(best_of "$theirs" "${qemu[@]}")
    t_qemu_fast=$(best_of "$theirs" "${qemu_fast[@]}")
    verify "$theirs" "qemu-img -m 16 -W ($codec)"
    theirs_len=$(stat -c %s "$theirs")
    read -r rss_qemu cpu_qemu <<<"$(rss_and_cpu "$theirs" "${qemu[@]}")"
    verify "$theirs" "qemu-img ($codec)"
    read -r rss_ours cpu_ours <<<"$(rss_and_cpu "$ours" "$BIN" "$src" "$ours" "$codec")"
    verify "$ours" "vmimg ($codec)"
    ours_len=$(stat -c %s "$ours")
    printf '%-5s %8ss %8ss %8ss %7.2fx %9.2fx %10s %9s %6.3f %5.2fx %9ss %9ss %8s %8s\n' "$codec" \
        "$t_ours" "$t_qemu" "$t_qemu_fast" \
        "$(echo "$t_qemu / $t_ours" | bc -l)" "$(echo "$t_qemu_fast / $t_ours" | bc -l)" \
        "$(mib "$ours_len")" "$(mib "$theirs_len")" "$(echo "$ours_len / $theirs_len" | bc -l)" \
        "$(echo "$data_bytes / $ours_len" | bc -l)" "$cpu_ours" "$cpu_qemu" "$rss_ours" "$rss_qemu"
done
rm -f "$work"/out.*.qcow2
