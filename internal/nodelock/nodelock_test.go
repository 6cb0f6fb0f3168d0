package nodelock

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nodecreds/nodecreds/internal/hostfs"
)

func mkfifo(path string) error { return unix.Mkfifo(path, 0o600) }

func opts(root string, pool, pod string, onWait func(Wait)) Options {
	return Options{HostRoot: root, StateDir: "/var/lib/nodecreds", Self: Holder{Pool: pool, Pod: pod}, Poll: time.Millisecond, OnWait: onWait}
}

// The first agent takes the lock and says who it is; a second one waits,
// is told who holds it (its pool, its Pod) each time it tries, and takes
// the lock once the first releases it.
func TestSecondAgentWaitsForTheFirst(t *testing.T) {
	for _, tc := range []struct {
		name              string
		firstPool, second string
		otherPool         bool
	}{
		{"a rollout's new Pod (same pool)", "tenant-a", "tenant-a", false},
		{"two pools select the node", "tenant-a", "tenant-b", true},
		{"the default DaemonSet and a pool", "", "tenant-b", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			first, err := Acquire(t.Context(), opts(root, tc.firstPool, "pod-1", nil))
			if err != nil {
				t.Fatal(err)
			}
			h, known, err := ReadHolder(root, "/var/lib/nodecreds")
			if err != nil || !known || h.Pool != tc.firstPool || h.Pod != "pod-1" || h.Since.IsZero() {
				t.Fatalf("holder record %+v known %v err %v", h, known, err)
			}

			var (
				mu    sync.Mutex
				waits []Wait
			)
			told := make(chan struct{})
			var once sync.Once
			got := make(chan error, 1)
			var second *Lock
			go func() {
				var err error
				second, err = Acquire(t.Context(), opts(root, tc.second, "pod-2", func(w Wait) {
					mu.Lock()
					waits = append(waits, w)
					mu.Unlock()
					once.Do(func() { close(told) })
				}))
				got <- err
			}()
			<-told
			mu.Lock()
			w := waits[0]
			mu.Unlock()
			if !w.Known || w.Holder.Pod != "pod-1" || w.Holder.Pool != tc.firstPool || w.OtherPool(tc.second) != tc.otherPool {
				t.Errorf("the waiting agent was told %+v (other pool %v), want pod-1 of pool %q (other pool %v)", w, w.OtherPool(tc.second), tc.firstPool, tc.otherPool)
			}
			select {
			case err := <-got:
				t.Fatalf("the second agent took the lock while the first held it (err %v)", err)
			default:
			}
			if err := first.Release(); err != nil {
				t.Fatal(err)
			}
			if err := <-got; err != nil {
				t.Fatalf("the second agent did not get the lock once released: %v", err)
			}
			h, known, _ = ReadHolder(root, "/var/lib/nodecreds")
			if !known || h.Pod != "pod-2" || h.Pool != tc.second {
				t.Errorf("after the handover the record says %+v", h)
			}
			if err := second.Release(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// A waiting agent that is stopped returns promptly with ctx's error and
// leaves the holder's lock and record alone.
func TestStopWhileWaiting(t *testing.T) {
	root := t.TempDir()
	first, err := Acquire(t.Context(), opts(root, "a", "pod-1", nil))
	if err != nil {
		t.Fatal(err)
	}
	defer first.Release()
	ctx, cancel := context.WithCancel(t.Context())
	_, err = Acquire(ctx, opts(root, "a", "pod-2", func(Wait) { cancel() }))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("stopped while waiting: %v, want context.Canceled", err)
	}
	if h, known, _ := ReadHolder(root, "/var/lib/nodecreds"); !known || h.Pod != "pod-1" {
		t.Errorf("the holder's record changed: %+v", h)
	}
	// The first still holds it.
	ctx, cancel = context.WithCancel(t.Context())
	var waited bool
	if _, err := Acquire(ctx, opts(root, "a", "pod-3", func(Wait) { waited = true; cancel() })); err == nil || !waited {
		t.Errorf("the lock was free after a waiter stopped: %v", err)
	}
}

// A lock file the agent cannot trust is refused, never followed: a symlink
// (to a file outside the host root) or a FIFO at its name.
func TestLockFileMustBeRegular(t *testing.T) {
	for _, tc := range []struct {
		name string
		make func(t *testing.T, path string)
	}{
		{"symlink", func(t *testing.T, path string) {
			outside := filepath.Join(t.TempDir(), "outside")
			if err := os.WriteFile(outside, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(outside, path); err != nil {
				t.Fatal(err)
			}
		}},
		{"fifo", func(t *testing.T, path string) {
			if err := mkfifo(path); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			dir := filepath.Join(root, "var/lib/nodecreds")
			if err := os.MkdirAll(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			tc.make(t, filepath.Join(dir, FileName))
			_, err := Acquire(t.Context(), opts(root, "", "pod", nil))
			if !errors.Is(err, hostfs.ErrNotRegular) {
				t.Errorf("Acquire over a %s: %v, want ErrNotRegular", tc.name, err)
			}
		})
	}
}

// The state folder is created root-only when missing, and the lock file
// is 0600.
func TestCreatesStateFolder(t *testing.T) {
	root := t.TempDir()
	l, err := Acquire(t.Context(), opts(root, "", "pod", nil))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	for path, want := range map[string]os.FileMode{"var/lib/nodecreds": 0o700, "var/lib/nodecreds/" + FileName: 0o600} {
		fi, err := os.Stat(filepath.Join(root, path))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s has mode %v, want %v", path, fi.Mode().Perm(), want)
		}
	}
}
