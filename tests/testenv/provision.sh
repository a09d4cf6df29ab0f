#!/usr/bin/env bash
# Builds the real Kubernetes control plane used by Tollgate's end-to-end tests, once, into a cache
# outside the checkout (keyed by version), and prints the directory that holds the binaries.
#
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy
#                   from k8s.io/kubernetes (module in tests/testenv/kube: staging modules replaced
#                   with their published versions, since k8s.io/kubernetes cannot be `go install`ed);
#                   the last four only run in the tests of a real node (tests/e2e/node.rs)
#   coredns         cluster DNS for that node, from github.com/coredns/coredns with the plugins a
#                   cluster's DNS uses (module in tests/testenv/coredns)
#   pause           the pods' sandbox image's binary, from the Kubernetes module's own pause.c
#                   (`gcc -static`; no registry to pull registry.k8s.io/pause from)
#   etcd            from go.etcd.io/etcd/server/v3 (module in tests/testenv/etcd)
#   helm            `go install helm.sh/helm/v3/cmd/helm`
#   stripe-mock     `go install github.com/stripe/stripe-mock` (Stripe's own API test server, its
#                   OpenAPI spec and fixtures embedded), for the Stripe repair tests
#
# A second run finds the binaries and returns in well under a second.
set -euo pipefail

KUBE_VERSION=v1.34.4
ETCD_VERSION=v3.6.6
HELM_VERSION=v3.19.0
STRIPE_MOCK_VERSION=v0.203.0

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${TOLLGATE_TESTENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tollgate/testenv}"
bin="$cache/k8s-$KUBE_VERSION-etcd-$ETCD_VERSION-helm-$HELM_VERSION"
mkdir -p "$bin"

log() { echo "provision: $*" >&2; }

if ! command -v go >/dev/null; then
    log "Go is required to build the control plane (https://go.dev/doc/install); not found on PATH"
    exit 1
fi

build() { # name, module dir, package, extra ldflags
    local name=$1 dir=$2 pkg=$3 ldflags=${4:-}
    if [[ -x "$bin/$name" ]]; then return; fi
    log "building $name (first run only; a few minutes on 2 cores)"
    local started=$SECONDS
    (cd "$dir" && go build -trimpath -ldflags "-s -w $ldflags" -o "$bin/$name.tmp" "$pkg")
    mv "$bin/$name.tmp" "$bin/$name"
    log "built $name in $((SECONDS - started))s"
}

minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
kube_version_flags="-X k8s.io/component-base/version.gitVersion=$KUBE_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
for name in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do
    build "$name" "$here/kube" "k8s.io/kubernetes/cmd/$name" "$kube_version_flags"
done
build etcd "$here/etcd" tollgate.dev/testenv/etcd
build coredns "$here/coredns" tollgate.dev/testenv/coredns

if [[ ! -x "$bin/pause" ]]; then
    if ! command -v gcc >/dev/null; then
        log "gcc is required to build the pause binary (apt-get install gcc libc6-dev)"
        exit 1
    fi
    pause_c="$(cd "$here/kube" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c"
    log "building pause from $pause_c"
    gcc -Os -static -Wall -Werror -DVERSION="$KUBE_VERSION" -o "$bin/pause.tmp" "$pause_c"
    strip "$bin/pause.tmp"
    mv "$bin/pause.tmp" "$bin/pause"
fi

if [[ ! -x "$bin/helm" ]]; then
    log "building helm $HELM_VERSION"
    started=$SECONDS
    GOBIN="$bin" go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
    log "built helm in $((SECONDS - started))s"
fi

if [[ ! -x "$bin/stripe-mock" ]]; then
    log "building stripe-mock $STRIPE_MOCK_VERSION"
    started=$SECONDS
    GOBIN="$bin" go install "github.com/stripe/stripe-mock@$STRIPE_MOCK_VERSION"
    log "built stripe-mock in $((SECONDS - started))s"
fi
# Its bundled fixtures: a test edits one subscription in a copy (-fixtures replaces them all).
if [[ ! -f "$bin/stripe-mock-fixtures3.json" ]]; then
    cp "$(go env GOMODCACHE)/github.com/stripe/stripe-mock@$STRIPE_MOCK_VERSION/embedded/openapi/fixtures3.json" \
        "$bin/stripe-mock-fixtures3.json.tmp"
    mv "$bin/stripe-mock-fixtures3.json.tmp" "$bin/stripe-mock-fixtures3.json"
fi

echo "$bin"
