#!/usr/bin/env bash
# Benchmark: `vmimg serve` against nginx, on the same machine, in the same run.
#
# Pulls a disk of random bytes into a fresh store, starts the daemon on TCP
# (with a token) and Debian's nginx (sendfile on, access log off) serving
# the same file, then measures with wrk:
#   - GET /v1/images/NAME/disk throughput with 1 and 16 concurrent clients,
#     vmimg against nginx, as a ratio (the goal is at least 0.9x);
#   - GET /v1/images/NAME latency p50/p99 at 200 concurrent clients;
#   - the daemon's resident memory idle and its peak under that load.
#
# Needs: nginx and wrk (apt-get install nginx wrk).
# Usage: bench/serve.sh [DISK_MIB] [SECONDS]   (defaults: 512, 10)
set -euo pipefail

size_mib=${1:-512}
duration=${2:-10}
source "$(dirname "$0")/lib.sh"
for tool in nginx wrk; do
    command -v "$tool" >/dev/null || { echo "bench/serve.sh needs $tool (apt-get install nginx wrk)" >&2; exit 1; }
done

dir=$work/serve
rm -rf "$dir"
mkdir -p "$dir/www"
daemon="" web=""
trap '[[ -n $daemon ]] && kill $daemon; [[ -n $web ]] && kill $web; wait 2>/dev/null; rm -rf "$dir"' EXIT

head -c "${size_mib}M" /dev/urandom >"$dir/disk.raw"
disk=$("$vmimg" -q --store "$dir/store" pull "$dir/disk.raw")
name=$(basename "$(dirname "$disk")")
ln "$disk" "$dir/www/disk.raw"
token=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
echo "$token" >"$dir/token"

vmimg_port=18181 nginx_port=18182
"$vmimg" --store "$dir/store" serve --listen "tcp:127.0.0.1:$vmimg_port" --token-file "$dir/token" 2>"$dir/serve.log" &
daemon=$!
cat >"$dir/nginx.conf" <<CONF
daemon off;
worker_processes auto;
pid $dir/nginx.pid;
error_log $dir/nginx.err;
events { worker_connections 1024; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    server { listen 127.0.0.1:$nginx_port; root $dir/www; }
}
CONF
nginx -c "$dir/nginx.conf" -p "$dir" &
web=$!
auth="Authorization: Bearer $token"
for url in "http://127.0.0.1:$nginx_port/disk.raw" "http://127.0.0.1:$vmimg_port/healthz"; do
    for ((i = 0; i < 100; i++)); do curl -sfo /dev/null -I "$url" && break; sleep 0.05; done
done

# The daemon's resident memory in MiB: VmRSS now, or VmHWM (the peak).
rss_mib() { awk -v key="$1:" '$1 == key { printf "%d", $2 / 1024 }' "/proc/$daemon/status"; }
idle=$(rss_mib VmRSS)

# wrk's "Transfer/sec" of "$@", in MiB/s.
throughput() {
    wrk "$@" | awk '/Transfer\/sec/ {
        v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[A-Za-z]+$/, "", v)
        f = (u == "GB") ? 1024 : (u == "MB") ? 1 : (u == "KB") ? 1 / 1024 : 1 / 1048576
        printf "%.0f", v * f }'
}

echo "disk: ${size_mib} MiB of random bytes, page-cached; each run ${duration} s"
printf '%-28s %12s %12s %8s\n' "GET disk" "vmimg MiB/s" "nginx MiB/s" "ratio"
for clients in 1 16; do
    threads=$((clients < 2 ? 1 : 2))
    ours=$(throughput -t"$threads" -c"$clients" -d"${duration}s" -H "$auth" "http://127.0.0.1:$vmimg_port/v1/images/$name/disk")
    theirs=$(throughput -t"$threads" -c"$clients" -d"${duration}s" "http://127.0.0.1:$nginx_port/disk.raw")
    printf '%-28s %12s %12s %7.2fx\n' "$clients client(s)" "$ours" "$theirs" "$(echo "$ours / $theirs" | bc -l)"
done

latency=$(wrk -t2 -c200 -d"${duration}s" --latency -H "$auth" "http://127.0.0.1:$vmimg_port/v1/images/$name")
p50=$(awk '$1 == "50%" { print $2 }' <<<"$latency")
p99=$(awk '$1 == "99%" { print $2 }' <<<"$latency")
rate=$(awk '/Requests\/sec/ { printf "%.0f", $2 }' <<<"$latency")
errors=$(grep -E "Non-2xx|Socket errors" <<<"$latency" || true)
echo "GET /v1/images/NAME at 200 clients: p50 $p50, p99 $p99, $rate requests/s${errors:+ ($errors)}"
echo "daemon RSS: idle ${idle} MiB, peak $(rss_mib VmHWM) MiB"
