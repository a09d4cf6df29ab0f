#!/usr/bin/env bash
# Sidecar footprint (issue #21): a sidecar's RSS with its workload's configuration next to a
# central proxy holding the whole namespace, the time from its start to ready, and the latency it
# adds on loopback against calling the app directly (real kube-apiserver and operator).
#
# The proxy and operator run as release builds; the harness (kube-apiserver set-up, the client
# that measures latency) is a dev build, the same client for the direct and the proxied requests.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
TOLLGATE_TESTENV_BIN="$(tests/testenv/provision.sh)"
export TOLLGATE_TESTENV_BIN TOLLGATE_TEST_PROFILE=release
# The same build cache as the test command (tests/run.sh), outside the checkout.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tollgate/cargo-target}"
# Exactly the build the harness asks for (tollgate_tests::workspace_binary): another package
# selection resolves other features, and the two builds then relink each other's fat-LTO
# binaries on every run (about 8 minutes each here).
cargo build --release -q --bins -p tollgate-operator -p tollgate-proxy -p tollgate-tests
cargo test -q -p tollgate-tests --test sidecar_bench -- --ignored --nocapture 2>&1 | grep -v '^$'
