package test

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nodecreds/nodecreds/internal/testsupport"
)

// bigSecret is a .dockerconfigjson with n entries whose passwords carry tag.
func bigSecret(n int, tag string) map[string]string {
	m := make(map[string]string, n)
	for i := range n {
		m[fmt.Sprintf("reg-%04d.example.test", i)] = fmt.Sprintf("robot:%s-%d", tag, i)
	}
	return m
}

// foreignDoc is a node file with n entries nodecreds does not own.
func foreignDoc(n int) string {
	auths := map[string]any{}
	for i := range n {
		auths[fmt.Sprintf("foreign-%04d.example.test", i)] = map[string]string{"auth": testsupport.B64(fmt.Sprintf("f:%d", i))}
	}
	b, _ := json.Marshal(map[string]any{"auths": auths, "credsStore": "desktop", "x-unknown": []int{1, 2}})
	return string(b)
}

// checkWhole asserts a node file is valid JSON, holds every foreign entry
// unchanged, and holds nodecreds' entries from exactly one of the sets.
func checkWhole(t *testing.T, path string, foreign int, sets ...map[string]string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var doc struct {
		Auths      map[string]struct{ Auth string } `json:"auths"`
		CredsStore string                           `json:"credsStore"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatalf("%s is not valid JSON after a kill: %v", path, err)
	}
	for i := range foreign {
		k := fmt.Sprintf("foreign-%04d.example.test", i)
		if doc.Auths[k].Auth != testsupport.B64(fmt.Sprintf("f:%d", i)) {
			t.Fatalf("%s lost or changed foreign entry %s", path, k)
		}
	}
	if doc.CredsStore != "desktop" {
		t.Fatalf("%s lost credsStore", path)
	}
	ours := len(doc.Auths) - foreign
	for _, set := range sets {
		match := 0
		for reg, up := range set {
			if doc.Auths[reg].Auth == testsupport.B64(up) {
				match++
			}
		}
		if match == len(set) && ours == len(set) || len(set) == 0 && ours == 0 {
			return
		}
	}
	t.Fatalf("%s holds %d entries of nodecreds' that are neither the whole old nor the whole new set", path, ours)
}

// TestFaultKill9 kills `nodecreds sync` with SIGKILL at random moments while
// it writes large files, hundreds of times. After every kill each target is
// valid JSON with every foreign entry and either the whole old or the whole
// new set; a final run converges and cleanup restores the original.
func TestFaultKill9(t *testing.T) {
	const (
		entries = 2000
		foreign = 500
		rounds  = 200
	)
	root := t.TempDir()
	orig := foreignDoc(foreign)
	for _, f := range []string{kubeletFile, dockerFile} {
		writeNodeFile(t, filepath.Join(root, f), orig)
	}
	secret := filepath.Join(t.TempDir(), "secret")
	if err := os.MkdirAll(secret, 0o700); err != nil {
		t.Fatal(err)
	}
	sets := []map[string]string{bigSecret(entries, "a"), bigSecret(entries, "b")}
	docs := [][]byte{dockerconfigjson(t, sets[0]), dockerconfigjson(t, sets[1])}
	args := []string{"sync", "--once", "--source", "dir", "--secret-dir", secret, "--host-root", root, "--metrics-addr", "0", "--log-level", "error"}

	// How long a full run takes (the slowest of a few), to spread the kills
	// over it and a little past it.
	var full time.Duration
	for _, d := range []int{1, 0, 1, 0} {
		if err := os.WriteFile(filepath.Join(secret, ".dockerconfigjson"), docs[d], 0o600); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if out, err := exec.Command(plainBinary, args...).CombinedOutput(); err != nil {
			t.Fatalf("full run: %v: %s", err, out)
		}
		full = max(full, time.Since(start))
	}
	full = full * 3 / 2
	t.Logf("a full sync of %d entries into 2 files with %d foreign entries takes up to %s; killing at random points within %s", entries, foreign, full*2/3, full)

	rng := rand.New(rand.NewPCG(1, 2))
	prev := sets[0] // what a completed run last wrote
	killedMidway, changedThenKilled := 0, 0
	for i := range rounds {
		beforeKubelet := testsupport.ReadFile(t, filepath.Join(root, kubeletFile))
		next := (i + 1) % 2 // alternate: b, a, b, ...
		if err := os.WriteFile(filepath.Join(secret, ".dockerconfigjson"), docs[next], 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(plainBinary, args...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(rng.Int64N(int64(full) + 1)))
		_ = cmd.Process.Signal(syscall.SIGKILL)
		err := cmd.Wait()
		killed := false
		if ee := (*exec.ExitError)(nil); errors.As(err, &ee) && ee.ExitCode() == -1 {
			killedMidway++
			killed = true
		}
		if killed && string(testsupport.ReadFile(t, filepath.Join(root, kubeletFile))) != string(beforeKubelet) {
			changedThenKilled++ // the kill landed after the kubelet file was replaced
		}
		for _, f := range []string{kubeletFile, dockerFile} {
			checkWhole(t, filepath.Join(root, f), foreign, prev, sets[next], sets[1-next])
		}
		if st, err := os.ReadFile(filepath.Join(root, "var/lib/nodecreds/state.json")); err == nil && !json.Valid(st) {
			t.Fatalf("round %d: state file is not valid JSON", i)
		}
		leftovers, _ := filepath.Glob(filepath.Join(root, "var/lib/kubelet/.config.json.nodecreds-*"))
		if len(leftovers) > 1 {
			t.Fatalf("round %d: temp files pile up: %v", i, leftovers)
		}
		prev = sets[next] // unknown whether it finished; the check allows both
	}
	t.Logf("%d of %d runs were killed before they finished, %d of them after replacing the kubelet file (mid-sync)", killedMidway, rounds, changedThenKilled)
	if killedMidway < rounds/4 || changedThenKilled < rounds/40 {
		t.Errorf("only %d kills landed before the end and %d mid-sync; the test is not exercising crashes", killedMidway, changedThenKilled)
	}

	// A run to completion converges, with the foreign data intact.
	if _, stderr, code := run(t, args...); code != 0 {
		t.Fatalf("converging run: exit %d: %s", code, stderr)
	}
	last := sets[rounds%2] // the set of the last round
	for _, f := range []string{kubeletFile, dockerFile} {
		checkWhole(t, filepath.Join(root, f), foreign, last)
	}
	if leftovers, _ := filepath.Glob(filepath.Join(root, "var/lib/kubelet/.config.json.nodecreds-*")); len(leftovers) != 0 {
		t.Errorf("temp files left after a clean run: %v", leftovers)
	}
	if _, stderr, code := run(t, "cleanup", "--host-root", root); code != 0 {
		t.Fatalf("cleanup: exit %d: %s", code, stderr)
	}
	for _, f := range []string{kubeletFile, dockerFile} {
		checkWhole(t, filepath.Join(root, f), foreign, map[string]string{})
	}
}

// mountOrFail mounts, failing loudly (never skipping) when the machine does
// not allow it.
func mountOrFail(t *testing.T, source, target, fstype string, flags uintptr, data string) {
	t.Helper()
	if err := unix.Mount(source, target, fstype, flags, data); err != nil {
		t.Fatalf("mount %s on %s: %v (these fault tests need root with CAP_SYS_ADMIN, as on the project's machines)", fstype, target, err)
	}
}

// TestFaultFullDiskAndReadOnly: a target folder that is full (a small
// tmpfs) or read-only (a read-only bind mount) gives a clear error naming
// the path, keeps the previous file intact with no temp files, lets the
// other target sync, and recovers once space or write access returns.
func TestFaultFullDiskAndReadOnly(t *testing.T) {
	root := t.TempDir()
	kdir := filepath.Join(root, "var/lib/kubelet")
	ddir := filepath.Join(root, "root/.docker")
	for _, d := range []string{kdir, ddir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	mountOrFail(t, "tmpfs", kdir, "tmpfs", 0, "size=64k,mode=0700")
	t.Cleanup(func() { _ = unix.Unmount(kdir, unix.MNT_DETACH) })
	prevKubelet := `{"auths":{"keep.test":{"auth":"` + testsupport.B64("k:keep") + `"}}}`
	writeNodeFile(t, filepath.Join(kdir, "config.json"), prevKubelet)

	secret := newSecretDir(t, ".dockerconfigjson", dockerconfigjson(t, bigSecret(1500, "full"))) // ~100 KiB: does not fit
	agent := startAgent(t, "--source", "dir", "--secret-dir", secret.dir, "--host-root", root, "--metrics-addr", "0")
	testsupport.Eventually(t, 20*time.Second, "the docker file synced despite the full kubelet folder", func() bool {
		return authIn(filepath.Join(ddir, "config.json"), "reg-0000.example.test") == testsupport.B64("robot:full-0")
	})
	testsupport.Eventually(t, 10*time.Second, "an error naming the full path", func() bool {
		l := agent.logs.String()
		return strings.Contains(l, filepath.Join(kdir, "config.json")) && strings.Contains(l, "no space left on device")
	})
	if got := string(testsupport.ReadFile(t, filepath.Join(kdir, "config.json"))); got != prevKubelet {
		t.Errorf("the full folder's file changed: %.100s", got)
	}
	if leftovers, _ := filepath.Glob(filepath.Join(kdir, ".config.json.nodecreds-*")); len(leftovers) != 0 {
		t.Errorf("temp files left in the full folder: %v", leftovers)
	}

	// Space returns: the agent's retry picks it up.
	mountOrFail(t, "", kdir, "", unix.MS_REMOUNT, "size=8m")
	testsupport.Eventually(t, 40*time.Second, "recovery once space returns", func() bool {
		return authIn(filepath.Join(kdir, "config.json"), "reg-1499.example.test") == testsupport.B64("robot:full-1499") &&
			authIn(filepath.Join(kdir, "config.json"), "keep.test") == testsupport.B64("k:keep")
	})

	// Now the docker folder goes read-only and the Secret rotates.
	mountOrFail(t, ddir, ddir, "", unix.MS_BIND, "")
	t.Cleanup(func() { _ = unix.Unmount(ddir, unix.MNT_DETACH) })
	mountOrFail(t, "", ddir, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY, "")
	prevDocker := testsupport.ReadFile(t, filepath.Join(ddir, "config.json"))
	secret.swap(".dockerconfigjson", dockerconfigjson(t, bigSecret(10, "ro")))
	testsupport.Eventually(t, 10*time.Second, "the kubelet file rotated despite the read-only docker folder", func() bool {
		return authIn(filepath.Join(kdir, "config.json"), "reg-0009.example.test") == testsupport.B64("robot:ro-9")
	})
	testsupport.Eventually(t, 10*time.Second, "an error naming the read-only path", func() bool {
		l := agent.logs.String()
		return strings.Contains(l, ddir) && strings.Contains(l, "read-only file system")
	})
	if string(testsupport.ReadFile(t, filepath.Join(ddir, "config.json"))) != string(prevDocker) {
		t.Errorf("the read-only folder's file changed")
	}
	// Write access returns.
	mountOrFail(t, "", ddir, "", unix.MS_REMOUNT|unix.MS_BIND, "")
	testsupport.Eventually(t, 40*time.Second, "recovery once write access returns", func() bool {
		return authIn(filepath.Join(ddir, "config.json"), "reg-0009.example.test") == testsupport.B64("robot:ro-9")
	})
	if code := agent.stop(t); code != 0 {
		t.Errorf("exit %d", code)
	}
}

// TestFaultConcurrentWriterWhileRotating runs a docker-login-style writer
// (read, add its entry, write a temp file, rename over) in a tight loop on
// the docker file while the Secret rotates under the real agent. None of
// the writer's entries may be lost.
func TestFaultConcurrentWriterWhileRotating(t *testing.T) {
	root := t.TempDir()
	file := filepath.Join(root, dockerFile)
	writeNodeFile(t, file, `{"auths":{}}`)
	secret := newSecretDir(t, ".dockerconfigjson", dockerconfigjson(t, map[string]string{"r.test": "u:p0"}))
	agent := startAgent(t, "--source", "dir", "--secret-dir", secret.dir, "--host-root", root, "--metrics-addr", "0")
	testsupport.Eventually(t, 20*time.Second, "first sync", func() bool { return authIn(file, "r.test") == testsupport.B64("u:p0") })

	const writes = 400
	writer := testsupport.LoginWriter(file, writes, func(i int) string { return fmt.Sprintf("login-%03d.test", i) }, time.Millisecond)
	for r := 1; ; r++ {
		select {
		case err := <-writer:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(50 * time.Millisecond):
			secret.swap(".dockerconfigjson", dockerconfigjson(t, map[string]string{"r.test": fmt.Sprintf("u:p%d", r)}))
			continue
		}
		break
	}
	secret.swap(".dockerconfigjson", dockerconfigjson(t, map[string]string{"r.test": "u:final"}))
	testsupport.Eventually(t, 10*time.Second, "the final rotation", func() bool { return authIn(file, "r.test") == testsupport.B64("u:final") })
	lost := 0
	for i := range writes {
		if authIn(file, fmt.Sprintf("login-%03d.test", i)) == "" {
			lost++
		}
	}
	// The writer itself can lose its own earlier entries when it reads a
	// file in the instant nodecreds' swap had a stale version in place;
	// nodecreds merges everything it sees, so this stays at zero in
	// practice. Any loss fails the test.
	if lost > 0 {
		t.Errorf("%d of the writer's %d entries were lost", lost, writes)
	}
	agent.stop(t)
}

// TestFaultPseudoFileTargetRefused: a target linked (inside the host root)
// to a regular file of a kernel pseudo file system whose reads block — a
// private tracefs instance's empty trace_pipe — used to hang `sync --once`
// for good, holding the state lock (SIGTERM ignored, cleanup waiting).
// Now it is refused at once, naming the file system, the other target
// syncs, and cleanup returns.
func TestFaultPseudoFileTargetRefused(t *testing.T) {
	root := t.TempDir()
	trace := filepath.Join(root, "trace")
	for _, d := range []string{trace, filepath.Join(root, "var/lib/kubelet")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	mountOrFail(t, "nodev", trace, "tracefs", 0, "")
	t.Cleanup(func() { _ = unix.Unmount(trace, unix.MNT_DETACH) })
	// Instances are the kernel's, shared by every tracefs mount: a name of
	// this run's own.
	instance := filepath.Join(trace, "instances", fmt.Sprintf("nodecreds-test-%d-%d", os.Getpid(), time.Now().UnixNano()))
	if err := os.Mkdir(instance, 0o700); err != nil {
		t.Fatalf("a private trace instance: %v", err)
	}
	t.Cleanup(func() { _ = os.Remove(instance) })
	pipe := strings.TrimPrefix(filepath.Join(instance, "trace_pipe"), root)
	if err := os.Symlink(pipe, filepath.Join(root, kubeletFile)); err != nil {
		t.Fatal(err)
	}
	secret := newSecretDir(t, ".dockerconfigjson", dockerconfigjson(t, map[string]string{"r.test": "u:pseudo-canary"}))
	// Killed at the end if it blocks, so that the instance can go.
	cmd := exec.Command(plainBinary, "sync", "--once", "--source", "dir", "--secret-dir", secret.dir, "--host-root", root, "--metrics-addr", "0")
	var out testsupport.Buffer
	cmd.Stderr = &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		t.Fatal("sync --once blocked reading the trace pipe")
	}
	stderr, code := out.String(), cmd.ProcessState.ExitCode()
	if code != 1 || !strings.Contains(stderr, "tracefs") {
		t.Errorf("sync --once: exit %d, want 1 and an error naming tracefs:\n%s", code, stderr)
	}
	if authIn(filepath.Join(root, dockerFile), "r.test") != testsupport.B64("u:pseudo-canary") {
		t.Error("the other target was not synced")
	}
	cleaned := make(chan int, 1)
	go func() { _, _, c := run(t, "cleanup", "--host-root", root); cleaned <- c }()
	select {
	case <-cleaned:
	case <-time.After(30 * time.Second):
		t.Fatal("cleanup blocked")
	}
}
