# Helpers shared by the benchmark scripts (sourced, not run).
#
# Sourcing sets $root (the repository), $work (bench/work, where inputs are
# cached), builds the release vmimg into $vmimg, and builds the realistic
# input of bench/convert.sh (bench/work/rootfs.raw and its qcow2 forms)
# the first time.

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work=$root/bench/work
cargo build --release --quiet --manifest-path "$root/Cargo.toml" -p vmimg
vmimg=$root/target/release/vmimg
[[ -f $work/inputs.done ]] || VMIMG=$vmimg "$root/bench/convert.sh" 1 >/dev/null

# Wall time in seconds of "$@", its output discarded.
seconds() {
    local start
    start=$(date +%s.%N)
    "$@" >/dev/null 2>&1
    echo "$(date +%s.%N) - $start" | bc
}

# Best wall time of $runs runs of "$@"; the command "$1" prepares each run
# (untimed), then the page cache's dirty pages are flushed.
best_of() {
    local prepare=$1 best="" t
    shift
    for ((run = 0; run < runs; run++)); do
        $prepare
        sync
        t=$(seconds "$@")
        if [[ -z $best ]] || (($(echo "$t < $best" | bc))); then best=$t; fi
    done
    printf '%.3f' "$best"
}

# Peak RSS in MiB of "$@".
peak_rss_mib() {
    local kib
    kib=$( { /usr/bin/time -f %M "$@" >/dev/null; } 2>&1 | tail -1)
    echo $((kib / 1024))
}
