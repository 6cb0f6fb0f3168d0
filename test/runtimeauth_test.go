package test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nodecreds/nodecreds/internal/testsupport"
)

// TestRuntimeAuthHostsTOML (issue 23, point 1): with --containerd-certs-dir,
// a Secret annotated nodecreds.io/runtime-auth: "true" lands as an
// Authorization header in the registry's own hosts.toml (created) and in an
// admin's mirror section (merged, every other byte kept); a rotation of the
// Secret rewrites it; cleanup puts back exactly what was there. Point 2: on
// a Node that says containerd 2.2, a containerd configuration (read from its
// file under the host root, an import included) whose config_path holds two
// folders is reported on the Node (condition reason, Warning Event) and in
// the log with its fix, and the report goes once the admin fixes it.
func TestRuntimeAuthHostsTOML(t *testing.T) {
	c := startCluster(t)
	ctx := t.Context()
	applyManifest(t, c)
	const (
		node     = "node-runtime"
		mirror   = "mirror.example.test:5000"
		certsDir = "/etc/containerd/certs.d"
		pass1    = "rtCanaryOne7Qx"
		pass2    = "rtCanaryTwo3Zk"
	)
	createNode(t, c.Admin, node)
	n, err := c.Admin.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n.Status.NodeInfo.ContainerRuntimeVersion = "containerd://2.2.1"
	if _, err := c.Admin.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	containerdConfig := filepath.Join(root, "etc/containerd/config.toml")
	testsupport.WriteFile(t, containerdConfig, "version = 3\nimports = [\"conf.d/*.toml\"]\n", 0o600)
	testsupport.WriteFile(t, filepath.Join(root, "etc/containerd/conf.d/10-registry.toml"),
		"version = 3\n[plugins.\"io.containerd.cri.v1.images\".registry]\n  config_path = \"/etc/containerd/certs.d:/etc/docker/certs.d\"\n", 0o600)
	admin := "# Our pull-through mirror (ticket 42).\n" +
		"server = \"https://registry-1.docker.io\"\n\n" +
		"[host.\"https://" + mirror + "\"]\n" +
		"  capabilities = [\"pull\", \"resolve\"]\n"
	adminPath := filepath.Join(root, certsDir, "docker.io", "hosts.toml")
	ownPath := filepath.Join(root, certsDir, mirror, "hosts.toml")
	testsupport.WriteFile(t, adminPath, admin, 0o644)

	sec := registrySecret(dockerconfigjson(t, map[string]string{mirror: "robot:" + pass1}))
	sec.Annotations = map[string]string{"nodecreds.io/runtime-auth": "true"}
	if _, err := c.Admin.CoreV1().Secrets(ns).Create(ctx, sec, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	kubeconfig, _, _, err := c.AgentKubeconfig(ctx, ns, "nodecreds", node)
	if err != nil {
		t.Fatal(err)
	}
	agent := startAgent(t, "--kubeconfig", kubeconfig, "--namespace", ns, "--node-name", node, "--host-root", root,
		"--metrics-addr", "0", "--containerd-certs-dir", certsDir, "--log-format", "text")

	header := func(pass string) string {
		return `Authorization = "Basic ` + testsupport.B64("robot:"+pass) + `"`
	}
	holds := func(path, want string) func() bool {
		return func() bool {
			b, err := os.ReadFile(path)
			return err == nil && strings.Contains(string(b), want)
		}
	}
	testsupport.Eventually(t, time.Minute, "the header in the mirror section and the registry's own hosts.toml",
		func() bool { return holds(adminPath, header(pass1))() && holds(ownPath, header(pass1))() })
	merged := string(testsupport.ReadFile(t, adminPath))
	var kept []string
	for _, l := range strings.SplitAfter(merged, "\n") {
		if !strings.Contains(l, "Authorization") {
			kept = append(kept, l)
		}
	}
	if strings.Join(kept, "") != admin+"  [host.\"https://"+mirror+"\".header]\n" && strings.Join(kept, "") != admin+"[host.\"https://"+mirror+"\".header]\n" {
		t.Errorf("the admin's file changed outside the header:\n%s", merged)
	}
	if fi, err := os.Stat(adminPath); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("merged hosts.toml mode: %v %v, want 0600", fi, err)
	}
	reported := func(reason string) func() bool {
		return func() bool {
			n, err := c.Admin.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
			cond := condition(n)
			return err == nil && cond != nil && cond.Status == corev1.ConditionTrue && cond.Reason == reason &&
				(reason == "Synced" || strings.Contains(cond.Message, "use_local_image_pull = true"))
		}
	}
	testsupport.Eventually(t, time.Minute, "the Node condition naming containerd's two folders and the fix", reported("ConfigPathMultipleFolders"))
	testsupport.Eventually(t, time.Minute, "a Warning Event", func() bool {
		list, err := c.Admin.CoreV1().Events("").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + node})
		return err == nil && slices.ContainsFunc(list.Items, func(e corev1.Event) bool {
			return e.Type == corev1.EventTypeWarning && e.Reason == "ConfigPathMultipleFolders"
		})
	})
	if logs := agent.logs.String(); !strings.Contains(logs, "containerd may not use the hosts.toml headers") || !strings.Contains(logs, "ConfigPathMultipleFolders") {
		t.Errorf("the agent's log does not name the problem:\n%s", logs)
	}
	// The admin's fix is seen at the next sync (here, the rotation's).
	testsupport.WriteFile(t, filepath.Join(root, "etc/containerd/conf.d/10-registry.toml"),
		"version = 3\n[plugins.\"io.containerd.cri.v1.images\".registry]\n  config_path = \"/etc/containerd/certs.d\"\n", 0o600)

	updateSecret(t, c.Admin, dockerconfigjson(t, map[string]string{mirror: "robot:" + pass2}))
	testsupport.Eventually(t, time.Minute, "the rotated header in both files",
		func() bool { return holds(adminPath, header(pass2))() && holds(ownPath, header(pass2))() })
	testsupport.Eventually(t, time.Minute, "the condition back to Synced once containerd's configuration is fixed", reported("Synced"))

	if code := agent.stop(t); code != 0 {
		t.Errorf("agent exit %d", code)
	}
	stdout, stderr, code := run(t, "cleanup", "--host-root", root, "--log-format", "text")
	if code != 0 {
		t.Fatalf("cleanup exit %d: %s", code, stderr)
	}
	if got := string(testsupport.ReadFile(t, adminPath)); got != admin {
		t.Errorf("cleanup did not restore the admin's hosts.toml:\n%s", got)
	}
	if _, err := os.Lstat(ownPath); err == nil {
		t.Error("cleanup left the hosts.toml nodecreds created")
	}
	for where, text := range map[string]string{"agent logs": agent.logs.String(), "cleanup output": stdout + stderr} {
		assertNoSecrets(t, where, text, pass1, pass2, testsupport.B64("robot:"+pass1), testsupport.B64("robot:"+pass2))
	}
}

// TestRuntimeAuthBootstrapOnce: a node's first sandbox needs the header
// before any Pod can start, so the bootstrap seeds it with `sync --once`
// from a mounted Secret's folder (the flag is the opt-in: a folder has no
// annotations); cleanup then removes it.
func TestRuntimeAuthBootstrapOnce(t *testing.T) {
	const (
		certsDir = "/etc/containerd/certs.d"
		pass     = "bootCanary9Wv"
	)
	root := t.TempDir()
	sec := newSecretDir(t, ".dockerconfigjson", dockerconfigjson(t, map[string]string{"pause.example.test": "robot:" + pass}))
	stdout, stderr, code := run(t, "sync", "--once", "--source", "dir", "--secret-dir", sec.dir, "--host-root", root,
		"--containerd-certs-dir", certsDir, "--metrics-addr", "0", "--log-format", "text", "--log-level", "debug")
	if code != 0 {
		t.Fatalf("sync --once exit %d: %s", code, stderr)
	}
	own := filepath.Join(root, certsDir, "pause.example.test", "hosts.toml")
	want := `Authorization = "Basic ` + testsupport.B64("robot:"+pass) + `"`
	if got := string(testsupport.ReadFile(t, own)); !strings.Contains(got, want) || !strings.Contains(got, `server = "https://pause.example.test"`) {
		t.Errorf("the bootstrap did not seed the header:\n%s", got)
	}
	out2, err2, code := run(t, "cleanup", "--host-root", root, "--log-format", "text")
	if code != 0 {
		t.Fatalf("cleanup exit %d: %s", code, err2)
	}
	if _, err := os.Lstat(own); err == nil {
		t.Error("cleanup left the hosts.toml the bootstrap created")
	}
	assertNoSecrets(t, "sync --once and cleanup output", stdout+stderr+out2+err2, pass, testsupport.B64("robot:"+pass))
}
