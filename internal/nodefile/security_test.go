package nodefile

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
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

// TestTwoTargetsOneFile: targets that are one file — through a symlink, or
// a bind mount (what a node's symlink /root/.docker -> /var/lib/kubelet
// becomes in the DaemonSet: hostPath mounts follow links), with the file
// or its folders there or not yet — are synced once, under the first name,
// whatever the order: nodecreds never displaces its own entries into the
// state, and cleanup restores none of them. A state that an older release
// left with such a displaced entry is folded into one record, without it.
func TestTwoTargetsOneFile(t *testing.T) {
	const canary = "one-file-canary"
	bind := func(t *testing.T, root, from, to string) {
		t.Helper()
		for _, d := range []string{from, to} {
			if err := os.MkdirAll(filepath.Join(root, d), 0o700); err != nil {
				t.Fatal(err)
			}
		}
		if err := unix.Mount(filepath.Join(root, from), filepath.Join(root, to), "", unix.MS_BIND, ""); err != nil {
			t.Fatalf("bind mount: %v (the test needs root with CAP_SYS_ADMIN, as on the project's machines)", err)
		}
		t.Cleanup(func() { _ = unix.Unmount(filepath.Join(root, to), unix.MNT_DETACH) })
	}
	tests := []struct {
		name    string
		targets []string
		setup   func(t *testing.T, root string)
		file    string // where the one file is
	}{
		{"a symlinked file", []string{kubeletFile, dockerFile}, func(t *testing.T, root string) {
			testsupport.WriteFile(t, filepath.Join(root, dockerFile), `{"auths":{}}`, 0o600)
			if err := os.MkdirAll(filepath.Join(root, "/var/lib/kubelet"), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(dockerFile, filepath.Join(root, kubeletFile)); err != nil {
				t.Fatal(err)
			}
		}, dockerFile},
		{"a bind-mounted folder", []string{kubeletFile, dockerFile}, func(t *testing.T, root string) {
			bind(t, root, "/var/lib/kubelet", "/root/.docker")
			testsupport.WriteFile(t, filepath.Join(root, kubeletFile), `{"auths":{"theirs.test":{"auth":"dTpw"}}}`, 0o600)
		}, kubeletFile},
		{"a bind-mounted folder, docker's first", []string{dockerFile, kubeletFile}, func(t *testing.T, root string) {
			bind(t, root, "/var/lib/kubelet", "/root/.docker")
		}, kubeletFile},
		{"a bind-mounted folder above folders not made yet", []string{"/srv/a/x/config.json", "/srv/b/x/config.json"}, func(t *testing.T, root string) {
			bind(t, root, "/srv/a", "/srv/b")
		}, "/srv/a/x/config.json"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, root := newEngine(t)
			tt.setup(t, root)
			for i := range 3 {
				set := dockercfg.Set{item("r.io", "u", fmt.Sprintf("%s-%d", canary, i)), item("docker.io", "u", fmt.Sprintf("%s-hub-%d", canary, i))}
				res := apply(t, e, tt.targets, set, true)
				mustOK(t, res)
				if len(res[0].Displaced)+len(res[1].Displaced) > 0 {
					t.Fatalf("run %d displaced its own entries: %+v", i, res)
				}
				if len(res[1].Warnings) != 1 || !strings.Contains(res[1].Warnings[0], "same file") {
					t.Fatalf("run %d: the second name is not reported as the same file: %q", i, res[1].Warnings)
				}
				if res[1].Left == nil || *res[1].Left != stampOf(t, filepath.Join(root, tt.file)) {
					t.Errorf("run %d: the second name's result does not say what is on disk", i)
				}
			}
			state := string(stateBytes(t, root))
			if strings.Contains(state, "displaced") || strings.Contains(state, testsupport.B64("u:" + canary)[:12]) {
				t.Errorf("the state holds our own credentials: %s", state)
			}
			res, err := e.Cleanup(t.Context(), nil)
			if err != nil {
				t.Fatal(err)
			}
			mustOK(t, res)
			if data, err := os.ReadFile(filepath.Join(root, tt.file)); err == nil && strings.Contains(string(data), testsupport.B64("u:" + canary)[:12]) {
				t.Errorf("cleanup left or restored our credentials: %s", data)
			}
			if state := stateBytes(t, root); len(state) != 0 {
				t.Errorf("cleanup left a state: %s", state)
			}
		})
	}

	t.Run("a state left by a release that synced both names", func(t *testing.T) {
		e, root := newEngine(t)
		bind(t, root, "/var/lib/kubelet", "/root/.docker")
		ours := item("r.io", "u", canary)
		raw, _ := ours.Entry.MarshalJSON()
		testsupport.WriteFile(t, filepath.Join(root, kubeletFile), `{"auths":{"r.io":`+string(raw)+`,"theirs.test":{"auth":"dTpw"}}}`, 0o600)
		// What that release left: the kubelet's name owns the entry, and
		// the docker name "displaced" it, password and all.
		writeState(t, root, &State{Version: stateVersion, Targets: map[string]*TargetState{
			kubeletFile: {Owned: keyStrings{"r.io": entryDigest(raw)}},
			dockerFile:  {Displaced: map[string]json.RawMessage{"r.io": raw}},
		}})
		// The Secret no longer provides r.io: pruned under one name, it
		// must not be "restored" under the other.
		mustOK(t, apply(t, e, []string{kubeletFile, dockerFile}, dockercfg.Set{item("s.io", "u", "p")}, true))
		a := auths(t, filepath.Join(root, kubeletFile))
		if _, ok := a["r.io"]; ok {
			t.Errorf("the pruned entry was restored: %v", a)
		}
		if state := string(stateBytes(t, root)); strings.Contains(state, testsupport.B64("u:" + canary)[:12]) {
			t.Errorf("the state still holds our credential: %s", state)
		}
		// Cleanup syncs under the name that sorts first (docker's): the
		// kubelet name's record must come with it.
		res, err := e.Cleanup(t.Context(), nil)
		if err != nil {
			t.Fatal(err)
		}
		mustOK(t, res)
		a = auths(t, filepath.Join(root, kubeletFile))
		if _, ok := a["r.io"]; ok {
			t.Errorf("cleanup left or restored our entry: %v", a)
		}
		if _, ok := a["s.io"]; ok {
			t.Errorf("cleanup left our entry: %v", a)
		}
		if _, ok := a["theirs.test"]; !ok {
			t.Errorf("cleanup removed another's entry: %v", a)
		}
		if state := stateBytes(t, root); len(state) != 0 {
			t.Errorf("cleanup left a state: %s", state)
		}
	})
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

// TestTargetsOnlyThroughFoldersOnlyRootCanChange: a target is written only
// if no one but root can change any folder on the way to it, as resolved
// (links included): a user who owns the target's folder, or can write in
// any folder on the way, could point it at any file root may write (the
// kubelet's client key) and have nodecreds replace it. Such a target is
// refused, naming the folder, its owner and mode and the fix, before
// anything is created or written; the other targets still sync. A sticky
// folder on the way (/tmp) is fine when what nodecreds goes through in it
// is root's; the target's own folder must be closed.
func TestTargetsOnlyThroughFoldersOnlyRootCanChange(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root, to make folders and links owned by another user (make test runs as root)")
	}
	const user = 1000
	const key = "/var/lib/kubelet/pki/kubelet-client-current.pem"
	type fixture struct {
		dirs  map[string]os.FileMode // made by root, with this mode
		owned []string               // then given to the user
		links map[string]string      // made by the user
	}
	tests := []struct {
		name   string
		fx     fixture
		target string
		refuse string // a folder named in the error; "" to accept
	}{
		{"a user's folder with the file linked to the kubelet's key",
			fixture{dirs: map[string]os.FileMode{"/home/ci/.docker": 0o700}, owned: []string{"/home/ci/.docker"}, links: map[string]string{"/home/ci/.docker/config.json": key}},
			"/home/ci/.docker/config.json", "/home/ci/.docker"},
		{"a user's folder, no file yet",
			fixture{dirs: map[string]os.FileMode{"/home/ci/.docker": 0o700}, owned: []string{"/home/ci/.docker"}},
			"/home/ci/.docker/config.json", "/home/ci/.docker"},
		{"a folder to create in a user's folder",
			fixture{dirs: map[string]os.FileMode{"/home/ci": 0o700}, owned: []string{"/home/ci"}},
			"/home/ci/.docker/config.json", "/home/ci"},
		{"a folder link in a user's folder",
			fixture{dirs: map[string]os.FileMode{"/home/ci": 0o755}, owned: []string{"/home/ci"}, links: map[string]string{"/home/ci/.docker": "/var/lib/kubelet"}},
			"/home/ci/.docker/config.json", "/home/ci"},
		{"a world-writable target folder",
			fixture{dirs: map[string]os.FileMode{"/etc/containers": 0o777}},
			"/etc/containers/auth.json", "/etc/containers"},
		{"a sticky target folder",
			fixture{dirs: map[string]os.FileMode{"/srv/drop": 0o1777}},
			"/srv/drop/config.json", "/srv/drop"},
		{"a group-writable folder on the way",
			fixture{dirs: map[string]os.FileMode{"/srv": 0o775, "/srv/creds": 0o700}},
			"/srv/creds/config.json", "/srv"},
		{"a user's link in a sticky folder on the way",
			fixture{dirs: map[string]os.FileMode{"/tmp": 0o1777}, links: map[string]string{"/tmp/creds": "/var/lib/kubelet/pki"}},
			"/tmp/creds/config.json", "/tmp"},
		{"a root folder in a sticky folder on the way",
			fixture{dirs: map[string]os.FileMode{"/tmp": 0o1777, "/tmp/creds": 0o700}},
			"/tmp/creds/config.json", ""},
		{"root's folders",
			fixture{},
			"/root/.docker/config.json", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, root := newEngine(t)
			testsupport.WriteFile(t, filepath.Join(root, key), "-----BEGIN EC PRIVATE KEY-----\n", 0o600)
			for d, mode := range tt.fx.dirs {
				if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := unix.Chmod(filepath.Join(root, d), uint32(mode)); err != nil { // os.Chmod maps 0o1000 to nothing
					t.Fatal(err)
				}
			}
			for _, d := range tt.fx.owned {
				if err := os.Chown(filepath.Join(root, d), user, user); err != nil {
					t.Fatal(err)
				}
			}
			for l, target := range tt.fx.links {
				if err := os.Symlink(target, filepath.Join(root, l)); err != nil {
					t.Fatal(err)
				}
				if err := os.Lchown(filepath.Join(root, l), user, user); err != nil {
					t.Fatal(err)
				}
			}
			before := snapshot(t, root)
			res := apply(t, e, []string{tt.target, kubeletFile}, dockercfg.Set{item("r.io", "u", "p")}, true)
			if res[1].Err != nil {
				t.Fatalf("the other target did not sync: %v", res[1].Err)
			}
			if tt.refuse == "" {
				mustOK(t, res)
				if _, ok := auths(t, res[0].Path)["r.io"]; !ok {
					t.Errorf("not written")
				}
				return
			}
			err := res[0].Err
			if !errors.Is(err, ErrUntrustedFolder) || !strings.Contains(err.Error(), filepath.Join(root, tt.refuse)+" ") || !strings.Contains(err.Error(), "fix:") {
				t.Fatalf("want a refusal naming %s and the fix, got %v", tt.refuse, err)
			}
			if data := string(testsupport.ReadFile(t, filepath.Join(root, key))); !strings.HasPrefix(data, "-----BEGIN") {
				t.Errorf("the kubelet's key was replaced: %q", data)
			}
			after := snapshot(t, root)
			for p := range after {
				if _, ok := before[p]; !ok && !strings.HasPrefix(p, "/var/lib/") {
					t.Errorf("%s was created", p)
				}
			}
		})
	}
}

// snapshot lists every path under root (as node paths).
func snapshot(t *testing.T, root string) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	err := filepath.WalkDir(root, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		out[strings.TrimPrefix(p, root)] = true
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}
