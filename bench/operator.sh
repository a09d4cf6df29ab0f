#!/usr/bin/env bash
# Operator benchmark: compile time and wire sizes at 10,000 tenants / 1,000 routes, and the time
# from `kubectl apply` to enforcement at every proxy (real kube-apiserver, operator, 2 proxies).
#   SCALE=1 bench/operator.sh    # instead: an operator and a fleet proxy on 100,000 tenants
#                                # (and their key Secrets) created in the API server
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
TOLLGATE_TESTENV_BIN="$(tests/testenv/provision.sh)"
export TOLLGATE_TESTENV_BIN
# SCALE=1: only the run at 100,000 tenants in the API server (TOLLGATE_BENCH_TENANTS=N for
# another size; about 20 minutes); otherwise every other benchmark of the file.
if [[ ${SCALE:-0} == 1 ]]; then
    only=(operator_and_a_fleet_proxy_at_scale --exact)
else
    only=(--skip operator_and_a_fleet_proxy_at_scale)
fi
cargo test --release -q -p tollgate-tests --test operator_bench -- --ignored --nocapture "${only[@]}" 2>&1 | grep -v '^$'
