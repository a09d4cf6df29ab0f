#!/usr/bin/env bash
# The images of tollgate-operator and tollgate-proxy as OCI archives, built offline from the
# release binaries (no registry, no base image; see build.py). Load them with
#   kind load image-archive target/images/tollgate-proxy-0.1.0.oci.tar
#   k3s ctr images import target/images/tollgate-proxy-0.1.0.oci.tar
#   ctr -n k8s.io images import target/images/tollgate-proxy-0.1.0.oci.tar
#
#   deploy/images/build.sh                 # into target/images (OUT=dir to change)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
target="${CARGO_TARGET_DIR:-target}"
out="${OUT:-target/images}"
tag="${TAG:-$(awk -F'"' '/^version = / {print $2; exit}' Cargo.toml)}"
cargo build --release --locked -q -p tollgate-proxy -p tollgate-operator
stripped=$(mktemp -d)
trap 'rm -rf "$stripped"' EXIT
for spec in "tollgate-proxy 8080 9090" "tollgate-operator 8443 9091"; do
    read -r name port1 port2 <<<"$spec"
    # Stripped: the symbols are for profiling builds, not images (deterministic, like the rest).
    strip -o "$stripped/$name" "$target/release/$name"
    deploy/images/build.py "$stripped/$name" --name "$name" --tag "$tag" --port "$port1" --port "$port2" --out "$out"
done
