//go:build tools

// Package tools pins the Kubernetes binaries the Tollgate test environment builds: the control
// plane (kube-apiserver, kube-controller-manager, kube-scheduler) and a node (kubelet,
// kube-proxy). k8s.io/kubernetes cannot be `go install`ed because its go.mod replaces the k8s.io
// staging modules with ./staging paths; this module replaces them with their published v0.X.Y
// versions instead.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
