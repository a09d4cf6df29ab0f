#!/usr/bin/env bash
# What translation costs: the same Anthropic stream (CHUNKS text deltas, from the test LLM
# backend) through two tollgate-proxy processes in one run, one on a route whose callers speak
# Anthropic (`metering: Anthropic`, no translation), one on a route that translates it for
# OpenAI callers (`translate: {from: OpenAI}`): the request made an Anthropic call, every event
# made an OpenAI chunk. Both metered under a token quota, so the difference is translation only.
# Then the same for whole (JSON) answers: the translation of one call and its answer.
#
# Reported per round and as medians: time to first byte and to the last (curl, a new connection
# per request, REQUESTS sequential requests per target, the targets alternating), the proxies'
# CPU time per request (from /proc/PID/task/*/schedstat), and the CPU translation adds per
# request (JSON) and per streamed chunk.
#
#   bench/llm_translate.sh                     # 3 rounds, 200 requests of 500 chunks per target
#   ROUNDS=5 REQUESTS=400 CHUNKS=1000 bench/llm_translate.sh
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
kind: ApiRoute
metadata: {name: direct}
spec:
  match: {path: /v1/messages}
  backend: {url: "http://127.0.0.1:$UP"}
  metering: Anthropic
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiRoute
metadata: {name: translated}
spec:
  match: {path: /v1/chat/completions}
  backend: {url: "http://127.0.0.1:$UP"}
  metering: Anthropic
  translate: {from: OpenAI, models: {gpt-4o: claude-opus-4-6}}
---
apiVersion: v1
kind: Secret
metadata: {name: keys}
stringData: {k: bench-key}
---
apiVersion: tollgate.dev/v1alpha1
kind: Tenant
metadata: {name: t}
spec:
  quotaPolicyRef: {name: metered}
  apiKeys: [{secretRef: {name: keys, key: k}}]
  subscriptions: [{apiRouteRef: {name: direct}}, {apiRouteRef: {name: translated}}]
YAML

declare -A listen pid_of
for target in direct translated; do
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


# One request to TARGET (STREAM true or false): "TTFB TOTAL" in seconds; fails unless it was
# answered 200.
one() {
    local target=$1 stream=$2 out path body
    if [[ $target == direct ]]; then
        path=/v1/messages
        body="{\"model\":\"claude-opus-4-6\",\"stream\":$stream,\"max_tokens\":4096,\"messages\":[{\"role\":\"user\",\"content\":\"Write a long answer.\"}]}"
    else
        path=/v1/chat/completions
        body="{\"model\":\"gpt-4o\",\"stream\":$stream,\"max_tokens\":4096,\"messages\":[{\"role\":\"user\",\"content\":\"Write a long answer.\"}]}"
    fi
    out=$(curl -sS -o "$work/last-$target" -w '%{time_starttransfer} %{time_total} %{http_code}' \
        -H "Authorization: Bearer bench-key" -H 'Content-Type: application/json' -H "X-Llm-Chunks: $CHUNKS" \
        --data "$body" "http://127.0.0.1:${listen[$target]}$path")
    [[ ${out##* } == 200 ]] || { echo "bench: $target answered ${out##* }: $(head -c 300 "$work/last-$target")" >&2; exit 1; }
    echo "${out% *}"
}

# Sanity: every delta reaches the client both ways, each in its caller's shape.
one direct true >/dev/null; one translated true >/dev/null
d_chunks=$(grep -c '^data: .*"content_block_delta"' "$work/last-direct" || true)
t_chunks=$(grep -c '^data: {.*"delta":{"content"' "$work/last-translated" || true)
[[ $d_chunks == "$CHUNKS" && $t_chunks == "$CHUNKS" ]] ||
    { echo "bench: expected $CHUNKS deltas each, got direct $d_chunks, translated $t_chunks: $(head -c 400 "$work/last-direct")" >&2; exit 1; }
tail -c 200 "$work/last-translated" | grep -q '^data: \[DONE\]' || { echo "bench: the translated stream did not end with [DONE]" >&2; exit 1; }

# ROUND STREAM: one round of REQUESTS per target; prints the per-target line, and sets
# ratio (TTFB translated / direct) and added (translated - direct CPU, microseconds per request).
round() {
    local r=$1 stream=$2
    declare -A before after ttfb total cpu
    for t in direct translated; do before[$t]=$(cpu_ns "${pid_of[$t]}"); : >"$work/times-$t"; done
    for _ in $(seq 1 "$REQUESTS"); do
        one direct "$stream" >>"$work/times-direct"
        one translated "$stream" >>"$work/times-translated"
    done
    for t in direct translated; do after[$t]=$(cpu_ns "${pid_of[$t]}"); done
    for t in direct translated; do
        ttfb[$t]=$(awk '{print $1 * 1000}' "$work/times-$t" | median)
        total[$t]=$(awk '{print $2 * 1000}' "$work/times-$t" | median)
        cpu[$t]=$(((after[$t] - before[$t]) / REQUESTS / 1000))
        printf '%-6s %-7s %-11s %12.3f %12.3f %14s\n' "$r" "$stream" "$t" "${ttfb[$t]}" "${total[$t]}" "${cpu[$t]}"
    done
    ratio=$(awk -v a="${ttfb[translated]}" -v b="${ttfb[direct]}" 'BEGIN {printf "%.3f", a / b}')
    added=$((cpu[translated] - cpu[direct]))
}

printf '%-6s %-7s %-11s %12s %12s %14s\n' round stream target "TTFB ms" "total ms" "CPU us/req"
declare -a s_ratio s_chunk j_ratio j_req
for r in $(seq 1 "$ROUNDS"); do
    round "$r" true
    s_ratio+=("$ratio")
    s_chunk+=("$(awk -v a="$added" -v c="$CHUNKS" 'BEGIN {printf "%.0f", a * 1000 / c}')")
    round "$r" false
    j_ratio+=("$ratio")
    j_req+=("$added")
done
echo
echo "streamed: time to first byte, translated / direct: $(printf '%s\n' "${s_ratio[@]}" | median_summary)"
echo "streamed: CPU added per chunk by translation (ns): median $(printf '%s\n' "${s_chunk[@]}" | median) (rounds: ${s_chunk[*]})"
echo "whole answers: time to first byte, translated / direct: $(printf '%s\n' "${j_ratio[@]}" | median_summary)"
echo "whole answers: CPU added per request by translation (us): median $(printf '%s\n' "${j_req[@]}" | median) (rounds: ${j_req[*]})"
