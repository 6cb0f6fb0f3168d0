package nodefile

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nodecreds/nodecreds/internal/dockercfg"
	"github.com/nodecreds/nodecreds/internal/hostfs"
	"github.com/nodecreds/nodecreds/internal/hostfs/hostfstest"
	"github.com/nodecreds/nodecreds/internal/testsupport"
)

// TestSwappedFolderNeverEscapesRoot swaps the target's folder and the state
// folder with symlinks to folders outside the host root, as fast as the
// kernel allows, while syncs write, set aside corrupt files and save state.
// Resolving a path once and then using it as a string lets such a swap
// redirect writes outside the root; anchoring every operation to a folder
// handle opened in the root must leave the outside folders empty.
func TestSwappedFolderNeverEscapesRoot(t *testing.T) {
	parent := t.TempDir()
	root := filepath.Join(parent, "root")
	outside := filepath.Join(parent, "outside")
	outsideState := filepath.Join(parent, "outside-state")
	for _, d := range []string{outside, outsideState, filepath.Join(root, "var/lib/kubelet"), filepath.Join(root, stateDir)} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	// A decoy in the outside folder: a corrupt-file copy or a read of it
	// would show up as a set-aside or a merge of its content.
	testsupport.WriteFile(t, filepath.Join(outside, "config.json"), "not json", 0o600)

	e := New(Options{HostRoot: root, StateDir: stateDir})
	// The test's own writes go through os.Root, which refuses to leave it.
	testRoot, err := os.OpenRoot(root)
	if err != nil {
		t.Fatal(err)
	}
	defer testRoot.Close()
	s := hostfstest.SwapWithLink(t, []string{filepath.Join(root, "var/lib/kubelet"), filepath.Join(root, stateDir)}, []string{outside, outsideState})
	deadline := time.Now().Add(3 * time.Second)
	runs := 0
	for ; runs < 2000 && time.Now().Before(deadline); runs++ {
		// Make every run write: a new password, and now and then a corrupt
		// target (set aside, then replaced) or a cleanup.
		switch runs % 5 {
		case 3:
			_ = testRoot.WriteFile(strings.TrimPrefix(kubeletFile, "/"), []byte("{broken"), 0o600)
		case 4:
			_, _ = e.Cleanup(t.Context(), []string{kubeletFile})
			continue
		}
		_, _ = e.Apply(t.Context(), []string{kubeletFile}, dockercfg.Set{item("r.io", "u", fmt.Sprintf("pw-%d", runs))}, true)
	}
	swaps := s.Stop()
	if swaps < 100 {
		t.Fatalf("only %d swaps during %d syncs: the race was not exercised", swaps, runs)
	}
	if got := hostfstest.Tree(outside); len(got) != 1 || got[0] != "/config.json" {
		t.Errorf("files appeared outside the host root in %s after %d syncs and %d swaps: %v", outside, runs, swaps, got)
	}
	if data, _ := os.ReadFile(filepath.Join(outside, "config.json")); string(data) != "not json" {
		t.Errorf("the outside decoy was changed: %q", data)
	}
	if got := hostfstest.Tree(outsideState); len(got) != 0 {
		t.Errorf("state files appeared outside the host root in %s: %v", outsideState, got)
	}
	t.Logf("%d syncs during %d swaps", runs, swaps)
}

// TestStateFolderLinksNotFollowed: the state folder's entries are nodecreds'
// own. A lock or state.json that is a symlink is refused, never followed.
func TestStateFolderLinksNotFollowed(t *testing.T) {
	tests := []struct {
		name  string
		entry string
	}{
		{"lock is a symlink", "lock"},
		{"state.json is a symlink", stateFileName},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			parent := t.TempDir()
			root := filepath.Join(parent, "root")
			outside := filepath.Join(parent, "outside")
			// An outside "state" whose displaced entry would be restored
			// into config.json if it were trusted.
			testsupport.WriteFile(t, filepath.Join(outside, "file"), `{"version":1,"targets":{"/var/lib/kubelet/config.json":{"displaced":{"evil.io":{"auth":"ZXZpbDpldmls"}}}}}`, 0o600)
			if err := os.MkdirAll(filepath.Join(root, stateDir), 0o700); err != nil {
				t.Fatal(err)
			}
			target := filepath.Join(outside, "file")
			if tt.entry == "lock" {
				target = filepath.Join(outside, "new-lock")
			}
			if err := os.Symlink(target, filepath.Join(root, stateDir, tt.entry)); err != nil {
				t.Fatal(err)
			}
			e := New(Options{HostRoot: root, StateDir: stateDir})
			_, err := e.Apply(t.Context(), []string{kubeletFile}, dockercfg.Set{item("r.io", "u", "p")}, true)
			if !errors.Is(err, ErrState) || !strings.Contains(err.Error(), "symlink") {
				t.Fatalf("want a state error saying it is a symlink, got %v", err)
			}
			if _, err := os.Stat(filepath.Join(outside, "new-lock")); err == nil {
				t.Error("a lock file was created outside the root through the link")
			}
			if _, err := os.Stat(filepath.Join(root, kubeletFile)); err == nil {
				t.Error("the target was written with an untrusted state")
			}
		})
	}
}

// TestNonRegularTargetsRefusedWithoutBlocking: a FIFO (or socket, device,
// folder) at a target path must be refused at once with an error naming the
// path, and the other target still synced. Opening a FIFO for reading
// blocks until a writer comes, which hung the agent for good.
func TestNonRegularTargetsRefusedWithoutBlocking(t *testing.T) {
	tests := []struct {
		name string
		make func(path string) error
		want string
	}{
		{"fifo", func(p string) error { return unix.Mkfifo(p, 0o600) }, "FIFO"},
		{"directory", func(p string) error { return os.Mkdir(p, 0o700) }, "directory"},
		{"device", func(p string) error { return unix.Mknod(p, unix.S_IFCHR|0o600, int(unix.Mkdev(1, 3))) }, "device"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, root := newEngine(t)
			p := filepath.Join(root, kubeletFile)
			if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := tt.make(p); err != nil {
				t.Skipf("cannot make a %s here: %v", tt.name, err) // mknod needs CAP_MKNOD
			}
			done := make(chan []Result, 1)
			go func() {
				res, err := e.Apply(t.Context(), []string{kubeletFile, dockerFile}, dockercfg.Set{item("r.io", "u", "p")}, true)
				if err != nil {
					t.Errorf("Apply: %v", err)
				}
				done <- res
			}()
			var res []Result
			select {
			case res = <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("Apply blocked on a non-regular target")
			}
			if res[0].Err == nil || !errors.Is(res[0].Err, ErrNotRegular) || !strings.Contains(res[0].Err.Error(), p) || !strings.Contains(res[0].Err.Error(), tt.want) {
				t.Errorf("want an error naming %s and saying %q, got %v", p, tt.want, res[0].Err)
			}
			if res[1].Err != nil || authOf(t, filepath.Join(root, dockerFile), "r.io") == "" {
				t.Errorf("the other target was not synced: %v", res[1].Err)
			}
			// Cleanup must not block either.
			go func() { _, _ = e.Cleanup(t.Context(), nil); close(done) }()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("Cleanup blocked on a non-regular target")
			}
		})
	}
}

// TestCorruptStateNamesFileAndRemedy: a state file that does not parse
// stops every write (ownership is unknown) with an error that says where,
// what and what to do, and never quotes the state's content (it holds
// displaced credentials).
func TestCorruptStateNamesFileAndRemedy(t *testing.T) {
	e, root := newEngine(t)
	statePath := filepath.Join(root, stateDir, stateFileName)
	testsupport.WriteFile(t, statePath, `{"version":1,"targets":{"x":{"displaced":{"r.io":{"auth":"c2VjcmV0OnB3"}}}`, 0o600)
	_, err := e.Apply(t.Context(), []string{kubeletFile}, dockercfg.Set{item("r.io", "u", "p")}, true)
	if !errors.Is(err, ErrState) {
		t.Fatalf("want ErrState, got %v", err)
	}
	for _, want := range []string{statePath, "not valid JSON", "move it away"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "c2VjcmV0OnB3") {
		t.Errorf("error quotes the state's content: %v", err)
	}
}

// TestStateFolderTightened: a state folder made 0755 (a hostPath
// DirectoryOrCreate does that) is made 0700 on the first sync.
func TestStateFolderTightened(t *testing.T) {
	e, root := newEngine(t)
	dir := filepath.Join(root, stateDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	_ = os.Chmod(dir, 0o755)
	mustOK(t, apply(t, e, []string{kubeletFile}, dockercfg.Set{item("r.io", "u", "p")}, true))
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o700 {
		t.Errorf("state folder mode %o, want 0700", fi.Mode().Perm())
	}
}

// TestHardLinkedTargetRefused: replacing a hard-linked file by rename
// leaves the old credentials under its other name (and a chown to its owner
// would hand that user the new ones); it is refused, naming the fix.
func TestHardLinkedTargetRefused(t *testing.T) {
	e, root := newEngine(t)
	p := filepath.Join(root, kubeletFile)
	testsupport.WriteFile(t, p, `{"auths":{}}`, 0o600)
	other := filepath.Join(root, "home/user/config.json")
	if err := os.MkdirAll(filepath.Dir(other), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(p, other); err != nil {
		t.Fatal(err)
	}
	res := apply(t, e, []string{kubeletFile}, dockercfg.Set{item("r.io", "u", "p")}, true)
	if !errors.Is(res[0].Err, hostfs.ErrHardLinked) || !strings.Contains(res[0].Err.Error(), "symlink") {
		t.Errorf("want a hard-link error with the remedy, got %v", res[0].Err)
	}
	if data, _ := os.ReadFile(other); string(data) != `{"auths":{}}` {
		t.Errorf("the linked file changed: %s", data)
	}
}

// TestForeignOwnerWithoutChownCapability: with the DaemonSet's capabilities
// (none), keeping another user's ownership is impossible; the sync fails at
// once with an error naming the capability and the file is left as it was.
// Run as a child process that drops CAP_CHOWN before syncing.
func TestForeignOwnerWithoutChownCapability(t *testing.T) {
	if os.Getenv("NODECREDS_TEST_NOCHOWN") == "1" {
		noChownChild(t)
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to make a file owned by another user")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	p := filepath.Join(root, kubeletFile)
	testsupport.WriteFile(t, p, `{"auths":{}}`, 0o644)
	if err := os.Chown(p, 1234, 1234); err != nil {
		t.Fatal(err)
	}
	cmd := execCommand(exe, "-test.run=^TestForeignOwnerWithoutChownCapability$", "-test.v")
	cmd.Env = append(os.Environ(), "NODECREDS_TEST_NOCHOWN=1", "NODECREDS_TEST_ROOT="+root)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child failed: %v\n%s", err, out)
	}
	fi, _ := os.Stat(p)
	if st := fi.Sys().(*syscall.Stat_t); st.Uid != 1234 {
		t.Errorf("owner changed to %d", st.Uid)
	}
	if data, _ := os.ReadFile(p); string(data) != `{"auths":{}}` {
		t.Errorf("file changed: %s", data)
	}
}

func noChownChild(t *testing.T) {
	// Drop CAP_CHOWN from this thread's effective set (the test runs in
	// this goroutine, locked to its thread for the duration).
	if err := dropCapability(unix.CAP_CHOWN); err != nil {
		t.Fatalf("dropping CAP_CHOWN: %v", err)
	}
	root := os.Getenv("NODECREDS_TEST_ROOT")
	e := New(Options{HostRoot: root, StateDir: stateDir})
	res, err := e.Apply(t.Context(), []string{kubeletFile}, dockercfg.Set{item("r.io", "u", "p")}, true)
	if err != nil {
		t.Fatal(err)
	}
	if !errors.Is(res[0].Err, ErrForeignOwner) || !strings.Contains(res[0].Err.Error(), "CHOWN") {
		t.Fatalf("want an error naming the CHOWN capability, got %v", res[0].Err)
	}
}

// TestTwoTargetsOneFile: targets that resolve to the same file are synced
// once; nodecreds must not displace its own entries into the state.
func TestTwoTargetsOneFile(t *testing.T) {
	e, root := newEngine(t)
	docker := filepath.Join(root, dockerFile)
	testsupport.WriteFile(t, docker, `{"auths":{}}`, 0o600)
	if err := os.MkdirAll(filepath.Join(root, "/var/lib/kubelet"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(dockerFile, filepath.Join(root, kubeletFile)); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		res := apply(t, e, []string{kubeletFile, dockerFile}, dockercfg.Set{item("r.io", "u", fmt.Sprintf("secret-%d", i))}, true)
		mustOK(t, res)
		if len(res[0].Displaced)+len(res[1].Displaced) > 0 {
			t.Fatalf("run %d displaced its own entries: %+v", i, res)
		}
	}
	state, err := os.ReadFile(filepath.Join(root, stateDir, stateFileName))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(state), "displaced") || strings.Contains(string(state), "secret-") {
		t.Errorf("the state holds our own credentials: %s", state)
	}
}

// TestTargetSizeLimit: a target over the limit is refused with a clear
// error, and is not read whole.
func TestTargetSizeLimit(t *testing.T) {
	e, root := newEngine(t)
	p := filepath.Join(root, kubeletFile)
	big := `{"auths":{},"pad":"` + strings.Repeat("x", hostfs.MaxFileSize) + `"}`
	testsupport.WriteFile(t, p, big, 0o600)
	res := apply(t, e, []string{kubeletFile}, dockercfg.Set{item("r.io", "u", "p")}, true)
	if !errors.Is(res[0].Err, hostfs.ErrTooLarge) || !strings.Contains(res[0].Err.Error(), "4 MiB") {
		t.Errorf("want a size error naming the limit, got %v", res[0].Err)
	}

	// A compact file just under the limit that the merge (re-indented)
	// would take over it: refused before writing, so nodecreds never leaves
	// a file it would then refuse to read; the file is untouched.
	var doc strings.Builder
	doc.WriteString(`{"auths":{`)
	for i := 0; doc.Len() < hostfs.MaxFileSize-100; i++ {
		if i > 0 {
			doc.WriteByte(',')
		}
		fmt.Fprintf(&doc, `"f%06d.example.test":{"auth":"dTpw","x":"%0100d"}`, i, i)
	}
	doc.WriteString(`}}`)
	testsupport.WriteFile(t, p, doc.String(), 0o600)
	res = apply(t, e, []string{kubeletFile}, dockercfg.Set{item("r.io", "u", "p")}, true)
	if !errors.Is(res[0].Err, hostfs.ErrTooLarge) || !strings.Contains(res[0].Err.Error(), "nothing written") {
		t.Errorf("want the oversized merge refused, got %v", res[0].Err)
	}
	if string(testsupport.ReadFile(t, p)) != doc.String() {
		t.Errorf("the file changed")
	}
}

var execCommand = exec.Command

// dropCapability removes capability c from the calling thread's effective,
// permitted and inheritable sets and locks the goroutine to that thread, so
// the syscalls that follow in this goroutine run without it (capabilities
// are per thread on Linux).
func dropCapability(c int) error {
	runtime.LockOSThread()
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return err
	}
	mask := ^uint32(1 << (uint(c) % 32))
	i := c / 32
	data[i].Effective &= mask
	data[i].Permitted &= mask
	data[i].Inheritable &= mask
	return unix.Capset(&hdr, &data[0])
}

// TestLockWaitEndsWithContext: with the state lock held by another process
// (cleanup, a second agent), Apply waits for it only as long as its context
// lives, and changes nothing.
func TestLockWaitEndsWithContext(t *testing.T) {
	e, root := newEngine(t)
	p := filepath.Join(root, kubeletFile)
	testsupport.WriteFile(t, p, `{"auths":{}}`, 0o600)
	release := holdLock(t, filepath.Join(root, stateDir, "lock"))
	defer release()
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := e.Apply(ctx, []string{kubeletFile}, dockercfg.Set{item("r.io", "u", "p")}, true)
	if err == nil || !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "state lock") {
		t.Errorf("want a lock-wait error ending with the context, got %v", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("Apply returned %s after its context ended", took)
	}
	if data, _ := os.ReadFile(p); string(data) != `{"auths":{}}` {
		t.Errorf("the target changed: %s", data)
	}
	release()
	mustOK(t, apply(t, e, []string{kubeletFile}, dockercfg.Set{item("r.io", "u", "p")}, true))
}

// holdLock takes the flock another process would hold on path.
func holdLock(t *testing.T, path string) func() {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	return func() { once.Do(func() { f.Close() }) }
}
