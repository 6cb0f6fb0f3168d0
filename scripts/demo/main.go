// Command demo is `make demo`: it starts a local control plane (etcd and
// kube-apiserver built from Go modules, on 127.0.0.1), installs
// deploy/daemonset.yaml, creates the registry-credentials Secret and a Node,
// runs the real nodecreds agent with its ServiceAccount's token against a
// temporary node root, rotates the Secret and shows the node files and
// `nodecreds status` before and after. It removes everything it made.
//
// Secret values are never printed: files are shown with auth redacted, and
// `nodecreds check` shows the user the kubelet would send.
package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nodecreds/nodecreds/internal/testsupport"
	"github.com/nodecreds/nodecreds/test/cluster"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo failed:", err)
		os.Exit(1)
	}
}

var bin = filepath.Join(cluster.RepoRoot(), "bin", "nodecreds")

func say(format string, a ...any) { fmt.Printf("\n\033[1m== "+format+"\033[0m\n", a...) }

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func secretData(user, pass string) []byte {
	b, _ := json.Marshal(map[string]any{"auths": map[string]any{"registry.demo.test": map[string]string{"auth": b64(user + ":" + pass)}}})
	return b
}

var authRE = regexp.MustCompile(`"auth": *"[^"]*"`)

func show(root, nodePath string) {
	fmt.Println("--- " + nodePath)
	b, err := os.ReadFile(filepath.Join(root, nodePath))
	if err != nil {
		fmt.Println("(absent)")
		return
	}
	fmt.Print(authRE.ReplaceAllString(string(b), `"auth": "<redacted>"`))
}

func nodecreds(args ...string) string {
	out, _ := exec.Command(bin, args...).CombinedOutput()
	return string(out)
}

func run(ctx context.Context) error {
	work, err := os.MkdirTemp("", "nodecreds-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	root := filepath.Join(work, "node")
	if err := os.MkdirAll(filepath.Join(root, "root/.docker"), 0o700); err != nil {
		return err
	}
	// The node already has docker config of its own, which must survive.
	if err := os.WriteFile(filepath.Join(root, "root/.docker/config.json"),
		[]byte(`{"auths":{"ghcr.io":{"auth":"`+b64("someone:their-own-token")+`"}},"psFormat":"table {{.ID}}"}`), 0o600); err != nil {
		return err
	}

	say("Starting a local control plane (etcd + kube-apiserver on 127.0.0.1)")
	start := time.Now()
	c, err := cluster.Start(ctx, filepath.Join(work, "cluster"))
	if err != nil {
		return err
	}
	defer c.Stop()
	fmt.Printf("API server ready at %s in %s\n", c.URL, time.Since(start).Round(time.Millisecond))

	say("kubectl apply -f deploy/daemonset.yaml (done with client-go server-side apply)")
	objs, err := cluster.ReadManifest(filepath.Join(cluster.RepoRoot(), "deploy", "daemonset.yaml"))
	if err != nil {
		return err
	}
	if err := cluster.Apply(ctx, c.RESTConfig, objs, false); err != nil {
		return err
	}
	for _, o := range objs {
		fmt.Printf("  %s/%s created\n", strings.ToLower(o.GetKind()), o.GetName())
	}
	fmt.Println("  (no kubelet runs here, so the agent is started below as a process with the DaemonSet's ServiceAccount token)")

	say("Creating the Secret nodecreds/registry-credentials (robot-v1) and a Node registered with the startup taint")
	secrets := c.Admin.CoreV1().Secrets("nodecreds")
	if _, err := secrets.Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "registry-credentials", Namespace: "nodecreds"},
		Type:       corev1.SecretTypeDockerConfigJson,
		Data:       map[string][]byte{corev1.DockerConfigJsonKey: secretData("robot-v1", "demo-password-1")},
	}, metav1.CreateOptions{}); err != nil {
		return err
	}
	if _, err := c.Admin.CoreV1().Nodes().Create(ctx, &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "demo-node"},
		Spec:       corev1.NodeSpec{Taints: []corev1.Taint{{Key: "nodecreds.io/not-ready", Effect: corev1.TaintEffectNoSchedule}}},
	}, metav1.CreateOptions{}); err != nil {
		return err
	}
	show(root, "/var/lib/kubelet/config.json")
	show(root, "/root/.docker/config.json")

	kubeconfig, _, _, err := c.AgentKubeconfig(ctx, "nodecreds", "nodecreds", "demo-node")
	if err != nil {
		return err
	}
	say("Starting the agent: nodecreds sync --node-name demo-node --host-root <temp node root> --verify=off")
	logf, err := os.Create(filepath.Join(work, "agent.log"))
	if err != nil {
		return err
	}
	// --verify=off: registry.demo.test is a name no registry answers for,
	// and a verification login would only look it up in the machine's DNS
	// (docs/rotation-safety.md).
	agent := exec.Command(bin, "sync", "--kubeconfig", kubeconfig, "--namespace", "nodecreds", "--node-name", "demo-node",
		"--host-root", root, "--metrics-addr", "127.0.0.1:0", "--log-format", "text", "--verify=off")
	agent.Stdout, agent.Stderr = logf, logf
	if err := agent.Start(); err != nil {
		return err
	}
	stopped := false
	defer func() {
		if !stopped {
			_ = agent.Process.Kill()
			_ = agent.Wait()
		}
	}()
	if err := testsupport.WaitFor(ctx, 30*time.Second, 20*time.Millisecond, "robot-v1 in the kubelet file", func() bool { return strings.Contains(checkUser(root), "robot-v1") }); err != nil {
		return fmt.Errorf("first sync: %w; agent log:\n%s", err, readFile(logf.Name()))
	}
	time.Sleep(500 * time.Millisecond) // let the Node status land
	show(root, "/var/lib/kubelet/config.json")
	show(root, "/root/.docker/config.json")
	fmt.Println()
	fmt.Print(nodecreds("status", "--kubeconfig", c.Kubeconfig, "--namespace", "nodecreds"))
	node, err := c.Admin.CoreV1().Nodes().Get(ctx, "demo-node", metav1.GetOptions{})
	if err != nil {
		return err
	}
	fmt.Printf("demo-node taints now: %v (nodecreds.io/not-ready is gone; node.kubernetes.io/not-ready is Kubernetes' own, as no kubelet runs here)\n", taintKeys(node))

	say("Rotating the Secret to robot-v2")
	sec, err := secrets.Get(ctx, "registry-credentials", metav1.GetOptions{})
	if err != nil {
		return err
	}
	sec.Data[corev1.DockerConfigJsonKey] = secretData("robot-v2", "demo-password-2")
	t0 := time.Now()
	if _, err := secrets.Update(ctx, sec, metav1.UpdateOptions{}); err != nil {
		return err
	}
	if err := testsupport.WaitFor(ctx, 30*time.Second, 20*time.Millisecond, "robot-v2 in both node files", func() bool {
		return strings.Contains(checkUser(root), "robot-v2") && strings.Contains(checkUserIn(root, "/root/.docker/config.json"), "robot-v2")
	}); err != nil {
		return err
	}
	fmt.Printf("both node files updated %s after the Secret update\n", time.Since(t0).Round(time.Millisecond))
	fmt.Print(nodecreds("status", "--kubeconfig", c.Kubeconfig, "--namespace", "nodecreds", "--wait", "--timeout", "30s"))
	show(root, "/root/.docker/config.json")
	fmt.Print(nodecreds("check", "--host-root", root, "--image", "registry.demo.test/team/app:v1"))

	say("Stopping the agent (SIGTERM): nothing is removed from the node")
	_ = agent.Process.Signal(syscall.SIGTERM)
	err = agent.Wait()
	stopped = true
	fmt.Printf("agent exited: %v\n", exitText(err))
	fmt.Println("agent log:")
	for _, l := range strings.Split(strings.TrimSpace(readFile(logf.Name())), "\n") {
		fmt.Println("  " + l)
	}

	say("nodecreds cleanup: the node holds what it held before (same JSON values)")
	fmt.Print(nodecreds("cleanup", "--host-root", root, "--log-format", "text"))
	show(root, "/var/lib/kubelet/config.json")
	show(root, "/root/.docker/config.json")
	say("Done; stopping the control plane and removing %s", work)
	return nil
}

func checkUser(root string) string {
	return nodecreds("check", "--host-root", root, "--image", "registry.demo.test/app", "-o", "json")
}

// checkUserIn asks check about one file by making the kubelet's folder
// point elsewhere.
func checkUserIn(root, file string) string {
	return nodecreds("check", "--host-root", root, "--kubelet-root-dir", filepath.Dir(file), "--image", "registry.demo.test/app", "-o", "json")
}

func taintKeys(n *corev1.Node) []string {
	var out []string
	for _, t := range n.Spec.Taints {
		out = append(out, t.Key)
	}
	return out
}

func readFile(p string) string {
	b, _ := os.ReadFile(p)
	return string(bytes.TrimSpace(b))
}

func exitText(err error) string {
	if err == nil {
		return "exit 0"
	}
	return err.Error()
}
