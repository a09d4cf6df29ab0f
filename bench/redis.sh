#!/usr/bin/env bash
# Fleet-quota benchmark: tollgate-proxy throughput with the Redis store (leased slices) against the
# in-memory store and against a naive store that calls Redis on every admission (the Envoy
# ratelimit way; --store-slices=false). Same pinning as bench/run.sh; wrk and redis-server on CPU 0,
# the proxy on CPU 1. ROUNDS rounds alternate the three; medians are reported.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
cargo build --release -q -p tollgate-proxy
bin="${CARGO_TARGET_DIR:-target}/release/tollgate-proxy"
# shellcheck source=bench/common.sh
source bench/common.sh
bench_workspace
UP=$(port); REDIS=$(port)
nginx_conf upstream "server { listen 127.0.0.1:$UP; location / { return 200 'ok'; } }"
taskset -c 0 nginx -c "$work/upstream.conf" & pids+=($!)
taskset -c 0 redis-server --port "$REDIS" --bind 127.0.0.1 --save "" --appendonly no >/dev/null & pids+=($!)
bench_manifests "$work/manifests" "$UP"
sleep 0.3
declare -A args=([memory]="--store memory" [redis]="--store redis://127.0.0.1:$REDIS" [redis-naive]="--store redis://127.0.0.1:$REDIS --store-slices=false")
declare -A results
for round in $(seq 1 "$ROUNDS"); do
    for store in memory redis redis-naive; do
        P=$(port); A=$(port)
        # shellcheck disable=SC2086
        taskset -c 1 "$bin" --manifests "$work/manifests" --listen "127.0.0.1:$P" --admin-listen "127.0.0.1:$A" \
            --state-dir "$work/state-$store" --worker-threads 1 ${args[$store]} >/dev/null 2>"$work/$store.log" &
        pid=$!
        for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$A/readyz" >/dev/null && break; sleep 0.05; done
        taskset -c 0 wrk -t1 -c64 -d2s -H 'Authorization: Bearer tg_bench_key_0001' "http://127.0.0.1:$P/" >/dev/null
        out=$(taskset -c 0 wrk -t1 -c64 -d"$DURATION" -H 'Authorization: Bearer tg_bench_key_0001' "http://127.0.0.1:$P/")
        rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out"); bad=$(awk '/Non-2xx/ {print $5}' <<<"$out")
        results[$store]+="$rps;"
        echo "round $round $store: $rps req/s, non-2xx ${bad:-0}" >&2
        kill "$pid"; wait "$pid" 2>/dev/null || true
    done
done
median_of() { tr ';' '\n' <<<"${results[$1]}" | awk 'NF' | median; }
m=$(median_of memory); r=$(median_of redis); n=$(median_of redis-naive)
echo "medians: memory $m, redis (slices) $r, redis naive (a call per request) $n req/s"
awk -v m="$m" -v r="$r" -v n="$n" 'BEGIN {printf "redis/memory %.2fx, redis/naive %.2fx\n", r/m, r/n}'
