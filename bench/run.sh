#!/usr/bin/env bash
# Tollgate vs nginx at the ingress, on one machine, in one run.
#
#   direct        wrk -> nginx upstream (static 2-byte answer)
#   nginx-proxy   wrk -> nginx reverse proxy (worker_processes 1, keepalive upstream) -> upstream
#   tollgate      wrk -> tollgate-proxy (1 worker thread; API key auth, a per-second rate limit,
#                 a monthly quota, metrics and the JSON access log all on) -> upstream
#   nginx-lua     (PEERS=1) wrk -> nginx with the Lua module doing what Kong and APISIX do on
#                 nginx: the API key looked up in a shared dict, a per-second and a monthly counter
#                 incremented in another, 401/429/402 when they say so -> upstream
#   pingora       (PEERS=1) wrk -> Cloudflare's Pingora (bench/pingora-peer, built here from
#                 crates.io) doing the same: the key looked up, the two counters, 401/429/402
#                 -> upstream over keep-alive connections
#
# wrk runs pinned to CPU 0; the server under test is pinned to CPU 1 (the upstream shares CPU 0 with
# wrk in the proxy runs, the same for nginx and Tollgate). ROUNDS rounds alternate the targets (the
# two proxies swap order every round); the report gives each target's median, the ratio of the
# medians, and the median of the per-round ratios (each from two runs back to back) with a 95%
# interval that says whether the rounds show it above or below 1.0 (from 6 rounds on; 15 rounds
# gave an interval about 7% wide on this noisy machine).
#
# Besides req/s and latency, each run reports the busy time of CPU 1 per request (user, system and
# the softirq work of the packets the server sends: what the server under test costs) and CPU 0's
# idle share. When CPU 0 has no idle time left, wrk and the upstream cap both proxies at the same
# rate, and the CPU cost per request is where a cheaper proxy shows.
#
#   bench/run.sh                     # 3 rounds of 10 s, 64 connections, HTTP/1.1 keep-alive
#   ROUNDS=5 DURATION=20s bench/run.sh
#   H2=1 bench/run.sh                # also h2load over h2c against nginx (http2) and Tollgate
#   TOLLGATE_BIN=/tmp/old bench/run.sh   # another build of tollgate-proxy
#   BASELINE_BIN=/tmp/old bench/run.sh   # an A/B: that build runs too, as the target `baseline`,
#                                    # right after `tollgate` in every round (the two swap order each
#                                    # round), and each round's tollgate/baseline ratio is reported
#   TOLLGATE_ARGS=... BASELINE_ARGS=...  # more flags for either (bench/uring.sh: --io-uring)
#   PEERS=1 bench/run.sh             # also nginx-lua (needs Debian's libnginx-mod-http-lua) and
#                                    # pingora, and each round's tollgate/peer ratios
#   LAYOUT=shared bench/run.sh       # nothing pinned; each proxy runs one worker per CPU (nginx
#                                    # worker_processes, Tollgate --worker-threads), as in a pod
#                                    # without CPU pinning. The CPU columns then mean little.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
H2=${H2:-0}
LAYOUT=${LAYOUT:-pinned}
PEERS=${PEERS:-0}
[[ $PEERS == 0 || $PEERS == 1 ]] || { echo "bench: PEERS is 0 or 1, not '$PEERS'" >&2; exit 1; }
LUA_MODULES=${LUA_MODULES:-/usr/share/nginx/modules}
if [[ $PEERS == 1 && ! -f $LUA_MODULES/ngx_http_lua_module.so ]]; then
    echo "bench: PEERS=1 needs nginx's Lua module in $LUA_MODULES (apt-get install libnginx-mod-http-lua)" >&2
    exit 1
fi
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "bench: ROUNDS is a count of rounds (3), not '$ROUNDS'" >&2; exit 1; }
[[ $CONNECTIONS =~ ^[1-9][0-9]*$ ]] || { echo "bench: CONNECTIONS is a count (64), not '$CONNECTIONS'" >&2; exit 1; }
[[ $DURATION =~ ^[1-9][0-9]*s$ ]] || { echo "bench: DURATION is seconds like 10s, not '$DURATION'" >&2; exit 1; }
case "$LAYOUT" in
    pinned) workers=1 ;;
    shared) workers=$(nproc) ;;
    *) echo "bench: LAYOUT is pinned or shared, not '$LAYOUT'" >&2; exit 1 ;;
esac
# Command prefixes: pinned to CPU 0 or 1 in the pinned layout, nothing in the shared one. (Not a
# shell function: `$!` of a backgrounded function is a subshell, which the cleanup would kill
# while the server it started lives on.)
cpu0=(); cpu1=()
if [[ $LAYOUT == pinned ]]; then cpu0=(taskset -c 0); cpu1=(taskset -c 1); fi
for tool in nginx wrk taskset; do
    command -v $tool >/dev/null || { echo "bench: $tool not found (apt-get install nginx wrk util-linux)" >&2; exit 1; }
done
if [[ $(nproc) -lt 2 ]]; then echo "bench: needs 2 CPUs to pin client and server apart" >&2; exit 1; fi

# The Pingora peer: its own workspace, built where heavy builds are cached.
if [[ $PEERS == 1 ]]; then
    PINGORA_TARGET=${PINGORA_TARGET:-${XDG_CACHE_HOME:-$HOME/.cache}/tollgate/pingora-target}
    CARGO_TARGET_DIR=$PINGORA_TARGET cargo build --release -q --manifest-path bench/pingora-peer/Cargo.toml
    pingora_bin=$PINGORA_TARGET/release/pingora-peer
fi
# TOLLGATE_BIN=path: benchmark that binary (an A/B against an older build) instead of building.
if [[ -z "${TOLLGATE_BIN:-}" ]]; then cargo build --release -q -p tollgate-proxy; fi
bin="${TOLLGATE_BIN:-${CARGO_TARGET_DIR:-target}/release/tollgate-proxy}"
# shellcheck source=bench/common.sh
source bench/common.sh
bench_workspace
UP=$(port); NGX=$(port); NGX_H2=$(port); TG=$(port); TG_ADMIN=$(port); BASE=$(port); BASE_ADMIN=$(port)
LUA=$(port); PINGORA=$(port)
BASELINE_BIN=${BASELINE_BIN:-}
read -r -a tollgate_args <<<"${TOLLGATE_ARGS:-}"
read -r -a baseline_args <<<"${BASELINE_ARGS:-}"
[[ -z $BASELINE_BIN || -x $BASELINE_BIN ]] || { echo "bench: BASELINE_BIN '$BASELINE_BIN' is not an executable" >&2; exit 1; }
nginx_conf upstream "server { listen 127.0.0.1:$UP; location / { return 200 'ok'; } }"
nginx_conf proxy "server { listen 127.0.0.1:$NGX; listen 127.0.0.1:$NGX_H2 http2;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"

bench_manifests "$work/manifests" "$UP" 'rateLimits: [{name: per-second, requests: 100000000, window: 1s}]'
if [[ $PEERS == 1 ]]; then
    # The same plan as Tollgate's: one key, a per-second limit and a monthly quota far out of
    # reach, counted in shared memory; problem bodies for the refusals. The key header is not
    # passed on, as Tollgate does not pass it.
    nginx_conf lua "lua_shared_dict tollgate_keys 1m; lua_shared_dict tollgate_counts 16m;
    init_by_lua_block { ngx.shared.tollgate_keys:set('tg_bench_key_0001', 'default/bench') }
    server { listen 127.0.0.1:$LUA;
        location / {
            access_by_lua_block {
                local auth = ngx.var.http_authorization
                local key = auth and auth:match('^Bearer%s+(.+)\$') or ngx.var.http_x_api_key
                local tenant = key and ngx.shared.tollgate_keys:get(key)
                if not tenant then
                    ngx.status = 401
                    ngx.header['Content-Type'] = 'application/problem+json'
                    ngx.say('{\"status\":401,\"title\":\"Missing or unknown API key\"}')
                    return ngx.exit(401)
                end
                local counts, now = ngx.shared.tollgate_counts, ngx.time()
                if counts:incr(tenant .. ':s:' .. now, 1, 0, 2) > 100000000 then
                    return ngx.exit(429)
                end
                if counts:incr(tenant .. ':m:' .. os.date('!%Y-%m', now), 1, 0) > 1000000000000 then
                    return ngx.exit(402)
                end
            }
            proxy_pass http://backend; proxy_http_version 1.1;
            proxy_set_header Connection \"\"; proxy_set_header Authorization \"\";
        } }" "load_module $LUA_MODULES/ndk_http_module.so; load_module $LUA_MODULES/ngx_http_lua_module.so;"
    sed -i "s/^worker_processes 1;/worker_processes $workers;/" "$work/lua.conf"
fi

sed -i "s/^worker_processes 1;/worker_processes $workers;/" "$work/proxy.conf"
"${cpu0[@]}" nginx -c "$work/upstream.conf" & pids+=($!)
"${cpu1[@]}" nginx -c "$work/proxy.conf" & pids+=($!)
if [[ $PEERS == 1 ]]; then
    "${cpu1[@]}" nginx -c "$work/lua.conf" & pids+=($!)
    "${cpu1[@]}" "$pingora_bin" "127.0.0.1:$PINGORA" "127.0.0.1:$UP" "$workers" tg_bench_key_0001 \
        >"$work/pingora.log" 2>&1 & pids+=($!)
fi
"${cpu1[@]}" "$bin" --manifests "$work/manifests" --listen "127.0.0.1:$TG" \
    --admin-listen "127.0.0.1:$TG_ADMIN" --state-dir "$work/state" --worker-threads "$workers" \
    "${tollgate_args[@]}" >/dev/null 2>"$work/tollgate.log" & pids+=($!)
if [[ -n $BASELINE_BIN ]]; then
    "${cpu1[@]}" "$BASELINE_BIN" --manifests "$work/manifests" --listen "127.0.0.1:$BASE" \
        --admin-listen "127.0.0.1:$BASE_ADMIN" --state-dir "$work/baseline-state" --worker-threads "$workers" \
        "${baseline_args[@]}" >/dev/null 2>"$work/baseline.log" & pids+=($!)
fi
for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$TG_ADMIN/readyz" >/dev/null && curl -sf "http://127.0.0.1:$NGX/" >/dev/null \
        && { [[ -z $BASELINE_BIN ]] || curl -sf "http://127.0.0.1:$BASE_ADMIN/readyz" >/dev/null; } \
        && { [[ $PEERS == 0 ]] || { curl -sf -H 'Authorization: Bearer tg_bench_key_0001' "http://127.0.0.1:$LUA/" >/dev/null \
            && curl -sf -H 'Authorization: Bearer tg_bench_key_0001' "http://127.0.0.1:$PINGORA/" >/dev/null; }; } && break
    sleep 0.1
done

KEY='Authorization: Bearer tg_bench_key_0001'
# The peers do the work they stand for: no key, no answer from the upstream.
if [[ $PEERS == 1 ]]; then
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$LUA/")
    [[ $code == 401 ]] || { echo "bench: nginx-lua answered $code without a key, not 401 ($work/lua.error.log)" >&2; exit 1; }
    code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Authorization: Bearer wrong' "http://127.0.0.1:$PINGORA/")
    [[ $code == 401 ]] || { echo "bench: pingora answered $code to an unknown key, not 401 ($work/pingora.log)" >&2; exit 1; }
fi
# wrk --latency prints "99%  1.23ms"; normalise to microseconds.
to_us() { awk '{v=$1; if (v ~ /us$/) {sub(/us/,"",v); print v} else if (v ~ /ms$/) {sub(/ms/,"",v); print v*1000} else if (v ~ /s$/) {sub(/s/,"",v); print v*1000000}}'; }
# cpu_ticks N: CPU N's busy and idle clock ticks so far (/proc/stat; steal, time the hypervisor
# gave to others, counts as neither).
cpu_ticks() { awk -v c="cpu$1" '$1==c {print $2+$3+$4+$7+$8, $5+$6}' /proc/stat; }
run_wrk() { # target url -> "rps p50_us p99_us non2xx server_core_us_per_req client_core_idle_pct"
    local out before0 before1 after0 after1
    before0=$(cpu_ticks 0); before1=$(cpu_ticks 1)
    out=$("${cpu0[@]}" wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency -H "$KEY" "$1")
    after0=$(cpu_ticks 0); after1=$(cpu_ticks 1)
    local rps p50 p99 bad requests core idle
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p50=$(awk '$1=="50%" {print $2}' <<<"$out" | to_us)
    p99=$(awk '$1=="99%" {print $2}' <<<"$out" | to_us)
    bad=$(awk '/Non-2xx/ {print $5}' <<<"$out"); bad=${bad:-0}
    requests=$(awk '/requests in/ {print $1}' <<<"$out")
    # The server under test owns CPU 1 during its run: its busy time (user, system and the
    # softirq work of the packets it sends) per request is what one proxy costs against the other.
    core=$(awk -v b="$before1" -v a="$after1" -v n="$requests" -v hz="$(getconf CLK_TCK)" \
        'BEGIN {split(b, x, " "); split(a, y, " "); printf "%.2f", (y[1]-x[1]) / hz * 1e6 / n}')
    # CPU 0 runs wrk and the upstream; when it has no idle time left, it caps every target.
    idle=$(awk -v b="$before0" -v a="$after0" \
        'BEGIN {split(b, x, " "); split(a, y, " "); t=(y[1]-x[1])+(y[2]-x[2]); printf "%.1f", t ? 100*(y[2]-x[2])/t : 0}')
    echo "$rps $p50 $p99 $bad $core $idle"
}
declare -A results
targets=(direct nginx-proxy tollgate)
[[ -n $BASELINE_BIN ]] && targets+=(baseline)
[[ $PEERS == 1 ]] && targets+=(nginx-lua pingora)
declare -A urls=([direct]="http://127.0.0.1:$UP/" [nginx-proxy]="http://127.0.0.1:$NGX/" [tollgate]="http://127.0.0.1:$TG/" [baseline]="http://127.0.0.1:$BASE/" [nginx-lua]="http://127.0.0.1:$LUA/" [pingora]="http://127.0.0.1:$PINGORA/")
# Warm-up: fill connection pools and caches.
for t in "${targets[@]}"; do "${cpu0[@]}" wrk -t1 -c"$CONNECTIONS" -d2s -H "$KEY" "${urls[$t]}" >/dev/null; done
ratios=(); cost_ratios=(); ab_ratios=(); ab_cost_ratios=(); lua_ratios=(); lua_cost_ratios=()
pingora_ratios=(); pingora_cost_ratios=()
for round in $(seq 1 "$ROUNDS"); do
    # The two proxies swap places every round, so neither always runs right after the other.
    order=(direct nginx-proxy tollgate)
    (( round % 2 == 0 )) && order=(direct tollgate nginx-proxy)
    # An A/B: the baseline build runs next to this one, before it in even rounds.
    if [[ -n $BASELINE_BIN ]]; then
        order=(direct nginx-proxy tollgate baseline)
        (( round % 2 == 0 )) && order=(direct baseline tollgate nginx-proxy)
    fi
    # The peers right before Tollgate in odd rounds (Lua, Tollgate, Pingora), right after it in
    # even ones (Pingora, Tollgate, Lua): each peer runs next to Tollgate in every round.
    if [[ $PEERS == 1 ]]; then
        rest=(); for t in "${order[@]}"; do [[ $t == tollgate ]] || rest+=("$t"); done
        if (( round % 2 )); then order=("${rest[@]}" nginx-lua tollgate pingora); else order=("${rest[@]:0:1}" pingora tollgate nginx-lua "${rest[@]:1}"); fi
    fi
    declare -A this_round=() this_cost=()
    for t in "${order[@]}"; do
        r=$(run_wrk "${urls[$t]}")
        results[$t]+="$r;"
        this_round[$t]=${r%% *}
        this_cost[$t]=$(awk '{print $5}' <<<"$r")
        echo "round $round  $t: $r  (req/s p50_us p99_us non2xx cpu1_us/req cpu0_idle%)" >&2
    done
    # Paired: the two proxies measured back to back, so a slow spell of the machine hits both.
    ratios+=("$(awk -v a="${this_round[tollgate]}" -v b="${this_round[nginx-proxy]}" 'BEGIN {printf "%.3f", a/b}')")
    cost_ratios+=("$(awk -v a="${this_cost[tollgate]}" -v b="${this_cost[nginx-proxy]}" 'BEGIN {printf "%.3f", a/b}')")
    if [[ $PEERS == 1 ]]; then
        lua_ratios+=("$(awk -v a="${this_round[tollgate]}" -v b="${this_round[nginx-lua]}" 'BEGIN {printf "%.3f", a/b}')")
        lua_cost_ratios+=("$(awk -v a="${this_cost[tollgate]}" -v b="${this_cost[nginx-lua]}" 'BEGIN {printf "%.3f", a/b}')")
        pingora_ratios+=("$(awk -v a="${this_round[tollgate]}" -v b="${this_round[pingora]}" 'BEGIN {printf "%.3f", a/b}')")
        pingora_cost_ratios+=("$(awk -v a="${this_cost[tollgate]}" -v b="${this_cost[pingora]}" 'BEGIN {printf "%.3f", a/b}')")
    fi
    if [[ -n $BASELINE_BIN ]]; then
        ab_ratios+=("$(awk -v a="${this_round[tollgate]}" -v b="${this_round[baseline]}" 'BEGIN {printf "%.3f", a/b}')")
        ab_cost_ratios+=("$(awk -v a="${this_cost[tollgate]}" -v b="${this_cost[baseline]}" 'BEGIN {printf "%.3f", a/b}')")
    fi
done

field() { tr ';' '\n' <<<"${results[$1]}" | awk -v f="$2" 'NF {print $f}' | median; }
echo
echo "HTTP/1.1 keep-alive, wrk -t1 -c$CONNECTIONS, $ROUNDS x $DURATION, medians ($(date -u +%F), $(nproc) CPUs, layout $LAYOUT, $workers proxy worker(s))"
printf "%-12s %12s %10s %10s %8s %16s %14s\n" target "req/s" "p50 ms" "p99 ms" non2xx "server us/req" "client idle %"
for t in "${targets[@]}"; do
    server_cost=$(field "$t" 5); client_idle=$(field "$t" 6)
    [[ $t == direct ]] && server_cost="-" # the upstream runs on CPU 0 with wrk; CPU 1 is idle
    [[ $LAYOUT == shared ]] && server_cost="-" && client_idle="-" # nobody owns a CPU
    printf "%-12s %12.0f %10.3f %10.3f %8d %16s %14s\n" "$t" "$(field "$t" 1)" "$(awk "BEGIN{print $(field "$t" 2)/1000}")" \
        "$(awk "BEGIN{print $(field "$t" 3)/1000}")" "$(field "$t" 4)" "$server_cost" "$client_idle"
done
tg=$(field tollgate 1); ng=$(field nginx-proxy 1); tg99=$(field tollgate 3); ng99=$(field nginx-proxy 3)
awk -v a="$tg" -v b="$ng" -v c="$tg99" -v d="$ng99" \
    'BEGIN {printf "ratio tollgate/nginx-proxy: throughput %.2fx, p99 %.2fx\n", a/b, c/d}'
echo "per round (tollgate/nginx-proxy, back to back): ${ratios[*]}"
echo "  $(printf '%s\n' "${ratios[@]}" | median_summary)"
if [[ $LAYOUT == pinned ]]; then
    tgc=$(field tollgate 5); ngc=$(field nginx-proxy 5)
    echo "server CPU per request: $(awk -v a="$tgc" -v b="$ngc" 'BEGIN {printf "%.2fx", a/b}') by medians; per round ${cost_ratios[*]}"
    echo "  $(printf '%s\n' "${cost_ratios[@]}" | median_summary)"
fi
if [[ $PEERS == 1 ]]; then
    echo "per round (tollgate/nginx-lua, back to back): ${lua_ratios[*]}"
    echo "  $(printf '%s\n' "${lua_ratios[@]}" | median_summary)"
    [[ $LAYOUT == pinned ]] && echo "server CPU per request vs nginx-lua per round: ${lua_cost_ratios[*]}" \
        && echo "  $(printf '%s\n' "${lua_cost_ratios[@]}" | median_summary)"
    echo "per round (tollgate/pingora, back to back): ${pingora_ratios[*]}"
    echo "  $(printf '%s\n' "${pingora_ratios[@]}" | median_summary)"
    [[ $LAYOUT == pinned ]] && echo "server CPU per request vs pingora per round: ${pingora_cost_ratios[*]}" \
        && echo "  $(printf '%s\n' "${pingora_cost_ratios[@]}" | median_summary)"
fi
if [[ -n $BASELINE_BIN ]]; then
    echo "A/B per round (tollgate/baseline $BASELINE_BIN, back to back): ${ab_ratios[*]}"
    echo "  $(printf '%s\n' "${ab_ratios[@]}" | median_summary)"
    [[ $LAYOUT == pinned ]] && echo "A/B server CPU per request per round: ${ab_cost_ratios[*]}" \
        && echo "  $(printf '%s\n' "${ab_cost_ratios[@]}" | median_summary)"
fi

if [[ "$H2" == 1 ]] && command -v h2load >/dev/null; then
    echo
    echo "HTTP/2 (h2c prior knowledge), h2load -c$CONNECTIONS -m10, $DURATION"
    for t in nginx-proxy tollgate; do
        port=$([[ $t == tollgate ]] && echo "$TG" || echo "$NGX_H2")
        out=$("${cpu0[@]}" h2load -c"$CONNECTIONS" -m10 -D"${DURATION%s}" -H "$KEY" "http://127.0.0.1:$port/" 2>&1)
        rps=$(awk '/finished in/ {print $4}' <<<"$out")
        ok=$(awk '/status codes:/ {print $3}' <<<"$out")
        bad=$(awk '/status codes:/ {s=$5+$7+$9; print s}' <<<"$out")
        printf "%-12s %12s req/s   2xx %s  non-2xx %s\n" "$t" "$rps" "$ok" "$bad"
    done
fi
