#!/usr/bin/env bash
# What metering costs a streamed LLM response: the same OpenAI-style SSE stream through two
# tollgate-proxy processes in one run, one on a route with `metering: OpenAI` under a token quota
# (the request read and reserved, `stream_options.include_usage` added, every chunk read, the usage
# chunk kept from the client, the reservation settled), one on a route with `metering: Requests`
# (unmetered). The stream comes from the test LLM backend (tests/src/llm_backend.rs), CHUNKS
# content chunks of ~170 bytes each, as fast as it can write them.
#
# Reported per round and as medians: time to first byte and to the last (curl, a new connection per
# request, REQUESTS sequential requests per target, the targets alternating), and the proxies' CPU
# time per request and per chunk (from /proc/PID/task/*/schedstat, nanoseconds), metered minus
# unmetered: the CPU that metering adds per SSE chunk.
#
#   bench/llm_stream.sh                       # 3 rounds, 200 requests of 500 chunks per target
#   ROUNDS=5 REQUESTS=400 CHUNKS=1000 bench/llm_stream.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ROUNDS=${ROUNDS:-3}
REQUESTS=${REQUESTS:-200}
CHUNKS=${CHUNKS:-500}
for v in ROUNDS REQUESTS CHUNKS; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "bench: $v is a positive count, not '${!v}'" >&2; exit 1; }
done
((CHUNKS >= 2)) || { echo "bench: CHUNKS is at least 2" >&2; exit 1; }

cargo build --release -q -p tollgate-proxy -p tollgate-tests --bin tollgate-proxy --bin llm-backend
bin="${CARGO_TARGET_DIR:-target}/release"
# shellcheck source=bench/common.sh
source bench/common.sh
bench_workspace

UP=$(port)
"$bin/llm-backend" --listen "127.0.0.1:$UP" >"$work/backend.log" 2>&1 &
pids+=($!)

mkdir -p "$work/manifests"
cat >"$work/manifests/world.yaml" <<YAML
apiVersion: tollgate.dev/v1alpha1
kind: QuotaPolicy
metadata: {name: metered}
spec:
  quotas: [{name: tokens, metric: TotalTokens, limit: "1000000000000", period: Month}]
---
apiVersion: tollgate.dev/v1alpha1
kind: QuotaPolicy
metadata: {name: plain}
spec:
  quotas: [{name: calls, metric: Requests, limit: "1000000000000", period: Month}]
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiRoute
metadata: {name: metered}
spec:
  match: {pathPrefix: /metered}
  backend: {url: "http://127.0.0.1:$UP"}
  metering: OpenAI
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiRoute
metadata: {name: plain}
spec:
  match: {pathPrefix: /plain}
  backend: {url: "http://127.0.0.1:$UP"}
---
apiVersion: v1
kind: Secret
metadata: {name: keys}
stringData: {m: bench-metered, p: bench-plain}
---
apiVersion: tollgate.dev/v1alpha1
kind: Tenant
metadata: {name: m}
spec:
  quotaPolicyRef: {name: metered}
  apiKeys: [{secretRef: {name: keys, key: m}}]
  subscriptions: [{apiRouteRef: {name: metered}}]
---
apiVersion: tollgate.dev/v1alpha1
kind: Tenant
metadata: {name: p}
spec:
  quotaPolicyRef: {name: plain}
  apiKeys: [{secretRef: {name: keys, key: p}}]
  subscriptions: [{apiRouteRef: {name: plain}}]
YAML

declare -A listen pid_of
for target in metered plain; do
    listen[$target]=$(port)
    admin=$(port)
    "$bin/tollgate-proxy" --manifests "$work/manifests" --listen "127.0.0.1:${listen[$target]}" \
        --admin-listen "127.0.0.1:$admin" --state-dir "$work/state-$target" --worker-threads 1 \
        >/dev/null 2>"$work/$target.log" &
    pid_of[$target]=$!
    pids+=($!)
    for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$admin/readyz" >/dev/null && break; sleep 0.1; done
done
for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$UP/" && break; sleep 0.1; done


body='{"model":"gpt-4o-mini","stream":true,"max_tokens":4096,"messages":[{"role":"user","content":"Write a long answer."}]}'
# One request to TARGET: "TTFB TOTAL" in seconds; fails unless the whole stream arrived.
one() {
    local target=$1 key=bench-$1 out
    out=$(curl -sS -o "$work/last-$target" -w '%{time_starttransfer} %{time_total} %{http_code}' \
        -H "Authorization: Bearer $key" -H 'Content-Type: application/json' -H "X-Llm-Chunks: $CHUNKS" \
        --data "$body" "http://127.0.0.1:${listen[$target]}/$target/v1/chat/completions")
    [[ ${out##* } == 200 ]] || { echo "bench: $target answered ${out##* }: $(head -c 300 "$work/last-$target")" >&2; exit 1; }
    echo "${out% *}"
}

# Sanity: the same content reaches the client both ways (the metered one without the usage chunk).
one metered >/dev/null; one plain >/dev/null
m_chunks=$(grep -c '^data: {' "$work/last-metered"); p_chunks=$(grep -c '^data: {' "$work/last-plain")
[[ $m_chunks == "$CHUNKS" && $p_chunks == "$CHUNKS" ]] ||
    { echo "bench: expected $CHUNKS chunks each, got metered $m_chunks, plain $p_chunks" >&2; exit 1; }

printf '%-6s %-8s %12s %12s %14s\n' round target "TTFB ms" "total ms" "CPU us/req"
declare -a ttfb_ratio cpu_per_chunk
for round in $(seq 1 "$ROUNDS"); do
    declare -A before after
    for t in metered plain; do before[$t]=$(cpu_ns "${pid_of[$t]}"); : >"$work/times-$t"; done
    for _ in $(seq 1 "$REQUESTS"); do
        one metered >>"$work/times-metered"
        one plain >>"$work/times-plain"
    done
    for t in metered plain; do after[$t]=$(cpu_ns "${pid_of[$t]}"); done
    declare -A ttfb total cpu
    for t in metered plain; do
        ttfb[$t]=$(awk '{print $1 * 1000}' "$work/times-$t" | median)
        total[$t]=$(awk '{print $2 * 1000}' "$work/times-$t" | median)
        cpu[$t]=$(((after[$t] - before[$t]) / REQUESTS / 1000))
        printf '%-6s %-8s %12.3f %12.3f %14s\n' "$round" "$t" "${ttfb[$t]}" "${total[$t]}" "${cpu[$t]}"
    done
    ttfb_ratio+=("$(awk -v m="${ttfb[metered]}" -v p="${ttfb[plain]}" 'BEGIN {printf "%.3f", m / p}')")
    cpu_per_chunk+=("$(awk -v m="${cpu[metered]}" -v p="${cpu[plain]}" -v c="$CHUNKS" 'BEGIN {printf "%.3f", (m - p) * 1000 / c}')")
done
echo
echo "time to first byte, metered / unmetered: $(printf '%s\n' "${ttfb_ratio[@]}" | median_summary)"
echo "CPU added per SSE chunk by metering (ns): median $(printf '%s\n' "${cpu_per_chunk[@]}" | median) (rounds: ${cpu_per_chunk[*]})"
