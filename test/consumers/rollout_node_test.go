//go:build nodee2e

package consumers

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/nodecreds/nodecreds/internal/testsupport"
	"github.com/nodecreds/nodecreds/test/cluster"
	"github.com/nodecreds/nodecreds/test/releases"
)

// The DaemonSet rollout on the real node (issue 26): the agent's image
// rolls from the previous release to today's build and back while the
// Secret rotates every second, among passwords the registry accepts (it
// reads htpasswd only at start, so every user is there from the start).
const (
	// Eight users: a read of the file names its revision modulo eight,
	// and the file is never eight rotations (seconds) behind.
	rolloutUsers = 8
	prevImage    = "docker.io/nodecreds/nodecreds:previous-release"
)

// rolloutNode holds what the rollout shares with TestRealNode.
type rolloutNode struct {
	t        *testing.T
	reg      *registryProc
	host     string
	image    string // the app image Pods pull meanwhile
	keys     []string
	rotation int    // the last revision written to the Secret
	initial  string // the auth of the file's one entry for the registry before the first rotation

	mu       sync.Mutex
	rotated  map[int]time.Time // rotation → when the Secret got it
	seen     []observation     // the kubelet file's revisions (rotation % rolloutUsers) as read
	problems []string
}

// observation is one read of the kubelet file: the rotation it holds
// (the latest made by then with the user it names; -1 before the first).
type observation struct {
	at  time.Time
	rev int
}

func rolloutUser(i int) (string, string) {
	return fmt.Sprintf("rollout-%d", i), fmt.Sprintf("rollout-canary-pw-%d", i)
}

// importPreviousRelease builds the previous release's image from its own
// source (test/releases, RELEASES) and imports it into containerd.
func importPreviousRelease(ctx context.Context, t *testing.T, work, socket string) releases.Release {
	t.Helper()
	prev, err := releases.Previous(cluster.RepoRoot())
	if err != nil {
		t.Fatal(err)
	}
	layoutDir, err := releases.Image(ctx, cluster.RepoRoot(), prev)
	if err != nil {
		t.Fatal(err)
	}
	_, tag := layoutIndex(t, layoutDir)
	tar := filepath.Join(work, "previous-oci.tar")
	if b, err := exec.Command("tar", "-C", layoutDir, "-cf", tar, ".").CombinedOutput(); err != nil {
		t.Fatalf("packing %s: %v\n%s", layoutDir, err, b)
	}
	ctr(t, socket, "images", "import", "--base-name", "docker.io/nodecreds/nodecreds", "--platform", "linux/"+runtime.GOARCH, tar)
	ctr(t, socket, "images", "tag", "--force", "docker.io/nodecreds/nodecreds:"+tag, prevImage)
	return prev
}

// newRolloutNode adds the rollout's users to the app registry (one restart
// each, before the rollout).
func newRolloutNode(t *testing.T, reg *registryProc, image string) *rolloutNode {
	t.Helper()
	rn := &rolloutNode{t: t, reg: reg, host: reg.addr, image: image, rotated: map[int]time.Time{}}
	for i := range rolloutUsers {
		u, p := rolloutUser(i)
		reg.setPassword(u, p)
	}
	// Three spellings of the one registry: a file that holds one of them
	// from another revision than the others holds a part of two.
	rn.keys = []string{rn.host, rn.host + "/team", "http://" + rn.host + "/other"}
	return rn
}

// secretData is revision rev of the Secret: every key with the same user.
func (rn *rolloutNode) secretData(rev int) []byte {
	u, p := rolloutUser(rev % rolloutUsers)
	auths := map[string]any{}
	for _, k := range rn.keys {
		auths[k] = map[string]string{"auth": testsupport.B64(u + ":" + p)}
	}
	b, _ := json.Marshal(map[string]any{"auths": auths})
	return b
}

// revisionOf reads the kubelet file's revision: -1 when the file holds no
// rollout entries yet, an error when it is missing, does not parse or
// mixes revisions.
func (rn *rolloutNode) revisionOf(data []byte) (int, error) {
	var doc struct {
		Auths map[string]struct{ Auth string } `json:"auths"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return 0, fmt.Errorf("does not parse: %w", err)
	}
	if e, ok := doc.Auths[rn.keys[0]]; ok && e.Auth == rn.initial {
		// The revision before the rollout's first: its one key alone.
		for _, k := range rn.keys[1:] {
			if _, ok := doc.Auths[k]; ok {
				return 0, fmt.Errorf("entries of two revisions")
			}
		}
		return -1, nil
	}
	user := ""
	for i, k := range rn.keys {
		e, ok := doc.Auths[k]
		if !ok {
			return 0, fmt.Errorf("entry %d of %d missing", i+1, len(rn.keys))
		}
		if i > 0 && e.Auth != user {
			return 0, fmt.Errorf("entries of two revisions")
		}
		user = e.Auth
	}
	for i := range rolloutUsers {
		u, p := rolloutUser(i)
		if user == testsupport.B64(u+":"+p) {
			return i, nil
		}
	}
	return 0, fmt.Errorf("an entry of no revision")
}

// watch reads the kubelet file until ctx ends, recording each revision
// change and any read that is not one revision entire. Root's docker
// config keeps one key per registry (the docker CLI's), so there each read
// must parse and hold the registry.
func (rn *rolloutNode) watch(ctx context.Context, path string, kubelet bool) {
	last := -1
	for ctx.Err() == nil {
		b, err := os.ReadFile(path)
		rev := last
		switch {
		case err != nil:
		case kubelet:
			rev, err = rn.revisionOf(b)
		default:
			var doc struct{ Auths map[string]any }
			if err = json.Unmarshal(b, &doc); err == nil && doc.Auths[rn.host] == nil {
				err = fmt.Errorf("no entry for %s", rn.host)
			}
		}
		rn.mu.Lock()
		if err != nil {
			rn.problems = append(rn.problems, fmt.Sprintf("%s at %s: %v (%s)", path, time.Now().Format(time.StampMilli), err, usersOf(b)))
		} else if rev != last {
			full := rev
			for full >= 0 && full+rolloutUsers <= rn.rotation {
				full += rolloutUsers
			}
			rn.seen = append(rn.seen, observation{at: time.Now(), rev: full})
			last = rev
		}
		rn.mu.Unlock()
		time.Sleep(2 * time.Millisecond)
	}
}

// usersOf lists a config.json's keys with their entries' usernames (never
// a password), for a failure's message.
func usersOf(data []byte) string {
	var doc struct {
		Auths map[string]struct{ Auth string } `json:"auths"`
	}
	if json.Unmarshal(data, &doc) != nil {
		return "unparsable"
	}
	var out []string
	for k, e := range doc.Auths {
		b, _ := base64.StdEncoding.DecodeString(e.Auth)
		u, _, _ := strings.Cut(string(b), ":")
		out = append(out, k+"="+u)
	}
	sort.Strings(out)
	return strings.Join(out, " ")
}

// rotate writes the next revision to the Secret.
func (rn *rolloutNode) rotate(ctx context.Context, c *cluster.Cluster) {
	rn.t.Helper()
	rn.rotation++
	patch, _ := json.Marshal(map[string]any{"data": map[string][]byte{corev1.DockerConfigJsonKey: rn.secretData(rn.rotation)}})
	if _, err := c.Admin.CoreV1().Secrets(nodecredsNS).Patch(ctx, secretName, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		rn.t.Fatal(err)
	}
	rn.mu.Lock()
	rn.rotated[rn.rotation] = time.Now()
	rn.mu.Unlock()

}

// roll sets the DaemonSet's image, rotating the Secret every second and
// creating a Pod that pulls the private image every two seconds
// meanwhile; between the old agent's stop and the new one's start it
// rotates every 300 ms, so that a rotation is pending when the new agent
// starts. It returns how long after the new agent's container was seen
// running (polled every 100 ms) the file held the rotation of that moment
// or a later one, and whether it was pending then.
func (rn *rolloutNode) roll(ctx context.Context, c *cluster.Cluster, image string) (time.Duration, bool) {
	t := rn.t
	t.Helper()
	old := agentPod(ctx, t, c)
	t.Logf("rollout: rolling to %s at %s (rotation %d)", image, time.Now().Format(time.StampMilli), rn.rotation)
	patch := fmt.Sprintf(`{"spec":{"template":{"spec":{"containers":[{"name":"nodecreds","image":%q}]}}}}`, image)
	if _, err := c.Admin.AppsV1().DaemonSets(nodecredsNS).Patch(ctx, "nodecreds", types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	var started time.Time
	atStart := 0
	var pods []string
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for i := 1; ; i++ {
		<-tick.C
		stopping := false
		if started.IsZero() {
			p, err := c.Admin.CoreV1().Pods(nodecredsNS).Get(ctx, old.Name, metav1.GetOptions{})
			stopping = apierrors.IsNotFound(err) || err == nil && p.DeletionTimestamp != nil
		}
		if i%10 == 0 || stopping && i%3 == 0 {
			rn.rotate(ctx, c)
		}
		if i%20 == 0 {
			name := fmt.Sprintf("pull-%s-%d", rolloutTag(image), len(pods))
			if _, err := c.Admin.CoreV1().Pods(appNamespace).Create(ctx, podFor(name, rn.image), metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			pods = append(pods, name)
		}
		if started.IsZero() {
			if p := agentPod(ctx, t, c); p != nil && p.UID != old.UID && running(p) && p.Spec.Containers[0].Image == image {
				started, atStart = time.Now(), rn.rotation
				t.Logf("rollout: the agent of %s is running at %s (rotation %d)", image, started.Format(time.StampMilli), atStart)
			}
		} else if time.Since(started) > 5*time.Second {
			break // rotations go on a while after the new agent started
		}
		if i > 1800 {
			t.Fatalf("the DaemonSet's Pod did not roll to %s in 3 minutes", image)
		}
	}
	for _, p := range pods {
		waitPod(t, c.Admin, p, time.Minute, "Running")
	}
	rn.mu.Lock()
	defer rn.mu.Unlock()
	pending := true
	for _, o := range rn.seen {
		if o.at.After(started) {
			if o.rev >= atStart {
				return max(o.at.Sub(started), 0), pending
			}
			continue
		}
		pending = o.rev < atStart
	}
	t.Fatalf("after the agent of %s started, the kubelet file never held rotation %d or a later one", image, atStart)
	return 0, false
}

func rolloutTag(image string) string {
	if image == prevImage {
		return "prev"
	}
	return "today"
}

// agentPod is the DaemonSet's Pod (the newest, during a roll).
func agentPod(ctx context.Context, t *testing.T, c *cluster.Cluster) *corev1.Pod {
	t.Helper()
	pods, err := c.Admin.CoreV1().Pods(nodecredsNS).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var newest *corev1.Pod
	for i := range pods.Items {
		p := &pods.Items[i]
		if p.DeletionTimestamp != nil {
			continue
		}
		if newest == nil || p.CreationTimestamp.After(newest.CreationTimestamp.Time) {
			newest = p
		}
	}
	return newest
}

func running(p *corev1.Pod) bool {
	for _, s := range p.Status.ContainerStatuses {
		if s.State.Running != nil {
			return true
		}
	}
	return false
}

// run rolls the agent to the previous release and back to today's build.
func (rn *rolloutNode) run(ctx context.Context, c *cluster.Cluster, prev releases.Release) {
	t := rn.t
	t.Helper()
	// Watched from before the first rotation, which also adds two
	// spellings of the registry: the file goes from its one entry to the
	// three in one write (the Secret waits whole for its login).
	var before struct {
		Auths map[string]struct{ Auth string } `json:"auths"`
	}
	if err := json.Unmarshal(testsupport.ReadFile(t, filepath.Join(kubeletRoot, "config.json")), &before); err != nil || len(before.Auths) != 1 {
		t.Fatalf("the kubelet file before the rollout: %v, %d entries, want the registry's one", err, len(before.Auths))
	}
	rn.initial = before.Auths[rn.host].Auth
	wctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); rn.watch(wctx, filepath.Join(kubeletRoot, "config.json"), true) }()
	go func() { defer wg.Done(); rn.watch(wctx, filepath.Join(dockerDir, "config.json"), false) }()
	// The first revision lands before the rollout starts.
	rn.rotate(ctx, c)
	if b, err := exec.Command(binary, "status", "--kubeconfig", c.Kubeconfig, "--namespace", nodecredsNS, "--wait", "--timeout", "60s").CombinedOutput(); err != nil {
		t.Fatalf("status --wait: %v\n%s", err, b)
	}
	down, pendingDown := rn.roll(ctx, c, prevImage)
	up, pendingUp := rn.roll(ctx, c, agentImage)
	stop()
	wg.Wait()
	rn.mu.Lock()
	defer rn.mu.Unlock()
	for _, p := range rn.problems {
		t.Errorf("rollout: %s", p)
	}
	if len(rn.problems) > 0 {
		return
	}
	// Today's agent logs in at once at its start; 0.1.0 waits a random
	// time within its --verify-spread (1 s) first, as it does for every
	// rotation: its bound is a second longer.
	for _, b := range []struct {
		what    string
		took    time.Duration
		pending bool
		bound   time.Duration
	}{{"to " + prev.Version, down, pendingDown, 2 * time.Second}, {"back to today's build", up, pendingUp, time.Second}} {
		if b.took > b.bound {
			t.Errorf("rollout %s: the rotation of the new agent's start reached the file %s after it started, want within %s", b.what, b.took.Round(time.Millisecond), b.bound)
		}
		if !b.pending {
			t.Logf("rollout %s: no rotation was pending when the new agent started (the old one applied the last): the time measures nothing", b.what)
		}
	}
	t.Logf("rollout: %d Secret rotations, one a second, while the agent rolled to release %s (%s) and back; the kubelet file and root's docker config held one revision entire at every read (%d revision changes seen), never missing; the rotation of the new agent's start reached the file %s (down; pending then: %v) and %s (up; pending: %v) after it started; every Pod pulling meanwhile ran",
		rn.rotation, prev.Version, prev.Commit[:7], len(rn.seen), down.Round(time.Millisecond), pendingDown, up.Round(time.Millisecond), pendingUp)
}

// noSecrets fails when a rollout password or its auth string is in texts.
func (rn *rolloutNode) noSecrets(t *testing.T, texts map[string]string) {
	t.Helper()
	for where, text := range texts {
		for i := range rolloutUsers {
			u, p := rolloutUser(i)
			if strings.Contains(text, p) || strings.Contains(text, testsupport.B64(u+":"+p)) {
				t.Errorf("a rollout password or auth string is in the %s", where)
			}
		}
	}
}
