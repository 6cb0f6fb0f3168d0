//go:build nodee2e

package consumers

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"maps"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/nodecreds/nodecreds/internal/testsupport"
	"github.com/nodecreds/nodecreds/test/cluster"
)

// The runtime target on the real node (issue 23): the pulls containerd
// makes itself. Two registries of their own, neither the app registry the
// seed steps measure: the pause registry holds the node's sandbox image,
// the mirror holds an image only it has and is the pause registry's mirror
// in the hosts.toml an admin wrote. Each has its own htpasswd user.
const (
	pauseUser, pausePass1, pausePass2 = "pause-robot", "pause-canary-pw-1", "pause-canary-pw-2"
	mirrorUser, mirrorPass            = "mirror-robot", "mirror-canary-pw"
	pauseSecret, mirrorSecret         = "pause-credentials", "mirror-credentials"
	// localApp is imported into containerd and never pulled (policy
	// Never), so the sandbox Pods below need a pull for their sandbox only.
	localApp = "docker.io/nodecreds/sandbox-app:v1"
)

// runtimeNode holds what the runtime parts of TestRealNode share.
type runtimeNode struct {
	t        *testing.T
	work     string
	certsDir string // the test's own containerd config_path
	config   string // the test's containerd's configuration file
	pause    *registryProc
	mirror   *registryProc
	// pauseRef is containerd's sandbox image, only in the pause registry;
	// pauseTar is it as a docker-archive, for the import the node starts with.
	pauseRef, pauseTar string
	// mirrored is named after the pause registry but only the mirror has it.
	mirrored string
	// adminFile is the pause registry's hosts.toml as the admin wrote it.
	adminFile, adminText string
	// before is every file under certsDir before nodecreds ran.
	before map[string]string

	ctdPID    int
	agentLogs strings.Builder
	timings   []string
}

// newRuntimeNode starts the two registries (before containerd, which needs
// the sandbox image's name), pushes their images and writes the admin's
// hosts.toml for the pause registry, mirror first.
func newRuntimeNode(t *testing.T, work, ctdDir string) *runtimeNode {
	t.Helper()
	rn := &runtimeNode{t: t, work: work, certsDir: filepath.Join(ctdDir, "certs.d"), config: filepath.Join(ctdDir, "config.toml")}
	rn.pause = startRegistry(t, pauseUser, pausePass1)
	rn.mirror = startDebugRegistry(t, mirrorUser, mirrorPass)
	rn.pauseRef = rn.pause.addr + "/nodecreds/pause:e2e"
	rn.mirrored = rn.pause.addr + "/team/mirrored:v1"

	rn.pauseTar = rn.busyboxImage("pause", rn.pauseRef)
	push(t, rn.pauseTar, rn.pauseRef, pauseUser, pausePass1)
	mirroredTar := rn.busyboxImage("mirrored", rn.mirror.addr+"/team/mirrored:v1")
	push(t, mirroredTar, rn.mirror.addr+"/team/mirrored:v1", mirrorUser, mirrorPass)
	if out, err := skopeoInspect("skopeo", rn.mirrored, "--creds", pauseUser+":"+pausePass1); err == nil || !strings.Contains(string(out), "manifest unknown") {
		t.Fatalf("the pause registry does not answer `manifest unknown` for %s (%v), so a pull of it would not prove the mirror:\n%s", rn.mirrored, err, out)
	}

	rn.adminFile = filepath.Join(rn.certsDir, rn.pause.addr, "hosts.toml")
	rn.adminText = "# Site mirror first (ops ticket 7); the registry itself when the mirror lacks an image.\n" +
		"server = \"http://" + rn.pause.addr + "\"\n\n" +
		"[host.\"http://" + rn.mirror.addr + "\"]\n" +
		"  capabilities = [\"pull\", \"resolve\"]\n"
	testsupport.WriteFile(t, rn.adminFile, rn.adminText, 0o644)
	return rn
}

// startDebugRegistry is a registry that logs at debug level: distribution
// 2.8 names the user (auth.user.name) of a successful request only there
// (at info only for failed ones), and that is the proof of whose
// credentials reached it.
func startDebugRegistry(t *testing.T, user, pass string) *registryProc {
	t.Helper()
	r := startRegistry(t, user, pass)
	r.setLogLevel("debug")
	return r
}

// busyboxImage builds an image that sleeps, with a file of its own so
// that its image ID is its own: containerd's CRI keeps one entry per ID,
// and the sandbox image removed and pulled here must share it with no
// image a Pod runs.
func (rn *runtimeNode) busyboxImage(name, ref string) string {
	marker := filepath.Join(rn.work, name+".marker")
	testsupport.WriteFile(rn.t, marker, name+"\n", 0o644)
	out := filepath.Join(rn.work, name+".tar")
	mkimage(rn.t, out, ref, "/bin/busybox,sleep,2147483647", "/bin/busybox=/bin/busybox", marker+"=/"+name)
	return out
}

func push(t *testing.T, archive, ref, user, pass string) {
	t.Helper()
	host, _, _ := strings.Cut(ref, "/")
	authfile := filepath.Join(t.TempDir(), "push-auth.json")
	testsupport.WriteFile(t, authfile, `{"auths":{"`+host+`":{"auth":"`+testsupport.B64(user+":"+pass)+`"}}}`, 0o600)
	if b, err := exec.Command("skopeo", "copy", "--insecure-policy", "--dest-tls-verify=false", "--dest-authfile", authfile,
		"docker-archive:"+archive, "docker://"+ref).CombinedOutput(); err != nil {
		t.Fatalf("skopeo copy %s: %v\n%s", ref, err, b)
	}
}

// withRuntimeAuth records the certs folder as it is before nodecreds runs,
// and turns the runtime target on in the manifest's DaemonSet
// as the chart's runtimeAuth.containerdCertsDir does: the flag, and the
// folder mounted read-write at the same node path under --host-root. The
// folder is the test's containerd's, never the machine's
// /etc/containerd/certs.d.
func (rn *runtimeNode) withRuntimeAuth(objs []*unstructured.Unstructured) {
	rn.before = rn.files()
	for _, o := range objs {
		if o.GetKind() != "DaemonSet" {
			continue
		}
		spec := o.Object["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)
		c := spec["containers"].([]any)[0].(map[string]any)
		c["args"] = append(c["args"].([]any), "--containerd-certs-dir="+rn.certsDir, "--containerd-config="+rn.config)
		c["volumeMounts"] = append(c["volumeMounts"].([]any), map[string]any{"name": "containerd-certs", "mountPath": "/host" + rn.certsDir},
			// The chart mounts containerd's folder read-only; here that
			// folder also holds containerd's root, so the file alone.
			map[string]any{"name": "containerd-config", "mountPath": "/host" + rn.config, "readOnly": true})
		spec["volumes"] = append(spec["volumes"].([]any), map[string]any{"name": "containerd-certs",
			"hostPath": map[string]any{"path": rn.certsDir, "type": "DirectoryOrCreate"}},
			map[string]any{"name": "containerd-config", "hostPath": map[string]any{"path": rn.config, "type": "File"}})
	}
}

// files is every file under certsDir with its content, and every folder
// (named with a trailing slash): an empty host folder still routes, it is
// the one containerd reads for that registry instead of _default.
func (rn *runtimeNode) files() map[string]string {
	out := map[string]string{}
	err := filepath.WalkDir(rn.certsDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == rn.certsDir {
			return err
		}
		if d.IsDir() {
			out[strings.TrimPrefix(p, rn.certsDir+"/")+"/"] = ""
			return nil
		}
		b, err := os.ReadFile(p)
		out[strings.TrimPrefix(p, rn.certsDir+"/")] = string(b)
		return err
	})
	if err != nil {
		rn.t.Fatal(err)
	}
	return out
}

// run is the runtime scenario, after the seed steps and before the
// uninstall: the two Secrets join the agent's sources, then the sandbox
// image (401, the Secret, Running; a rotation), then the mirror. containerd
// runs throughout with the same PID.
func (rn *runtimeNode) run(ctx context.Context, c *cluster.Cluster, socket, ctdDir string) {
	t := rn.t
	rn.ctdPID = containerdPID(t, ctdDir)
	ctr(t, socket, "images", "import", rn.busyboxImage("sandbox-app", localApp))

	rn.addSources(ctx, c)
	rn.createSecret(ctx, c, mirrorSecret, rn.mirror.addr, mirrorUser, mirrorPass)
	mirrorHeader := `[host."http://` + rn.mirror.addr + `".header]`
	testsupport.Eventually(t, time.Minute, "the mirror's header in the admin's hosts.toml", func() bool {
		b, err := os.ReadFile(rn.adminFile)
		return err == nil && strings.Contains(string(b), mirrorHeader+"\n  Authorization = \"Basic "+testsupport.B64(mirrorUser+":"+mirrorPass)+"\"\n")
	})

	rn.sandbox(ctx, c, socket)
	rn.rotateSandbox(ctx, c, socket)
	rn.throughMirror(ctx, c)
	rn.adminKept()
	rn.noFalseAlarm(ctx, c)
	rn.collectAgentLogs()
	if pid := containerdPID(t, ctdDir); pid != rn.ctdPID {
		t.Fatalf("containerd was restarted (PID %d, was %d)", pid, rn.ctdPID)
	}
	t.Logf("runtime: containerd PID %d unchanged through the sandbox and mirror parts", rn.ctdPID)
}

// noFalseAlarm: on this node containerd (1.6.20, as the kubelet reports it
// on the Node) reads the one folder nodecreds writes and both registries
// take Basic authentication, so the agent, reading the real configuration
// and the real Node, reports nothing to fix: the condition says Synced.
func (rn *runtimeNode) noFalseAlarm(ctx context.Context, c *cluster.Cluster) {
	t := rn.t
	t.Helper()
	node, err := c.Admin.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if v := node.Status.NodeInfo.ContainerRuntimeVersion; !strings.HasPrefix(v, "containerd://1.6.") {
		t.Fatalf("the Node reports runtime %q, not containerd 1.6", v)
	}
	// Let the challenges be asked (each once, in the background) and a
	// sync follow.
	time.Sleep(3 * time.Second)
	node, err = c.Admin.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, cond := range node.Status.Conditions {
		if cond.Type == "RegistryCredentialsSynced" && (cond.Status != corev1.ConditionTrue || cond.Reason != "Synced") {
			t.Errorf("the agent reports a problem on a node where containerd uses the headers: %s %s: %s", cond.Status, cond.Reason, cond.Message)
		}
	}
	t.Logf("runtime: the agent read containerd's configuration and the Node (%s): nothing to fix reported", node.Status.NodeInfo.ContainerRuntimeVersion)
}

// addSources adds the two Secrets to the agent's, as the chart's secrets
// value does: the --secret list and the Role's resourceNames. The agent
// Pod is replaced while the sandbox image is still on the node.
func (rn *runtimeNode) addSources(ctx context.Context, c *cluster.Cluster) {
	t := rn.t
	t.Helper()
	rn.collectAgentLogs() // the first agent's log goes with its Pod
	role, err := c.Admin.RbacV1().Roles(nodecredsNS).Get(ctx, "nodecreds-secrets", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(role.Rules[0].ResourceNames, secretName) {
		t.Fatalf("the Role's first rule is not the source Secrets': %+v", role.Rules[0])
	}
	role.Rules[0].ResourceNames = append(role.Rules[0].ResourceNames, pauseSecret, mirrorSecret)
	if _, err := c.Admin.RbacV1().Roles(nodecredsNS).Update(ctx, role, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	ds, err := c.Admin.AppsV1().DaemonSets(nodecredsNS).Get(ctx, "nodecreds", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	args := ds.Spec.Template.Spec.Containers[0].Args
	i := slices.Index(args, "--secret="+secretName)
	if i < 0 {
		t.Fatalf("the DaemonSet has no --secret=%s: %v", secretName, args)
	}
	args[i] = "--secret=" + strings.Join(rn.sources(), ",")
	if _, err := c.Admin.AppsV1().DaemonSets(nodecredsNS).Update(ctx, ds, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Running, not Ready: two of its Secrets do not exist yet.
	testsupport.Eventually(t, 2*time.Minute, "the agent Pod with the three Secrets running", func() bool {
		pods, err := c.Admin.CoreV1().Pods(nodecredsNS).List(ctx, metav1.ListOptions{})
		return err == nil && len(pods.Items) == 1 && pods.Items[0].Status.Phase == corev1.PodRunning &&
			slices.Contains(pods.Items[0].Spec.Containers[0].Args, args[i])
	})
}

func (rn *runtimeNode) sources() []string { return []string{secretName, pauseSecret, mirrorSecret} }

func (rn *runtimeNode) createSecret(ctx context.Context, c *cluster.Cluster, name, host, user, pass string) {
	rn.t.Helper()
	if _, err := c.Admin.CoreV1().Secrets(nodecredsNS).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: nodecredsNS, Annotations: map[string]string{"nodecreds.io/runtime-auth": "true"}},
		Type:       corev1.SecretTypeDockerConfigJson,
		Data:       map[string][]byte{corev1.DockerConfigJsonKey: []byte(`{"auths":{"` + host + `":{"auth":"` + testsupport.B64(user+":"+pass) + `"}}}`)},
	}, metav1.CreateOptions{}); err != nil {
		rn.t.Fatal(err)
	}
}

// sandbox: with the sandbox image gone from the node, a Pod cannot get a
// sandbox (containerd's own pull is refused, 401) until the pause
// registry's Secret, annotated for the runtime, is applied.
func (rn *runtimeNode) sandbox(ctx context.Context, c *cluster.Cluster, socket string) {
	t := rn.t
	t.Helper()
	rn.removePause(socket)
	rn.createPod(ctx, c, sandboxPod("sandbox-0"))
	testsupport.Eventually(t, 2*time.Minute, "FailedCreatePodSandBox with 401 in the events of sandbox-0", func() bool {
		for _, l := range strings.Split(pullEvents(ctx, c.Admin, "sandbox-0"), "\n") {
			if strings.HasPrefix(l, "FailedCreatePodSandBox: ") && strings.Contains(l, rn.pauseRef) && strings.Contains(l, "401 Unauthorized") {
				t.Logf("runtime: before the Secret: %s", l)
				return true
			}
		}
		return false
	})
	if st := podState(ctx, c.Admin, "sandbox-0"); st != "ContainerCreating" {
		t.Fatalf("sandbox-0 is %q without the pause registry's credentials, want ContainerCreating", st)
	}
	applied := time.Now()
	rn.createSecret(ctx, c, pauseSecret, rn.pause.addr, pauseUser, pausePass1)
	rn.waitRunning(ctx, c, "sandbox-0")
	took := time.Since(applied)
	rn.timings = append(rn.timings, "sandbox-secret-to-running="+took.Round(time.Second).String())
	t.Logf("runtime: pause registry's Secret applied → sandbox-0 Running in %s (containerd pulled %s itself, no restart)", took.Round(time.Millisecond), rn.pauseRef)
}

// rotateSandbox: the pause registry's password and the Secret change; the
// sandbox image, removed again, is pulled with the new one.
func (rn *runtimeNode) rotateSandbox(ctx context.Context, c *cluster.Cluster, socket string) {
	t := rn.t
	t.Helper()
	rn.pause.rotate(pauseUser, pausePass2)
	rotated := time.Now()
	sec, err := c.Admin.CoreV1().Secrets(nodecredsNS).Get(ctx, pauseSecret, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sec.Data[corev1.DockerConfigJsonKey] = []byte(`{"auths":{"` + rn.pause.addr + `":{"auth":"` + testsupport.B64(pauseUser+":"+pausePass2) + `"}}}`)
	if _, err := c.Admin.CoreV1().Secrets(nodecredsNS).Update(ctx, sec, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	status := exec.Command(binary, "status", "--kubeconfig", c.Kubeconfig, "--namespace", nodecredsNS,
		"--secret", strings.Join(rn.sources(), ","), "--wait", "--timeout", "60s")
	if b, err := status.CombinedOutput(); err != nil {
		t.Fatalf("status --wait after the pause registry's rotation: %v\n%s", err, b)
	}
	inSync := time.Since(rotated)
	rn.removePause(socket)
	rn.createPod(ctx, c, sandboxPod("sandbox-1"))
	rn.waitRunning(ctx, c, "sandbox-1")
	took := time.Since(rotated)
	rn.timings = append(rn.timings, "sandbox-rotation-to-running="+took.Round(time.Second).String())
	t.Logf("runtime: pause registry rotated: node in sync (status --wait) in %s; sandbox image removed again, sandbox-1 Running %s after the Secret update",
		inSync.Round(time.Millisecond), took.Round(time.Millisecond))
}

// throughMirror: an image only the mirror has, named after the pause
// registry, is pulled through the mirror with the mirror's credentials.
func (rn *runtimeNode) throughMirror(ctx context.Context, c *cluster.Cluster) {
	t := rn.t
	t.Helper()
	created := time.Now()
	rn.createPod(ctx, c, podFor("mirror-0", rn.mirrored))
	rn.waitRunning(ctx, c, "mirror-0")
	took := time.Since(created)
	rn.timings = append(rn.timings, "mirror-pod-running="+took.Round(time.Second).String())
	t.Logf("runtime: mirror-0 (%s, only in the mirror) Running %s after it was created", rn.mirrored, took.Round(time.Millisecond))

	// Stopped, so its log is complete and read without a race.
	rn.mirror.stop()
	mirrorLog := rn.mirror.logs.String()
	// containerd asks a mirror for ...?ns=<the image's registry>.
	served := regexp.MustCompile(`msg=GetImageManifest auth\.user\.name=` + mirrorUser + ` .*http\.request\.uri="/v2/team/mirrored/manifests/v1\?ns=` + regexp.QuoteMeta(url.QueryEscape(rn.pause.addr)) + `"`)
	if l := served.FindString(mirrorLog); l == "" {
		var manifests []string
		for _, l := range strings.Split(mirrorLog, "\n") {
			if strings.Contains(l, "GetImageManifest") {
				manifests = append(manifests, l)
			}
		}
		t.Errorf("the mirror's log shows no manifest request for team/mirrored of %s by %s; its manifest requests:\n%s", rn.pause.addr, mirrorUser, strings.Join(manifests, "\n"))
	} else {
		t.Logf("runtime: mirror log: %s", l)
	}
	if strings.Contains(mirrorLog, pauseUser) {
		t.Errorf("the pause registry's user %s reached the mirror", pauseUser)
	}
}

// adminKept: the admin's hosts.toml is what they wrote plus nodecreds'
// header lines: a [header] table for the server and one for the mirror's
// section, each with its Authorization line.
func (rn *runtimeNode) adminKept() {
	t := rn.t
	t.Helper()
	merged := string(testsupport.ReadFile(t, rn.adminFile))
	headerTable := regexp.MustCompile(`^\s*\[(host\."[^"]+"\.)?header\]\s*$`)
	var kept, added []string
	for _, l := range strings.SplitAfter(merged, "\n") {
		switch {
		case strings.HasPrefix(strings.TrimSpace(l), "Authorization = "):
			added = append(added, "Authorization = <value>")
		case headerTable.MatchString(l):
			added = append(added, strings.TrimSpace(l))
		default:
			kept = append(kept, l)
		}
	}
	for _, h := range []struct{ section, user, pass string }{
		{"[header]", pauseUser, pausePass2},
		{`[host."http://` + rn.mirror.addr + `".header]`, mirrorUser, mirrorPass},
	} {
		if !strings.Contains(merged, h.section+"\n  Authorization = \"Basic "+testsupport.B64(h.user+":"+h.pass)+"\"\n") {
			t.Errorf("the admin's hosts.toml has no %s header for %s", h.section, h.user)
		}
	}
	if strings.Join(kept, "") != rn.adminText {
		t.Errorf("the admin's hosts.toml changed outside nodecreds' header lines; without them:\n%s", strings.Join(kept, ""))
	} else {
		t.Logf("runtime: the admin's hosts.toml is byte for byte theirs apart from the lines nodecreds added: %q", added)
	}
}

// afterCleanup: after the uninstall and `nodecreds cleanup`, the certs
// folder holds exactly the files it held before, with the same bytes, and
// no password of these registries is in the kubelet's, containerd's or
// the agent's log.
func (rn *runtimeNode) afterCleanup(c *cluster.Cluster, ctdDir string) {
	t := rn.t
	after := rn.files()
	for name, text := range rn.before {
		if got, ok := after[name]; !ok {
			t.Errorf("cleanup removed %s", name)
		} else if got != text {
			t.Errorf("cleanup left %s different from what was there before nodecreds", name)
		}
	}
	for name := range after {
		if _, ok := rn.before[name]; !ok {
			t.Errorf("cleanup left %s, which nodecreds created", name)
		}
	}
	if !t.Failed() {
		t.Logf("runtime: after cleanup the certs folder holds exactly its folders and files from before nodecreds, same bytes: %v", slices.Sorted(maps.Keys(after)))
	}
	if fi, err := os.Stat(rn.adminFile); err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("the admin's hosts.toml is not back at its mode after cleanup (written 0644): %v %v", fi, err)
	}

	var secrets []string
	for _, up := range []string{pauseUser + ":" + pausePass1, pauseUser + ":" + pausePass2, mirrorUser + ":" + mirrorPass} {
		_, pass, _ := strings.Cut(up, ":")
		secrets = append(secrets, pass, testsupport.B64(up))
	}
	ctdLog := string(testsupport.ReadFile(t, filepath.Join(ctdDir, "containerd.log")))
	kubeletLog := kubeletLog(t, c)
	for where, text := range map[string]string{"kubelet log": kubeletLog, "containerd log": ctdLog, "agent log": rn.agentLogs.String()} {
		for _, s := range secrets {
			if strings.Contains(text, s) {
				t.Errorf("a password or header value of the pause registry or the mirror is in the %s", where)
			}
		}
	}
	t.Logf("runtime: no password or header value of the pause registry or the mirror in the kubelet log (%d bytes), containerd log (%d bytes) or agent log (%d bytes)",
		len(kubeletLog), len(ctdLog), rn.agentLogs.Len())
}

// collectAgentLogs keeps the agent Pods' container logs, which the kubelet
// deletes with the Pod.
func (rn *runtimeNode) collectAgentLogs() {
	logs, _ := filepath.Glob("/var/log/pods/" + nodecredsNS + "_*/*/*.log")
	if len(logs) == 0 {
		rn.t.Fatal("no agent log under /var/log/pods")
	}
	for _, l := range logs {
		rn.agentLogs.Write(testsupport.ReadFile(rn.t, l))
	}
}

func (rn *runtimeNode) removePause(socket string) {
	ctr(rn.t, socket, "images", "rm", rn.pauseRef)
	if ls := ctr(rn.t, socket, "images", "ls", "-q", "name=="+rn.pauseRef); strings.TrimSpace(ls) != "" {
		rn.t.Fatalf("%s is still in containerd's k8s.io namespace: %s", rn.pauseRef, ls)
	}
}

func (rn *runtimeNode) createPod(ctx context.Context, c *cluster.Cluster, pod *corev1.Pod) {
	rn.t.Helper()
	if _, err := c.Admin.CoreV1().Pods(appNamespace).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		rn.t.Fatal(err)
	}
}

func (rn *runtimeNode) waitRunning(ctx context.Context, c *cluster.Cluster, name string) {
	rn.t.Helper()
	rn.t.Cleanup(func() {
		if rn.t.Failed() {
			rn.t.Logf("events of pod %s:\n%s", name, pullEvents(context.Background(), c.Admin, name))
		}
	})
	waitPod(rn.t, c.Admin, name, 2*time.Minute, "Running")
}

// sandboxPod runs an image already on the node and never pulled, so its
// only pull is its sandbox's.
func sandboxPod(name string) *corev1.Pod {
	p := podFor(name, localApp)
	p.Spec.Containers[0].ImagePullPolicy = corev1.PullNever
	return p
}

func ctr(t *testing.T, socket string, args ...string) string {
	t.Helper()
	b, err := exec.Command("ctr", append([]string{"--address", socket, "-n", "k8s.io"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("ctr %v: %v\n%s", args, err, b)
	}
	return string(b)
}

// containerdPID is the running containerd's PID, from the pid file
// containerd.sh wrote, checked to be a live containerd.
func containerdPID(t *testing.T, ctdDir string) int {
	t.Helper()
	var pid int
	if _, err := fmt.Sscan(string(testsupport.ReadFile(t, filepath.Join(ctdDir, "containerd.pid"))), &pid); err != nil {
		t.Fatal(err)
	}
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil || !bytes.Equal(bytes.TrimSpace(comm), []byte("containerd")) || syscall.Kill(pid, 0) != nil {
		t.Fatalf("containerd (PID %d) is not running: %q %v", pid, comm, err)
	}
	return pid
}
