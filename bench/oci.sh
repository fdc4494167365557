#!/usr/bin/env bash
# Benchmark: cloud images through an OCI registry, vmimg against skopeo on
# the same artifact in the same run.
#
# Starts Debian's docker-registry on a free 127.0.0.1 port (storage under
# bench/work/), then, with the zstd qcow2 of bench/convert.sh (built there
# once: the 3.1 GiB rootfs as 540 MB of zstd clusters, made by qemu-img)
# split into PART_MIB parts as cocoonstack publishes them:
#   push: skopeo copy oci:LAYOUT docker://REGISTRY/bench/rival:1 (the parts
#         as an OCI layout, made here with split + sha256sum)
#   pull: vmimg pull oci://REGISTRY/bench/rival:1 into an empty store
#         against skopeo copy docker://… dir:D; cat D/<parts> > disk.qcow2;
#         qemu-img convert -O raw disk.qcow2 disk.raw; sync disk.raw
#   push: vmimg push IMAGE oci://… --part-size PART_MIB (the rootfs made a
#         zstd qcow2 on all cores, split, hashed, uploaded in parallel)
#         against qemu-img convert -c -O qcow2 -o compression_type=zstd
#         (timed alone) + skopeo copy of the parts as an OCI layout
# best of RUNS each (vmimg flushes its blobs and disk before publishing,
# hence the rival's sync; every push goes to a registry restarted with
# empty storage, so nothing is skipped or mounted), checks that both raw disks are byte-identical, and prints
# times, the ratios and vmimg's peak RSS.
#
# Usage: bench/oci.sh [RUNS]     (RUNS defaults to 3)
# Env:   PART_MIB  part size in MiB (default 128)
set -euo pipefail

runs=${1:-3}
part_mib=${PART_MIB:-128}
source "$(dirname "$0")/lib.sh"
for tool in docker-registry skopeo python3; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is missing (apt-get install $tool)" >&2; exit 1; }
done

oci=$work/oci
rm -rf "$oci" && mkdir -p "$oci"
cleanup() {
    [[ -f $oci/registry.pid ]] && kill "$(cat "$oci/registry.pid")" 2>/dev/null || true
    rm -rf "$oci"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
printf '%s\n' "version: 0.1" "log:" "  level: error" "  accesslog:" "    disabled: true" "storage:" \
    "  filesystem:" "    rootdirectory: $oci/storage" "http:" "  addr: 127.0.0.1:$port" >"$oci/registry.yml"
# (Re)starts the registry with empty storage: a push then finds none of its
# blobs there (skopeo would otherwise mount them from another repository).
fresh_registry() {
    if [[ -f $oci/registry.pid ]]; then
        kill "$(cat "$oci/registry.pid")" 2>/dev/null || true
        while (echo >/dev/tcp/127.0.0.1/"$port") 2>/dev/null; do sleep 0.05; done
    fi
    rm -rf "$oci/storage"
    docker-registry serve "$oci/registry.yml" >/dev/null 2>&1 &
    echo $! >"$oci/registry.pid"
    for _ in $(seq 200); do (echo >/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.05; done
}
fresh_registry
host=127.0.0.1:$port

# The artifact as an OCI layout: parts named and ordered as `split -d` does.
layout=$oci/layout
mkdir -p "$layout/blobs/sha256" "$oci/parts"
(cd "$oci/parts" && split -b "${part_mib}M" -d --additional-suffix=.qcow2.part "$work/zstd.qcow2" rootfs)
parts_layout "$layout" "$oci/parts" "$oci/parts.txt" qcow2
nparts=$(wc -l <"$oci/parts.txt")

no_prepare() { :; }
skopeo_push() { skopeo copy -q --dest-tls-verify=false "oci:$layout:rootfs" "docker://$host/bench/push:1"; }
t_push_rival=$(best_of fresh_registry skopeo_push)

vmimg_push() {
    "$vmimg" -q --store "$oci/push-store" push "$push_image" "oci://$host/bench/vmimg:1" --part-size "${part_mib}M"
}
push_image=$(basename "$(dirname "$("$vmimg" -q --store "$oci/push-store" pull "$work/rootfs.raw")")")
t_push=$(best_of fresh_registry vmimg_push)
rss_push=$(peak_rss_mib "$vmimg" -q --store "$oci/push-store" push "$push_image" "oci://$host/bench/rss:1" \
    --part-size "${part_mib}M")
qemu_compress() { qemu-img convert -c -f raw -O qcow2 -o compression_type=zstd "$work/rootfs.raw" "$oci/qemu.qcow2"; }
t_qemu_compress=$(best_of no_prepare qemu_compress)
rm -f "$oci/qemu.qcow2"
t_push_rival_total=$(echo "$t_qemu_compress + $t_push_rival" | bc)

fresh_registry
ref=$host/bench/rival:1
skopeo copy -q --dest-tls-verify=false "oci:$layout:rootfs" "docker://$ref"

store=$oci/store
vmimg_pull() { "$vmimg" -q --store "$store" pull "oci://$ref"; }
rival_pull() {
    skopeo copy -q --src-tls-verify=false "docker://$ref" "dir:$oci/dir"
    (cd "$oci/dir" && cat $(cat "$oci/parts.txt")) >"$oci/rival.qcow2"
    qemu-img convert -O raw "$oci/rival.qcow2" "$oci/rival.raw"
    sync "$oci/rival.raw"
}
clear_pulls() { rm -rf "$store" "$oci/dir" "$oci/rival.qcow2" "$oci/rival.raw"; }
t_pull=$(best_of clear_pulls vmimg_pull)
t_pull_rival=$(best_of clear_pulls rival_pull)
clear_pulls
vmimg_pull >/dev/null
rival_pull
cmp "$store"/images/*/disk.raw "$oci/rival.raw" || { echo "bench: the two disks differ" >&2; exit 1; }
cmp "$oci/rival.raw" "$work/rootfs.raw" || { echo "bench: the disk is not the rootfs" >&2; exit 1; }
rm -rf "$store"
rss=$(peak_rss_mib "$vmimg" -q --store "$store" pull "oci://$ref")

echo "artifact: $(du -h "$work/zstd.qcow2" | cut -f1) zstd qcow2 in $nparts parts of ${part_mib} MiB" \
    "(disk $(du -h --apparent-size "$work/rootfs.raw" | cut -f1)); $(nproc) cores; best of $runs;" \
    "$(skopeo --version), docker-registry on 127.0.0.1"
printf '%-52s %9s\n' "push: qemu-img convert -c (zstd)" "${t_qemu_compress}s"
printf '%-52s %9s\n' "push: skopeo copy oci:layout docker:// (parts made)" "${t_push_rival}s"
printf '%-52s %9s\n' "push: the two together" "${t_push_rival_total}s"
printf '%-52s %9s  (peak RSS %s MiB)\n' "push: vmimg push (compress, split, upload)" "${t_push}s" "$rss_push"
printf '%-52s %9s\n' "pull: skopeo copy dir: + cat + qemu-img convert" "${t_pull_rival}s"
printf '%-52s %9s  (peak RSS %s MiB)\n' "pull: vmimg pull oci://" "${t_pull}s" "$rss"
printf 'push ratio: %.2fx (against skopeo alone, parts ready: %.2fx)\n' \
    "$(echo "$t_push_rival_total / $t_push" | bc -l)" "$(echo "$t_push_rival / $t_push" | bc -l)"
printf 'pull ratio: %.2fx\n' "$(echo "$t_pull_rival / $t_pull" | bc -l)"
