#!/usr/bin/env bash
# gRPC and WebSocket through Tollgate and through nginx, in one run, on the same upstreams.
#
#   gRPC       h2load (h2c, unary calls of a 7-byte message) -> proxy -> an h2c gRPC echo
#              (tests/src/bin/protocol-peer.rs grpc-server). nginx: `grpc_pass` with keep-alive
#              upstream connections; Tollgate: a route whose plan has a per-second rate limit and
#              a monthly quota, the API key checked, metrics and the access log on.
#   WebSocket  protocol-peer ws-load (CONNECTIONS WebSockets, MESSAGES round trips of 64 bytes
#              each) -> proxy -> a WebSocket echo (protocol-peer ws-echo). nginx: proxy_pass with
#              the Upgrade headers; Tollgate: a route with `websocket: {}` under the same plan
#              (the upgrade checked and charged, then relayed frame-aware).
#   direct     the client straight to the upstream: what the machine does without a proxy.
#
# The proxies run pinned to CPU 1 with one worker; the client and the upstreams to CPU 0. ROUNDS
# rounds alternate nginx and Tollgate (swapping order every round); each round gives the
# throughput ratio Tollgate / nginx and CPU 1's busy time per call or message (user, system,
# softirq: what the proxy costs). The report ends with the medians of the per-round ratios and a
# 95% interval (from 6 rounds on).
#
#   bench/protocols.sh                                  # 3 rounds, 8 s of gRPC, 64 connections
#   ROUNDS=6 DURATION=10s CONNECTIONS=32 MESSAGES=2000 bench/protocols.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8s}
CONNECTIONS=${CONNECTIONS:-64}
MESSAGES=${MESSAGES:-1000}
for v in ROUNDS CONNECTIONS MESSAGES; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "bench: $v is a positive count, not '${!v}'" >&2; exit 1; }
done
[[ $DURATION =~ ^[1-9][0-9]*s$ ]] || { echo "bench: DURATION is seconds like 8s, not '$DURATION'" >&2; exit 1; }
for tool in nginx h2load taskset; do
    command -v $tool >/dev/null || { echo "bench: $tool not found (apt-get install nginx nghttp2-client util-linux)" >&2; exit 1; }
done
if [[ $(nproc) -lt 2 ]]; then echo "bench: needs 2 CPUs to pin client and server apart" >&2; exit 1; fi

cargo build --release -q -p tollgate-proxy -p tollgate-tests --bin tollgate-proxy --bin protocol-peer
bin="${CARGO_TARGET_DIR:-target}/release"
# shellcheck source=bench/common.sh
source bench/common.sh
bench_workspace
cpu0=(taskset -c 0); cpu1=(taskset -c 1)

UP=$(port); GRPC_UP=$(port); WS_UP=$(port)
NGX_GRPC=$(port); NGX_WS=$(port); TG=$(port); TG_ADMIN=$(port)
"${cpu0[@]}" "$bin/protocol-peer" grpc-server --listen "127.0.0.1:$GRPC_UP" >/dev/null & pids+=($!)
"${cpu0[@]}" "$bin/protocol-peer" ws-echo --listen "127.0.0.1:$WS_UP" >/dev/null & pids+=($!)

# `backend` (nginx_conf's HTTP/1.1 upstream) is the WebSocket echo.
UP=$WS_UP nginx_conf proxy "
    upstream grpc_backend { server 127.0.0.1:$GRPC_UP; keepalive 128; keepalive_requests 100000000; }
    server { listen 127.0.0.1:$NGX_GRPC http2;
        location / { grpc_pass grpc://grpc_backend; } }
    server { listen 127.0.0.1:$NGX_WS;
        location / { proxy_pass http://backend; proxy_http_version 1.1;
            proxy_set_header Upgrade \$http_upgrade; proxy_set_header Connection upgrade;
            proxy_read_timeout 1h; } }"
"${cpu1[@]}" nginx -c "$work/proxy.conf" & pids+=($!)
for p in $NGX_GRPC $NGX_WS $GRPC_UP $WS_UP; do
    for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && break; sleep 0.1; done
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "bench: nothing listens on $p: $(cat "$work"/*.error.log 2>/dev/null)" >&2; exit 1; }
done

mkdir -p "$work/manifests"
cat >"$work/manifests/bench.yaml" <<YAML
apiVersion: tollgate.dev/v1alpha1
kind: QuotaPolicy
metadata: {name: bench}
spec:
  rateLimits: [{name: per-second, requests: 100000000, window: 1s}]
  quotas: [{name: monthly-requests, metric: Requests, limit: "1000000000000", period: Month}]
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiRoute
metadata: {name: grpc}
spec:
  match: {pathPrefix: /bench.Echo}
  backend: {url: "http://127.0.0.1:$GRPC_UP"}
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiRoute
metadata: {name: ws}
spec:
  match: {pathPrefix: /ws}
  backend: {url: "http://127.0.0.1:$WS_UP"}
  websocket: {}
---
apiVersion: v1
kind: Secret
metadata: {name: keys}
stringData: {k: tg_bench_key_0001}
---
apiVersion: tollgate.dev/v1alpha1
kind: Tenant
metadata: {name: bench}
spec:
  quotaPolicyRef: {name: bench}
  apiKeys: [{secretRef: {name: keys, key: k}}]
  subscriptions: [{apiRouteRef: {name: grpc}}, {apiRouteRef: {name: ws}}]
YAML
"${cpu1[@]}" "$bin/tollgate-proxy" --manifests "$work/manifests" --listen "127.0.0.1:$TG" \
    --admin-listen "127.0.0.1:$TG_ADMIN" --state-dir "$work/state" --worker-threads 1 \
    >/dev/null 2>"$work/tollgate.log" & pids+=($!)
for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$TG_ADMIN/readyz" >/dev/null && break; sleep 0.1; done

# One unary call: a 5-byte gRPC prefix (uncompressed, length 7) and a StringValue "hello".
printf '\x00\x00\x00\x00\x07\x0a\x05hello' >"$work/call.bin"
KEY="authorization: Bearer tg_bench_key_0001"
declare -A grpc_port=([direct]=$GRPC_UP [nginx]=$NGX_GRPC [tollgate]=$TG)
declare -A ws_port=([direct]=$WS_UP [nginx]=$NGX_WS [tollgate]=$TG)

# cpu1_busy: CPU 1's busy clock ticks so far (user, nice, system, irq, softirq).
cpu1_busy() { awk '$1=="cpu1" {print $2+$3+$4+$7+$8}' /proc/stat; }
TICK_NS=$((1000000000 / $(getconf CLK_TCK)))

# grpc_run TARGET: "calls/s CPU-ns-per-call"; fails unless every call was answered 200.
grpc_run() {
    local t=$1 out busy0 busy1 done_
    busy0=$(cpu1_busy)
    out=$("${cpu0[@]}" h2load -c"$CONNECTIONS" -m10 -D"${DURATION%s}" -d "$work/call.bin" \
        -H 'content-type: application/grpc' -H 'te: trailers' -H "$KEY" \
        "http://127.0.0.1:${grpc_port[$t]}/bench.Echo/Unary" 2>&1)
    busy1=$(cpu1_busy)
    grep -q '0 failed, 0 errored' <<<"$out" || { echo "bench: gRPC through $t failed: $out" >&2; exit 1; }
    done_=$(awk '/^status codes:/ {print $3}' <<<"$out")
    [[ $done_ -gt 0 ]] || { echo "bench: no 2xx from $t: $out" >&2; exit 1; }
    awk -v d="$done_" -v s="${DURATION%s}" -v b=$((busy1 - busy0)) -v k="$TICK_NS" \
        'BEGIN {printf "%.0f %.0f\n", d / s, b * k / d}'
}

# ws_run TARGET: "messages/s CPU-ns-per-message".
ws_run() {
    local t=$1 out busy0 busy1 rate
    busy0=$(cpu1_busy)
    out=$("${cpu0[@]}" "$bin/protocol-peer" ws-load --url "ws://127.0.0.1:${ws_port[$t]}/ws" \
        --connections "$CONNECTIONS" --messages "$MESSAGES" --header "$KEY")
    busy1=$(cpu1_busy)
    rate=$(awk '{print $6}' <<<"$out")
    awk -v r="$rate" -v n=$((CONNECTIONS * MESSAGES)) -v b=$((busy1 - busy0)) -v k="$TICK_NS" \
        'BEGIN {printf "%.0f %.0f\n", r, b * k / n}'
}

# Sanity: each target answers, and Tollgate checks the key on both paths.
for t in direct nginx tollgate; do
    DURATION=1s grpc_run "$t" >/dev/null
    MESSAGES=10 ws_run "$t" >/dev/null
done
if "$bin/protocol-peer" ws-load --url "ws://127.0.0.1:$TG/ws" --connections 1 --messages 1 >/dev/null 2>&1; then
    echo "bench: Tollgate upgraded a WebSocket without a key" >&2; exit 1
fi

printf '%-6s %-10s %-10s %14s %14s\n' round protocol target "per second" "CPU1 ns/each"
declare -a g_ratio w_ratio g_cost w_cost
for r in $(seq 1 "$ROUNDS"); do
    order=(direct nginx tollgate)
    ((r % 2 == 0)) && order=(direct tollgate nginx)
    declare -A g w
    for t in "${order[@]}"; do
        g[$t]=$(grpc_run "$t")
        printf '%-6s %-10s %-10s %14s %14s\n' "$r" gRPC "$t" ${g[$t]}
    done
    for t in "${order[@]}"; do
        w[$t]=$(ws_run "$t")
        printf '%-6s %-10s %-10s %14s %14s\n' "$r" WebSocket "$t" ${w[$t]}
    done
    g_ratio+=("$(awk -v a="${g[tollgate]% *}" -v b="${g[nginx]% *}" 'BEGIN {printf "%.3f", a / b}')")
    w_ratio+=("$(awk -v a="${w[tollgate]% *}" -v b="${w[nginx]% *}" 'BEGIN {printf "%.3f", a / b}')")
    g_cost+=("$(awk -v a="${g[tollgate]#* }" -v b="${g[nginx]#* }" 'BEGIN {printf "%.3f", a / b}')")
    w_cost+=("$(awk -v a="${w[tollgate]#* }" -v b="${w[nginx]#* }" 'BEGIN {printf "%.3f", a / b}')")
done
echo
echo "gRPC calls/s, tollgate / nginx:          $(printf '%s\n' "${g_ratio[@]}" | median_summary)"
echo "gRPC CPU per call, tollgate / nginx:     $(printf '%s\n' "${g_cost[@]}" | median_summary)"
echo "WebSocket messages/s, tollgate / nginx:  $(printf '%s\n' "${w_ratio[@]}" | median_summary)"
echo "WebSocket CPU per message, tg / nginx:   $(printf '%s\n' "${w_cost[@]}" | median_summary)"
