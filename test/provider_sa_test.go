package test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	credv1 "k8s.io/kubelet/pkg/apis/credentialprovider/v1"

	"github.com/nodecreds/nodecreds/internal/testsupport"
	"github.com/nodecreds/nodecreds/test/cluster"
)

// apiAudience is the test cluster's --api-audiences: the audience the
// kubelet's provider entry asks tokens for (tokenAttributes), so the
// plugin can present them to the API server.
const apiAudience = "https://kubernetes.default.svc.cluster.local"

// saRun is one run of the plugin in the service-account-token mode.
type saRun struct {
	stdout, stderr string
	code           int
	took           time.Duration
}

// TestProviderServiceAccount runs the real binary as the kubelet runs the
// nodecreds-sa provider entry, against a real API server with RBAC: the
// Pod's token (a TokenRequest for the API's audience, bound to a Pod) and
// its ServiceAccount's annotation on stdin; the API server's authorization
// decides what each tenant gets. The kubelet's kubeconfig on the "node"
// carries the admin token as its user: had the plugin used it, the
// forbidden and cross-namespace cases would answer.
func TestProviderServiceAccount(t *testing.T) {
	c := startCluster(t)
	ctx := t.Context()
	const reg = "reg.test:5000"
	const image = reg + "/team/app:v1"
	pw := map[string]string{ // Secret → password canary
		"pull-a": "sa-canary-a", "pull-a2": "sa-canary-a2", "no-role": "sa-canary-norole", "other-reg": "sa-canary-other",
		"pull-b": "sa-canary-b", "broken": "sa-canary-broken",
	}

	// The node: the cluster CA, the kubelet's kubeconfig (kubeadm's
	// layout), nodecreds' state folder.
	root := t.TempDir()
	testsupport.WriteFile(t, filepath.Join(root, "etc/kubernetes/pki/ca.crt"), string(testsupport.ReadFile(t, c.CAFile)), 0o644)
	kubeletConf := fmt.Sprintf(`apiVersion: v1
kind: Config
current-context: system:node:node-a@kubernetes
contexts:
- name: system:node:node-a@kubernetes
  context: {cluster: kubernetes, user: system:node:node-a}
clusters:
- name: kubernetes
  cluster: {server: %q, certificate-authority: pki/ca.crt}
users:
- name: system:node:node-a
  user:
    token: %s
    client-certificate: /var/lib/kubelet/pki/kubelet-client-current.pem
    client-key: /var/lib/kubelet/pki/kubelet-client-current.pem
`, c.URL, c.AdminToken)
	testsupport.WriteFile(t, filepath.Join(root, "etc/kubernetes/kubelet.conf"), kubeletConf, 0o600)
	if err := os.MkdirAll(filepath.Join(root, "var/lib/nodecreds"), 0o700); err != nil {
		t.Fatal(err)
	}

	// Two tenants, each with a ServiceAccount "app" granted get on the
	// Secret names it may use (one of them, "missing", does not exist).
	secrets := map[string][]*corev1.Secret{
		"tenant-a": {
			saPullSecret("pull-a", reg, "tenant-a:"+pw["pull-a"]),
			saPullSecret("pull-a2", reg, "tenant-a2:"+pw["pull-a2"]),
			saPullSecret("no-role", reg, "norole:"+pw["no-role"]),
			saPullSecret("other-reg", "other.test", "other:"+pw["other-reg"]),
			{ObjectMeta: metav1.ObjectMeta{Name: "opaque"}, Type: corev1.SecretTypeOpaque,
				Data: map[string][]byte{corev1.DockerConfigJsonKey: dockerconfigjson(t, map[string]string{reg: "opaque:sa-canary-opaque"})}},
			{ObjectMeta: metav1.ObjectMeta{Name: "broken"}, Type: corev1.SecretTypeDockerConfigJson,
				Data: map[string][]byte{corev1.DockerConfigJsonKey: []byte(`{"auths":{"` + reg + `":{"auth":"%%` + pw["broken"] + `"}}}`)}},
		},
		"tenant-b": {saPullSecret("pull-b", reg, "tenant-b:"+pw["pull-b"])},
	}
	granted := map[string][]string{
		"tenant-a": {"pull-a", "pull-a2", "other-reg", "opaque", "broken", "missing"},
		"tenant-b": {"pull-b"},
	}
	tokens := map[string]string{}
	for _, n := range []string{"tenant-a", "tenant-b"} {
		mustCreate(t, "namespace", func() error {
			_, err := c.Admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: n}}, metav1.CreateOptions{})
			return err
		})
		mustCreate(t, "ServiceAccount", func() error {
			_, err := c.Admin.CoreV1().ServiceAccounts(n).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "app"}}, metav1.CreateOptions{})
			return err
		})
		for _, s := range secrets[n] {
			mustCreate(t, "Secret", func() error { _, err := c.Admin.CoreV1().Secrets(n).Create(ctx, s, metav1.CreateOptions{}); return err })
		}
		mustCreate(t, "Role", func() error {
			_, err := c.Admin.RbacV1().Roles(n).Create(ctx, &rbacv1.Role{
				ObjectMeta: metav1.ObjectMeta{Name: "pull-secrets"},
				Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"get"}, ResourceNames: granted[n]}},
			}, metav1.CreateOptions{})
			return err
		})
		mustCreate(t, "RoleBinding", func() error {
			_, err := c.Admin.RbacV1().RoleBindings(n).Create(ctx, &rbacv1.RoleBinding{
				ObjectMeta: metav1.ObjectMeta{Name: "pull-secrets"},
				RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "pull-secrets"},
				Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "app", Namespace: n}},
			}, metav1.CreateOptions{})
			return err
		})
		tokens[n] = podToken(t, c, n)
	}
	// Tenant A's token with its claims rewritten to say tenant-b (the
	// signature no longer matches): the namespace picks the URL only, the
	// API server still judges the token.
	parts := strings.Split(tokens["tenant-a"], ".")
	claims, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	forged := parts[0] + "." + base64.RawURLEncoding.EncodeToString(bytes.ReplaceAll(claims, []byte(`"tenant-a"`), []byte(`"tenant-b"`))) + "." + parts[2]

	// The agent installs the plugin and its nodecreds-sa link, which the
	// kubelet runs (the provider entry's name); it exports the counters.
	addr := testsupport.FreeAddr(t)
	sec := newSecretDir(t, ".dockerconfigjson", dockerconfigjson(t, map[string]string{"node.example.test": "u:sa-node-canary"}))
	agent := startAgent(t, "--source", "dir", "--secret-dir", sec.dir, "--host-root", root, "--metrics-addr", addr,
		"--install-credential-provider", "/opt/nodecreds/bin")
	plugin := filepath.Join(root, "opt/nodecreds/bin/nodecreds-sa")
	testsupport.Eventually(t, 30*time.Second, "the plugin installed with its nodecreds-sa link", func() bool {
		target, err := os.Readlink(plugin)
		return err == nil && target == "nodecreds" && metricValueNoFail(addr, "nodecreds_syncs_total{result=\"success\"}") >= 1
	})
	if _, err := os.Stat(filepath.Join(root, "var/lib/nodecreds", "provider-answers.json")); !os.IsNotExist(err) {
		t.Errorf("counters before any run: %v", err)
	}
	if got := metricValueNoFail(addr, `nodecreds_workload_answers_total{reason="Answered"}`); !math.IsNaN(got) {
		t.Errorf("the metric has samples before any run: %v", got)
	}

	kubeletArgs := []string{"--kubelet-kubeconfig=/etc/kubernetes/kubelet.conf"}
	tests := []struct {
		name       string
		token      string
		annotation *string // nil: none passed
		stdin      string  // instead of the request these make
		args       []string
		want       string // Reason; "Answered" for an answer
		wantUser   string
		wantMsg    string
	}{
		{name: "tenant A answered", token: tokens["tenant-a"], annotation: ptr("pull-a"), want: "Answered", wantUser: "tenant-a"},
		{name: "tenant B answered", token: tokens["tenant-b"], annotation: ptr("pull-b"), want: "Answered", wantUser: "tenant-b"},
		{name: "server and CA from flags", token: tokens["tenant-a"], annotation: ptr("pull-a"), want: "Answered", wantUser: "tenant-a",
			args: []string{"--api-server=" + c.URL, "--api-ca-file=/etc/kubernetes/pki/ca.crt"}},
		{name: "the annotation's order decides (pull-a2 first)", token: tokens["tenant-a"], annotation: ptr("pull-a2,pull-a"), want: "Answered", wantUser: "tenant-a2"},
		{name: "the annotation's order decides (pull-a first)", token: tokens["tenant-a"], annotation: ptr("pull-a, pull-a2"), want: "Answered", wantUser: "tenant-a"},
		{name: "a Secret without the registry is passed over", token: tokens["tenant-a"], annotation: ptr("other-reg,pull-a"), want: "Answered", wantUser: "tenant-a"},
		{name: "no Role for the Secret", token: tokens["tenant-a"], annotation: ptr("no-role"), want: "SecretForbidden", wantMsg: "tenant-a/no-role"},
		{name: "missing", token: tokens["tenant-a"], annotation: ptr("missing"), want: "SecretNotFound", wantMsg: "tenant-a/missing"},
		{name: "wrong type", token: tokens["tenant-a"], annotation: ptr("opaque"), want: "SecretMalformed", wantMsg: "tenant-a/opaque"},
		{name: "malformed", token: tokens["tenant-a"], annotation: ptr("broken"), want: "SecretMalformed", wantMsg: "tenant-a/broken"},
		{name: "no entry for the registry", token: tokens["tenant-a"], annotation: ptr("other-reg"), want: "NoEntry", wantMsg: reg},
		{name: "A names B's Secret: read in A", token: tokens["tenant-a"], annotation: ptr("pull-b"), want: "SecretForbidden", wantMsg: "tenant-a/pull-b"},
		{name: "A crafts a path to B's Secret", token: tokens["tenant-a"], annotation: ptr("../../tenant-b/secrets/pull-b"), want: "InvalidAnnotation"},
		{name: "A's token claiming namespace B", token: forged, annotation: ptr("pull-b"), want: "InvalidToken", wantMsg: "tenant-b/pull-b"},
		{name: "no annotation", token: tokens["tenant-a"], want: "NoAnnotation"},
		{name: "no token", annotation: ptr("pull-a"), want: "InvalidToken"},
		{name: "not a request", stdin: `{"apiVersion":"credentialprovider.kubelet.k8s.io/v1alpha1","kind":"CredentialProviderRequest","image":"x"}`, want: "InvalidRequest", wantMsg: "v1alpha1"},
	}
	runs := map[string]int{}
	var outputs strings.Builder
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stdin := tt.stdin
			if stdin == "" {
				stdin = saRequestJSON(image, tt.token, tt.annotation)
			}
			r := runSAProvider(t, plugin, root, stdin, append(append([]string{}, kubeletArgs...), tt.args...)...)
			runs[tt.want]++
			outputs.WriteString(r.stdout + r.stderr)
			t.Logf("exit %d in %s; stderr: %s", r.code, r.took.Round(time.Millisecond), r.stderr)
			assertSARun(t, r, tt.want, tt.wantMsg)
			if tt.want == "Answered" {
				resp := decodeAnswer(t, r.stdout)
				if a, ok := resp.Auth[reg]; !ok || len(resp.Auth) != 1 || a.Username != tt.wantUser || a.Password != pw[passwordOf(tt.wantUser)] {
					t.Errorf("answer for %s: user %q (entries %d), want %s with its password", reg, a.Username, len(resp.Auth), tt.wantUser)
				}
				if resp.CacheKeyType != credv1.RegistryPluginCacheKeyType || resp.CacheDuration == nil || resp.CacheDuration.Duration != 10*time.Second {
					t.Errorf("cache: %s %v, want Registry 10s", resp.CacheKeyType, resp.CacheDuration)
				}
			}
		})
	}

	// An API server that accepts connections and never answers: the run
	// ends with APIError within --api-timeout (the process's start under
	// -race on a busy machine allowed for).
	t.Run("unreachable API server", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			var held []net.Conn
			defer func() {
				for _, c := range held {
					c.Close()
				}
			}()
			for {
				conn, err := ln.Accept()
				if err != nil {
					return
				}
				held = append(held, conn)
			}
		}()
		const timeout = 2 * time.Second
		r := runSAProvider(t, plugin, root, saRequestJSON(image, tokens["tenant-a"], ptr("pull-a")),
			"--api-server=https://"+ln.Addr().String(), "--api-ca-file=/etc/kubernetes/pki/ca.crt", "--api-timeout="+timeout.String())
		runs["APIError"]++
		outputs.WriteString(r.stdout + r.stderr)
		t.Logf("exit %d in %s; stderr: %s", r.code, r.took.Round(time.Millisecond), r.stderr)
		assertSARun(t, r, "APIError", "tenant-a/pull-a")
		if r.took > timeout+5*time.Second {
			t.Errorf("the run took %s with --api-timeout=%s", r.took, timeout)
		}
	})

	// Never a token, password or auth string in any output.
	var canaries []string
	for _, p := range pw {
		canaries = append(canaries, p)
	}
	for _, tok := range []string{tokens["tenant-a"], tokens["tenant-b"], forged} {
		canaries = append(canaries, tok, strings.Split(tok, ".")[2])
	}
	canaries = append(canaries, c.AdminToken, "sa-canary-opaque", testsupport.B64("tenant-a:"+pw["pull-a"]), testsupport.B64("tenant-b:"+pw["pull-b"]))
	// The answers carry the passwords of their own Secret: only stderr and
	// failed runs' stdout are checked against every canary.
	failures := outputs.String()
	for _, p := range []string{pw["pull-a"], pw["pull-a2"], pw["pull-b"]} {
		failures = strings.ReplaceAll(failures, `"password":"`+p+`"`, "")
	}
	assertNoSecrets(t, "the plugin's output", failures, canaries...)

	// The counters file counts each run under its Reason, and the agent
	// exports them as nodecreds_workload_answers_total.
	var counts map[string]int
	if err := json.Unmarshal(testsupport.ReadFile(t, filepath.Join(root, "var/lib/nodecreds/provider-answers.json")), &counts); err != nil {
		t.Fatal(err)
	}
	for reason, n := range runs {
		if counts[reason] != n {
			t.Errorf("counters file: %s = %d, want %d (%v)", reason, counts[reason], n, counts)
		}
	}
	testsupport.Eventually(t, 20*time.Second, "the counters in the agent's /metrics", func() bool {
		return !math.IsNaN(metricValueNoFail(addr, `nodecreds_workload_answers_total{reason="Answered"}`))
	})
	metrics := httpBody(t, "http://"+addr+"/metrics")
	for _, reason := range []string{"Answered", "NoAnnotation", "InvalidAnnotation", "InvalidToken", "SecretNotFound", "SecretForbidden", "SecretMalformed", "NoEntry", "APIError", "InvalidRequest"} {
		series := fmt.Sprintf(`nodecreds_workload_answers_total{reason=%q}`, reason)
		if got := metricValue(t, addr, series); got != float64(runs[reason]) {
			t.Errorf("%s = %v, want %d", series, got, runs[reason])
		}
	}
	if code := agent.stop(t); code != 0 {
		t.Errorf("agent exit %d after SIGTERM", code)
	}
	assertNoSecrets(t, "agent log and /metrics", agent.logs.String()+metrics, canaries...)
}

func ptr(s string) *string { return &s }

// passwordOf names the Secret whose user is user.
func passwordOf(user string) string {
	return map[string]string{"tenant-a": "pull-a", "tenant-a2": "pull-a2", "tenant-b": "pull-b"}[user]
}

func saPullSecret(name, registry, userpass string) *corev1.Secret {
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Type:       corev1.SecretTypeDockerConfigJson,
		Data:       map[string][]byte{corev1.DockerConfigJsonKey: []byte(`{"auths":{"` + registry + `":{"auth":"` + testsupport.B64(userpass) + `"}}}`)},
	}
}

func mustCreate(t *testing.T, what string, create func() error) {
	t.Helper()
	if err := create(); err != nil {
		t.Fatalf("creating a %s: %v", what, err)
	}
}

// podToken is what the kubelet hands the provider: a token of the Pod's
// ServiceAccount for the provider entry's audience, bound to the Pod (a
// placeholder Pod on a node; nothing runs it).
func podToken(t *testing.T, c *cluster.Cluster, namespace string) string {
	t.Helper()
	pod, err := c.Admin.CoreV1().Pods(namespace).Create(t.Context(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "app"},
		Spec: corev1.PodSpec{NodeName: "node-a", ServiceAccountName: "app",
			Containers: []corev1.Container{{Name: "app", Image: "reg.test:5000/team/app:v1"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating a Pod in %s: %v", namespace, err)
	}
	expiry := int64(3600)
	tr, err := c.Admin.CoreV1().ServiceAccounts(namespace).CreateToken(t.Context(), "app", &authv1.TokenRequest{
		Spec: authv1.TokenRequestSpec{
			Audiences:         []string{apiAudience},
			ExpirationSeconds: &expiry,
			BoundObjectRef:    &authv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("requesting a token for %s/app: %v", namespace, err)
	}
	return tr.Status.Token
}

func saRequestJSON(image, token string, annotation *string) string {
	req := credv1.CredentialProviderRequest{
		TypeMeta:            metav1.TypeMeta{APIVersion: "credentialprovider.kubelet.k8s.io/v1", Kind: "CredentialProviderRequest"},
		Image:               image,
		ServiceAccountToken: token,
	}
	if annotation != nil {
		req.ServiceAccountAnnotations = map[string]string{"nodecreds.io/pull-secret": *annotation}
	}
	b, _ := json.Marshal(req)
	return string(b)
}

// runSAProvider runs `nodecreds-sa credential-provider --service-account`
// as the kubelet does: the request on stdin, the node under --host-root.
func runSAProvider(t *testing.T, plugin, root, stdin string, args ...string) saRun {
	t.Helper()
	cmd := exec.Command(plugin, append([]string{"credential-provider", "--service-account", "--host-root", root}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	_ = cmd.Run()
	return saRun{stdout: out.String(), stderr: errb.String(), code: cmd.ProcessState.ExitCode(), took: time.Since(start)}
}

// assertSARun checks the kubelet's view of a run: an answer is exit 0,
// one JSON document on stdout and nothing on stderr; a failure is exit 1,
// nothing on stdout, and one line `nodecreds-sa: <Reason>: <message>`.
func assertSARun(t *testing.T, r saRun, want, wantMsg string) {
	t.Helper()
	if want == "Answered" {
		if r.code != 0 || r.stderr != "" {
			t.Errorf("exit %d, stderr %q; want an answer", r.code, r.stderr)
		}
		return
	}
	if r.code != 1 || r.stdout != "" {
		t.Errorf("exit %d, stdout %q; want 1 and nothing on stdout", r.code, redactPasswords(r.stdout))
	}
	prefix := "nodecreds-sa: " + want + ": "
	if !strings.HasPrefix(r.stderr, prefix) || !strings.Contains(r.stderr, wantMsg) || strings.Count(r.stderr, "\n") != 1 || !strings.HasSuffix(r.stderr, "\n") {
		t.Errorf("stderr %q, want one line %q…%s…", r.stderr, prefix, wantMsg)
	}
}

func decodeAnswer(t *testing.T, stdout string) credv1.CredentialProviderResponse {
	t.Helper()
	var resp credv1.CredentialProviderResponse
	dec := json.NewDecoder(strings.NewReader(stdout))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&resp); err != nil {
		t.Fatalf("the answer is not a CredentialProviderResponse: %v", err)
	}
	if resp.APIVersion != "credentialprovider.kubelet.k8s.io/v1" || resp.Kind != "CredentialProviderResponse" {
		t.Errorf("answer %s %s", resp.APIVersion, resp.Kind)
	}
	return resp
}

// metricValueNoFail is metricValue for a poll: NaN while the agent does
// not answer yet.
func metricValueNoFail(addr, series string) float64 {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return math.NaN()
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return math.NaN()
	}
	for line := range strings.SplitSeq(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			var f float64
			if _, err := fmt.Sscan(v, &f); err == nil {
				return f
			}
		}
	}
	return math.NaN()
}
