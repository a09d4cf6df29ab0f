#!/usr/bin/env bash
# tollgate-proxy's memory (standalone mode, release build, default worker threads) for a world
# of 10,000 tenants each subscribed to 5 of 1,000 routes, keys in one Secret, 10 plans: RSS once
# loaded, the peak while loading, time from start to ready, the peak while a reload replaces the
# whole world (every file changed: parsed, compiled and swapped in while the old snapshot
# serves), and RSS after traffic that touches every tenant (12,000 rotating keys, a sixth of
# them unknown). Then what each part of a world
# costs, from worlds that differ from that one in one dimension, measured in the same run: bytes
# per tenant, per subscription, per key, per route, and per active tenant.
#
#   bench/memory.sh                  # about 5 minutes
#   TRAFFIC=120s bench/memory.sh     # longer traffic (default 60s)
#   LARGE=100000 bench/memory.sh     # also a world of that many tenants (RSS, peak, time to ready)
#
# The routes' backend (127.0.0.1:9000) is not started: requests are admitted, charged and
# answered 502 (and refunded), which makes every tenant's counters as a 200 would.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
TRAFFIC=${TRAFFIC:-60s}
command -v wrk >/dev/null || { echo "bench/memory.sh needs wrk (apt-get install wrk; tests/run.sh installs it)" >&2; exit 1; }
cargo build --release -q -p tollgate-proxy -p tollgate-crds
bin="${CARGO_TARGET_DIR:-target}/release"
# shellcheck source=bench/common.sh
source bench/common.sh
bench_workspace

# wrk's script: every tenant's key in turn, and 2,000 unknown keys.
cat >"$work/active.lua" <<'LUA'
local i = 0
request = function()
  i = (i + 1) % 12000
  local path, key
  if i < 10000 then
    key = string.format("key-tenant-%05d", i)
    path = string.format("/api/%05d/x", (i * 3) % 1000)
  else
    key = string.format("unknown-%05d", i)
    path = "/api/00000/x"
  end
  return wrk.format("GET", path, {["Authorization"] = "Bearer " .. key})
end
LUA

kib() { awk -v field="$2" '$1 == field":" {print $2}' "/proc/$1/status"; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }

# measure NAME [--traffic] SYNTHETIC-ARGS...: sets loaded[NAME], peak[NAME], ready_ms[NAME] (and
# with --traffic: reload_peak[NAME], reload_ms[NAME], active[NAME]), in KiB and ms.
declare -A loaded peak ready_ms active reload_peak reload_ms
measure() {
    local name=$1 traffic=false
    shift
    if [[ ${1:-} == --traffic ]]; then traffic=true; shift; fi
    mkdir -p "$work/$name"
    # 20,000 documents a file: a file may hold at most 32 MiB (MAX_MANIFEST_BYTES).
    "$bin/synthetic" "$@" | awk -v dir="$work/$name" '/^---$/ {n++} {print > (dir "/world-" sprintf("%03d", int(n / 20000)) ".yaml")}'

    local listen admin started pid
    listen=$(port); admin=$(port)
    started=$(date +%s%N)
    "$bin/tollgate-proxy" --manifests "$work/$name" --listen "127.0.0.1:$listen" \
        --admin-listen "127.0.0.1:$admin" --state-dir "$work/$name-state" --access-log=false \
        >/dev/null 2>"$work/$name.log" &
    pid=$!
    pids+=("$pid")
    for _ in $(seq 1 6000); do
        curl -sf "http://127.0.0.1:$admin/readyz" >/dev/null && break
        kill -0 "$pid" 2>/dev/null || { echo "proxy for $name exited:" >&2; tail -5 "$work/$name.log" >&2; exit 1; }
        sleep 0.1
    done
    curl -sf "http://127.0.0.1:$admin/readyz" >/dev/null || { echo "proxy for $name not ready in 10 minutes" >&2; exit 1; }
    ready_ms[$name]=$((($(date +%s%N) - started) / 1000000))
    loaded[$name]=$(kib "$pid" VmRSS)
    peak[$name]=$(kib "$pid" VmHWM)
    if $traffic; then
        # A reload of the whole world: the peak counted from here (writing 5 to clear_refs
        # resets VmHWM), every file changed, one tenant more so that the snapshot is new.
        local version before_reload
        version=$(curl -sf "http://127.0.0.1:$admin/metrics" | awk '$1 == "tollgate_proxy_config_version" {print $2}')
        echo 5 >"/proc/$pid/clear_refs"
        before_reload=$(date +%s%N)
        for f in "$work/$name"/*.yaml; do echo "# reloaded" >>"$f"; done
        printf -- '---\napiVersion: v1\nkind: Secret\nmetadata: {name: one-more}\nstringData: {apiKey: key-one-more}\n---\napiVersion: tollgate.dev/v1alpha1\nkind: Tenant\nmetadata: {name: one-more}\nspec: {quotaPolicyRef: {name: plan-0}, apiKeys: [{secretRef: {name: one-more}}]}\n' >>"$work/$name/world-000.yaml"
        for _ in $(seq 1 6000); do
            [[ $(curl -sf "http://127.0.0.1:$admin/metrics" | awk '$1 == "tollgate_proxy_config_version" {print $2}') != "$version" ]] && break
            sleep 0.05
        done
        reload_ms[$name]=$((($(date +%s%N) - before_reload) / 1000000))
        reload_peak[$name]=$(kib "$pid" VmHWM)
        wrk -t1 -c8 -d"$TRAFFIC" -s "$work/active.lua" "http://127.0.0.1:$listen" >"$work/$name.wrk" 2>&1
        active[$name]=$(kib "$pid" VmRSS)
        echo "$name: $(awk '/requests in/ {print $1}' "$work/$name.wrk") requests in $TRAFFIC" >&2
    fi
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    # Not killed again at exit: the number may be another process's by then.
    local kept=() other
    for other in "${pids[@]}"; do [[ $other == "$pid" ]] || kept+=("$other"); done
    pids=("${kept[@]}")
}

base=(10000 1000 default --subscriptions 5 --one-secret)
measure reference --traffic "${base[@]}"
measure tenants 20000 1000 default --subscriptions 5 --one-secret
measure subscriptions 10000 1000 default --subscriptions 10 --one-secret
measure keys 10000 1000 default --subscriptions 5 --keys 2 --one-secret
measure routes 10000 5000 default --subscriptions 5 --one-secret
if [[ -n ${LARGE:-} ]]; then
    measure large "$LARGE" 1000 default --subscriptions 5 --one-secret
fi

echo "world: 10,000 tenants x 5 of 1,000 routes, keys in one Secret, 10 plans ($(cat "$work"/reference/*.yaml | wc -c | awk '{printf "%.1f", $1 / 1e6}') MB of YAML)"
echo "  loaded, idle:                $(mib "${loaded[reference]}") MiB (peak while loading $(mib "${peak[reference]}") MiB, ready in ${ready_ms[reference]} ms)"
echo "  peak while reloading the whole world: $(mib "${reload_peak[reference]}") MiB (new snapshot applied in ${reload_ms[reference]} ms, the 1 s polling included)"
echo "  after $TRAFFIC touching every tenant: $(mib "${active[reference]}") MiB"
for name in tenants subscriptions keys routes ${LARGE:+large}; do
    printf '  %-13s loaded %6s MiB, peak %6s MiB, ready in %s ms\n' "$name" "$(mib "${loaded[$name]}")" "$(mib "${peak[$name]}")" "${ready_ms[$name]}"
done
# Bytes per unit: the RSS difference over the count difference.
per() { awk -v a="$1" -v b="$2" -v n="$3" 'BEGIN {printf "%.0f", (a - b) * 1024 / n}'; }
subscription=$(per "${loaded[subscriptions]}" "${loaded[reference]}" 50000)
key=$(per "${loaded[keys]}" "${loaded[reference]}" 10000)
tenant_whole=$(per "${loaded[tenants]}" "${loaded[reference]}" 10000)
echo "bytes per:"
echo "  tenant (its 5 subscriptions and key included): $tenant_whole"
echo "  tenant (alone):    $((tenant_whole - 5 * subscription - key))"
echo "  subscription:      $subscription"
echo "  key:               $key"
echo "  route:             $(per "${loaded[routes]}" "${loaded[reference]}" 4000)"
echo "  active tenant:     $(per "${active[reference]}" "${loaded[reference]}" 10000)"
