package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/bombsimon/logrusr/v4"
	"github.com/sirupsen/logrus"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/nodecreds/nodecreds/internal/check"
	"github.com/nodecreds/nodecreds/internal/kube"
)

// kubeTarget is kubectl's --kubeconfig and --context: the kubeconfig file
// a command reads, and which of its contexts (cluster and user) it uses.
type kubeTarget struct {
	Kubeconfig string
	Context    string
}

// newClient builds a client from the kubeconfig target or, for the agent
// without one, the Pod's ServiceAccount (inCluster); for a person's command
// the usual $KUBECONFIG / ~/.kube/config rules apply, as in kubectl.
func newClient(target kubeTarget, inCluster bool) (kube.Interface, error) {
	cfg, err := restConfig(target, inCluster)
	if err != nil {
		return nil, err
	}
	client, err := kube.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("creating Kubernetes client: %w", err)
	}
	return client, nil
}

// restConfig is newClient's configuration. A kubeconfig file given is the
// only one read (kubectl's --kubeconfig); a context given is used instead
// of the file's current one.
func restConfig(target kubeTarget, inCluster bool) (*rest.Config, error) {
	var (
		cfg *rest.Config
		err error
	)
	if inCluster && target == (kubeTarget{}) {
		cfg, err = rest.InClusterConfig()
	} else {
		rules := clientcmd.NewDefaultClientConfigLoadingRules()
		rules.ExplicitPath = target.Kubeconfig
		overrides := &clientcmd.ConfigOverrides{CurrentContext: target.Context}
		cfg, err = clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, overrides).ClientConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("loading Kubernetes client configuration: %w", err)
	}
	cfg.UserAgent = "nodecreds/" + version
	return cfg, nil
}

// serviceAccountAPI is check --service-account's client: the caller's
// kubeconfig, the three calls it makes over client-go's REST client with a
// scheme of core/v1 and authorization/v1 only (the typed clientset would
// register every API group at start, as internal/kube explains).
type serviceAccountAPI struct {
	core, authz rest.Interface
}

func newServiceAccountAPI(target kubeTarget) (check.ServiceAccountAPI, error) {
	cfg, err := restConfig(target, false)
	if err != nil {
		return nil, err
	}
	scheme := runtime.NewScheme()
	if err := errors.Join(corev1.AddToScheme(scheme), authorizationv1.AddToScheme(scheme)); err != nil {
		return nil, fmt.Errorf("building the client's scheme: %w", err)
	}
	codecs := serializer.NewCodecFactory(scheme)
	core, err := kube.RESTClient(cfg, codecs, "/api", corev1.SchemeGroupVersion)
	if err != nil {
		return nil, fmt.Errorf("creating the core/v1 client: %w", err)
	}
	authz, err := kube.RESTClient(cfg, codecs, "/apis", authorizationv1.SchemeGroupVersion)
	if err != nil {
		return nil, fmt.Errorf("creating the authorization/v1 client: %w", err)
	}
	return serviceAccountAPI{core: core, authz: authz}, nil
}

func (a serviceAccountAPI) GetServiceAccount(ctx context.Context, namespace, name string) (*corev1.ServiceAccount, error) {
	out := &corev1.ServiceAccount{}
	return out, a.core.Get().Namespace(namespace).Resource("serviceaccounts").Name(name).Do(ctx).Into(out)
}

func (a serviceAccountAPI) GetSecret(ctx context.Context, namespace, name string) (*corev1.Secret, error) {
	out := &corev1.Secret{}
	return out, a.core.Get().Namespace(namespace).Resource("secrets").Name(name).Do(ctx).Into(out)
}

func (a serviceAccountAPI) CreateSubjectAccessReview(ctx context.Context, sar *authorizationv1.SubjectAccessReview) (*authorizationv1.SubjectAccessReview, error) {
	out := &authorizationv1.SubjectAccessReview{}
	return out, a.authz.Post().Resource("subjectaccessreviews").Body(sar).Do(ctx).Into(out)
}

// routeKlog sends client-go's klog output through our logger, so there is
// one log stream in one format.
func routeKlog(log *logrus.Logger) {
	klog.SetLogger(logrusr.New(log.WithField("component", "client-go")))
}
