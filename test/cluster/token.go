package cluster

import (
	"context"
	"fmt"
	"path/filepath"

	authv1 "k8s.io/api/authentication/v1"
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
