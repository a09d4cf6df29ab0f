#!/usr/bin/env bash
# User-space instructions per request of tollgate-proxy, counted by callgrind: deterministic, so a
# change of 1% shows (throughput on a shared machine moves ±5-10% between runs).
#
# Each build serves N1 and then N2 keep-alive requests (h2load --h1, 16 connections) to a local
# nginx upstream under `valgrind --tool=callgrind`, with every check on (key auth, a per-second
# rate limit, a monthly quota, metrics, access log); the difference of the two totals divided by
# N2 - N1 is the cost of one request without start-up.
#
#   bench/instructions.sh                        # the current build
#   bench/instructions.sh /tmp/old ./new         # several builds, for an A/B
#   N1=2000 N2=12000 bench/instructions.sh
#   KEEP=/tmp/profiles bench/instructions.sh     # keep each build's N2 profile for callgrind_annotate
#   bench/instructions.sh nginx ./new             # `nginx`: the plain nginx reverse proxy of
#                                                 # bench/run.sh, measured the same way
#
# Note: valgrind hides SHA-NI, so the key digest counts ~3.5k instructions in software that the
# CPU does in ~0.3k natively. Compare builds with each other, not with a native profile.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

N1=${N1:-2000}
N2=${N2:-12000}
for tool in valgrind h2load nginx curl; do
    command -v $tool >/dev/null || { echo "bench: $tool not found (apt-get install valgrind nghttp2-client nginx curl)" >&2; exit 1; }
done
bins=("$@")
if [[ ${#bins[@]} -eq 0 ]]; then
    cargo build --release -q -p tollgate-proxy
    bins=("${CARGO_TARGET_DIR:-target}/release/tollgate-proxy")
fi
# shellcheck source=bench/common.sh
source bench/common.sh
bench_workspace
UP=$(port); TG=$(port); TG_ADMIN=$(port)
nginx_conf upstream "server { listen 127.0.0.1:$UP; location / { return 200 'ok'; } }"
nginx -c "$work/upstream.conf" & pids+=($!)
bench_manifests "$work/manifests" "$UP" 'rateLimits: [{name: per-second, requests: 100000000, window: 1s}]'

# The nginx reverse proxy of bench/run.sh, in the foreground (one process) for valgrind.
nginx_conf proxy "server { listen 127.0.0.1:$TG; location / { proxy_pass http://backend;
    proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
sed -i 's/^daemon off;/daemon off; master_process off;/' "$work/proxy.conf"

# instructions BIN N -> total Ir of a run serving N requests (all must be 2xx).
instructions() {
    local bin=$1 n=$2 out="$work/callgrind.$2"
    rm -rf "$work/state"
    if [[ "$bin" == nginx ]]; then
        valgrind --tool=callgrind ${VG_EXTRA:-} --callgrind-out-file="$out" nginx -c "$work/proxy.conf" \
            >/dev/null 2>"$work/valgrind.log" &
    else
        valgrind --tool=callgrind ${VG_EXTRA:-} --callgrind-out-file="$out" "$bin" --manifests "$work/manifests" \
            --listen "127.0.0.1:$TG" --admin-listen "127.0.0.1:$TG_ADMIN" --state-dir "$work/state" \
            --worker-threads 1 >/dev/null 2>"$work/valgrind.log" &
    fi
    local pid=$!
    local ready="http://127.0.0.1:$TG_ADMIN/readyz"
    [[ "$bin" == nginx ]] && ready="http://127.0.0.1:$TG/"
    for _ in $(seq 1 150); do curl -sf -o /dev/null "$ready" && break; sleep 0.2; done
    local codes
    codes=$(h2load --h1 -n "$n" -c 16 -H 'Authorization: Bearer tg_bench_key_0001' "http://127.0.0.1:$TG/" | awk '/status codes:/ {print $3}')
    # nginx without a master process stops on QUIT (graceful) and writes its profile then.
    if [[ "$bin" == nginx ]]; then kill -QUIT "$pid"; else kill -TERM "$pid"; fi
    wait "$pid" 2>/dev/null || true
    if [[ "$codes" != "$n" ]]; then echo "bench: only $codes of $n requests were 2xx" >&2; exit 1; fi
    awk '/^(summary|totals):/ {print $2; exit}' "$out"
}
for bin in "${bins[@]}"; do
    a=$(instructions "$bin" "$N1"); b=$(instructions "$bin" "$N2")
    if [[ -n "${KEEP:-}" ]]; then
        mkdir -p "$KEEP" && cp "$work/callgrind.$N2" "$KEEP/callgrind.$(basename "$bin").$N2"
    fi
    awk -v a="$a" -v b="$b" -v n=$((N2 - N1)) -v bin="$bin" 'BEGIN {printf "%-50s %8.0f instructions per request\n", bin, (b - a) / n}'
done
