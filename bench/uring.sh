#!/usr/bin/env bash
# io_uring against epoll: the same build of tollgate-proxy (with the experimental `io-uring`
# feature) twice in one run of bench/run.sh, once with --io-uring (the target `tollgate`) and
# once without (the target `baseline`), beside nginx. Every check on in both (API key, rate
# limit, monthly quota, metrics, JSON access log); bodiless HTTP/1.1 GETs over keep-alive.
# The line to read is "A/B per round (tollgate/baseline ...)": io_uring over epoll, in
# throughput and in the server core's CPU time per request.
#
#   bench/uring.sh                        # pinned: one worker thread on CPU 1, wrk on CPU 0
#   ROUNDS=6 DURATION=8s bench/uring.sh
#   LAYOUT=shared bench/uring.sh          # one io_uring thread per CPU, nothing pinned
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release -q -p tollgate-proxy --features io-uring
# A copy: a later build without the feature replaces the binary at the usual path.
cache=${XDG_CACHE_HOME:-$HOME/.cache}/tollgate/uring
mkdir -p "$cache"
cp "${CARGO_TARGET_DIR:-target}/release/tollgate-proxy" "$cache/tollgate-proxy"
"$cache/tollgate-proxy" --help | grep -q -- '--io-uring' \
    || { echo "bench: the build has no --io-uring flag" >&2; exit 1; }
echo "io_uring (target tollgate, --io-uring) against epoll (target baseline): the same binary" >&2
TOLLGATE_BIN="$cache/tollgate-proxy" BASELINE_BIN="$cache/tollgate-proxy" TOLLGATE_ARGS=--io-uring \
    exec bench/run.sh
