#!/usr/bin/env bash
# Tollgate's whole test suite, from a fresh machine: installs what the tests need (Debian packages,
# the Kubernetes control plane built from Go modules, cached outside the checkout), then runs the
# format and lint gates and every test. `.ci/run` calls this.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { echo "== $*" >&2; }

# Debian packages: real Redis, nginx and wrk for tests and benchmarks, Prometheus and promtool, curl,
# libfaketime (a proxy clock at a period boundary), iproute2 (an address of a test's own network
# namespace), openssl (a TLS client that stops half-way through a request), containerd and runc
# (the offline images imported and run, and the test node's runtime), binutils (strip), python3
# (the image builder; with python3-venv, the provider SDKs the LLM tests use), and for the test
# node: the CNI plugins, iptables and conntrack (kube-proxy), socat (the API server's port on the
# host) and gcc with a static libc (pause).
need_pkgs=()
for pair in curl:curl redis-server:redis-server redis-cli:redis-tools nginx:nginx wrk:wrk promtool:prometheus h2load:nghttp2-client faketime:faketime ip:iproute2 openssl:openssl containerd:containerd runc:runc strip:binutils python3:python3 iptables:iptables conntrack:conntrack socat:socat gcc:gcc; do
    command -v "${pair%%:*}" >/dev/null || need_pkgs+=("${pair#*:}")
done
[[ -x /usr/lib/cni/bridge ]] || need_pkgs+=(containernetworking-plugins)
[[ -f /usr/lib/x86_64-linux-gnu/libc.a ]] || need_pkgs+=(libc6-dev)
# A virtual environment for the official provider SDKs (tollgate_tests::python).
python3 -c 'import ensurepip' >/dev/null 2>&1 || need_pkgs+=(python3-venv)
if ((${#need_pkgs[@]})); then
    log "installing ${need_pkgs[*]}"
    if [[ $(id -u) -eq 0 ]]; then SUDO=(); else SUDO=(sudo); fi
    "${SUDO[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi
# Debian starts these as services on install; the tests start their own on free ports.
for svc in nginx redis-server prometheus; do
    (command -v systemctl >/dev/null && systemctl stop "$svc") >/dev/null 2>&1 || true
done

if [[ -z "${TOLLGATE_TEST_KUBECONFIG:-}" ]]; then
    log "provisioning the Kubernetes binaries, etcd, CoreDNS, helm and pause"
    TOLLGATE_TESTENV_BIN="$(tests/testenv/provision.sh)"
    export TOLLGATE_TESTENV_BIN
fi

# Build artifacts live outside the checkout so that CI's fresh clones reuse them.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tollgate/cargo-target}"

# That cache grows with every build (incremental state, test binaries of earlier commits) and once
# filled the machine's shared disk. Past TOLLGATE_CACHE_LIMIT_GB (default 20), drop what a build
# recreates cheaply: incremental state and superseded test binaries.
prune_cargo_cache() {
    local limit_gb=${TOLLGATE_CACHE_LIMIT_GB:-20} size_kb deps
    [[ -d "$CARGO_TARGET_DIR" ]] || return 0
    size_kb=$(du -sk "$CARGO_TARGET_DIR" | cut -f1)
    ((size_kb > limit_gb * 1024 * 1024)) || return 0
    log "cargo cache holds $((size_kb / 1024 / 1024)) GiB (limit ${limit_gb}): dropping incremental state and superseded test binaries"
    rm -rf "$CARGO_TARGET_DIR"/*/incremental
    for deps in "$CARGO_TARGET_DIR"/*/deps; do
        # Test executables are NAME-HASH; keep the newest two of each NAME (a crate's library and
        # binary unit tests share it).
        find "$deps" -maxdepth 1 -type f -executable -regextype posix-extended \
            -regex '.*/[A-Za-z0-9_]+-[0-9a-f]{16}' -printf '%T@ %f\n' |
            sort -rn |
            awk '{ name = $2; sub(/-[0-9a-f]+$/, "", name); if (seen[name]++ >= 2) print $2 }' |
            while read -r old; do rm -f "$deps/$old"; done
    done
}
prune_cargo_cache

# The workspace's own crates embed their checkout's path (env!("CARGO_MANIFEST_DIR") in tests that
# read repository files), and cargo keeps them when the same cache serves another checkout whose
# files are older: tests then read another checkout's files, or none (seen: CI's checkout and a
# developer's sharing the cache). Built from another path last: only those crates are rebuilt.
forget_other_checkouts() {
    local marker="$CARGO_TARGET_DIR/.tollgate-checkout" here last crate
    here=$(pwd -P)
    last=$(cat "$marker" 2>/dev/null || true)
    [[ "$last" == "$here" ]] && return 0
    if [[ -d "$CARGO_TARGET_DIR/debug" ]]; then
        log "the cargo cache was last built from ${last:-another checkout}: rebuilding this workspace's crates"
        for crate in $(cargo metadata --no-deps --format-version 1 --locked |
            python3 -c 'import json, sys; print(" ".join(p["name"] for p in json.load(sys.stdin)["packages"]))'); do
            cargo clean --quiet --locked -p "$crate"
        done
    fi
    mkdir -p "$CARGO_TARGET_DIR"
    printf '%s\n' "$here" >"$marker"
}
forget_other_checkouts

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo clippy -p tollgate-proxy --features io-uring --all-targets --locked -- -D warnings
log "cargo test"
cargo test --workspace --locked "$@"
# The experimental io_uring listener (bench/uring.sh measures it) under the tests of the client
# side; the test support checks that it is the listener serving.
if [[ $(cat /proc/sys/kernel/io_uring_disabled 2>/dev/null || echo 0) == 0 ]]; then
    log "cargo test: the client side on the io_uring listener"
    TOLLGATE_IO_URING=true cargo test -p tollgate-proxy --features io-uring --locked \
        --test server_http1 --test http_contract --test connection_limits --test websocket \
        --test backend_http1 "$@"
else
    log "io_uring is disabled on this kernel (kernel.io_uring_disabled): its listener's tests skipped"
fi

# The same crates' tests again with the clock moved to the dates that break date-bound tests (a
# month's end, a DST change, a leap day, a new year). TOLLGATE_TEST_DATES='DATE;DATE' picks others.
if [[ -n ${TOLLGATE_TEST_DATES:-} ]]; then
    IFS=';' read -ra moved <<<"$TOLLGATE_TEST_DATES"
else
    moved=()
fi
log "cargo test at moved dates ${moved[*]:-(the defaults of tests/at-dates.sh)}"
tests/at-dates.sh "${moved[@]}" -- "$@"

# The tests that run pods, once more against a cluster they did not start (as on kind or k3d):
# reached only through port-forwards, with images loaded by a command.
if [[ -z "${TOLLGATE_TEST_KUBECONFIG:-}" ]]; then
    log "the node tests against an existing cluster"
    tests/on-existing-cluster.sh -- "$@"
fi

# The last test binary's control plane stops within seconds of it; wait so that nothing outlives
# the suite.
for _ in $(seq 1 40); do
    pgrep -f "tollgate-testenv-" >/dev/null || break
    sleep 0.5
done
