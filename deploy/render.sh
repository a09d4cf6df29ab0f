#!/usr/bin/env bash
# Renders deploy/tollgate.yaml from the Helm chart with default values, for `kubectl apply` users:
#   kubectl apply -f deploy/crds.yaml && kubectl create namespace tollgate-system && kubectl apply -f deploy/tollgate.yaml
# A test fails when the committed file differs from this rendering.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
helm="${HELM:-$(tests/testenv/provision.sh)/helm}"
{
    echo "# Rendered from charts/tollgate with default values by deploy/render.sh. Do not edit."
    echo "# Namespace: tollgate-system (create it first). CRDs: deploy/crds.yaml."
    "$helm" template tollgate charts/tollgate --namespace tollgate-system --skip-crds
} >deploy/tollgate.yaml
