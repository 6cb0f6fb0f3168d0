package provider

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"path"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/nodecreds/nodecreds/internal/hostfs"
	"github.com/nodecreds/nodecreds/internal/kube"
	"github.com/nodecreds/nodecreds/internal/pullsecret"
)

// ServiceAccountOptions configures the service-account-token mode.
type ServiceAccountOptions struct {
	HostRoot string
	// APIServer (an https URL) and CAFile (a node path) say where the API
	// server is and what its certificate is verified with; either empty
	// is taken from KubeletKubeconfig (a node path), of which only the
	// current context's cluster is read, never a credential.
	APIServer         string
	CAFile            string
	KubeletKubeconfig string
	// Timeout bounds the whole run, the API requests included.
	Timeout       time.Duration
	CacheDuration time.Duration
	// StateDir is the node folder of the answer counters (AnswersFile);
	// empty or missing: not counted.
	StateDir string
	// NewSecrets makes the client that reads the Secrets; internal/kube's
	// (core/v1 only) when nil.
	NewSecrets func(*rest.Config) (pullsecret.SecretGetter, error)
}

// secretGetter is pullsecret.SecretGetter over internal/kube's client.
type secretGetter struct{ c kube.Interface }

func (g secretGetter) GetSecret(ctx context.Context, namespace, name string) (*corev1.Secret, error) {
	return g.c.Secrets(namespace).Get(ctx, name, metav1.GetOptions{})
}

// UserAgent is what the API server's audit log names this mode's requests
// by.
const UserAgent = "nodecreds-sa"

// ServeServiceAccount answers one request of the kubelet in the
// service-account-token mode: the Pod's token and its ServiceAccount's
// nodecreds.io/pull-secret annotation come with the request, and the
// answer is that of pullsecret.Resolve, reading the named Secrets of the
// token's namespace with the token itself, so the API server's RBAC
// decides what a Pod can get. A failure is a *pullsecret.Error (nothing is
// written to out); neither holds the token. Each run is counted in
// StateDir by its Reason.
func ServeServiceAccount(ctx context.Context, in io.Reader, out io.Writer, o ServiceAccountOptions) (err error) {
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	var token string
	defer func() {
		err = redact(err, token)
		_ = countAnswer(context.WithoutCancel(ctx), o.HostRoot, o.StateDir, pullsecret.ReasonOf(err))
	}()
	req, err := decodeRequest(in)
	if err != nil {
		return &pullsecret.Error{Reason: pullsecret.BadRequest, Msg: err.Error()}
	}
	token = req.ServiceAccountToken
	namespace, err := namespaceOf(token)
	if err != nil {
		return err
	}
	annotation, ok := req.ServiceAccountAnnotations[pullsecret.Annotation]
	if !ok {
		return &pullsecret.Error{Reason: pullsecret.NoAnnotation, Msg: fmt.Sprintf(
			"the Pod's ServiceAccount (namespace %s) has no %s annotation, or the kubelet does not pass it: the provider entry needs tokenAttributes.requiredServiceAccountAnnotationKeys [%s]",
			namespace, pullsecret.Annotation, pullsecret.Annotation)}
	}
	names, err := pullsecret.Names(annotation)
	if err != nil {
		return err
	}
	cfg, err := o.restConfig(token)
	if err != nil {
		return &pullsecret.Error{Reason: pullsecret.APIError, Msg: err.Error()}
	}
	newSecrets := o.NewSecrets
	if newSecrets == nil {
		newSecrets = func(cfg *rest.Config) (pullsecret.SecretGetter, error) {
			c, err := kube.NewForConfig(cfg)
			if err != nil {
				return nil, err
			}
			return secretGetter{c}, nil
		}
	}
	secrets, err := newSecrets(cfg)
	if err != nil {
		return &pullsecret.Error{Reason: pullsecret.APIError, Msg: fmt.Sprintf("creating the API client: %v", err)}
	}
	ans, err := pullsecret.Resolve(ctx, secrets, namespace, names, req.Image)
	if err != nil {
		return err
	}
	resp := newResponse(o.CacheDuration)
	addMatches(&resp, ans.Matches)
	if err := json.NewEncoder(out).Encode(resp); err != nil {
		return &pullsecret.Error{Reason: pullsecret.APIError, Msg: fmt.Sprintf("writing the answer: %v", err)}
	}
	return nil
}

// signatureAlgorithms are those a kube-apiserver signs ServiceAccount
// tokens with (pkg/serviceaccount/jwt.go: RS256 for RSA keys, ES256/384/512
// by the ECDSA key's curve).
var signatureAlgorithms = []jose.SignatureAlgorithm{jose.RS256, jose.ES256, jose.ES384, jose.ES512}

// tokenClaims is the part of a bound ServiceAccount token read here.
type tokenClaims struct {
	Kubernetes *struct {
		Namespace string `json:"namespace"`
	} `json:"kubernetes.io"`
}

// namespaceOf reads the namespace from the token's claims without
// verifying the signature: the API server verifies the token on every
// request made with it, and the namespace only picks which Secrets are
// asked for. A token of namespace A naming B would be refused reading B's
// Secrets just the same. The messages never quote the token.
func namespaceOf(token string) (string, error) {
	if token == "" {
		return "", &pullsecret.Error{Reason: pullsecret.BadToken, Msg: "the request has no serviceAccountToken: the provider entry needs tokenAttributes.serviceAccountTokenAudience"}
	}
	tok, err := jwt.ParseSigned(token, signatureAlgorithms)
	if err != nil {
		return "", &pullsecret.Error{Reason: pullsecret.BadToken, Msg: "the serviceAccountToken is not a JWT signed with " + algorithmNames()}
	}
	var c tokenClaims
	if err := tok.UnsafeClaimsWithoutVerification(&c); err != nil || c.Kubernetes == nil {
		return "", &pullsecret.Error{Reason: pullsecret.BadToken, Msg: "the serviceAccountToken's claims name no kubernetes.io namespace (not a bound ServiceAccount token)"}
	}
	if errs := validation.IsDNS1123Label(c.Kubernetes.Namespace); len(errs) > 0 {
		return "", &pullsecret.Error{Reason: pullsecret.BadToken, Msg: "the serviceAccountToken's kubernetes.io namespace is not a namespace name"}
	}
	return c.Kubernetes.Namespace, nil
}

func algorithmNames() string {
	n := make([]string, len(signatureAlgorithms))
	for i, a := range signatureAlgorithms {
		n[i] = string(a)
	}
	return strings.Join(n, ", ")
}

// redact takes the token out of an error's message. The messages here are
// made not to hold it; this is the last guard, for a message that comes
// from a library.
func redact(err error, token string) error {
	var pe *pullsecret.Error
	if err == nil || token == "" || !errors.As(err, &pe) || !strings.Contains(pe.Msg, token) {
		return err
	}
	return &pullsecret.Error{Reason: pe.Reason, Msg: strings.ReplaceAll(pe.Msg, token, "[token]")}
}

// restConfig is the client configuration: the API server and its CA, the
// Pod's token, the run's timeout, and nothing else (no credential of the
// kubelet, no insecure option, no API warnings printed on stderr, where
// the kubelet reads a failure).
func (o ServiceAccountOptions) restConfig(token string) (*rest.Config, error) {
	server, ca, err := o.cluster()
	if err != nil {
		return nil, err
	}
	o.APIServer = server
	return o.restConfigFor(token, ca)
}

// restConfigFor is restConfig for the API server o.APIServer and ca.
func (o ServiceAccountOptions) restConfigFor(token string, ca []byte) (*rest.Config, error) {
	server := o.APIServer
	u, err := url.Parse(server)
	if err != nil {
		return nil, fmt.Errorf("the API server's address does not parse")
	}
	return &rest.Config{
		Host:            server,
		TLSClientConfig: rest.TLSClientConfig{CAData: ca},
		BearerToken:     token,
		Timeout:         o.Timeout,
		UserAgent:       UserAgent,
		WarningHandler:  rest.NoWarnings{},
		// The token goes to the API server and nowhere else: not through
		// a proxy of the kubelet's environment (which the kubelet passes
		// on to plugins), not to where a redirect points (client-go
		// follows redirects and adds the token again on each hop).
		Proxy:         func(*http.Request) (*url.URL, error) { return nil, nil },
		WrapTransport: func(rt http.RoundTripper) http.RoundTripper { return pinnedHost{rt: rt, host: u.Host} },
	}, nil
}

// pinnedHost refuses any request but one over https to host, and any
// redirect: it sits under client-go's bearer-token wrapper, so a refused
// request never leaves the process, token included.
type pinnedHost struct {
	rt   http.RoundTripper
	host string
}

func (p pinnedHost) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Response != nil || req.URL.Scheme != "https" || req.URL.Host != p.host {
		return nil, pullsecret.ErrRefused
	}
	return p.rt.RoundTrip(req)
}

// cluster returns the API server's URL and the CA's PEM: from the flags,
// else from the kubelet's kubeconfig (its current context's cluster: the
// server, and the CA embedded or in a file, a node path relative to the
// kubeconfig's folder).
func (o ServiceAccountOptions) cluster() (string, []byte, error) {
	root, err := hostfs.OpenRoot(o.HostRoot)
	if err != nil {
		return "", nil, err
	}
	defer root.Close()
	server, caFile := o.APIServer, o.CAFile
	var caData []byte
	if server == "" || caFile == "" {
		c, err := kubeconfigCluster(root, o.KubeletKubeconfig)
		if err != nil {
			return "", nil, err
		}
		if server == "" {
			server = c.server
		}
		if caFile == "" {
			caFile, caData = c.caFile, c.caData
		}
	}
	if err := validateServer(server); err != nil {
		return "", nil, err
	}
	if caData == nil {
		if caData, err = readNodeFile(root, caFile); err != nil {
			return "", nil, fmt.Errorf("reading the API server's CA: %w", err)
		}
	}
	return server, caData, nil
}

// validateServer refuses anything but an https URL: the Pod's token goes
// there.
func validateServer(server string) error {
	u, err := url.Parse(server)
	switch {
	case err != nil || u.User != nil:
		// Not quoted: a user part may hold a password.
		return errors.New("the API server is not an https://HOST[:PORT] URL")
	case u.Scheme != "https" || u.Host == "":
		return fmt.Errorf("the API server %q is not an https:// URL: the Pod's token is only sent over verified TLS", server)
	}
	return nil
}

type kubeconfigClusterInfo struct {
	server string
	caFile string // node path, or "" with caData
	caData []byte
}

// kubeconfigCluster reads the current context's cluster of the kubeconfig
// at nodePath. Only the cluster is taken: the user part (the kubelet's
// client certificate and key) is never read or used. Parse errors are not
// quoted, since the file may hold a private key.
func kubeconfigCluster(root *hostfs.Root, nodePath string) (kubeconfigClusterInfo, error) {
	var c kubeconfigClusterInfo
	if nodePath == "" {
		return c, errors.New("no --kubelet-kubeconfig to take the API server or its CA from")
	}
	data, err := readNodeFile(root, nodePath)
	if err != nil {
		return c, fmt.Errorf("reading the kubelet's kubeconfig: %w", err)
	}
	cfg, err := clientcmd.Load(data)
	if err != nil {
		return c, fmt.Errorf("the kubelet's kubeconfig %s does not parse as a kubeconfig", nodePath)
	}
	kctx := cfg.Contexts[cfg.CurrentContext]
	if kctx == nil {
		return c, fmt.Errorf("the kubelet's kubeconfig %s has no current context (%q)", nodePath, cfg.CurrentContext)
	}
	cl := cfg.Clusters[kctx.Cluster]
	if cl == nil {
		return c, fmt.Errorf("the kubelet's kubeconfig %s has no cluster %q (of context %q)", nodePath, kctx.Cluster, cfg.CurrentContext)
	}
	c.server = cl.Server
	switch {
	case len(cl.CertificateAuthorityData) > 0:
		c.caData = cl.CertificateAuthorityData
	case cl.CertificateAuthority != "":
		c.caFile = cl.CertificateAuthority
		if !path.IsAbs(c.caFile) {
			c.caFile = path.Join(path.Dir(nodePath), c.caFile)
		}
	default:
		return c, fmt.Errorf("the kubelet's kubeconfig %s gives no CA for cluster %q: set --api-ca-file", nodePath, kctx.Cluster)
	}
	return c, nil
}

// readNodeFile reads a node file through the host root.
func readNodeFile(root *hostfs.Root, nodePath string) ([]byte, error) {
	d, name, err := root.OpenParent(nodePath, false, 0)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", nodePath, notExist(err))
	}
	defer d.Close()
	data, _, err := d.ReadFile(name, hostfs.MaxFileSize)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", nodePath, notExist(err))
	}
	return data, nil
}

// notExist shortens a missing file's error to the fact.
func notExist(err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return fs.ErrNotExist
	}
	return err
}
