package main

import (
	"fmt"

	"github.com/bombsimon/logrusr/v4"
	"github.com/sirupsen/logrus"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/nodecreds/nodecreds/internal/kube"
)

// newClient builds a client from an explicit kubeconfig or, for the
// agent, the Pod's ServiceAccount (inCluster); for a person's command the
// usual $KUBECONFIG / ~/.kube/config rules apply.
func newClient(kubeconfig string, inCluster bool) (kube.Interface, error) {
	var (
		cfg *rest.Config
		err error
	)
	switch {
	case kubeconfig != "":
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	case inCluster:
		cfg, err = rest.InClusterConfig()
	default:
		rules := clientcmd.NewDefaultClientConfigLoadingRules()
		cfg, err = clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("loading Kubernetes client configuration: %w", err)
	}
	cfg.UserAgent = "nodecreds/" + version
	client, err := kube.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("creating Kubernetes client: %w", err)
	}
	return client, nil
}

// routeKlog sends client-go's klog output through our logger, so there is
// one log stream in one format.
func routeKlog(log *logrus.Logger) {
	klog.SetLogger(logrusr.New(log.WithField("component", "client-go")))
}
