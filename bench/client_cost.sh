#!/usr/bin/env bash
# What the bytes Tollgate adds to every exchange cost the client core, measured without a proxy.
#
# In bench/run.sh's pinned layout CPU 0 runs wrk and the upstream, and in the proxied runs it has
# no idle time left: it sets the rate. Part of CPU 0's work is parsing what the proxy sends. The two
# proxies send different bytes: nginx forwards the request with the API key and answers with the
# upstream's head; Tollgate removes the key, adds X-Tollgate-Tenant and X-Forwarded-* for the
# backend, and adds the RateLimit-Policy and RateLimit lines to every answer (api.md asks for all
# of them). The upstream parses the request headers and wrk the answer headers, both on CPU 0.
#
# This script asks a live tollgate-proxy once for the exact bytes (what it sends a backend, what it
# answers), then runs wrk against the nginx upstream with no proxy in between, both pinned to
# CPU 0, in two variants alternated over ROUNDS:
#
#   as-nginx     the headers nginx-proxy sends the upstream (the key); the upstream's own answer
#   as-tollgate  the headers Tollgate sends the upstream; the answer with Tollgate's RateLimit lines
#
# The ratio as-tollgate/as-nginx is what those bytes cost CPU 0: the ceiling they put on
# tollgate/nginx-proxy in bench/run.sh while CPU 0 is the cap. (nginx cannot leave out the
# `Connection: keep-alive` line Tollgate does not send, so as-tollgate's answers carry 24 bytes
# more than Tollgate's: the cost is slightly overstated.)
#
#   bench/client_cost.sh              # 5 rounds of 5 s, 64 connections
#   ROUNDS=9 DURATION=10s bench/client_cost.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5s}
CONNECTIONS=${CONNECTIONS:-64}
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "client_cost: ROUNDS is a count of rounds (5), not '$ROUNDS'" >&2; exit 1; }
[[ $CONNECTIONS =~ ^[1-9][0-9]*$ ]] || { echo "client_cost: CONNECTIONS is a count (64), not '$CONNECTIONS'" >&2; exit 1; }
[[ $DURATION =~ ^[1-9][0-9]*s$ ]] || { echo "client_cost: DURATION is seconds like 5s, not '$DURATION'" >&2; exit 1; }
for tool in nginx wrk taskset python3 curl; do
    command -v $tool >/dev/null || { echo "client_cost: $tool not found" >&2; exit 1; }
done

if [[ -z "${TOLLGATE_BIN:-}" ]]; then cargo build --release -q -p tollgate-proxy; fi
bin="${TOLLGATE_BIN:-${CARGO_TARGET_DIR:-target}/release/tollgate-proxy}"
# shellcheck source=bench/common.sh
source bench/common.sh
bench_workspace
CAPTURE=$(port); UP=$(port); UP_TG=$(port); TG=$(port); TG_ADMIN=$(port)
KEY='Authorization: Bearer tg_bench_key_0001'

# 1. The bytes, from Tollgate itself: a one-shot backend writes down the head it receives and
# answers like the nginx upstream; the answer's head as the client gets it comes from curl.
python3 - "$CAPTURE" "$work/backend_head" <<'PY' & pids+=($!)
import socket, sys
server = socket.create_server(("127.0.0.1", int(sys.argv[1])))
open(sys.argv[2] + ".listening", "w").close()
conn, _ = server.accept()
head = b""
while b"\r\n\r\n" not in head:
    chunk = conn.recv(4096)
    if not chunk:
        break
    head += chunk
open(sys.argv[2], "wb").write(head.split(b"\r\n\r\n")[0])
conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok")
conn.close()
PY
for _ in $(seq 1 100); do [[ -e $work/backend_head.listening ]] && break; sleep 0.1; done
bench_manifests "$work/manifests" "$CAPTURE" 'rateLimits: [{name: per-second, requests: 100000000, window: 1s}]'
"$bin" --manifests "$work/manifests" --listen "127.0.0.1:$TG" --admin-listen "127.0.0.1:$TG_ADMIN" \
    --state-dir "$work/state" >/dev/null 2>"$work/tollgate.log" & tollgate=$!; pids+=($tollgate)
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$TG_ADMIN/readyz" >/dev/null && break; sleep 0.1; done
# Without curl's User-Agent and Accept: wrk sends neither.
curl -sS -f -D "$work/answer_head" -o /dev/null -H 'User-Agent:' -H 'Accept:' -H "$KEY" "http://127.0.0.1:$TG/" ||
    { echo "client_cost: no answer through tollgate-proxy; its log:" >&2; cat "$work/tollgate.log" >&2; exit 1; }
kill "$tollgate"

# Request headers Tollgate sends the backend, less Host (wrk sends its own), as wrk -H arguments.
tollgate_request=()
while IFS= read -r line || [[ -n $line ]]; do
    [[ ${line,,} == host:* ]] || tollgate_request+=(-H "$line")
done < <(tail -n +2 "$work/backend_head" | tr -d '\r')
# The RateLimit lines of Tollgate's answer, as nginx add_header directives.
ratelimit_lines=$(tr -d '\r' <"$work/answer_head" | awk -F': ' 'tolower($1) ~ /^ratelimit/ {printf "add_header %s %c%s%c;\n", $1, 39, $2, 39}')
[[ -n $ratelimit_lines && ${#tollgate_request[@]} -gt 0 ]] ||
    { echo "client_cost: could not read Tollgate's headers from $work" >&2; exit 1; }
echo "Tollgate sends the backend: ${tollgate_request[*]}"
echo "Tollgate adds to answers:"; echo "$ratelimit_lines"

# 2. The upstream twice over: its plain answer, and the answer with Tollgate's RateLimit lines.
nginx_conf upstream "server { listen 127.0.0.1:$UP; location / { return 200 'ok'; } }
    server { listen 127.0.0.1:$UP_TG; location / { $ratelimit_lines return 200 'ok'; } }"
taskset -c 0 nginx -c "$work/upstream.conf" & pids+=($!)
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$UP_TG/" >/dev/null && break; sleep 0.1; done

rps() { taskset -c 0 wrk -t1 -c"$CONNECTIONS" -d"$DURATION" "$@" | awk '/Requests\/sec/ {print $2}'; }
as_nginx() { rps -H "$KEY" "http://127.0.0.1:$UP/"; }
as_tollgate() { rps "${tollgate_request[@]}" "http://127.0.0.1:$UP_TG/"; }
as_nginx >/dev/null; as_tollgate >/dev/null # warm-up
ratios=()
for round in $(seq 1 "$ROUNDS"); do
    # Alternate which variant goes first, so a slow spell does not always hit the same one.
    if (( round % 2 )); then a=$(as_nginx); b=$(as_tollgate); else b=$(as_tollgate); a=$(as_nginx); fi
    ratios+=("$(awk -v a="$a" -v b="$b" 'BEGIN {printf "%.3f", b/a}')")
    echo "round $round  as-nginx $a  as-tollgate $b req/s  ratio ${ratios[-1]}"
done
echo "as-tollgate/as-nginx, wrk and the upstream on CPU 0 (wrk -t1 -c$CONNECTIONS, $ROUNDS x $DURATION, $(date -u +%F)):"
echo "  $(printf '%s\n' "${ratios[@]}" | median_summary)"
