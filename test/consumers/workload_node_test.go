//go:build nodee2e

package consumers

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/nodecreds/nodecreds/internal/testsupport"
	"github.com/nodecreds/nodecreds/test/cluster"
)

// Per-workload credentials on the real node (issue 25): the plugin's
// service-account-token mode. The kubelet is system:node:node-1 under
// Node,RBAC and NodeRestriction (test/cluster), and the tenant registry has
// two htpasswd users, logs each manifest request with the user it
// authenticated, and has no node-wide credentials at all: whatever pulls
// from it pulls with a tenant's own Secret, read with its Pod's token.
const (
	tenantAUser, tenantAPass1, tenantAPass2 = "tenant-a", "tenant-a-canary-pw-1", "tenant-a-canary-pw-2"
	tenantBUser, tenantBPass                = "tenant-b", "tenant-b-canary-pw"
	tenantSA                                = "app"
	pullSecretAnnotation                    = "nodecreds.io/pull-secret"
	tenantRoleBinding                       = "nodecreds-pull" // the tenant template's
	// nodeAudienceRBAC is the shipped node RBAC, cluster-wide, for the
	// test cluster's audience (the API server's default).
	nodeAudienceRBAC = "node-token-audience-rbac.yaml"
)

// workloadNode holds what the per-workload part of TestRealNode shares.
type workloadNode struct {
	t        *testing.T
	reg      *registryProc
	image    string // the tenants' image, only in the tenant registry
	auditLog string
	timings  []string
}

// newWorkloadNode starts the tenant registry (before the kubelet's
// credential-provider configuration, which names it), with its second user
// added as an admin adds one, pushes the image and lets containerd reach it
// over plain HTTP.
func newWorkloadNode(t *testing.T, work, ctdDir, auditLog string) *workloadNode {
	t.Helper()
	wn := &workloadNode{t: t, auditLog: auditLog}
	wn.reg = startRegistry(t, tenantAUser, tenantAPass1)
	// distribution 2.8 names the user of a successful request only at
	// debug (GetImageManifest auth.user.name=...); at info, only failures
	// carry it (measured on Debian's docker-registry).
	wn.reg.setLogLevel("debug")
	wn.reg.setPassword(tenantBUser, tenantBPass)
	wn.image = wn.reg.addr + "/tenants/app:v1"
	marker := filepath.Join(work, "tenant.marker")
	testsupport.WriteFile(t, marker, "tenant\n", 0o644)
	tar := filepath.Join(work, "tenant.tar")
	mkimage(t, tar, wn.image, "/bin/busybox,sleep,2147483647", "/bin/busybox=/bin/busybox", marker+"=/tenant")
	push(t, tar, wn.image, tenantAUser, tenantAPass1)
	host := wn.reg.addr
	testsupport.WriteFile(t, filepath.Join(ctdDir, "certs.d", host, "hosts.toml"), fmt.Sprintf("server = \"http://%s\"\n[host.\"http://%s\"]\n  capabilities = [\"pull\", \"resolve\"]\n", host, host), 0o600)
	return wn
}

// auditArgs makes the API server log, at Metadata level (who, what, which
// object; never a body), every request on Secrets and every token request,
// so the test can see whose token read which Secret.
func auditArgs(t *testing.T, dir string) ([]string, string) {
	t.Helper()
	policy := filepath.Join(dir, "audit-policy.yaml")
	log := filepath.Join(dir, "audit.log")
	testsupport.WriteFile(t, policy, `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    resources:
      - group: ""
        resources: [secrets, serviceaccounts/token]
  - level: None
`, 0o600)
	return []string{"--audit-policy-file=" + policy, "--audit-log-path=" + log, "--audit-log-format=json"}, log
}

// tenant creates namespace ns and, from the docs' tenant template
// (deploy/credential-provider/tenant-rbac.yaml, its namespace and names set
// for ns), ServiceAccount app annotated with annotation (none: no
// annotation), each Secret in secrets (name → user:pass), and, with role,
// the template's Role and RoleBinding: get on exactly those Secret names.
func (wn *workloadNode) tenant(ctx context.Context, c *cluster.Cluster, ns string, annotation string, secrets map[string]string, role bool) {
	t := wn.t
	t.Helper()
	if _, err := c.Admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	var names []any
	for name, up := range secrets {
		names = append(names, name)
		wn.setSecret(ctx, c, ns, name, up)
	}
	objs, err := cluster.ReadManifest(filepath.Join(cluster.RepoRoot(), "deploy", "credential-provider", "tenant-rbac.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var apply []*unstructured.Unstructured
	for _, o := range objs {
		o.SetNamespace(ns)
		switch o.GetKind() {
		case "ServiceAccount":
			if o.GetName() != tenantSA {
				t.Fatalf("the tenant template's ServiceAccount is %q, the test's %q", o.GetName(), tenantSA)
			}
			o.SetAnnotations(nil)
			if annotation != "" {
				o.SetAnnotations(map[string]string{pullSecretAnnotation: annotation})
			}
			apply = append(apply, o)
		case "Role":
			if role && len(names) > 0 {
				o.Object["rules"].([]any)[0].(map[string]any)["resourceNames"] = names
				apply = append(apply, o)
			}
		case "RoleBinding":
			if role && len(names) > 0 {
				o.Object["subjects"].([]any)[0].(map[string]any)["namespace"] = ns
				apply = append(apply, o)
			}
		default:
			t.Fatalf("the tenant template has a %s this test does not know", o.GetKind())
		}
	}
	if err := cluster.Apply(ctx, c.RESTConfig, apply, false); err != nil {
		t.Fatal(err)
	}
}

// setSecret creates or updates ns/name with one entry for the tenant
// registry.
func (wn *workloadNode) setSecret(ctx context.Context, c *cluster.Cluster, ns, name, userPass string) {
	t := wn.t
	t.Helper()
	data := map[string][]byte{corev1.DockerConfigJsonKey: []byte(`{"auths":{"` + wn.reg.addr + `":{"auth":"` + testsupport.B64(userPass) + `"}}}`)}
	sec, err := c.Admin.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = c.Admin.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Type: corev1.SecretTypeDockerConfigJson, Data: data,
		}, metav1.CreateOptions{})
	} else if err == nil {
		sec.Data = data
		_, err = c.Admin.CoreV1().Secrets(ns).Update(ctx, sec, metav1.UpdateOptions{})
	}
	if err != nil {
		t.Fatal(err)
	}
}

// pod creates ns/name running the tenants' image as ServiceAccount app.
func (wn *workloadNode) pod(ctx context.Context, c *cluster.Cluster, ns, name string, policy corev1.PullPolicy) {
	wn.t.Helper()
	p := podFor(name, wn.image)
	p.Namespace = ns
	p.Spec.ServiceAccountName = tenantSA
	p.Spec.Containers[0].ImagePullPolicy = policy
	if _, err := c.Admin.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
		wn.t.Fatal(err)
	}
}

// pulledAs says which registry user fetched the image's manifest in the
// registry's log after mark (its length at some earlier point).
func (wn *workloadNode) pulledAs(mark int) []string {
	log := wn.reg.logs.String()[mark:]
	users := map[string]bool{}
	var out []string
	re := regexp.MustCompile(`auth\.user\.name="?([a-z-]+)"?`)
	// HEAD or GET, by tag or by digest (logrus quotes a value with a colon).
	manifest := regexp.MustCompile(`http\.request\.uri="?/v2/tenants/app/manifests/`)
	for _, l := range strings.Split(log, "\n") {
		if !manifest.MatchString(l) {
			continue
		}
		if m := re.FindStringSubmatch(l); m != nil && !users[m[1]] {
			users[m[1]] = true
			out = append(out, m[1])
		}
	}
	return out
}

func (wn *workloadNode) expectPulledAs(mark int, user, what string) {
	wn.t.Helper()
	if got := wn.pulledAs(mark); len(got) != 1 || got[0] != user {
		wn.t.Errorf("%s: the registry's log shows the image's manifest fetched by %v, want only %s", what, got, user)
	}
}

// waitKubeletLog waits until the kubelet's log holds want after offset.
func waitKubeletLog(t *testing.T, c *cluster.Cluster, offset int, want string, within time.Duration) {
	t.Helper()
	// Every second: the whole log is read each time.
	if err := testsupport.WaitFor(t.Context(), within, time.Second, fmt.Sprintf("the kubelet's log to say %q", want), func() bool {
		return strings.Contains(kubeletLog(t, c)[offset:], want)
	}); err != nil {
		t.Fatal(err)
	}
}

// run is the per-workload scenario. It needs the kubelet running with the
// nodecreds-sa provider entry (providerConfig) and the agent's DaemonSet
// (which installed nodecreds-sa and exports the plugin's counters).
func (wn *workloadNode) run(ctx context.Context, c *cluster.Cluster, nodeRBAC string) {
	t := wn.t
	t.Helper()

	// 1. Tenant A, complete, but the nodes may not yet request tokens for
	// the API server's audience: the kubelet says so, the Pod does not pull.
	wn.tenant(ctx, c, "tenant-a", "registry", map[string]string{"registry": tenantAUser + ":" + tenantAPass1}, true)
	logAt := len(kubeletLog(t, c))
	wn.pod(ctx, c, "tenant-a", "no-node-rbac", corev1.PullAlways)
	waitPodIn(t, c.Admin, "tenant-a", "no-node-rbac", 2*time.Minute, "ErrImagePull", "ImagePullBackOff")
	waitKubeletLog(t, c, logAt, "is not authorized to request tokens for audience", 30*time.Second)
	t.Log("workload: without the node RBAC for the audience the kubelet cannot request the Pod's token, and the Pod does not pull")

	// 2. The shipped node RBAC: tenant A's Pod pulls as tenant-a.
	objs, err := cluster.ReadManifest(nodeRBAC)
	if err != nil {
		t.Fatal(err)
	}
	if err := cluster.Apply(ctx, c.RESTConfig, objs, false); err != nil {
		t.Fatal(err)
	}
	mark := len(wn.reg.logs.String())
	wn.pod(ctx, c, "tenant-a", "pod", corev1.PullAlways)
	waitPodIn(t, c.Admin, "tenant-a", "pod", 2*time.Minute, "Running")
	wn.expectPulledAs(mark, tenantAUser, "tenant A's Pod")

	// 3. Tenant B, same registry, its own user.
	wn.tenant(ctx, c, "tenant-b", "registry", map[string]string{"registry": tenantBUser + ":" + tenantBPass}, true)
	mark = len(wn.reg.logs.String())
	wn.pod(ctx, c, "tenant-b", "pod", corev1.PullAlways)
	waitPodIn(t, c.Admin, "tenant-b", "pod", 2*time.Minute, "Running")
	wn.expectPulledAs(mark, tenantBUser, "tenant B's Pod")

	// 4. Namespace C, no annotation: the image is on the node (tenant A
	// pulled it, with its ServiceAccount's credentials), yet an
	// IfNotPresent Pod of C must pull it again and cannot.
	wn.tenant(ctx, c, "tenant-c", "", nil, false)
	wn.pod(ctx, c, "tenant-c", "borrow", corev1.PullIfNotPresent)
	waitPodIn(t, c.Admin, "tenant-c", "borrow", 2*time.Minute, "ErrImagePull", "ImagePullBackOff")
	if ev := pullEventsIn(ctx, c.Admin, "tenant-c", "borrow"); !strings.Contains(ev, "Pulling: ") {
		t.Errorf("the IfNotPresent Pod of namespace C failed without a pull of the image on the node (KEP-2535 would have made one):\n%s", ev)
	}
	// The same Pod with the annotation and a Secret of C's own runs.
	wn.tenant(ctx, c, "tenant-c", "registry", map[string]string{"registry": tenantBUser + ":" + tenantBPass}, true)
	_ = c.Admin.CoreV1().Pods("tenant-c").Delete(ctx, "borrow", metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(0))})
	mark = len(wn.reg.logs.String())
	wn.pod(ctx, c, "tenant-c", "own", corev1.PullIfNotPresent)
	waitPodIn(t, c.Admin, "tenant-c", "own", 2*time.Minute, "Running")
	wn.expectPulledAs(mark, tenantBUser, "namespace C's Pod with a Secret of its own")
	t.Log("workload: an image on the node is refused to a Pod without credentials of its own (IfNotPresent), and pulled again for one with them")

	// 5. Annotation and Secret, but no Role: the plugin meets 403, says so
	// to the kubelet, and the Pod does not pull.
	wn.tenant(ctx, c, "tenant-d", "registry", map[string]string{"registry": tenantAUser + ":" + tenantAPass1}, false)
	logAt = len(kubeletLog(t, c))
	wn.pod(ctx, c, "tenant-d", "pod", corev1.PullAlways)
	waitPodIn(t, c.Admin, "tenant-d", "pod", 2*time.Minute, "ErrImagePull", "ImagePullBackOff")
	waitKubeletLog(t, c, logAt, "SecretForbidden", 30*time.Second)

	// 6. Two Secrets of one registry: the annotation's order decides.
	wn.tenant(ctx, c, "tenant-e", "first,second", map[string]string{"first": tenantBUser + ":" + tenantBPass, "second": tenantAUser + ":" + tenantAPass1}, true)
	mark = len(wn.reg.logs.String())
	wn.pod(ctx, c, "tenant-e", "first", corev1.PullAlways)
	waitPodIn(t, c.Admin, "tenant-e", "first", 2*time.Minute, "Running")
	wn.expectPulledAs(mark, tenantBUser, "annotation first,second")
	wn.tenant(ctx, c, "tenant-e", "second,first", nil, false)
	mark = len(wn.reg.logs.String())
	wn.pod(ctx, c, "tenant-e", "second", corev1.PullAlways)
	waitPodIn(t, c.Admin, "tenant-e", "second", 2*time.Minute, "Running")
	wn.expectPulledAs(mark, tenantAUser, "annotation second,first")

	// 7. Rotation: tenant A's password changes at the registry and in its
	// Secret; a new Pod pulls with the new one within the cache bound. A
	// Pod pulls first, so the kubelet holds the old answer: the worst case.
	wn.pod(ctx, c, "tenant-a", "warm", corev1.PullAlways)
	waitPodIn(t, c.Admin, "tenant-a", "warm", 2*time.Minute, "Running")
	wn.reg.setPassword(tenantAUser, tenantAPass2)
	wn.setSecret(ctx, c, "tenant-a", "registry", tenantAUser+":"+tenantAPass2)
	rotated := time.Now()
	mark = len(wn.reg.logs.String())
	wn.pod(ctx, c, "tenant-a", "rotated", corev1.PullAlways)
	waitPodIn(t, c.Admin, "tenant-a", "rotated", time.Minute, "Running")
	took := time.Since(rotated)
	wn.expectPulledAs(mark, tenantAUser, "tenant A after the rotation")
	wn.timings = append(wn.timings, "workload-rotation-to-running="+took.Round(time.Second).String())
	t.Logf("workload: tenant A's Secret rotated → a new Pod Running in %s (cache bound 10s plus the kubelet's pull back-off)", took.Round(time.Second))

	// 8. Revocation: tenant E's RoleBinding goes. Once the kubelet's cached
	// answer has expired (10 s), an IfNotPresent Pod of E must pull the
	// image on the node again, and cannot.
	if err := c.Admin.RbacV1().RoleBindings("tenant-e").Delete(ctx, tenantRoleBinding, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(11 * time.Second) // the answer's cache duration, on the kubelet's own clock
	wn.pod(ctx, c, "tenant-e", "revoked", corev1.PullIfNotPresent)
	waitPodIn(t, c.Admin, "tenant-e", "revoked", 2*time.Minute, "ErrImagePull", "ImagePullBackOff")
	t.Log("workload: with its Role revoked, a ServiceAccount's IfNotPresent Pod no longer starts the image already on the node")

	wn.checkAudit(t)
	wn.checkCommand(t, c)
	var events strings.Builder
	for _, ns := range []string{"tenant-a", "tenant-b", "tenant-c", "tenant-d", "tenant-e"} {
		evs, err := c.Admin.CoreV1().Events(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range evs.Items {
			events.WriteString(e.Reason + ": " + e.Message + "\n")
		}
	}
	wn.noSecrets(t, "tenants' Events", events.String())
}

// answersCounted reads the agent's metrics: the plugin's runs, counted in
// the node's state folder, by reason.
func (wn *workloadNode) answersCounted(ctx context.Context) {
	t := wn.t
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://127.0.0.1:9102/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("the agent's metrics: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, l := range strings.Split(string(b), "\n") {
		var reason string
		var v float64
		if rest, ok := strings.CutPrefix(l, `nodecreds_workload_answers_total{reason="`); ok {
			reason, rest, _ = strings.Cut(rest, `"} `)
			fmt.Sscan(rest, &v)
			got[reason] = v
		}
	}
	if got["Answered"] < 6 || got["SecretForbidden"] < 1 {
		t.Errorf("nodecreds_workload_answers_total by reason %v, want Answered ≥ 6 and SecretForbidden ≥ 1", got)
	}
	t.Logf("workload: the agent counts the plugin's answers by reason: %v", got)
}

// checkAudit reads the API server's audit log: every Secret a tenant's
// ServiceAccount asked for is in its own namespace, the plugin did read
// with the Pods' tokens (the tenants' users appear), tenant D's read was
// refused, and the tokens were requested by the node, not an admin.
func (wn *workloadNode) checkAudit(t *testing.T) {
	t.Helper()
	f, err := os.Open(wn.auditLog)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	type event struct {
		Verb      string                    `json:"verb"`
		User      struct{ Username string } `json:"user"`
		ObjectRef struct {
			Resource, Subresource, Namespace, Name string
		} `json:"objectRef"`
		ResponseStatus struct{ Code int } `json:"responseStatus"`
		Stage          string             `json:"stage"`
	}
	reads := map[string]int{}
	tokenBy := map[string]int{}
	forbiddenD := false
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var e event
		if json.Unmarshal(sc.Bytes(), &e) != nil || e.Stage != "ResponseComplete" {
			continue
		}
		ns, isSA := strings.CutPrefix(e.User.Username, "system:serviceaccount:tenant-")
		if e.ObjectRef.Resource == "secrets" && isSA {
			ns = "tenant-" + strings.Split(ns, ":")[0]
			if e.ObjectRef.Namespace != ns {
				t.Errorf("%s asked for Secret %s/%s: another namespace's", e.User.Username, e.ObjectRef.Namespace, e.ObjectRef.Name)
			}
			reads[e.User.Username]++
			if ns == "tenant-d" && e.ResponseStatus.Code == 403 {
				forbiddenD = true
			}
		}
		if e.ObjectRef.Resource == "serviceaccounts" && e.ObjectRef.Subresource == "token" && strings.HasPrefix(e.ObjectRef.Namespace, "tenant-") {
			tokenBy[e.User.Username]++
		}
	}
	for _, u := range []string{"system:serviceaccount:tenant-a:app", "system:serviceaccount:tenant-b:app", "system:serviceaccount:tenant-e:app"} {
		if reads[u] == 0 {
			t.Errorf("the audit log has no Secret read by %s: the plugin did not read with the Pod's token", u)
		}
	}
	if !forbiddenD {
		t.Error("the audit log has no refused (403) Secret read by tenant D's ServiceAccount")
	}
	for u := range tokenBy {
		if u != "system:node:"+nodeName {
			t.Errorf("a tenant's token was requested by %s, want only the node", u)
		}
	}
	if tokenBy["system:node:"+nodeName] == 0 {
		t.Error("the audit log has no token request of the node for a tenant's ServiceAccount")
	}
	t.Logf("workload: audit log: Secret reads by the tenants' ServiceAccounts %v, all in their own namespaces; tenant tokens requested by %v", reads, tokenBy)
}

// checkCommand runs `nodecreds check --service-account` as an admin would.
func (wn *workloadNode) checkCommand(t *testing.T, c *cluster.Cluster) {
	t.Helper()
	for _, tc := range []struct {
		sa       string
		wantCode int
		want     string
	}{
		{"tenant-a/app", 0, tenantAUser},
		{"tenant-d/app", 1, "SecretForbidden"},
		{"default/default", 1, "NoAnnotation"},
	} {
		cmd := exec.Command(binary, "check", "--kubeconfig", c.Kubeconfig, "--service-account", tc.sa, "--image", wn.image)
		out, err := cmd.CombinedOutput()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if code != tc.wantCode || !strings.Contains(string(out), tc.want) {
			t.Errorf("check --service-account %s: exit %d, want %d and %q in:\n%s", tc.sa, code, tc.wantCode, tc.want, out)
		}
		wn.noSecrets(t, "check --service-account "+tc.sa, string(out))
	}
}

// noSecrets fails when text holds a tenant password, its auth string, or
// anything shaped like a ServiceAccount token (a JWT's header).
func (wn *workloadNode) noSecrets(t *testing.T, where, text string) {
	t.Helper()
	for _, up := range []string{tenantAUser + ":" + tenantAPass1, tenantAUser + ":" + tenantAPass2, tenantBUser + ":" + tenantBPass} {
		_, pass, _ := strings.Cut(up, ":")
		if strings.Contains(text, pass) || strings.Contains(text, testsupport.B64(up)) {
			t.Errorf("a tenant's password or auth string is in the %s", where)
		}
	}
	if strings.Contains(text, "eyJhbGciOi") {
		t.Errorf("a token (JWT) is in the %s", where)
	}
}
