package test

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nodecreds/nodecreds/internal/dockercfg"
	"github.com/nodecreds/nodecreds/internal/nodefile"
	"github.com/nodecreds/nodecreds/internal/testsupport"
	"github.com/nodecreds/nodecreds/test/cluster"
)

// shippedMemory returns the DaemonSet's memory limit and GOMEMLIMIT as
// deploy/daemonset.yaml (the chart's render) ships them.
func shippedMemory(t *testing.T) (limit int64, gomemlimit string) {
	t.Helper()
	objs, err := cluster.ReadManifest(filepath.Join(cluster.RepoRoot(), "deploy", "daemonset.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	ds, ok := find[appsv1.DaemonSet](t, objs, "DaemonSet")
	if !ok {
		t.Fatal("deploy/daemonset.yaml has no DaemonSet")
	}
	c := ds.Spec.Template.Spec.Containers[0]
	q, ok := c.Resources.Limits[corev1.ResourceMemory]
	if !ok {
		t.Fatal("the DaemonSet ships no memory limit")
	}
	for _, e := range c.Env {
		if e.Name == "GOMEMLIMIT" {
			gomemlimit = e.Value
		}
	}
	if gomemlimit == "" {
		t.Fatal("the DaemonSet ships no GOMEMLIMIT")
	}
	return q.Value(), gomemlimit
}

// memcg is a cgroup v1 memory controller group of its own, under the
// test's, for one process.
type memcg struct{ dir string }

// newMemcg creates the group with a hard limit, or fails the test saying
// why (this needs cgroup v1's memory controller, writable: root).
func newMemcg(t *testing.T, limit int64) *memcg {
	t.Helper()
	own := ""
	f, err := os.Open("/proc/self/cgroup")
	if err != nil {
		t.Fatalf("reading /proc/self/cgroup: %v", err)
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if parts := strings.SplitN(sc.Text(), ":", 3); len(parts) == 3 && parts[1] == "memory" {
			own = parts[2]
		}
	}
	f.Close()
	if own == "" {
		t.Fatal("this test needs the cgroup v1 memory controller (a memory line in /proc/self/cgroup, /sys/fs/cgroup/memory/); there is none")
	}
	dir := filepath.Join("/sys/fs/cgroup/memory", own, fmt.Sprintf("nodecreds-test-%d-%d", os.Getpid(), time.Now().UnixNano()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatalf("creating the memory cgroup %s (needs cgroup v1's memory controller, writable by this user): %v", dir, err)
	}
	c := &memcg{dir: dir}
	t.Cleanup(func() {
		for range 50 { // the group goes once its process has gone
			if err := os.Remove(dir); err == nil || os.IsNotExist(err) {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Errorf("could not remove the memory cgroup %s", dir)
	})
	c.set(t, "memory.limit_in_bytes", limit)
	if _, err := os.Stat(filepath.Join(dir, "memory.memsw.limit_in_bytes")); err == nil {
		c.set(t, "memory.memsw.limit_in_bytes", limit) // no escape into swap
	}
	return c
}

func (c *memcg) set(t *testing.T, name string, v int64) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(c.dir, name), []byte(strconv.FormatInt(v, 10)), 0o644); err != nil {
		t.Fatalf("setting %s of %s: %v", name, c.dir, err)
	}
	if got := c.get(t, name); got != v {
		t.Fatalf("%s of %s is %d after writing %d", name, c.dir, got, v)
	}
}

func (c *memcg) get(t *testing.T, name string) int64 {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(c.dir, name))
	if err != nil {
		t.Fatalf("reading %s: %v", name, err)
	}
	v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		t.Fatalf("%s of %s: %v", name, c.dir, err)
	}
	return v
}

// field returns a "key value" line's value from a cgroup file (memory.stat,
// memory.oom_control).
func (c *memcg) field(t *testing.T, file, key string) int64 {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(c.dir, file))
	if err != nil {
		t.Fatalf("reading %s: %v", file, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, " "); ok && k == key {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	t.Fatalf("%s of %s has no %s", file, c.dir, key)
	return 0
}

// peaks samples what the group charges, often, while a test runs: the
// anonymous memory (what the kernel cannot reclaim; Go's heap), and the
// file pages the agent maps (its binary) with it.
type peaks struct {
	mu           sync.Mutex
	anon, mapped int64
	stop         chan struct{}
	done         chan struct{}
}

func (c *memcg) sample(t *testing.T) *peaks {
	p := &peaks{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		for {
			b, err := os.ReadFile(filepath.Join(c.dir, "memory.stat"))
			if err == nil {
				var anon, mapped int64
				for _, line := range strings.Split(string(b), "\n") {
					k, v, _ := strings.Cut(line, " ")
					n, _ := strconv.ParseInt(v, 10, 64)
					switch k {
					case "rss":
						anon = n
					case "mapped_file":
						mapped = n
					}
				}
				p.mu.Lock()
				p.anon, p.mapped = max(p.anon, anon), max(p.mapped, anon+mapped)
				p.mu.Unlock()
			}
			select {
			case <-p.stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(p.end)
	return p
}

func (p *peaks) end() {
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
	<-p.done
}

// uncachedCopy copies the binary and drops the copy's pages from the page
// cache, so that the pages the agent runs from are charged to its group as
// on a node (the test's build put them in the cache, charged elsewhere).
func uncachedCopy(t *testing.T, src string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "nodecreds")
	testsupport.WriteFile(t, dst, string(testsupport.ReadFile(t, src)), 0o755)
	f, err := os.Open(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Fatalf("dropping the binary's cached pages: %v", err)
	}
	return dst
}

// entriesDoc is a .dockerconfigjson of n entries, keys name(i), all with
// the shortest valid auth.
func entriesDoc(n int, name func(int) string) []byte {
	var b strings.Builder
	b.WriteString(`{"auths":{`)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `"%s":{"auth":"dTpw"}`, name(i))
	}
	b.WriteString(`}}`)
	return []byte(b.String())
}

// foreignFile is a config.json of n foreign entries of the usual size.
func foreignFile(n int) []byte {
	b := []byte(`{"auths":{`)
	for i := range n {
		if i > 0 {
			b = append(b, ',')
		}
		b = fmt.Appendf(b, `"f%05d.example.test":{"auth":"Zm9yZWlnbjpwYXNzd29yZA=="}`, i)
	}
	return append(b, `}}`...)
}

// TestWorstInputsUnderTheMemoryLimit (issue 21, point 4): the real agent
// (built as released), against a real API server, in a memory cgroup of the
// DaemonSet's limit with its GOMEMLIMIT, handed the worst inputs it
// accepts and refuses:
//   - the largest Secret it accepts, dockercfg.MaxEntries entries filling
//     the API server's 1 MiB, merged into a kubelet file and a docker file
//     that then hold nodefile.MaxEntries entries each (some 4 MB), then one
//     entry of it rotated;
//   - the docker file replaced by 4 MiB of tiny entries (some 330,000):
//     refused as counted, left as it is;
//   - a Secret of 1 MiB of tiny entries (37,000, the issue's): refused as
//     counted, with the reason on the Node condition, the last good
//     credentials staying on disk.
//
// The agent is never OOM-killed, stays healthy, and what it needs resident
// (its anonymous memory and the binary's pages it runs from) stays under the
// limit with a margin.
func TestWorstInputsUnderTheMemoryLimit(t *testing.T) {
	c := startCluster(t)
	limit, gomemlimit := shippedMemory(t)
	cg := newMemcg(t, limit)
	ctx := t.Context()
	applyManifest(t, c)
	createNode(t, c.Admin, "node-mem")
	kubeconfig, _, _, err := c.AgentKubeconfig(ctx, ns, "nodecreds", "node-mem")
	if err != nil {
		t.Fatal(err)
	}

	good := dockerconfigjson(t, map[string]string{"good.test": "robot:first"})
	if _, err := c.Admin.CoreV1().Secrets(ns).Create(ctx, registrySecret(good), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Keys padded (with a path) so that MaxEntries entries fill 1 MiB.
	pad := strings.Repeat("p", (dockercfg.MaxSize-64)/dockercfg.MaxEntries-len(`"r00000.example.test/":{"auth":"dTpw"},`))
	key := func(i int) string { return fmt.Sprintf("r%05d.example.test/%s", i, pad) }
	accepted := entriesDoc(dockercfg.MaxEntries, key)
	refused := entriesDoc(37_000, func(i int) string { return fmt.Sprintf("r%06d.t", i) })
	if len(accepted) > dockercfg.MaxSize || len(refused) > dockercfg.MaxSize || len(accepted) < dockercfg.MaxSize*99/100 {
		t.Fatalf("the Secrets are %d and %d bytes; want each near, and under, 1 MiB", len(accepted), len(refused))
	}
	root := t.TempDir()
	kubelet, docker := filepath.Join(root, kubeletFile), filepath.Join(root, dockerFile)
	foreign := nodefile.MaxEntries - dockercfg.MaxEntries - 1 // + the auths field itself
	for _, f := range []string{kubelet, docker} {
		writeNodeFile(t, f, string(foreignFile(foreign)))
	}

	bin := uncachedCopy(t, plainBinary)
	addr := testsupport.FreeAddr(t)
	cmd := exec.Command("/bin/sh", "-c", `echo $$ > "$0" && exec "$@"`, filepath.Join(cg.dir, "cgroup.procs"),
		bin, "sync", "--kubeconfig", kubeconfig, "--namespace", ns, "--node-name", "node-mem", "--host-root", root,
		"--metrics-addr", addr, "--resync", "1h", "--log-level", "warn")
	cmd.Env = append(os.Environ(), "GOMEMLIMIT="+gomemlimit)
	logs := &testsupport.Buffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	peak := cg.sample(t)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("agent logs:\n%s", logs.String())
		}
	})
	alive := func(what string) {
		t.Helper()
		select {
		case err := <-exited:
			t.Fatalf("%s: the agent exited (%v; OOM kills in its group: %d)", what, err, cg.field(t, "memory.oom_control", "oom_kill"))
		default:
		}
		if httpStatus("http://"+addr+"/healthz") != 200 {
			t.Fatalf("%s: /healthz is not 200", what)
		}
	}
	cond := func() *corev1.NodeCondition { return condition(getNode(t, c.Admin, "node-mem")) }
	both := func(key, auth string) bool { return authIn(kubelet, key) == auth && authIn(docker, key) == auth }

	testsupport.Eventually(t, 60*time.Second, "the small Secret applied", func() bool { return both("good.test", testsupport.B64("robot:first")) })
	alive("after the first sync")

	phase := time.Now()
	updateSecret(t, c.Admin, accepted)
	last := key(dockercfg.MaxEntries - 1)
	testsupport.Eventually(t, 120*time.Second, "the largest Secret accepted applied", func() bool { return both(last, "dTpw") })
	written, _ := os.Stat(kubelet)
	t.Logf("the largest Secret accepted (%d entries, %d bytes) merged into two files of %d foreign entries: %s; each file now %d entries, %d bytes",
		dockercfg.MaxEntries, len(accepted), foreign, time.Since(phase).Round(time.Millisecond), nodefile.MaxEntries-1, written.Size())
	alive("after the largest Secret accepted")

	phase = time.Now()
	updateSecret(t, c.Admin, []byte(strings.Replace(string(accepted), `"dTpw"`, `"`+testsupport.B64("robot:rotated")+`"`, 1)))
	testsupport.Eventually(t, 120*time.Second, "the rotation applied", func() bool { return both(key(0), testsupport.B64("robot:rotated")) })
	t.Logf("a rotation of one entry of it: %s", time.Since(phase).Round(time.Millisecond))
	alive("after the rotation")

	tiny := tinyFile(0, 4<<20)
	tmp := docker + ".tmp-test"
	writeNodeFile(t, tmp, string(tiny))
	if err := os.Rename(tmp, docker); err != nil {
		t.Fatal(err)
	}
	testsupport.Eventually(t, 30*time.Second, "the docker file of 4 MiB of tiny entries refused", func() bool {
		return strings.Contains(logs.String(), fmt.Sprintf("more than the %d nodecreds reads from one file", nodefile.MaxEntries))
	})
	alive("after the docker file of tiny entries")

	updateSecret(t, c.Admin, refused)
	testsupport.Eventually(t, 60*time.Second, "the oversized Secret refused on the Node condition", func() bool {
		cd := cond()
		return cd != nil && cd.Status == corev1.ConditionFalse && cd.Reason == "SourceInvalid" &&
			strings.Contains(cd.Message, fmt.Sprintf("holds 37000 registry entries, more than the %d", dockercfg.MaxEntries))
	})
	alive("after the oversized Secret")
	if authIn(kubelet, key(0)) != testsupport.B64("robot:rotated") || authIn(kubelet, last) != "dTpw" {
		t.Error("the last good credentials are no longer in the kubelet file")
	}
	if string(testsupport.ReadFile(t, docker)) != string(tiny) {
		t.Error("the docker file of 4 MiB of tiny entries was changed")
	}

	peak.end()
	maxUsage := cg.get(t, "memory.max_usage_in_bytes")
	failcnt := cg.get(t, "memory.failcnt")
	oomKills := cg.field(t, "memory.oom_control", "oom_kill")
	peak.mu.Lock()
	anon, resident := peak.anon, peak.mapped
	peak.mu.Unlock()
	t.Logf("memory cgroup of %d MiB, GOMEMLIMIT=%s: peak anonymous %.1f MiB; with the binary's mapped pages %.1f MiB; peak charged, page cache of the files written included, %.1f MiB; limit hit %d times; OOM kills %d",
		limit>>20, gomemlimit, mib(anon), mib(resident), mib(maxUsage), failcnt, oomKills)
	if oomKills != 0 {
		t.Errorf("%d OOM kills in the agent's group", oomKills)
	}
	// What the agent needs resident stays a seventh of the limit under it:
	// room for the page cache of the files it writes, and for growth.
	if margin := limit - resident; margin < limit/7 {
		t.Errorf("peak %.1f MiB (anonymous and the binary's pages) leaves %.1f MiB under the %d MiB limit; want %.1f MiB at least", mib(resident), mib(margin), limit>>20, mib(limit/7))
	}
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

// tinyFile is a config.json with n foreign entries of the smallest kind
// ("a1":{}), or, with size, as many as fill size bytes.
func tinyFile(n, size int) []byte {
	b := []byte(`{"auths":{`)
	for i := 0; i < n || size > 0 && len(b)+20 < size; i++ {
		if i > 0 {
			b = append(b, ',')
		}
		b = fmt.Appendf(b, `"a%d":{}`, i)
	}
	return append(b, `}}`...)
}
