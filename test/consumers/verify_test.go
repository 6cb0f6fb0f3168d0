package consumers

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dockerconfig "github.com/docker/cli/cli/config"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nodecreds/nodecreds/internal/testsupport"
	"github.com/nodecreds/nodecreds/test/cluster"
)

// dockerLogin reads the registry's entry from a node's docker config with
// the docker CLI's own config package and logs in with it: the /v2/ answer
// the docker CLI's reads of that file would get.
func dockerLogin(root, registry string) (status int, password string, err error) {
	cf, err := dockerconfig.Load(filepath.Join(root, "root/.docker"))
	if err != nil {
		return 0, "", err
	}
	ac, err := cf.GetAuthConfig(registry)
	if err != nil {
		return 0, "", err
	}
	req, err := http.NewRequest(http.MethodGet, "http://"+registry+"/v2/", nil)
	if err != nil {
		return 0, "", err
	}
	req.SetBasicAuth(ac.Username, ac.Password)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, ac.Password, err
	}
	resp.Body.Close()
	return resp.StatusCode, ac.Password, nil
}

func scrape(addr string) string {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// TestVerifiedRotation, with a real registry (distribution, htpasswd), a
// real API server and two real agents:
//   - rotated to a password the registry refuses: every node keeps the old
//     one (the docker CLI's reads of the node file still log in), each
//     Node says CredentialsRejected naming the Secret, the registry and
//     401, the metric says it, and `status --wait` exits 1 with it;
//   - the registry then accepts that password (restarted with it): the
//     nodes switch without anyone touching the Secret, logged as verified;
//   - rotated to a password the registry accepts: switched within the
//     usual second and one login;
//   - rotated while the registry is down: applied all the same, with a
//     warning.
func TestVerifiedRotation(t *testing.T) {
	ctx := t.Context()
	reg := startRegistry(t, "alice", "pw-1")
	c := startCluster(t, "nodecreds-verify-")
	if err := cluster.Install(ctx, c.RESTConfig, filepath.Join(cluster.RepoRoot(), "deploy", "daemonset.yaml")); err != nil {
		t.Fatal(err)
	}
	const ns = "nodecreds"
	secrets := c.Admin.CoreV1().Secrets(ns)
	setPassword := func(pw string) {
		t.Helper()
		data := map[string][]byte{corev1.DockerConfigJsonKey: []byte(`{"auths":{"` + reg.addr + `":{"username":"alice","password":"` + pw + `"}}}`)}
		sec, err := secrets.Get(ctx, "registry-credentials", metav1.GetOptions{})
		if err != nil {
			_, err = secrets.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "registry-credentials", Namespace: ns},
				Type: corev1.SecretTypeDockerConfigJson, Data: data}, metav1.CreateOptions{})
		} else {
			sec.Data = data
			_, err = secrets.Update(ctx, sec, metav1.UpdateOptions{})
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	setPassword("pw-1")
	nodes := c.Admin.CoreV1().Nodes()
	roots, logs, metricsAddr := map[string]string{}, map[string]*testsupport.Buffer{}, map[string]string{}
	for _, name := range []string{"node-a", "node-b"} {
		if _, err := nodes.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"kubernetes.io/os": "linux"}}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		roots[name], metricsAddr[name] = t.TempDir(), testsupport.FreeAddr(t)
		kubeconfig, _, _, err := c.AgentKubeconfig(ctx, ns, "nodecreds", name)
		if err != nil {
			t.Fatal(err)
		}
		logs[name] = testsupport.Start(t, "agent on "+name, exec.Command(binary, "sync", "--kubeconfig", kubeconfig, "--namespace", ns,
			"--node-name", name, "--host-root", roots[name], "--metrics-addr", metricsAddr[name],
			"--verify=on", "--verify-retry", "1s", "--verify-spread", "200ms", "--log-level", "debug"))
	}
	condition := func(name string) (reason, message string) {
		n, err := nodes.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return "", ""
		}
		for _, cond := range n.Status.Conditions {
			if cond.Type == "RegistryCredentialsSynced" {
				return cond.Reason, cond.Message
			}
		}
		return "", ""
	}
	every := func(within time.Duration, what string, cond func(node string) bool) time.Duration {
		t.Helper()
		return testsupport.Eventually(t, within, what, func() bool {
			for name := range roots {
				if !cond(name) {
					return false
				}
			}
			return true
		})
	}
	holds := func(pw string) func(string) bool {
		return func(node string) bool {
			status, got, err := dockerLogin(roots[node], reg.addr)
			return err == nil && got == pw && status == http.StatusOK
		}
	}
	every(30*time.Second, "every node synced, and the docker CLI logs in with what it reads", func(n string) bool {
		r, _ := condition(n)
		return r == "Synced" && holds("pw-1")(n)
	})

	// 1. A password the registry refuses.
	setPassword("pw-2")
	every(20*time.Second, "every Node says CredentialsRejected", func(n string) bool { r, _ := condition(n); return r == "CredentialsRejected" })
	for name, root := range roots {
		status, got, err := dockerLogin(root, reg.addr)
		if err != nil || got != "pw-1" || status != http.StatusOK {
			t.Errorf("%s: the docker CLI reads a password that does not log in (status %d, old one kept: %v, %v)", name, status, got == "pw-1", err)
		}
		_, msg := condition(name)
		if !strings.Contains(msg, "ns/registry-credentials") && !strings.Contains(msg, ns+"/registry-credentials") || !strings.Contains(msg, reg.addr) || !strings.Contains(msg, "401") {
			t.Errorf("%s: the condition does not name the Secret, the registry and the status: %q", name, msg)
		}
	}
	if m := scrape(metricsAddr["node-a"]); !strings.Contains(m, `nodecreds_credentials_rejected{registry="`+reg.addr+`",secret="nodecreds/registry-credentials"} 1`) {
		t.Errorf("nodecreds_credentials_rejected is not 1 on node-a:\n%s", grepLines(m, "nodecreds_credentials_rejected"))
	}
	out, stderr, code := runBinary(t, "status", "--kubeconfig", c.Kubeconfig, "--namespace", ns, "--wait", "--timeout", "3s")
	if code != 1 || !strings.Contains(out+stderr, "CredentialsRejected") {
		t.Errorf("status --wait: exit %d, want 1 naming CredentialsRejected:\n%s%s", code, out, stderr)
	}

	// 2. The registry accepts it now: switched, untouched Secret.
	reg.rotate("alice", "pw-2")
	took := every(40*time.Second, "every node switched to the password the registry now accepts", func(n string) bool {
		r, _ := condition(n)
		return r == "Synced" && holds("pw-2")(n)
	})
	t.Logf("switched %s after the registry accepted the password (retry backoff from 1s)", took)
	for name, l := range logs {
		if !strings.Contains(l.String(), "new credentials verified by a login") || strings.Contains(l.String(), "applied without verification") {
			t.Errorf("%s: the switch is not logged as verified (or something was applied unverified)", name)
		}
	}

	// 3. A password the registry accepts: switched within a second and a login.
	reg.rotate("alice", "pw-3")
	setPassword("pw-3")
	took = every(10*time.Second, "every node holds the accepted password", holds("pw-3"))
	t.Logf("a verified rotation reached every node in %s", took)

	// 4. Registry down: applied all the same, with a warning.
	reg.stop()
	setPassword("pw-4")
	every(20*time.Second, "every node holds the new password while the registry is down", func(n string) bool {
		cf, err := dockerconfig.Load(filepath.Join(roots[n], "root/.docker"))
		if err != nil {
			return false
		}
		ac, err := cf.GetAuthConfig(reg.addr)
		return err == nil && ac.Password == "pw-4"
	})
	every(10*time.Second, "each agent warned that it applied unverified credentials", func(n string) bool {
		return strings.Contains(logs[n].String(), "applied without verification")
	})

	for name, l := range logs {
		assertNoPasswords(t, "agent log on "+name, l.String(), "pw-1", "pw-2", "pw-3", "pw-4")
		_, msg := condition(name)
		assertNoPasswords(t, "condition on "+name, msg, "pw-1", "pw-2", "pw-3", "pw-4")
	}
	assertNoPasswords(t, "status", out+stderr, "pw-1", "pw-2", "pw-3", "pw-4")
}

func grepLines(text, substr string) string {
	var out []string
	for l := range strings.SplitSeq(text, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func assertNoPasswords(t *testing.T, where, text string, pws ...string) {
	t.Helper()
	for _, pw := range pws {
		if strings.Contains(text, `"`+pw+`"`) || strings.Contains(text, testsupport.B64("alice:"+pw)) || strings.Contains(text, " "+pw) || strings.Contains(text, "="+pw) {
			t.Errorf("%s shows a password", where)
		}
	}
}

// runBinary runs nodecreds and returns its output and exit code.
func runBinary(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var out, stderr strings.Builder
	cmd := exec.CommandContext(context.Background(), binary, args...)
	cmd.Stdout, cmd.Stderr = &out, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return out.String(), stderr.String(), 0
	case errors.As(err, &ee):
		return out.String(), stderr.String(), ee.ExitCode()
	}
	t.Fatal(err)
	return "", "", 0
}

// TestOnceHoldsBackARejection: `sync --once` (bootstrap, cron) verifies
// before it exits: a password the real registry rejects is not written
// over a working one and the run exits 1; the rejection outlives the
// process, so the next run, with the registry down, still holds it back;
// once the registry accepts it, a run applies it and exits 0.
func TestOnceHoldsBackARejection(t *testing.T) {
	reg := startRegistry(t, "alice", "good-pw")
	root := t.TempDir()
	secretDir := t.TempDir()
	setPassword := func(pw string) {
		t.Helper()
		data := `{"auths":{"` + reg.addr + `":{"username":"alice","password":"` + pw + `"}}}`
		if err := os.WriteFile(filepath.Join(secretDir, ".dockerconfigjson"), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	once := func() (int, string) {
		t.Helper()
		out, stderr, code := runBinary(t, "sync", "--once", "--verify=on", "--source", "dir", "--secret-dir", secretDir, "--host-root", root, "--metrics-addr", "0")
		return code, out + stderr
	}
	kubelet := filepath.Join(root, "var/lib/kubelet/config.json")
	holds := func(pw string) bool {
		data, err := os.ReadFile(kubelet)
		return err == nil && strings.Contains(string(data), testsupport.B64("alice:"+pw))
	}
	setPassword("good-pw")
	if code, out := once(); code != 0 || !holds("good-pw") {
		t.Fatalf("first run: exit %d\n%s", code, out)
	}
	setPassword("typo-pw")
	code, out := once()
	if code != 1 || !holds("good-pw") || !strings.Contains(out, "rejected") {
		t.Fatalf("with a rejected password: exit %d (want 1), old one kept %v\n%s", code, holds("good-pw"), out)
	}
	assertNoPasswords(t, "sync --once", out, "good-pw", "typo-pw")
	reg.stop()
	if code, out := once(); code != 1 || !holds("good-pw") {
		t.Fatalf("registry down after a rejection: exit %d, old one kept %v (a rejection must not be applied because the registry cannot be asked)\n%s", code, holds("good-pw"), out)
	}
	reg.start("alice", "typo-pw")
	if code, out := once(); code != 0 || !holds("typo-pw") {
		t.Fatalf("registry accepts it now: exit %d, applied %v\n%s", code, holds("typo-pw"), out)
	}
}
