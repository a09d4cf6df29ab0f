# Shared by the benchmark scripts (sourced, not run).

# A free TCP port on 127.0.0.1.
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# bench_manifests DIR UPSTREAM_PORT [PLAN_RATE_LIMITS]: one tenant (key tg_bench_key_0001) on a plan
# with a monthly quota far out of reach, an ApiRoute on / to the upstream, and the key Secret.
bench_manifests() {
    local dir=$1 upstream=$2 rate_limits=${3:-}
    mkdir -p "$dir"
    cat >"$dir/bench.yaml" <<YAML
apiVersion: tollgate.dev/v1alpha1
kind: QuotaPolicy
metadata: {name: bench}
spec:
  ${rate_limits}
  quotas: [{name: monthly-requests, metric: Requests, limit: "1000000000000", period: Month}]
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiRoute
metadata: {name: bench}
spec:
  match: {pathPrefix: /}
  backend: {url: "http://127.0.0.1:$upstream"}
---
apiVersion: v1
kind: Secret
metadata: {name: bench-key}
stringData: {apiKey: tg_bench_key_0001}
---
apiVersion: tollgate.dev/v1alpha1
kind: Tenant
metadata: {name: bench}
spec:
  quotaPolicyRef: {name: bench}
  apiKeys: [{secretRef: {name: bench-key}}]
  subscriptions: [{apiRouteRef: {name: bench}}]
YAML
}
