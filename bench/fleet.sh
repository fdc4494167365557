#!/usr/bin/env bash
# Benchmark: a fleet of hosts pulling one cloud image, directly from the
# registry and through a pull-through cache; and vmimg's upload against
# skopeo's on the same parts.
#
# Starts Debian's docker-registry as the upstream (127.0.0.1, access log on)
# and a second one in proxy mode in front of it (127.0.0.2), storage under
# bench/work/. The image: the first DISK_MIB MiB of bench/convert.sh's
# rootfs as vmimg pushes it (zstd qcow2 parts of 64 MiB). Then HOSTS hosts
# (separate stores and vmimg processes) pull it at once:
#   direct: every host from the upstream;
#   cold:   every host through the cache (STORE/certs.d/UPSTREAM/hosts.toml),
#           the cache empty;
#   warm:   one host through the cache first (a canary), then the others at once;
# each with its wall time and the bytes the upstream served (blob GETs, from
# its access log); the hosts' disks are checked to be the same.
# Upload: the same raw disk in PART_MIB parts to an empty registry, vmimg push
# --format raw (hash and upload, chunked) against skopeo copy of an OCI layout
# holding the same parts (made beforehand, untimed); best of RUNS, peak RSS.
#
# Usage: bench/fleet.sh [RUNS]     (RUNS defaults to 3, for the upload)
# Env:   HOSTS (default 8), DISK_MIB (default 1024), PART_MIB (default 128)
set -euo pipefail

runs=${1:-3}
hosts=${HOSTS:-8}
disk_mib=${DISK_MIB:-1024}
part_mib=${PART_MIB:-128}
source "$(dirname "$0")/lib.sh"
for tool in docker-registry skopeo python3; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is missing (apt-get install $tool)" >&2; exit 1; }
done

fleet=$work/fleet
rm -rf "$fleet" && mkdir -p "$fleet"
cleanup() {
    for pid in "$fleet"/*.pid; do [[ -f $pid ]] && kill "$(cat "$pid")" 2>/dev/null; done
    rm -rf "$fleet"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket,sys; s=socket.socket(); s.bind((sys.argv[1], 0)); print(s.getsockname()[1])' "$1"; }

# registry NAME IP PORT [PROXY_URL]: (re)starts registry NAME, its storage
# empty, its access log in $fleet/NAME.log.
registry() {
    local name=$1 ip=$2 port=$3 proxy=${4:-}
    if [[ -f $fleet/$name.pid ]]; then
        kill "$(cat "$fleet/$name.pid")" 2>/dev/null || true
        while (echo >/dev/tcp/"$ip"/"$port") 2>/dev/null; do sleep 0.05; done
    fi
    rm -rf "${fleet:?}/$name"
    {
        printf '%s\n' "version: 0.1" "log:" "  level: error" "storage:" "  filesystem:" \
            "    rootdirectory: $fleet/$name" "http:" "  addr: $ip:$port"
        if [[ -n $proxy ]]; then printf '%s\n' "proxy:" "  remoteurl: $proxy"; fi
    } >"$fleet/$name.yml"
    docker-registry serve "$fleet/$name.yml" >"$fleet/$name.log" 2>&1 &
    echo $! >"$fleet/$name.pid"
    for _ in $(seq 200); do (echo >/dev/tcp/"$ip"/"$port") 2>/dev/null && return; sleep 0.05; done
    echo "bench: $name did not start" >&2
    exit 1
}

# Bytes the upstream served as blobs, from its access log (combined format).
upstream_bytes() {
    awk '/"GET \/v2\/[^ ]*\/blobs\/sha256:/ { for (i = 1; i <= NF; i++) if ($i ~ /^[0-9][0-9][0-9]$/ && $(i+1) ~ /^[0-9]+$/) { sum += $(i+1); break } }
         END { printf "%.0f\n", sum }' "$fleet/upstream.log"
}

up_port=$(free_port 127.0.0.1)
cache_port=$(free_port 127.0.0.2)
registry upstream 127.0.0.1 "$up_port"
upstream=127.0.0.1:$up_port
registry cache 127.0.0.2 "$cache_port" "http://$upstream"

# The image.
head -c "$((disk_mib << 20))" "$work/rootfs.raw" >"$fleet/disk.raw"
publisher=$fleet/publisher
image=$(basename "$(dirname "$("$vmimg" -q --store "$publisher" pull "$fleet/disk.raw")")")
ref=oci://$upstream/bench/fleet:1
"$vmimg" -q --store "$publisher" push "$image" "$ref" --part-size 64M >/dev/null
artifact=$(du -sh "$fleet/upstream" | cut -f1)

# pull_wave LABEL THROUGH_CACHE COUNT: COUNT new hosts pulling at once; prints
# seconds and the upstream's bytes.
wave=0
pull_wave() {
    local label=$1 through=$2 count=$3 start before i pid
    wave=$((wave + 1))
    for ((i = 0; i < count; i++)); do
        local store=$fleet/wave$wave/host$i
        mkdir -p "$store/certs.d/$upstream"
        if [[ $through == yes ]]; then
            printf '%s\n' "server = \"http://$upstream\"" "[host.\"http://127.0.0.2:$cache_port\"]" \
                '  capabilities = ["pull", "resolve"]' >"$store/certs.d/$upstream/hosts.toml"
        fi
    done
    sync
    before=$(upstream_bytes)
    start=$(date +%s.%N)
    local pulls=()
    for ((i = 0; i < count; i++)); do
        "$vmimg" -q --store "$fleet/wave$wave/host$i" pull "$ref" >"$fleet/wave$wave/host$i.path" &
        pulls+=($!)
    done
    for pid in "${pulls[@]}"; do wait "$pid" || { echo "bench: a host's pull failed" >&2; exit 1; }; done
    local seconds bytes
    seconds=$(echo "$(date +%s.%N) - $start" | bc)
    bytes=$(($(upstream_bytes) - before))
    for ((i = 0; i < count; i++)); do
        cmp "$(cat "$fleet/wave$wave/host$i.path")" "$fleet/disk.raw" || { echo "bench: host $i has another disk" >&2; exit 1; }
    done
    printf '%-44s %8.2fs  upstream served %6d MiB\n' "$label" "$seconds" "$((bytes >> 20))"
    rm -rf "$fleet/wave$wave"
}

echo "image: ${disk_mib} MiB of the rootfs as zstd qcow2 parts of 64 MiB ($artifact in the registry); $hosts hosts;" \
    "$(nproc) cores; docker-registry $(dpkg-query -W -f='${Version}' docker-registry) on 127.0.0.1, its proxy on 127.0.0.2"
pull_wave "direct: $hosts hosts from the upstream" no "$hosts"
pull_wave "cold cache: $hosts hosts through it at once" yes "$hosts"
registry cache 127.0.0.2 "$cache_port" "http://$upstream"
pull_wave "warm cache: 1 host through it (canary)" yes 1
pull_wave "warm cache: then $hosts hosts at once" yes "$hosts"

# Upload: the raw disk in parts, vmimg against skopeo.
up_port2=$(free_port 127.0.0.1)
fresh_target() { registry target 127.0.0.1 "$up_port2"; }
mkdir -p "$fleet/parts"
(cd "$fleet/parts" && split -b "${part_mib}M" -d --additional-suffix=.raw.part "$fleet/disk.raw" disk)
parts_layout "$fleet/layout" "$fleet/parts" "$fleet/parts.txt" raw
skopeo_push() { skopeo copy -q --dest-tls-verify=false "oci:$fleet/layout:rootfs" "docker://127.0.0.1:$up_port2/bench/skopeo:1"; }
vmimg_push() {
    "$vmimg" -q --store "$publisher" push "$image" "oci://127.0.0.1:$up_port2/bench/vmimg:1" --format raw \
        --part-size "${part_mib}M"
}
t_skopeo=$(best_of fresh_target skopeo_push)
t_vmimg=$(best_of fresh_target vmimg_push)
fresh_target
rss=$(peak_rss_mib "$vmimg" -q --store "$publisher" push "$image" "oci://127.0.0.1:$up_port2/bench/rss:1" \
    --format raw --part-size "${part_mib}M")
printf '%-44s %8ss\n' "upload: skopeo copy oci:layout (${part_mib} MiB parts)" "$t_skopeo"
printf '%-44s %8ss  (peak RSS %s MiB)\n' "upload: vmimg push --format raw" "$t_vmimg" "$rss"
printf 'upload ratio: %.2fx (skopeo / vmimg; best of %s)\n' "$(echo "$t_skopeo / $t_vmimg" | bc -l)" "$runs"
