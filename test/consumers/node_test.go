//go:build nodee2e

package consumers

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/kubernetes"

	"github.com/nodecreds/nodecreds/internal/testsupport"
	"github.com/nodecreds/nodecreds/test/cluster"
)

const (
	nodeName     = "node-1"
	kubeletRoot  = "/var/lib/kubelet"
	dockerDir    = "/root/.docker"
	stateDir     = "/var/lib/nodecreds"
	pluginRoot   = "/opt/nodecreds" // deploy/credential-provider installs into bin/
	pluginBinDir = pluginRoot + "/bin"
	agentImage   = "docker.io/nodecreds/nodecreds:e2e"
	nodecredsNS  = "nodecreds"
	secretName   = "registry-credentials"
	appNamespace = "default"
)

// backupDir moves a node folder aside for the test and puts it back after.
func backupDir(t *testing.T, dir string) {
	t.Helper()
	backup := dir + ".nodecreds-e2e-backup"
	had := false
	if _, err := os.Stat(dir); err == nil {
		if err := os.Rename(dir, backup); err != nil {
			t.Fatal(err)
		}
		had = true
	}
	t.Cleanup(func() {
		unmountUnder(dir)
		_ = os.RemoveAll(dir)
		if had {
			_ = os.Rename(backup, dir)
		}
	})
}

func unmountUnder(dir string) {
	b, _ := os.ReadFile("/proc/self/mounts")
	var mounts []string
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		// The kubelet also bind-mounts its root folder onto itself.
		if len(f) > 1 && (f[1] == dir || strings.HasPrefix(f[1], dir+"/")) {
			mounts = append(mounts, f[1])
		}
	}
	for i := len(mounts) - 1; i >= 0; i-- {
		_ = syscall.Unmount(mounts[i], syscall.MNT_DETACH)
	}
}

func mkimage(t *testing.T, out, name, entry string, files ...string) {
	t.Helper()
	args := []string{"run", "./node/mkimage", "-o", out, "-name", name, "-entrypoint", entry}
	for _, f := range files {
		args = append(args, "-file", f)
	}
	cmd := exec.Command("go", args...)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("mkimage %s: %v\n%s", name, err, b)
	}
}

func podFor(name, image string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: appNamespace},
		Spec: corev1.PodSpec{
			NodeName:                      nodeName,
			HostNetwork:                   true,
			Tolerations:                   []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
			TerminationGracePeriodSeconds: ptr(int64(0)),
			Containers:                    []corev1.Container{{Name: "app", Image: image, ImagePullPolicy: corev1.PullAlways}},
		},
	}
}

func ptr[T any](v T) *T { return &v }

// podState is "Running", or the waiting reason (ErrImagePull, ...).
func podState(ctx context.Context, c kubernetes.Interface, name string) string {
	return podStateIn(ctx, c, appNamespace, name)
}

func podStateIn(ctx context.Context, c kubernetes.Interface, namespace, name string) string {
	p, err := c.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return "error: " + err.Error()
	}
	for _, s := range p.Status.ContainerStatuses {
		if s.State.Running != nil {
			return "Running"
		}
		if s.State.Waiting != nil {
			return s.State.Waiting.Reason
		}
	}
	return string(p.Status.Phase)
}

func waitPod(t *testing.T, c kubernetes.Interface, name string, within time.Duration, want ...string) (string, time.Duration) {
	t.Helper()
	return waitPodIn(t, c, appNamespace, name, within, want...)
}

func waitPodIn(t *testing.T, c kubernetes.Interface, namespace, name string, within time.Duration, want ...string) (string, time.Duration) {
	t.Helper()
	start := time.Now()
	last := ""
	for time.Since(start) < within {
		last = podStateIn(t.Context(), c, namespace, name)
		for _, w := range want {
			if last == w {
				return last, time.Since(start)
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Fatalf("pod %s/%s: %q after %s, want one of %v\n%s", namespace, name, last, within, want, pullEventsIn(t.Context(), c, namespace, name))
	return "", 0
}

func pullEvents(ctx context.Context, c kubernetes.Interface, pod string) string {
	return pullEventsIn(ctx, c, appNamespace, pod)
}

func pullEventsIn(ctx context.Context, c kubernetes.Interface, namespace, pod string) string {
	evs, _ := c.CoreV1().Events(namespace).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + pod})
	var b strings.Builder
	for _, e := range evs.Items {
		b.WriteString(e.Reason + ": " + e.Message + "\n")
	}
	return b.String()
}

// overlay applies test/node-overlay's changes to the manifest: only what
// this machine forces (the local image and pull policy, hostNetwork, the
// API address, metrics on 127.0.0.1).
func overlay(objs []*unstructured.Unstructured, apiPort string) {
	for _, o := range objs {
		if o.GetKind() != "DaemonSet" {
			continue
		}
		spec := o.Object["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)
		spec["hostNetwork"] = true
		spec["dnsPolicy"] = "ClusterFirstWithHostNet"
		c := spec["containers"].([]any)[0].(map[string]any)
		c["image"] = agentImage
		c["imagePullPolicy"] = "Never"
		c["args"] = append(c["args"].([]any), "--metrics-addr=127.0.0.1:9102")
		c["env"] = append(c["env"].([]any),
			map[string]any{"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"},
			map[string]any{"name": "KUBERNETES_SERVICE_PORT", "value": apiPort})
	}
}

// TestRealNode is the seed scenario on a real node: a kubelet with
// containerd, a private image on a real registry, and nodecreds installed
// from deploy/daemonset.yaml.
func TestRealNode(t *testing.T) {
	for _, b := range []string{"containerd", "runc", "ctr", "skopeo", "docker-registry", "htpasswd"} {
		need(t, b, b)
	}
	busybox := "/bin/busybox"
	if _, err := os.Stat(busybox); err != nil {
		t.Fatalf("%s missing: install Debian's busybox-static", busybox)
	}
	ctx := t.Context()
	// Not t.TempDir: containerd's leftovers (mounts, shims) are removed
	// best-effort below rather than failing the test.
	work, err := os.MkdirTemp("", "nodecreds-node-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unmountUnder(work); _ = os.RemoveAll(work) })
	for _, d := range []string{kubeletRoot, dockerDir, stateDir, pluginRoot} {
		backupDir(t, d)
	}

	var c *cluster.Cluster
	audit, auditLog := auditArgs(t, work)
	c, err = cluster.Start(ctx, filepath.Join(work, "cluster"), audit...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	if err := c.StartControllers(ctx); err != nil {
		t.Fatal(err)
	}

	// containerd with a sandbox image that lives only in a private registry
	// of its own (runtime_node_test.go), imported so the first sandboxes
	// start; the agent's image imported.
	ctdDir := filepath.Join(work, "containerd")
	rn := newRuntimeNode(t, work, ctdDir)
	out, err := exec.Command("./node/containerd.sh", ctdDir, rn.pauseRef).CombinedOutput()
	if err != nil {
		t.Fatalf("containerd: %v\n%s", err, out)
	}
	socket := strings.TrimSpace(string(out))
	wn := newWorkloadNode(t, work, ctdDir, auditLog)
	t.Cleanup(func() {
		if b, err := os.ReadFile(filepath.Join(ctdDir, "containerd.pid")); err == nil {
			var pid int
			fmt.Sscan(string(b), &pid)
			_ = syscall.Kill(pid, syscall.SIGTERM)
		}
		_ = exec.Command("pkill", "-9", "-f", "containerd-shim-runc-v2 .*-address "+socket).Run()
		_ = exec.Command("pkill", "-9", "-f", "sleep 2147483647").Run()
		time.Sleep(time.Second)
		unmountUnder(ctdDir)
	})
	// The agent runs the image `make image` built (Makefile: e2e-node
	// depends on image): its OCI layout imported as is, the index digest
	// checked, then tagged with the name the manifest uses.
	layoutDir := filepath.Join("..", "..", "_output", "image")
	indexDigest, tag := layoutIndex(t, layoutDir)
	agentTar := filepath.Join(work, "agent-oci.tar")
	if b, err := exec.Command("tar", "-C", layoutDir, "-cf", agentTar, ".").CombinedOutput(); err != nil {
		t.Fatalf("packing %s: %v\n%s", layoutDir, err, b)
	}
	imported := "docker.io/nodecreds/nodecreds:" + tag
	ctrCmd := func(args ...string) string {
		t.Helper()
		b, err := exec.Command("ctr", append([]string{"--address", socket, "-n", "k8s.io"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("ctr %v: %v\n%s", args, err, b)
		}
		return string(b)
	}
	ctrCmd("images", "import", "--base-name", "docker.io/nodecreds/nodecreds", "--platform", "linux/"+runtime.GOARCH, agentTar)
	ctrCmd("images", "tag", "--force", imported, agentImage)
	if ls := ctrCmd("images", "ls", "name=="+agentImage); !strings.Contains(ls, indexDigest) {
		t.Fatalf("containerd's %s is not the make image index %s:\n%s", agentImage, indexDigest, ls)
	}
	agentBin := filepath.Join(work, "nodecreds-from-image")
	testsupport.WriteFile(t, agentBin, string(imageBinary(t, layoutDir, runtime.GOARCH)), 0o600)
	mkimage(t, filepath.Join(work, "app.tar"), "docker.io/nodecreds/app:v1", "/bin/busybox,sleep,2147483647", busybox+"=/bin/busybox")
	ctrCmd("images", "import", rn.pauseTar)

	// The private registry and image; containerd reaches it over plain HTTP.
	const user, pass1, pass2 = "robot", "node-canary-pw-1", "node-canary-pw-2"
	registry := startRegistry(t, user, pass1)
	host := registry.addr
	image := host + "/team/app:v1"
	authfile := filepath.Join(work, "push-auth.json")
	testsupport.WriteFile(t, authfile, `{"auths":{"`+host+`":{"auth":"`+testsupport.B64(user+":"+pass1)+`"}}}`, 0o600)
	if b, err := exec.Command("skopeo", "copy", "--insecure-policy", "--dest-tls-verify=false", "--dest-authfile", authfile,
		"docker-archive:"+filepath.Join(work, "app.tar"), "docker://"+image).CombinedOutput(); err != nil {
		t.Fatalf("skopeo copy: %v\n%s", err, b)
	}
	testsupport.WriteFile(t, filepath.Join(ctdDir, "certs.d", host, "hosts.toml"), fmt.Sprintf("server = \"http://%s\"\n[host.\"http://%s\"]\n  capabilities = [\"pull\", \"resolve\"]\n", host, host), 0o600)

	// The node's own docker config, which must come back as it was.
	origDocker := `{"auths":{"ghcr.io":{"auth":"` + testsupport.B64("someone:their-token") + `"}},"psFormat":"table {{.ID}}"}`
	testsupport.WriteFile(t, filepath.Join(dockerDir, "config.json"), origDocker, 0o600)

	kubelet, err := c.StartKubelet(ctx, nodeName, kubeletRoot, socket, "nodecreds.io/not-ready:NoSchedule")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(kubelet.Stop)

	// The controller manager creates the default ServiceAccount that Pods need.
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(500 * time.Millisecond) {
		if _, err := c.Admin.CoreV1().ServiceAccounts(appNamespace).Get(ctx, "default", metav1.GetOptions{}); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no default ServiceAccount; kube-controller-manager log:\n%s", c.Logs("kube-controller-manager"))
		}
	}

	// 1. Without credentials the private image fails to pull.
	if _, err := c.Admin.CoreV1().Pods(appNamespace).Create(ctx, podFor("before", image), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitPod(t, c.Admin, "before", 3*time.Minute, "ErrImagePull", "ImagePullBackOff")
	if ev := pullEvents(ctx, c.Admin, "before"); !strings.Contains(ev, "401") && !strings.Contains(strings.ToLower(ev), "unauthorized") {
		t.Errorf("the failed pull does not say 401 Unauthorized:\n%s", ev)
	}
	// The failure sits in the kubelet's 5-minute credential cache, and the
	// failing Pod would keep refreshing it: delete the Pod and restart the
	// kubelet to measure the fresh-node case.
	if err := c.Admin.CoreV1().Pods(appNamespace).Delete(ctx, "before", metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(0))}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(500 * time.Millisecond) {
		if _, err := c.Admin.CoreV1().Pods(appNamespace).Get(ctx, "before", metav1.GetOptions{}); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the failed Pod does not go away")
		}
	}
	if err := kubelet.Restart(ctx); err != nil {
		t.Fatal(err)
	}

	// 2. Install nodecreds from the manifest with the opt-in
	// credential-provider component (the kubelet ignores the plugin until
	// step 5 configures it) and the machine's overlay; create the Secret.
	objs := withCredentialProvider(t)
	overlay(objs, strings.TrimPrefix(c.URL[strings.LastIndex(c.URL, ":"):], ":"))
	rn.withRuntimeAuth(objs)
	if err := cluster.Apply(ctx, c.RESTConfig, objs, false); err != nil {
		t.Fatal(err)
	}
	created := time.Now()
	if _, err := c.Admin.CoreV1().Secrets(nodecredsNS).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: secretName, Namespace: nodecredsNS},
		Type:       corev1.SecretTypeDockerConfigJson,
		Data:       map[string][]byte{corev1.DockerConfigJsonKey: []byte(`{"auths":{"` + host + `":{"auth":"` + testsupport.B64(user+":"+pass1) + `"}}}`)},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(3 * time.Minute)
	for {
		ds, err := c.Admin.AppsV1().DaemonSets(nodecredsNS).Get(ctx, "nodecreds", metav1.GetOptions{})
		if err == nil && ds.Status.NumberReady == 1 {
			break
		}
		if time.Now().After(deadline) {
			pods, _ := c.Admin.CoreV1().Pods(nodecredsNS).List(ctx, metav1.ListOptions{})
			t.Fatalf("the DaemonSet pod is not Ready: %+v\nkubelet log:\n%s", pods.Items, c.Logs("kubelet"))
		}
		time.Sleep(time.Second)
	}
	t.Logf("DaemonSet pod Ready %s after the Secret was created", time.Since(created).Round(time.Millisecond))
	node, _ := c.Admin.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
	for _, tn := range node.Spec.Taints {
		if tn.Key == "nodecreds.io/not-ready" {
			t.Errorf("the startup taint is still on the node")
		}
	}

	// 3. A new Pod with the private image and no imagePullSecrets runs.
	if _, err := c.Admin.CoreV1().Pods(appNamespace).Create(ctx, podFor("after", image), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("events of pod after:\n%s", pullEvents(context.Background(), c.Admin, "after"))
		}
	})
	_, took := waitPod(t, c.Admin, "after", 3*time.Minute, "Running")
	freshNode := time.Since(created)
	t.Logf("fresh node: Secret created → new Pod Running in %s (Pod Running %s after it was created)", freshNode.Round(time.Second), took.Round(time.Second))

	// 4. Rotation: the registry's password and the Secret change. The
	// files follow at once (status --wait); new pulls succeed once the
	// kubelet's 5-minute credential cache expires. rotate returns when the
	// Secret changed, after the node applied it.
	rotate := func(pass string) (rotated time.Time) {
		t.Helper()
		registry.rotate(user, pass)
		rotated = time.Now()
		sec, err := c.Admin.CoreV1().Secrets(nodecredsNS).Get(ctx, secretName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		sec.Data[corev1.DockerConfigJsonKey] = []byte(`{"auths":{"` + host + `":{"auth":"` + testsupport.B64(user+":"+pass) + `"}}}`)
		if _, err := c.Admin.CoreV1().Secrets(nodecredsNS).Update(ctx, sec, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		status := exec.Command(binary, "status", "--kubeconfig", c.Kubeconfig, "--namespace", nodecredsNS, "--wait", "--timeout", "60s")
		if b, err := status.CombinedOutput(); err != nil {
			t.Fatalf("status --wait after the rotation: %v\n%s", err, b)
		}
		return rotated
	}
	rotated := rotate(pass2)
	filesUpdated := time.Since(rotated)
	t.Logf("rotation: node in sync (status --wait) %s after the Secret update", filesUpdated.Round(time.Millisecond))
	// A new Pod every 20 s (each with a fresh pull back-off) until one runs.
	var running string
	for i := 0; running == "" && time.Since(rotated) < 9*time.Minute; i++ {
		name := fmt.Sprintf("rotated-%d", i)
		if _, err := c.Admin.CoreV1().Pods(appNamespace).Create(ctx, podFor(name, image), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		for end := time.Now().Add(20 * time.Second); time.Now().Before(end); time.Sleep(time.Second) {
			if podState(ctx, c.Admin, name) == "Running" {
				running = name
				break
			}
		}
		if running == "" {
			_ = c.Admin.CoreV1().Pods(appNamespace).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(0))})
		}
	}
	if running == "" {
		t.Fatalf("no Pod pulled with the rotated credentials within 9 minutes")
	}
	afterRotation := time.Since(rotated)
	t.Logf("rotation: Secret updated → a new Pod Running in %s (the kubelet's credential cache)", afterRotation.Round(time.Second))

	// 5. Credential-provider mode: the kubelet restarted with the plugin the
	// DaemonSet installed and the documented CredentialProviderConfig. For
	// the worst case a Pod first pulls with the current password (filling
	// both the config.json cache and the plugin's), then the password
	// rotates again and a new Pod is created. Measured with the default
	// cache duration and, for comparison, with a 10 s one.
	if got, want := testsupport.ReadFile(t, filepath.Join(pluginBinDir, "nodecreds")), testsupport.ReadFile(t, agentBin); !bytes.Equal(got, want) {
		t.Fatalf("%s/nodecreds is not the agent's binary", pluginBinDir)
	}
	// The per-workload entry too (workload_node_test.go), with the
	// kubelet's own kubeconfig for the API server's address and CA.
	sa := &saProvider{matchImages: []string{wn.reg.addr}, args: []string{"--kubelet-kubeconfig=" + filepath.Join(c.Dir, "kubelet-"+nodeName+".kubeconfig")}}
	if fi, err := os.Lstat(filepath.Join(pluginBinDir, "nodecreds-sa")); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("the agent did not install %s/nodecreds-sa as a link: %v %v", pluginBinDir, fi, err)
	}
	cfg := providerConfigWith(t, []string{host}, nil, nil, sa)
	if err := kubelet.Restart(ctx, "--image-credential-provider-config="+cfg, "--image-credential-provider-bin-dir="+pluginBinDir); err != nil {
		t.Fatalf("the kubelet does not start with the plugin: %v\n%s", err, c.Logs("kubelet"))
	}
	passwords := []string{pass1, pass2}
	var pluginTimes []time.Duration
	for i, variant := range []struct {
		name string
		args []string
	}{{"default cache duration", nil}, {"--cache-duration=10s", []string{"--cache-duration=10s"}}} {
		if len(variant.args) > 0 {
			testsupport.WriteFile(t, cfg, string(testsupport.ReadFile(t, providerConfigWith(t, []string{host}, variant.args, nil, sa))), 0o600)
			if err := kubelet.Restart(ctx); err != nil {
				t.Fatalf("restarting the kubelet: %v\n%s", err, c.Logs("kubelet"))
			}
		}
		warm, rotatedPod := fmt.Sprintf("plugin-warm-%d", i), fmt.Sprintf("plugin-rotated-%d", i)
		if _, err := c.Admin.CoreV1().Pods(appNamespace).Create(ctx, podFor(warm, image), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitPod(t, c.Admin, warm, 2*time.Minute, "Running")
		pass := fmt.Sprintf("node-canary-pw-plugin-%d", i)
		passwords = append(passwords, pass)
		rotated := rotate(pass)
		// One Pod, retried by the kubelet's own back-off, as a user sees it.
		if _, err := c.Admin.CoreV1().Pods(appNamespace).Create(ctx, podFor(rotatedPod, image), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("events of pod %s:\n%s", rotatedPod, pullEvents(context.Background(), c.Admin, rotatedPod))
			}
		})
		// The mechanism, not a speed target, is asserted: well under the
		// kubelet's 5-minute config.json cache. The figure goes to the results.
		waitPod(t, c.Admin, rotatedPod, time.Minute, "Running")
		took := time.Since(rotated)
		pluginTimes = append(pluginTimes, took)
		t.Logf("rotation with the credential provider (%s): Secret updated → a new Pod Running in %s (target < 15s)", variant.name, took.Round(time.Second))
	}
	metrics, err := kubelet.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	runs, failures := metricValue(metrics, "kubelet_credential_provider_plugin_duration_count"), metricValue(metrics, "kubelet_credential_provider_plugin_errors_total")
	if runs < 1 || failures != 0 {
		t.Errorf("the kubelet ran the nodecreds plugin %v times with %v errors since its last restart, want ≥1 and 0", runs, failures)
	}
	t.Logf("the kubelet ran the nodecreds plugin %v times since its last restart, no error", runs)
	pluginLog := kubeletLog(t, c)
	for _, p := range passwords {
		if strings.Contains(pluginLog, p) {
			t.Error("a password is in the kubelet's log")
		}
	}

	// Per-workload credentials: the plugin's service-account-token mode.
	wn.run(ctx, c, filepath.Join(cluster.RepoRoot(), "deploy", "credential-provider", nodeAudienceRBAC))
	wn.answersCounted(ctx)

	// Day 2: the agent's image rolls to the previous release and back
	// while the Secret rotates every second.
	prev := importPreviousRelease(ctx, t, work, socket)
	ro := newRolloutNode(t, registry, image)
	ro.run(ctx, c, prev)

	// The pulls containerd makes itself: the sandbox image from a private
	// registry and a mirror with credentials of its own.
	rn.run(ctx, c, socket, ctdDir)

	// 6. Uninstall: delete the DaemonSet, run the documented cleanup; the
	// node files are back to what they were.
	if err := c.Admin.AppsV1().DaemonSets(nodecredsNS).Delete(ctx, "nodecreds", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(time.Second) {
		pods, _ := c.Admin.CoreV1().Pods(nodecredsNS).List(ctx, metav1.ListOptions{})
		if len(pods.Items) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the DaemonSet's pod does not go away")
		}
	}
	if b, err := exec.Command(binary, "cleanup", "--host-root", "/").CombinedOutput(); err != nil {
		t.Fatalf("cleanup: %v\n%s", err, b)
	}
	if _, err := os.Stat(filepath.Join(kubeletRoot, "config.json")); !os.IsNotExist(err) {
		t.Errorf("the kubelet file nodecreds created is still there after cleanup: %v", err)
	}
	if got := string(testsupport.ReadFile(t, filepath.Join(dockerDir, "config.json"))); !jsonEqual([]byte(got), []byte(origDocker)) {
		t.Errorf("root's docker config after cleanup differs from the original:\n%s", got)
	}
	rn.afterCleanup(c, ctdDir)
	wn.noSecrets(t, "kubelet log", kubeletLog(t, c))
	wn.noSecrets(t, "agent log", rn.agentLogs.String())
	ro.noSecrets(t, map[string]string{"kubelet log": kubeletLog(t, c), "agent log": rn.agentLogs.String()})
	writeResults(t, freshNode, filesUpdated, afterRotation, pluginTimes[0], pluginTimes[1], append(rn.timings, wn.timings...))
}

// kubeletLog is the kubelet's whole log, all its restarts (c.Logs gives
// only the tail).
func kubeletLog(t *testing.T, c *cluster.Cluster) string {
	t.Helper()
	return string(testsupport.ReadFile(t, filepath.Join(c.Dir, "kubelet.log")))
}

// metricValue is the value of name{plugin_name="nodecreds"} in Prometheus
// text, 0 when absent.
func metricValue(text, name string) float64 {
	prefix := name + `{plugin_name="nodecreds"} `
	for _, l := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(l, prefix); ok {
			var f float64
			fmt.Sscan(v, &f)
			return f
		}
	}
	return 0
}

// writeResults records the measured times for docs (NODE_E2E_RESULTS).
func writeResults(t *testing.T, fresh, files, rotation, plugin, plugin10s time.Duration, runtimeTimes []string) {
	out := os.Getenv("NODE_E2E_RESULTS")
	if out == "" {
		return
	}
	line := fmt.Sprintf("%s fresh-node-secret-to-running=%s rotation-files-in-sync=%s rotation-to-running=%s rotation-to-running-with-plugin=%s rotation-to-running-with-plugin-10s-cache=%s %s\n",
		time.Now().UTC().Format(time.RFC3339), fresh.Round(time.Second), files.Round(time.Millisecond), rotation.Round(time.Second), plugin.Round(time.Second), plugin10s.Round(time.Second), strings.Join(runtimeTimes, " "))
	f, err := os.OpenFile(out, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Error(err)
		return
	}
	defer f.Close()
	_, _ = f.WriteString(line)
}
