#!/usr/bin/env bash
# Runs the tests that need pods (tests/e2e/node.rs) against a cluster they did not start, the way
# they run against kind or k3d with TOLLGATE_TEST_KUBECONFIG and TOLLGATE_TEST_IMAGE_LOAD: here a
# node started on its own by `testenv --node` (tests/src/bin/testenv.rs), reached only through
# kubectl port-forwards and loaded only through the image-load command. The node and everything in
# it stop when this script ends.
#
#   tests/on-existing-cluster.sh [-- CARGO TEST ARGS]
#
# Against your own cluster, skip this script:
#   TOLLGATE_TEST_KUBECONFIG=~/.kube/config TOLLGATE_TEST_IMAGE_LOAD='kind load image-archive --name NAME' \
#     cargo test -p tollgate-tests --test node
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[[ ${1:-} == -- ]] && shift

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tollgate/cargo-target}"
if [[ -z "${TOLLGATE_TESTENV_BIN:-}" ]]; then
    TOLLGATE_TESTENV_BIN="$(tests/testenv/provision.sh)"
    export TOLLGATE_TESTENV_BIN
fi
cargo build --quiet --locked -p tollgate-tests --bin testenv

work=$(mktemp -d -t tollgate-existing-cluster-XXXXXX)
testenv_pid=
stop() {
    if [[ -n $testenv_pid ]]; then
        kill -TERM "$testenv_pid" 2>/dev/null || true
        wait "$testenv_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap stop EXIT
"$CARGO_TARGET_DIR/debug/testenv" --node --exit-with $$ >"$work/out" 2>"$work/err" &
testenv_pid=$!

# The node is ready within a minute or two (most of it building the images); bounded at 10.
for _ in $(seq 1 600); do
    grep -qx ready "$work/out" && break
    if ! kill -0 "$testenv_pid" 2>/dev/null; then
        echo "testenv --node stopped before it was ready:" >&2
        tail -40 "$work/err" >&2
        exit 1
    fi
    sleep 1
done
grep -qx ready "$work/out" || { echo "testenv --node not ready in 10 minutes" >&2; tail -40 "$work/err" >&2; exit 1; }

TOLLGATE_TEST_KUBECONFIG=$(sed -n 's/^kubeconfig=//p' "$work/out")
TOLLGATE_TEST_IMAGE_LOAD=$(sed -n 's/^image-load=//p' "$work/out")
export TOLLGATE_TEST_KUBECONFIG TOLLGATE_TEST_IMAGE_LOAD
cargo test --locked -p tollgate-tests --test node "$@"
