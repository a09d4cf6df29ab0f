# Shared by the benchmark scripts (sourced, not run).

# bench_workspace: a temporary directory in $work, and $pids (background processes) killed and
# the directory removed when the script exits.
bench_workspace() {
    work=$(mktemp -d)
    pids=()
    trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"' EXIT
}

# nginx_conf NAME BLOCK [MAIN]: $work/NAME.conf, one worker, no access log, keep-alive without a
# request limit, an upstream `backend` on 127.0.0.1:$UP, BLOCK (server blocks and the like) in
# http, and MAIN (load_module lines) at the top.
nginx_conf() {
    local user_line=""
    [[ $(id -u) -eq 0 ]] && user_line="user root;"
    cat >"$work/$1.conf" <<NGINX
${3:-}
$user_line
worker_processes 1;
daemon off;
pid $work/$1.pid;
error_log $work/$1.error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    # nginx closes keep-alive (and HTTP/2) connections after 1000 requests by default; a
    # benchmark should not measure reconnects.
    keepalive_requests 100000000;
    client_body_temp_path $work/$1-body;
    proxy_temp_path $work/$1-proxy;
    upstream backend { server 127.0.0.1:$UP; keepalive 128; keepalive_requests 100000000; }
    $2
}
NGINX
}

# median: the median of the numbers on stdin, one per line.
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

# median_summary: "median M (95% interval L-H; A of N above 1)" for the ratios on stdin, one per
# line. The interval is distribution-free (order statistics: the k-th smallest and k-th largest,
# with k the largest such that a Binomial(N, 1/2) count below k has probability at most 2.5%), so
# it says whether a median ratio of at least 1.0 is shown by the rounds or is noise; it needs
# 6 rounds or more.
median_summary() {
    sort -g | awk '{r[NR]=$1; if ($1 > 1) above++}
    END {
        n=NR; m=(n%2 ? r[(n+1)/2] : (r[n/2]+r[n/2+1])/2)
        # P(X <= j) for X ~ Binomial(n, 1/2), j = 0, 1, ...: the last k with P(X <= k-1) <= 0.025.
        k=0; c=1; p=0
        for (j=0; j<n; j++) { p+=c/(2^n); if (p > 0.025) break; k=j+1; c=c*(n-j)/(j+1) }
        if (k == 0) interval="too few rounds for a 95% interval"
        else interval=sprintf("95%% interval %s-%s", r[k], r[n-k+1])
        printf "median %s (%s; %d of %d above 1)\n", m, interval, above, n
    }'
}

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

# cpu_ns PID: the CPU time of all its threads so far, in nanoseconds (printed whole: awk's
# default format turns sums past 2^31 into 2.1e+09).
cpu_ns() { cat /proc/"$1"/task/*/schedstat | awk '{s += $1} END {printf "%.0f\n", s}'; }
