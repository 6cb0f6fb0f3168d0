// Package kube is nodecreds' Kubernetes client: the few core/v1 and apps/v1
// calls it makes, over client-go's REST client with a scheme of those two
// groups only. client-go's clientset registers every API group's types at
// start-up, which alone took an agent from about 10 to 18 MiB of resident
// memory — paid on every node — for calls it never makes.
//
// Its interfaces have the typed clientset's method signatures, so a
// clientset (the fake one in tests) fits them too (kubetest.FromClientset).
package kube

import (
	"context"
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
)

// Interface is every API call nodecreds makes.
type Interface interface {
	Secrets(namespace string) SecretInterface
	Nodes() NodeInterface
	Events(namespace string) EventInterface
	DaemonSets(namespace string) DaemonSetInterface
}

// SecretInterface reads Secrets.
type SecretInterface interface {
	Get(ctx context.Context, name string, opts metav1.GetOptions) (*corev1.Secret, error)
	List(ctx context.Context, opts metav1.ListOptions) (*corev1.SecretList, error)
	Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error)
}

// NodeInterface reads Nodes and patches the agent's own.
type NodeInterface interface {
	Get(ctx context.Context, name string, opts metav1.GetOptions) (*corev1.Node, error)
	List(ctx context.Context, opts metav1.ListOptions) (*corev1.NodeList, error)
	Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error)
	Patch(ctx context.Context, name string, pt types.PatchType, data []byte, opts metav1.PatchOptions, subresources ...string) (*corev1.Node, error)
	PatchStatus(ctx context.Context, nodeName string, data []byte) (*corev1.Node, error)
}

// EventInterface records Events.
type EventInterface interface {
	Create(ctx context.Context, event *corev1.Event, opts metav1.CreateOptions) (*corev1.Event, error)
	Update(ctx context.Context, event *corev1.Event, opts metav1.UpdateOptions) (*corev1.Event, error)
	Patch(ctx context.Context, name string, pt types.PatchType, data []byte, opts metav1.PatchOptions, subresources ...string) (*corev1.Event, error)
}

// DaemonSetInterface lists DaemonSets (`nodecreds status` finds which nodes
// an agent is meant to run on).
type DaemonSetInterface interface {
	List(ctx context.Context, opts metav1.ListOptions) (*appsv1.DaemonSetList, error)
}

// scheme knows core/v1 and apps/v1 only.
var scheme = runtime.NewScheme()

func init() {
	for _, add := range []func(*runtime.Scheme) error{corev1.AddToScheme, appsv1.AddToScheme} {
		if err := add(scheme); err != nil {
			panic(err)
		}
	}
}

// Client is Interface over the API server.
type Client struct {
	core, apps rest.Interface
}

// NewForConfig returns a Client for cfg (which it does not modify).
func NewForConfig(cfg *rest.Config) (*Client, error) {
	codecs := serializer.NewCodecFactory(scheme)
	core, err := RESTClient(cfg, codecs, "/api", corev1.SchemeGroupVersion)
	if err != nil {
		return nil, fmt.Errorf("creating the core/v1 client: %w", err)
	}
	apps, err := RESTClient(cfg, codecs, "/apis", appsv1.SchemeGroupVersion)
	if err != nil {
		return nil, fmt.Errorf("creating the apps/v1 client: %w", err)
	}
	return &Client{core: core, apps: apps}, nil
}

// RESTClient is a client of one group version (under apiPath: /api or
// /apis) of cfg's server (cfg is not modified), decoding with codecs: a
// scheme of the groups a caller uses, not client-go's of every group.
func RESTClient(cfg *rest.Config, codecs serializer.CodecFactory, apiPath string, gv schema.GroupVersion) (rest.Interface, error) {
	c := rest.CopyConfig(cfg)
	c.APIPath, c.GroupVersion = apiPath, &gv
	c.NegotiatedSerializer = codecs.WithoutConversion()
	// JSON, not protobuf: protobuf decodes faster but its generated
	// code is pages that stay resident in every agent (measured: median
	// RSS 19.6 → 20.1 MiB at 100 agents, docs/benchmarks.md).
	if c.UserAgent == "" {
		c.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	return rest.RESTClientFor(c)
}

func (c *Client) Secrets(ns string) SecretInterface { return secrets{resource{c.core, ns, "secrets"}} }
func (c *Client) Nodes() NodeInterface              { return nodes{resource{c.core, "", "nodes"}} }
func (c *Client) Events(ns string) EventInterface   { return events{resource{c.core, ns, "events"}} }
func (c *Client) DaemonSets(ns string) DaemonSetInterface {
	return daemonSets{resource{c.apps, ns, "daemonsets"}}
}

// resource is one resource (in one namespace) of a group.
type resource struct {
	c         rest.Interface
	namespace string
	name      string
}

// in scopes a request to the resource (and its namespace, for namespaced
// ones: a cluster-scoped resource must not name one).
func (r resource) in(req *rest.Request) *rest.Request {
	return req.NamespaceIfScoped(r.namespace, r.namespace != "").Resource(r.name)
}

func (r resource) get(ctx context.Context, name string, opts metav1.GetOptions, into runtime.Object) error {
	return r.in(r.c.Get()).Name(name).
		VersionedParams(&opts, metav1.ParameterCodec).Do(ctx).Into(into)
}

func (r resource) list(ctx context.Context, opts metav1.ListOptions, into runtime.Object) error {
	return r.in(r.c.Get()).
		VersionedParams(&opts, metav1.ParameterCodec).Do(ctx).Into(into)
}

func (r resource) watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	opts.Watch = true
	return r.in(r.c.Get()).
		VersionedParams(&opts, metav1.ParameterCodec).Watch(ctx)
}

func (r resource) patch(ctx context.Context, name string, pt types.PatchType, data []byte, opts metav1.PatchOptions, into runtime.Object, subresources ...string) error {
	return r.in(r.c.Patch(pt)).Name(name).SubResource(subresources...).
		VersionedParams(&opts, metav1.ParameterCodec).Body(data).Do(ctx).Into(into)
}

type secrets struct{ resource }

func (s secrets) Get(ctx context.Context, name string, opts metav1.GetOptions) (*corev1.Secret, error) {
	out := &corev1.Secret{}
	return out, s.get(ctx, name, opts, out)
}

func (s secrets) List(ctx context.Context, opts metav1.ListOptions) (*corev1.SecretList, error) {
	out := &corev1.SecretList{}
	return out, s.list(ctx, opts, out)
}

func (s secrets) Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	return s.watch(ctx, opts)
}

type nodes struct{ resource }

func (n nodes) Get(ctx context.Context, name string, opts metav1.GetOptions) (*corev1.Node, error) {
	out := &corev1.Node{}
	return out, n.get(ctx, name, opts, out)
}

func (n nodes) List(ctx context.Context, opts metav1.ListOptions) (*corev1.NodeList, error) {
	out := &corev1.NodeList{}
	return out, n.list(ctx, opts, out)
}

func (n nodes) Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	return n.watch(ctx, opts)
}

func (n nodes) Patch(ctx context.Context, name string, pt types.PatchType, data []byte, opts metav1.PatchOptions, subresources ...string) (*corev1.Node, error) {
	out := &corev1.Node{}
	return out, n.patch(ctx, name, pt, data, opts, out, subresources...)
}

// PatchStatus is a strategic merge patch of the status, as the typed
// client's.
func (n nodes) PatchStatus(ctx context.Context, nodeName string, data []byte) (*corev1.Node, error) {
	out := &corev1.Node{}
	return out, n.patch(ctx, nodeName, types.StrategicMergePatchType, data, metav1.PatchOptions{}, out, "status")
}

type events struct{ resource }

func (e events) Create(ctx context.Context, ev *corev1.Event, opts metav1.CreateOptions) (*corev1.Event, error) {
	out := &corev1.Event{}
	err := e.in(e.c.Post()).
		VersionedParams(&opts, metav1.ParameterCodec).Body(ev).Do(ctx).Into(out)
	return out, err
}

func (e events) Update(ctx context.Context, ev *corev1.Event, opts metav1.UpdateOptions) (*corev1.Event, error) {
	out := &corev1.Event{}
	err := e.in(e.c.Put()).Name(ev.Name).
		VersionedParams(&opts, metav1.ParameterCodec).Body(ev).Do(ctx).Into(out)
	return out, err
}

func (e events) Patch(ctx context.Context, name string, pt types.PatchType, data []byte, opts metav1.PatchOptions, subresources ...string) (*corev1.Event, error) {
	out := &corev1.Event{}
	return out, e.patch(ctx, name, pt, data, opts, out, subresources...)
}

type daemonSets struct{ resource }

func (d daemonSets) List(ctx context.Context, opts metav1.ListOptions) (*appsv1.DaemonSetList, error) {
	out := &appsv1.DaemonSetList{}
	return out, d.list(ctx, opts, out)
}
