#!/usr/bin/env bash
# Operator benchmark: compile time and wire sizes at 10,000 tenants / 1,000 routes, and the time
# from `kubectl apply` to enforcement at every proxy (real kube-apiserver, operator, 2 proxies).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
TOLLGATE_TESTENV_BIN="$(tests/testenv/provision.sh)"
export TOLLGATE_TESTENV_BIN
cargo test --release -q -p tollgate-tests --test operator_bench -- --ignored --nocapture 2>&1 | grep -v '^$'
