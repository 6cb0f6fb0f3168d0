//go:build tools

// Package kubectl pins the kubectl the plugin test runs, from the same
// k8s.io/kubernetes release as the control plane (build.sh refuses the two
// modules pinning different releases). It is a module of its own so that
// kubectl's dependencies (cli-runtime, kustomize) leave the control plane's
// go.sum, and with it the cache key of its builds, unchanged.
package kubectl

import (
	_ "k8s.io/kubernetes/cmd/kubectl"
)
