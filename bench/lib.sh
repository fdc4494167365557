# Helpers shared by the benchmark scripts (sourced, not run).

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
