#!/usr/bin/env bash
# Memory check: tollgate-proxy's resident memory with 10,000 tenants and 1,000 routes loaded
# (standalone mode, one worker thread), idle and after serving traffic.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
TENANTS=${TENANTS:-10000}
ROUTES=${ROUTES:-1000}
cargo build --release -q -p tollgate-proxy -p tollgate-crds
bin="${CARGO_TARGET_DIR:-target}/release"
work=$(mktemp -d)
pid=""
trap '[[ -n "$pid" ]] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT
mkdir -p "$work/manifests"
"$bin/synthetic" "$TENANTS" "$ROUTES" >"$work/manifests/world.yaml"
# shellcheck source=bench/common.sh
source bench/common.sh
LISTEN=$(port); ADMIN=$(port)
"$bin/tollgate-proxy" --manifests "$work/manifests" --listen "127.0.0.1:$LISTEN" --admin-listen "127.0.0.1:$ADMIN" \
    --state-dir "$work/state" --worker-threads 1 >/dev/null 2>"$work/proxy.log" &
pid=$!
for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$ADMIN/readyz" >/dev/null && break; sleep 0.1; done
rss() { awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$pid/status"; }
hwm() { awk '/VmHWM/ {printf "%.1f", $2/1024}' "/proc/$pid/status"; }
echo "tenants=$TENANTS routes=$ROUTES manifests=$(du -m "$work/manifests/world.yaml" | cut -f1) MiB of YAML"
echo "loaded, idle:       RSS $(rss) MiB (peak during load $(hwm) MiB)"
# Touch every tenant once so its counters exist.
for i in $(seq 0 $((TENANTS / 100 - 1))); do
    t=$(printf "tenant-%05d" $((i * 100)))
    r=$(printf "%05d" $(((i * 100 * 3) % ROUTES)))
    curl -s -o /dev/null -H "Authorization: Bearer key-$t" "http://127.0.0.1:$LISTEN/api/$r/x" || true
done
echo "after traffic:      RSS $(rss) MiB"
