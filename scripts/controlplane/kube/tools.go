//go:build tools

// Package kube pins the Kubernetes components the tests build from Go
// modules: go build k8s.io/kubernetes/cmd/<name> in this module.
package kube

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
