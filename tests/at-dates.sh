#!/usr/bin/env bash
# Runs the tests that own Tollgate's time-sensitive behaviour (calendar periods and their resets,
# Redis key lifetimes, Retry-After and RateLimit t=, paidThrough, Deprecation/Sunset, certificate
# validity) with the clock moved to each DATE given, so that a test that only passes on the day it
# was written fails on the day it is written:
#
#   tests/at-dates.sh '2028-02-29 23:59:40' '2027-12-31 23:59:40'     # UTC
#
# With no DATE it runs the dates CI uses (below). The clock starts at DATE and runs on, for the
# test processes and everything they start (proxies, redis-server, nginx, Python backends): one
# libfaketime offset from the real clock, inherited by every child, so they all agree. A DATE a
# few seconds before a boundary makes the boundary pass while tests are in flight.
#
# Moved: every test of the crates tollgate-crds, tollgate-proxy and tollgate-operator. Not moved:
# the end-to-end tests in tests/ (crate tollgate-tests): kube-apiserver, etcd, kubectl and helm
# are Go programs, whose clock libfaketime cannot reach; and redis-server, which libfaketime
# cannot run (the proxy tests start it on the system clock, months from the proxies': the skew
# the Redis store's key lifetimes are built for).
#
# Extra arguments for `cargo test` go after `--`:  tests/at-dates.sh '2028-02-29 23:59:40' -- period
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

LIBFAKETIME=/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1

dates=()
while (($#)) && [[ $1 != -- ]]; do
    dates+=("$1")
    shift
done
[[ ${1:-} == -- ]] && shift
if ((${#dates[@]} == 0)); then
    dates=(
        '2027-04-30 23:59:40' # a month's last second (a 30-day month)
        '2027-10-31 00:59:40' # Europe/Berlin falls back at 01:00 UTC (a 25-hour day)
        '2028-02-29 23:59:40' # a leap day ends
        '2027-12-31 23:59:40' # a year ends
    )
fi

if [[ ! -e $LIBFAKETIME ]]; then
    echo "at-dates: $LIBFAKETIME not found; install Debian's faketime package (tests/run.sh does)" >&2
    exit 1
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tollgate/cargo-target}"
# Doc tests are left out: rustdoc compiles them, and the compiler (jemalloc inside) hangs under
# libfaketime. They hold no clock-bound behaviour and run in the main suite.
crates=(-p tollgate-crds -p tollgate-proxy -p tollgate-operator --lib --bins --tests)

# Every date is checked before anything is built or run.
for date in "${dates[@]}"; do
    if ! date -u -d "$date" +%s >/dev/null 2>&1; then
        echo "at-dates: '$date' is not a date (write it as 'YYYY-MM-DD HH:MM:SS', UTC)" >&2
        exit 2
    fi
done

# Built on the real clock: the compiler has no business with the moved one.
cargo test --locked "${crates[@]}" --no-run >&2

for date in "${dates[@]}"; do
    offset=$(($(date -u -d "$date" +%s) - $(date +%s)))
    echo "== tests at $date UTC (clock offset ${offset}s)" >&2
    # FAKETIME_DONT_FAKE_MONOTONIC: timers and timeouts keep the real monotonic clock (an offset
    # there would make it negative, and it has no date to move).
    LD_PRELOAD=$LIBFAKETIME FAKETIME="$(printf '%+d' "$offset")" FAKETIME_DONT_FAKE_MONOTONIC=1 \
        cargo test --locked "${crates[@]}" "$@"
done
