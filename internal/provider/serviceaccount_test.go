package provider

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/rest"
	k8stesting "k8s.io/client-go/testing"
	credv1 "k8s.io/kubelet/pkg/apis/credentialprovider/v1"

	"github.com/nodecreds/nodecreds/internal/kube/kubetest"
	"github.com/nodecreds/nodecreds/internal/pullsecret"
	"github.com/nodecreds/nodecreds/internal/testsupport"
)

// signToken makes a token shaped as the API server's bound ServiceAccount
// tokens, with claims as given, signed with alg.
func signToken(t *testing.T, alg jose.SignatureAlgorithm, claims any) string {
	t.Helper()
	var key any
	switch alg {
	case jose.RS256:
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			t.Fatal(err)
		}
		key = k
	case jose.ES256, jose.ES384:
		curve := elliptic.P256()
		if alg == jose.ES384 {
			curve = elliptic.P384()
		}
		k, err := ecdsa.GenerateKey(curve, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		key = k
	case jose.HS256:
		key = []byte("0123456789abcdef0123456789abcdef")
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.Signed(s).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func podToken(t *testing.T, namespace string) string {
	return signToken(t, jose.RS256, map[string]any{
		"aud": []string{"https://kubernetes.default.svc.cluster.local"},
		"sub": "system:serviceaccount:" + namespace + ":app",
		"kubernetes.io": map[string]any{
			"namespace":      namespace,
			"serviceaccount": map[string]string{"name": "app", "uid": "u1"},
			"pod":            map[string]string{"name": "p", "uid": "u2"},
		},
	})
}

func saRequest(image, token string, annotations map[string]string) string {
	b, _ := json.Marshal(credv1.CredentialProviderRequest{
		TypeMeta:                  metav1.TypeMeta{APIVersion: APIVersion, Kind: "CredentialProviderRequest"},
		Image:                     image,
		ServiceAccountToken:       token,
		ServiceAccountAnnotations: annotations,
	})
	return string(b)
}

func pullSecret(ns, name, registry, userpass string) *corev1.Secret {
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Type:       corev1.SecretTypeDockerConfigJson,
		Data:       map[string][]byte{corev1.DockerConfigJsonKey: []byte(`{"auths":{"` + registry + `":{"auth":"` + testsupport.B64(userpass) + `"}}}`)},
	}
}

// fakeSecrets is a fake API whose Secret GETs can fail as the API server's
// do; it records the namespaces asked and the client configuration.
type fakeSecrets struct {
	objects []runtime.Object
	fail    map[string]error // Secret name → error of its GET
	mu      sync.Mutex
	asked   []string // namespace/name of each GET
	cfg     *rest.Config
}

func (f *fakeSecrets) client(cfg *rest.Config) (pullsecret.SecretGetter, error) {
	f.cfg = cfg
	cs := fake.NewClientset(f.objects...)
	cs.PrependReactor("get", "secrets", func(a k8stesting.Action) (bool, runtime.Object, error) {
		g := a.(k8stesting.GetAction)
		f.mu.Lock()
		f.asked = append(f.asked, g.GetNamespace()+"/"+g.GetName())
		f.mu.Unlock()
		if err, ok := f.fail[g.GetName()]; ok {
			return true, nil, err
		}
		return false, nil, nil
	})
	return secretGetter{kubetest.FromClientset(cs)}, nil
}

// writeCA writes a node's CA file under root and returns the options that
// use it.
func saOptions(t *testing.T, root string, f *fakeSecrets) ServiceAccountOptions {
	t.Helper()
	testsupport.WriteFile(t, filepath.Join(root, "etc/kubernetes/pki/ca.crt"), "CA PEM", 0o644)
	if err := os.MkdirAll(filepath.Join(root, "var/lib/nodecreds"), 0o700); err != nil {
		t.Fatal(err)
	}
	return ServiceAccountOptions{
		HostRoot: root, APIServer: "https://10.0.0.1:6443", CAFile: "/etc/kubernetes/pki/ca.crt",
		Timeout: 10 * time.Second, CacheDuration: 10 * time.Second, StateDir: "/var/lib/nodecreds", NewSecrets: f.client,
	}
}

// TestServeServiceAccount: each Reason the mode can end with, the answer
// on stdout only when Answered, the token, passwords and auth strings in
// no message, and every run counted under its Reason.
func TestServeServiceAccount(t *testing.T) {
	const reg = "reg.test:5000"
	const image = reg + "/team/app:v1"
	tokA := podToken(t, "tenant-a")
	ann := func(v string) map[string]string { return map[string]string{pullsecret.Annotation: v} }
	objects := []runtime.Object{
		pullSecret("tenant-a", "pull", reg, "tenant-a:pw-a-canary"),
		pullSecret("tenant-a", "pull-2", reg, "tenant-a2:pw-a2-canary"),
		pullSecret("tenant-a", "elsewhere", "other.test", "x:pw-x-canary"),
		pullSecret("tenant-b", "pull", reg, "tenant-b:pw-b-canary"),
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "tenant-a", Name: "opaque"}, Type: corev1.SecretTypeOpaque,
			Data: map[string][]byte{corev1.DockerConfigJsonKey: []byte(`{"auths":{}}`)}},
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "tenant-a", Name: "broken"}, Type: corev1.SecretTypeDockerConfigJson,
			Data: map[string][]byte{corev1.DockerConfigJsonKey: []byte(`{"auths":{"` + reg + `":{"auth":"%%pw-broken-canary"}}}`)}},
	}
	gr := schema.GroupResource{Resource: "secrets"}
	tests := []struct {
		name     string
		stdin    string
		fail     map[string]error
		opts     func(*ServiceAccountOptions)
		want     pullsecret.Reason
		wantUser string   // the answer's user for reg
		wantMsg  string   // in the message
		asked    []string // the GETs made, in order; nil: not checked
	}{
		{name: "answered", stdin: saRequest(image, tokA, ann("pull")), want: pullsecret.Answered, wantUser: "tenant-a", asked: []string{"tenant-a/pull"}},
		{name: "annotation order decides (first)", stdin: saRequest(image, tokA, ann("pull-2, pull")), want: pullsecret.Answered, wantUser: "tenant-a2", asked: []string{"tenant-a/pull-2"}},
		{name: "a Secret without the registry is passed over", stdin: saRequest(image, tokA, ann("elsewhere,pull")), want: pullsecret.Answered, wantUser: "tenant-a",
			asked: []string{"tenant-a/elsewhere", "tenant-a/pull"}},
		{name: "ES256 token", stdin: saRequest(image, signToken(t, jose.ES256, map[string]any{"kubernetes.io": map[string]any{"namespace": "tenant-b"}}), ann("pull")),
			want: pullsecret.Answered, wantUser: "tenant-b", asked: []string{"tenant-b/pull"}},
		{name: "ES384 token", stdin: saRequest(image, signToken(t, jose.ES384, map[string]any{"kubernetes.io": map[string]any{"namespace": "tenant-b"}}), ann("pull")),
			want: pullsecret.Answered, wantUser: "tenant-b"},
		{name: "forbidden", stdin: saRequest(image, tokA, ann("pull")), fail: map[string]error{"pull": apierrors.NewForbidden(gr, "pull", errors.New("RBAC: no"))},
			want: pullsecret.Forbidden, wantMsg: "may not get Secret tenant-a/pull"},
		{name: "token refused", stdin: saRequest(image, tokA, ann("pull")), fail: map[string]error{"pull": apierrors.NewUnauthorized("Unauthorized")},
			want: pullsecret.BadToken, wantMsg: "did not accept the Pod's token"},
		{name: "server error", stdin: saRequest(image, tokA, ann("pull")), fail: map[string]error{"pull": apierrors.NewInternalError(errors.New("etcd down"))},
			want: pullsecret.APIError, wantMsg: "getting Secret tenant-a/pull"},
		{name: "missing", stdin: saRequest(image, tokA, ann("gone")), want: pullsecret.NotFound, wantMsg: "Secret tenant-a/gone not found"},
		{name: "missing before one that answers", stdin: saRequest(image, tokA, ann("gone,pull")), want: pullsecret.NotFound, asked: []string{"tenant-a/gone"}},
		{name: "wrong type", stdin: saRequest(image, tokA, ann("opaque")), want: pullsecret.Malformed, wantMsg: "kubernetes.io/dockerconfigjson"},
		{name: "malformed", stdin: saRequest(image, tokA, ann("broken")), want: pullsecret.Malformed, wantMsg: "tenant-a/broken"},
		{name: "no entry", stdin: saRequest(image, tokA, ann("elsewhere")), want: pullsecret.NoEntry, wantMsg: "no entry for " + image},
		{name: "no annotation", stdin: saRequest(image, tokA, nil), want: pullsecret.NoAnnotation, wantMsg: "requiredServiceAccountAnnotationKeys"},
		{name: "empty annotation", stdin: saRequest(image, tokA, ann(" , ")), want: pullsecret.BadAnnotation},
		{name: "annotation not names", stdin: saRequest(image, tokA, ann("a/b")), want: pullsecret.BadAnnotation, asked: []string{}},
		{name: "no token", stdin: saRequest(image, "", ann("pull")), want: pullsecret.BadToken, wantMsg: "serviceAccountTokenAudience"},
		{name: "not a JWT", stdin: saRequest(image, "pw-token-canary", ann("pull")), want: pullsecret.BadToken, wantMsg: "not a JWT"},
		{name: "JWT of two parts", stdin: saRequest(image, strings.Join(strings.Split(tokA, ".")[:2], "."), ann("pull")), want: pullsecret.BadToken},
		{name: "HS256 token", stdin: saRequest(image, signToken(t, jose.HS256, map[string]any{"kubernetes.io": map[string]any{"namespace": "tenant-a"}}), ann("pull")),
			want: pullsecret.BadToken, wantMsg: "RS256"},
		{name: "no kubernetes.io claim", stdin: saRequest(image, signToken(t, jose.RS256, map[string]any{"sub": "x"}), ann("pull")), want: pullsecret.BadToken, wantMsg: "no kubernetes.io namespace"},
		{name: "a namespace that is no name", stdin: saRequest(image, signToken(t, jose.RS256, map[string]any{"kubernetes.io": map[string]any{"namespace": "../tenant-b"}}), ann("pull")),
			want: pullsecret.BadToken, asked: []string{}},
		{name: "claims not JSON", stdin: saRequest(image, strings.Split(tokA, ".")[0]+".bm90IGpzb24."+strings.Split(tokA, ".")[2], ann("pull")), want: pullsecret.BadToken},
		{name: "not JSON", stdin: "hello", want: pullsecret.BadRequest, wantMsg: "invalid CredentialProviderRequest"},
		{name: "no image", stdin: saRequest("", tokA, ann("pull")), want: pullsecret.BadRequest, wantMsg: "no image"},
		{name: "image not a reference", stdin: saRequest("Reg.Test/UPPER", tokA, ann("pull")), want: pullsecret.BadRequest},
		{name: "unreadable CA", stdin: saRequest(image, tokA, ann("pull")), opts: func(o *ServiceAccountOptions) { o.CAFile = "/etc/kubernetes/pki/none.crt" },
			want: pullsecret.APIError, wantMsg: "/etc/kubernetes/pki/none.crt"},
		{name: "kubeconfig missing", stdin: saRequest(image, tokA, ann("pull")), opts: func(o *ServiceAccountOptions) { o.APIServer, o.KubeletKubeconfig = "", "/etc/kubernetes/kubelet.conf" },
			want: pullsecret.APIError, wantMsg: "/etc/kubernetes/kubelet.conf"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &fakeSecrets{objects: objects, fail: tt.fail}
			o := saOptions(t, t.TempDir(), f)
			if tt.opts != nil {
				tt.opts(&o)
			}
			var out bytes.Buffer
			err := ServeServiceAccount(t.Context(), strings.NewReader(tt.stdin), &out, o)
			if got := pullsecret.ReasonOf(err); got != tt.want {
				t.Fatalf("reason %s (%v), want %s", got, err, tt.want)
			}
			if err != nil {
				if !strings.Contains(err.Error(), tt.wantMsg) || !strings.HasPrefix(err.Error(), string(tt.want)+": ") {
					t.Errorf("message %q, want %s: …%s…", err, tt.want, tt.wantMsg)
				}
				if out.Len() != 0 {
					t.Errorf("a failure wrote an answer: %q", out.String())
				}
			}
			var msg string
			if err != nil {
				msg = err.Error()
			}
			for _, s := range []string{"pw-a-canary", "pw-a2-canary", "pw-b-canary", "pw-x-canary", "pw-broken-canary", "pw-token-canary", tokA,
				testsupport.B64("tenant-a:pw-a-canary"), strings.Split(tokA, ".")[2]} {
				if strings.Contains(msg, s) {
					t.Errorf("the message holds a secret (%.12s…): %s", s, msg)
				}
			}
			if tt.asked != nil && strings.Join(f.asked, " ") != strings.Join(tt.asked, " ") {
				t.Errorf("GETs %v, want %v", f.asked, tt.asked)
			}
			if tt.want == pullsecret.Answered {
				var resp credv1.CredentialProviderResponse
				dec := json.NewDecoder(&out)
				dec.DisallowUnknownFields()
				if err := dec.Decode(&resp); err != nil {
					t.Fatal(err)
				}
				if resp.Kind != "CredentialProviderResponse" || resp.CacheKeyType != credv1.RegistryPluginCacheKeyType || resp.CacheDuration.Duration != 10*time.Second {
					t.Errorf("answer %+v", resp)
				}
				if len(resp.Auth) != 1 || resp.Auth[reg].Username != tt.wantUser {
					t.Errorf("answer's auth users %v, want %s for %s", users(resp), tt.wantUser, reg)
				}
			}
			counts, ok := ReadAnswers(o.HostRoot, o.StateDir)
			if !ok || counts[tt.want] != 1 {
				t.Errorf("counters %v (%v), want 1 %s", counts, ok, tt.want)
			}
		})
	}
}

func users(resp credv1.CredentialProviderResponse) map[string]string {
	u := map[string]string{}
	for k, a := range resp.Auth {
		u[k] = a.Username
	}
	return u
}

// TestServiceAccountClientConfig: the client has the API server and CA of
// the flags or of the kubelet's kubeconfig (flags first), the Pod's token,
// the run's timeout, and nothing of the kubelet's credentials, whatever
// the kubeconfig's user holds.
func TestServiceAccountClientConfig(t *testing.T) {
	const userPart = `
users:
- name: kubelet
  user:
    client-certificate-data: Y2VydC1jYW5hcnk=
    client-key-data: a2V5LWNhbmFyeQ==
    client-certificate: /var/lib/kubelet/pki/kubelet-client-current.pem
    client-key: /var/lib/kubelet/pki/kubelet-client-current.pem
    token: kubelet-token-canary
    username: kubelet
    password: kubelet-password-canary
`
	kubeconfig := func(cluster string) string {
		return `apiVersion: v1
kind: Config
current-context: kubelet@kubernetes
contexts:
- name: kubelet@kubernetes
  context: {cluster: kubernetes, user: kubelet}
- name: other
  context: {cluster: other, user: kubelet}
clusters:
- name: other
  cluster: {server: "https://other.test:6443", certificate-authority-data: T1RIRVI=}
- name: kubernetes
  cluster:
` + cluster + userPart
	}
	tests := []struct {
		name       string
		kubeconfig string // "" for none
		opts       ServiceAccountOptions
		wantHost   string
		wantCA     string
		wantErr    string
	}{
		{name: "flags", opts: ServiceAccountOptions{APIServer: "https://10.0.0.1:6443", CAFile: "/etc/kubernetes/pki/ca.crt"}, wantHost: "https://10.0.0.1:6443", wantCA: "FILE CA"},
		{name: "kubeadm kubelet.conf, CA embedded", kubeconfig: kubeconfig("    server: https://cp.test:6443\n    certificate-authority-data: RU1CRURERUQgQ0E=\n"),
			opts: ServiceAccountOptions{KubeletKubeconfig: "/etc/kubernetes/kubelet.conf"}, wantHost: "https://cp.test:6443", wantCA: "EMBEDDED CA"},
		{name: "CA file relative to the kubeconfig", kubeconfig: kubeconfig("    server: https://cp.test:6443\n    certificate-authority: pki/ca.crt\n"),
			opts: ServiceAccountOptions{KubeletKubeconfig: "/etc/kubernetes/kubelet.conf"}, wantHost: "https://cp.test:6443", wantCA: "FILE CA"},
		{name: "CA file absolute", kubeconfig: kubeconfig("    server: https://cp.test:6443\n    certificate-authority: /etc/kubernetes/pki/ca.crt\n"),
			opts: ServiceAccountOptions{KubeletKubeconfig: "/etc/kubernetes/kubelet.conf"}, wantHost: "https://cp.test:6443", wantCA: "FILE CA"},
		{name: "flags override the kubeconfig", kubeconfig: kubeconfig("    server: https://cp.test:6443\n    certificate-authority-data: RU1CRURERUQgQ0E=\n"),
			opts: ServiceAccountOptions{KubeletKubeconfig: "/etc/kubernetes/kubelet.conf", APIServer: "https://lb.test", CAFile: "/etc/kubernetes/pki/ca.crt"}, wantHost: "https://lb.test", wantCA: "FILE CA"},
		{name: "server from the flag, CA from the kubeconfig", kubeconfig: kubeconfig("    server: https://cp.test:6443\n    certificate-authority-data: RU1CRURERUQgQ0E=\n"),
			opts: ServiceAccountOptions{KubeletKubeconfig: "/etc/kubernetes/kubelet.conf", APIServer: "https://lb.test"}, wantHost: "https://lb.test", wantCA: "EMBEDDED CA"},
		{name: "http server in the kubeconfig refused", kubeconfig: kubeconfig("    server: http://cp.test:8080\n    certificate-authority-data: RU1CRURERUQgQ0E=\n"),
			opts: ServiceAccountOptions{KubeletKubeconfig: "/etc/kubernetes/kubelet.conf"}, wantErr: "not an https:// URL"},
		{name: "no CA in the kubeconfig", kubeconfig: kubeconfig("    server: https://cp.test:6443\n    insecure-skip-tls-verify: true\n"),
			opts: ServiceAccountOptions{KubeletKubeconfig: "/etc/kubernetes/kubelet.conf"}, wantErr: "gives no CA"},
		{name: "not a kubeconfig", kubeconfig: "client-key-data: a2V5LWNhbmFyeQ==\n: : :\n",
			opts: ServiceAccountOptions{KubeletKubeconfig: "/etc/kubernetes/kubelet.conf"}, wantErr: "does not parse"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			testsupport.WriteFile(t, filepath.Join(root, "etc/kubernetes/pki/ca.crt"), "FILE CA", 0o644)
			if tt.kubeconfig != "" {
				testsupport.WriteFile(t, filepath.Join(root, "etc/kubernetes/kubelet.conf"), tt.kubeconfig, 0o600)
			}
			o := tt.opts
			o.HostRoot, o.Timeout = root, 7*time.Second
			cfg, err := o.restConfig("the-pod-token")
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want %q", err, tt.wantErr)
				}
				for _, s := range []string{"key-canary", "a2V5LWNhbmFyeQ", "kubelet-password-canary", "kubelet-token-canary"} {
					if strings.Contains(err.Error(), s) {
						t.Errorf("the error quotes the kubeconfig's credentials: %v", err)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			// The transport's pins are functions, checked by the transport
			// tests (transport_test.go); everything else is compared.
			if cfg.Proxy == nil || cfg.WrapTransport == nil {
				t.Error("the client config has no proxy or transport pin")
			}
			cfg.Proxy, cfg.WrapTransport = nil, nil
			want := rest.Config{Host: tt.wantHost, TLSClientConfig: rest.TLSClientConfig{CAData: []byte(tt.wantCA)}, BearerToken: "the-pod-token",
				Timeout: 7 * time.Second, UserAgent: UserAgent, WarningHandler: rest.NoWarnings{}}
			if got, w := fmt.Sprintf("%#v", *cfg), fmt.Sprintf("%#v", want); got != w {
				t.Errorf("client config\n%s\nwant\n%s", got, w)
			}
		})
	}
}

// TestCountAnswer: concurrent runs each add one under the lock; a missing
// state folder is not counted (and not created); a file that does not
// parse starts again from zero; ReadAnswers gives every Reason.
func TestCountAnswer(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "state"), 0o700); err != nil {
		t.Fatal(err)
	}
	if _, ok := ReadAnswers(root, "/state"); ok {
		t.Error("counters read without a file")
	}
	const n = 20
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			r := pullsecret.Answered
			if i%4 == 0 {
				r = pullsecret.Forbidden
			}
			if err := countAnswer(t.Context(), root, "/state", r); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	counts, ok := ReadAnswers(root, "/state")
	if !ok || counts[pullsecret.Answered] != 15 || counts[pullsecret.Forbidden] != 5 || len(counts) != len(pullsecret.Reasons) {
		t.Errorf("counters %v (%v), want 15 Answered, 5 SecretForbidden, every reason", counts, ok)
	}
	if fi, err := os.Stat(filepath.Join(root, "state", AnswersFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("counters file: %v %v", fi, err)
	}
	entries, _ := os.ReadDir(filepath.Join(root, "state"))
	if len(entries) != 2 {
		t.Errorf("state folder holds %v, want the counters and their lock", entries)
	}

	if err := countAnswer(t.Context(), root, "/missing", pullsecret.Answered); err != nil {
		t.Errorf("missing state folder: %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, "missing")); !os.IsNotExist(err) {
		t.Errorf("the state folder was created: %v", err)
	}

	// A run that died before its rename left a temp file: the next sweeps
	// it; a name that merely starts alike is not ours and stays.
	testsupport.WriteFile(t, filepath.Join(root, "state", "."+AnswersFile+".0123456789abcdef"), "{}", 0o600)
	testsupport.WriteFile(t, filepath.Join(root, "state", "."+AnswersFile+".backup"), "{}", 0o600)
	testsupport.WriteFile(t, filepath.Join(root, "state", AnswersFile), "not json", 0o600)
	if _, ok := ReadAnswers(root, "/state"); ok {
		t.Error("counters read from a file that does not parse")
	}
	if err := countAnswer(t.Context(), root, "/state", pullsecret.NoEntry); err != nil {
		t.Fatal(err)
	}
	if counts, ok := ReadAnswers(root, "/state"); !ok || counts[pullsecret.NoEntry] != 1 || counts[pullsecret.Answered] != 0 {
		t.Errorf("after a file that did not parse: %v %v", counts, ok)
	}
	if _, err := os.Stat(filepath.Join(root, "state", "."+AnswersFile+".0123456789abcdef")); !os.IsNotExist(err) {
		t.Errorf("a dead run's temp file stayed: %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, "state", "."+AnswersFile+".backup")); err != nil {
		t.Errorf("a file not ours was removed: %v", err)
	}
}
