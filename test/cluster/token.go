package cluster

import (
	"context"
	"fmt"
	"path/filepath"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// ServiceAccountKubeconfig mints a bound token for namespace/name through
// the TokenRequest API (as the kubelet does for a Pod) and writes a
// kubeconfig that uses it. It returns the path and a client with it.
func (c *Cluster) ServiceAccountKubeconfig(ctx context.Context, namespace, name string) (string, *kubernetes.Clientset, error) {
	expiry := int64(3600)
	tr, err := c.Admin.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name, &authv1.TokenRequest{
		Spec: authv1.TokenRequestSpec{ExpirationSeconds: &expiry},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", nil, fmt.Errorf("requesting a token for %s/%s: %w", namespace, name, err)
	}
	path := filepath.Join(c.Dir, fmt.Sprintf("sa-%s-%s.kubeconfig", namespace, name))
	if err := WriteKubeconfig(path, c.URL, c.CAFile, tr.Status.Token); err != nil {
		return "", nil, err
	}
	client, err := kubernetes.NewForConfig(&rest.Config{Host: c.URL, BearerToken: tr.Status.Token, TLSClientConfig: rest.TLSClientConfig{CAFile: c.CAFile}})
	if err != nil {
		return "", nil, err
	}
	return path, client, nil
}

// AgentKubeconfig is what the kubelet gives a DaemonSet Pod of ServiceAccount
// namespace/name on node: a token bound to a Pod on that node, so the API
// server puts the node's name in the token's user (extra
// authentication.kubernetes.io/node-name), which nodecreds' admission policy
// requires of an agent that changes a Node. The Pod is a placeholder
// created here with spec.nodeName set (nothing runs it); its lifetime is
// the token's validity. It returns the kubeconfig's path, a client with the
// token, and the Pod.
func (c *Cluster) AgentKubeconfig(ctx context.Context, namespace, name, node string) (string, *kubernetes.Clientset, *corev1.Pod, error) {
	pod, err := c.AgentPod(ctx, namespace, name, node)
	if err != nil {
		return "", nil, nil, err
	}
	path, client, err := c.PodTokenKubeconfig(ctx, pod)
	return path, client, pod, err
}

// PodTokenKubeconfig requests, as the kubelet does for a Pod, a token of the
// Pod's ServiceAccount bound to the Pod, and writes a kubeconfig with it.
func (c *Cluster) PodTokenKubeconfig(ctx context.Context, pod *corev1.Pod) (string, *kubernetes.Clientset, error) {
	token, err := c.PodToken(ctx, pod)
	if err != nil {
		return "", nil, err
	}
	path := filepath.Join(c.Dir, fmt.Sprintf("pod-%s-%s.kubeconfig", pod.Namespace, pod.Name))
	if err := WriteKubeconfig(path, c.URL, c.CAFile, token); err != nil {
		return "", nil, err
	}
	client, err := kubernetes.NewForConfig(&rest.Config{Host: c.URL, BearerToken: token, TLSClientConfig: rest.TLSClientConfig{CAFile: c.CAFile}})
	if err != nil {
		return "", nil, err
	}
	return path, client, nil
}

// PodToken requests, as the kubelet does for a Pod, a token of the Pod's
// ServiceAccount bound to the Pod (valid for an hour).
func (c *Cluster) PodToken(ctx context.Context, pod *corev1.Pod) (string, error) {
	expiry := int64(3600)
	tr, err := c.Admin.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, pod.Spec.ServiceAccountName, &authv1.TokenRequest{
		Spec: authv1.TokenRequestSpec{
			ExpirationSeconds: &expiry,
			BoundObjectRef:    &authv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("requesting a token for Pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return tr.Status.Token, nil
}

// AgentPod creates what AgentKubeconfig's token is bound to: a placeholder
// Pod of ServiceAccount namespace/name on node.
func (c *Cluster) AgentPod(ctx context.Context, namespace, name, node string) (*corev1.Pod, error) {
	pod, err := c.Admin.CoreV1().Pods(namespace).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: name + "-", Namespace: namespace},
		Spec: corev1.PodSpec{
			NodeName:           node,
			ServiceAccountName: name,
			Containers:         []corev1.Container{{Name: "agent", Image: "nodecreds.invalid/placeholder"}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("creating a Pod of %s/%s on %s: %w", namespace, name, node, err)
	}
	return pod, nil
}
