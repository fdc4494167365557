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

# parts_layout LAYOUT PARTS_DIR PARTS_LIST FORMAT: the files of PARTS_DIR
# (moved into it) as a cloud image in the OCI layout LAYOUT, tagged rootfs,
# as cocoonstack publishes one (layers `…disk.FORMAT.part` titled by file
# name, in name order; an empty config); their digests, one a line, in
# PARTS_LIST.
parts_layout() {
    mkdir -p "$1/blobs/sha256"
    python3 - "$@" <<'EOF'
import hashlib, json, os, shutil, sys
layout, parts_dir, parts_list, fmt = sys.argv[1:5]
def blob(data_path=None, data=None):
    h = hashlib.sha256()
    if data is None:
        with open(data_path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        size = os.path.getsize(data_path)
        shutil.move(data_path, os.path.join(layout, "blobs/sha256", h.hexdigest()))
    else:
        h.update(data)
        size = len(data)
        open(os.path.join(layout, "blobs/sha256", h.hexdigest()), "wb").write(data)
    return {"digest": "sha256:" + h.hexdigest(), "size": size}
layers = []
for name in sorted(os.listdir(parts_dir)):
    d = blob(os.path.join(parts_dir, name))
    layers.append({"mediaType": "application/vnd.cocoonstack.disk." + fmt + ".part", **d,
                   "annotations": {"org.opencontainers.image.title": name}})
config = {"mediaType": "application/vnd.oci.empty.v1+json", **blob(data=b"{}")}
manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "artifactType": "application/vnd.cocoonstack.os-image.v1+json", "config": config, "layers": layers,
            "annotations": {"cocoonstack.os.name": "bench", "cocoonstack.disk.format": fmt}}
m = json.dumps(manifest).encode()
md = blob(data=m)
index = {"schemaVersion": 2, "manifests": [{"mediaType": manifest["mediaType"], **md,
         "annotations": {"org.opencontainers.image.ref.name": "rootfs"}}]}
open(os.path.join(layout, "index.json"), "w").write(json.dumps(index))
open(os.path.join(layout, "oci-layout"), "w").write('{"imageLayoutVersion": "1.0.0"}')
open(parts_list, "w").write("".join(l["digest"][7:] + "\n" for l in layers))
EOF
}

# The helpers below write their records into $tmp, the calling script's
# temporary directory.

# Wall seconds and peak RSS in MiB of "$@" (its output discarded; on failure
# its stderr is shown and the script stops); its start and end go to
# $tmp/span.
measure() {
    local start end
    start=$(date +%s.%N)
    if ! /usr/bin/time -f %M -o "$tmp/rss" "$@" >/dev/null 2>"$tmp/stderr"; then
        echo "bench: failed: $*" >&2
        cat "$tmp/stderr" >&2
        return 1
    fi
    end=$(date +%s.%N)
    echo "$start $end" >"$tmp/span"
    echo "$(echo "$end - $start" | bc) $(($(tail -1 "$tmp/rss") / 1024))"
}

# Disk use: the filesystem's free bytes (statfs; ext4 counts delayed
# allocations as taken), sampled every 0.1 s while a command runs.
free_bytes() { echo $(($(stat -f -c '%a * %S' "$work"))); }
# Runs "$@" (its stdout passed on) and writes the most space it took at once
# to $tmp/took, in bytes.
watch_disk() {
    local before watcher status=0
    before=$(free_bytes)
    (while :; do free_bytes; sleep 0.1; done) >"$tmp/free" &
    watcher=$!
    "$@" || status=$?
    kill "$watcher" && wait "$watcher" 2>/dev/null || true
    echo $((before - $(sort -n "$tmp/free" | head -1))) >"$tmp/took"
    return $status
}

# Creating files on ext4 within a minute of deleting thousands costs much
# system time (the allocator skips recently deleted inodes, reading their
# tables): waits SETTLE seconds (default 65; 0: no wait).
settle() {
    if ((${SETTLE:-65} > 0)); then
        echo "bench: waiting ${SETTLE:-65}s for recent deletions to settle" >&2
        sleep "${SETTLE:-65}"
    fi
}
