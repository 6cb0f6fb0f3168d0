package main

import (
	"fmt"

	"github.com/bombsimon/logrusr/v4"
	"github.com/sirupsen/logrus"
	authorizationv1client "k8s.io/client-go/kubernetes/typed/authorization/v1"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/nodecreds/nodecreds/internal/check"
	"github.com/nodecreds/nodecreds/internal/kube"
)

// newClient builds a client from an explicit kubeconfig or, for the
// agent, the Pod's ServiceAccount (inCluster); for a person's command the
// usual $KUBECONFIG / ~/.kube/config rules apply.
func newClient(kubeconfig string, inCluster bool) (kube.Interface, error) {
	cfg, err := restConfig(kubeconfig, inCluster)
	if err != nil {
		return nil, err
	}
	client, err := kube.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("creating Kubernetes client: %w", err)
	}
	return client, nil
}

// restConfig is newClient's configuration.
func restConfig(kubeconfig string, inCluster bool) (*rest.Config, error) {
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
	return cfg, nil
}

// serviceAccountAPI is check --service-account's client: the caller's
// kubeconfig, the core and authorization groups only.
type serviceAccountAPI struct {
	*corev1client.CoreV1Client
	*authorizationv1client.AuthorizationV1Client
}

func newServiceAccountAPI(kubeconfig string) (check.ServiceAccountAPI, error) {
	cfg, err := restConfig(kubeconfig, false)
	if err != nil {
		return nil, err
	}
	core, err := corev1client.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("creating the core/v1 client: %w", err)
	}
	authz, err := authorizationv1client.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("creating the authorization/v1 client: %w", err)
	}
	return serviceAccountAPI{core, authz}, nil
}

// routeKlog sends client-go's klog output through our logger, so there is
// one log stream in one format.
func routeKlog(log *logrus.Logger) {
	klog.SetLogger(logrusr.New(log.WithField("component", "client-go")))
}
