// Package kubetest adapts a client-go clientset (the fake one, in unit
// tests) to kube.Interface. Only tests import it, so the clientset and its
// every-group scheme stay out of the nodecreds binary.
package kubetest

import (
	"k8s.io/client-go/kubernetes"

	"github.com/nodecreds/nodecreds/internal/kube"
)

// FromClientset returns cs as a kube.Interface.
func FromClientset(cs kubernetes.Interface) kube.Interface { return clientset{cs} }

type clientset struct{ cs kubernetes.Interface }

func (c clientset) Secrets(ns string) kube.SecretInterface { return c.cs.CoreV1().Secrets(ns) }
func (c clientset) Nodes() kube.NodeInterface              { return c.cs.CoreV1().Nodes() }
func (c clientset) Events(ns string) kube.EventInterface   { return c.cs.CoreV1().Events(ns) }
func (c clientset) DaemonSets(ns string) kube.DaemonSetInterface {
	return c.cs.AppsV1().DaemonSets(ns)
}

// IsWatchListSemanticsUnSupported passes on what the clientset says (the
// fake one cannot stream a watch's initial list), so reflectors built over
// the adapter list first, as they would over the clientset.
func (c clientset) IsWatchListSemanticsUnSupported() bool {
	u, ok := c.cs.(interface{ IsWatchListSemanticsUnSupported() bool })
	return ok && u.IsWatchListSemanticsUnSupported()
}
