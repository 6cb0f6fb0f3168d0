package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/nodecreds/nodecreds/internal/filewatch"
	"github.com/nodecreds/nodecreds/internal/nodefile"
	"github.com/nodecreds/nodecreds/internal/nodestatus"
	"github.com/nodecreds/nodecreds/internal/source"
	"github.com/nodecreds/nodecreds/internal/testsupport"
)

// statusReporter keeps every status, safely across goroutines. While
// armed, the next Report waits until the test releases it: the agent is
// then busy, as after a sync's read, when the test changes a file.
type statusReporter struct {
	mu      sync.Mutex
	got     []nodestatus.SyncStatus
	gate    chan struct{} // closed by the test to release an armed Report
	reached chan struct{} // closed when an armed Report waits
}

func (s *statusReporter) Report(_ context.Context, st nodestatus.SyncStatus) {
	s.mu.Lock()
	s.got = append(s.got, st)
	gate, reached := s.gate, s.reached
	s.gate, s.reached = nil, nil
	s.mu.Unlock()
	if gate != nil {
		close(reached)
		<-gate
	}
}

// arm makes the next Report wait; it returns a channel closed once it
// waits, and the function that releases it.
func (s *statusReporter) arm() (<-chan struct{}, func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gate, s.reached = make(chan struct{}), make(chan struct{})
	gate := s.gate
	return s.reached, func() { close(gate) }
}

func (s *statusReporter) n() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.got)
}

func (s *statusReporter) last() nodestatus.SyncStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.got[len(s.got)-1]
}

// inPlace rewrites path in place (same inode) with content of the same
// size and puts its time stamps back, as a writer covering its tracks
// would: only the change time, which no writer can set, moves.
func inPlace(t *testing.T, path string, edit func([]byte) []byte) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	data := edit(testsupport.ReadFile(t, path))
	if int64(len(data)) != fi.Size() {
		t.Fatalf("the edit changed the size")
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(path, fi.ModTime(), fi.ModTime()); err != nil {
		t.Fatal(err)
	}
}

// TestEveryChangeByAnotherWriterIsCorrected: whatever metadata another
// writer leaves behind, a change of a target's content, mode or owner is
// seen within about a second and corrected (or, for the owner, reported),
// whether it lands while the agent is idle or busy with a sync (its
// events then wait, and the file's metadata may be restored before the
// agent looks); the agent's own corrections cost no further sync.
func TestEveryChangeByAnotherWriterIsCorrected(t *testing.T) {
	for _, busy := range []bool{false, true} {
		t.Run(map[bool]string{false: "idle", true: "busy"}[busy], func(t *testing.T) { everyChangeCorrected(t, busy) })
	}
}

func everyChangeCorrected(t *testing.T, busy bool) {
	root := t.TempDir()
	target := "/var/lib/kubelet/config.json"
	path := filepath.Join(root, target)
	src := &signalSource{fakeSource: fakeSource{snaps: []source.Snapshot{snap("a", "r.test", "u")}}, changed: make(chan struct{}, 1), completed: make(chan struct{}, 1)}
	files := nodefile.New(nodefile.Options{HostRoot: root, StateDir: "/var/lib/nodecreds"})
	rep := &statusReporter{}
	a := New(src, files, Options{Targets: []string{target}, HostRoot: root, Prune: true, Debounce: 50 * time.Millisecond, Resync: time.Hour, Reporters: []Reporter{rep}}, logrus.NewEntry(logrus.New()))
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() { cancel(); <-done }()
	testsupport.Eventually(t, 5*time.Second, "the first sync", func() bool { return rep.n() == 1 })
	want := testsupport.ReadFile(t, path)
	ours := authFor("u")

	tests := []struct {
		name    string
		disturb func(t *testing.T)
		fixed   func() error
		message string // in the Node condition's message after the sync
	}{
		{"same-size edit in place, time stamps restored", func(t *testing.T) {
			inPlace(t, path, func(b []byte) []byte {
				return []byte(strings.Replace(string(b), ours, strings.Repeat("A", len(ours)), 1))
			})
		}, sameContent(path, want), ""},
		{"chmod 0644", func(t *testing.T) { must(t, os.Chmod(path, 0o644)) }, modeIs(path, 0o600), "0644"},
		{"chmod 0640 and time stamps restored", func(t *testing.T) {
			fi, _ := os.Stat(path)
			must(t, os.Chmod(path, 0o640))
			must(t, os.Chtimes(path, fi.ModTime(), fi.ModTime()))
		}, modeIs(path, 0o600), "0640"},
		{"the same bytes written anew at 0644", func(t *testing.T) {
			testsupport.WriteFile(t, path+".tmp", string(want), 0o644)
			must(t, os.Rename(path+".tmp", path))
		}, modeIs(path, 0o600), "0644"},
		{"chown 1000", func(t *testing.T) {
			if os.Geteuid() != 0 {
				t.Fatal("needs root to give a file to another user (make test runs as root)")
			}
			must(t, os.Chown(path, 1000, 1000))
		}, nil, "uid 1000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := rep.n()
			if busy {
				// A sync of the same sources (nothing to write); the change
				// lands while it reports.
				reached, release := rep.arm()
				src.completed <- struct{}{}
				<-reached
				tt.disturb(t)
				release()
				before++
			} else {
				tt.disturb(t)
			}
			testsupport.Eventually(t, 3*time.Second, "a sync after the change", func() bool { return rep.n() > before })
			if tt.fixed != nil {
				if err := tt.fixed(); err != nil {
					t.Fatalf("not corrected: %v", err)
				}
			}
			if msg := rep.last().Message; !strings.Contains(msg, tt.message) {
				t.Errorf("the condition's message does not say %q: %s", tt.message, msg)
			}
			// The correction's own events are not drift.
			n := rep.n()
			time.Sleep(500 * time.Millisecond)
			if rep.n() != n {
				t.Errorf("%d more syncs after the correction", rep.n()-n)
			}
		})
	}
}

func sameContent(path string, want []byte) func() error {
	return func() error {
		if got, _ := os.ReadFile(path); string(got) != string(want) {
			return fmt.Errorf("the file holds\n%s", got)
		}
		return nil
	}
}

func modeIs(path string, mode os.FileMode) func() error {
	return func() error {
		fi, err := os.Stat(path)
		if err != nil {
			return err
		}
		if fi.Mode().Perm() != mode {
			return fmt.Errorf("mode %04o, want %04o", fi.Mode().Perm(), mode)
		}
		return nil
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestStatusCarriesWarnings: a target's warnings (a loosened mode fixed,
// another owner) reach the Node condition's message, not only the log.
func TestStatusCarriesWarnings(t *testing.T) {
	o := Outcome{Results: []nodefile.Result{{Target: "/t", Warnings: []string{"/t was mode 0644; set to 0600", "/t is owned by uid 1000"}}}}
	st := o.Status()
	for _, w := range o.Results[0].Warnings {
		if !strings.Contains(st.Message, w) {
			t.Errorf("message %q lacks %q", st.Message, w)
		}
	}
	o.Results = append(o.Results, nodefile.Result{Target: "/u", Err: errors.New("broken")})
	if st := o.Status(); !strings.Contains(st.Message, "uid 1000") || !strings.Contains(st.Message, "broken") {
		t.Errorf("with an error too, message %q", st.Message)
	}
}

// TestPollingComparesWithWhatWasLeft: without inotify, each tick compares
// the targets with what the last sync left there, not with the last tick:
// a change is seen whatever metadata it restores, and also when it lands
// during a sync, after the sync read the file (the tick after that sync
// then finds the changed file as its baseline).
func TestPollingComparesWithWhatWasLeft(t *testing.T) {
	target := "/var/lib/kubelet/config.json"
	tests := []struct {
		name    string
		disturb func(t *testing.T, path string)
	}{
		{"same-size edit in place, time stamps restored", func(t *testing.T, path string) {
			inPlace(t, path, func(b []byte) []byte { return []byte(strings.Replace(string(b), "r.test", "x.test", 1)) })
		}},
		{"chmod 0644", func(t *testing.T, path string) { must(t, os.Chmod(path, 0o644)) }},
		{"chown 1000", func(t *testing.T, path string) {
			if os.Geteuid() != 0 {
				t.Fatal("needs root to give a file to another user (make test runs as root)")
			}
			must(t, os.Chown(path, 1000, 1000))
		}},
		{"the same bytes written anew at 0644", func(t *testing.T, path string) {
			testsupport.WriteFile(t, path+".tmp", string(testsupport.ReadFile(t, path)), 0o644)
			must(t, os.Rename(path+".tmp", path))
		}},
		{"removed", func(t *testing.T, path string) { must(t, os.Remove(path)) }},
	}
	for _, duringSync := range []bool{false, true} {
		for _, tt := range tests {
			t.Run(fmt.Sprintf("%s/during a sync %v", tt.name, duringSync), func(t *testing.T) {
				root := t.TempDir()
				path := filepath.Join(root, target)
				files := nodefile.New(nodefile.Options{HostRoot: root, StateDir: "/var/lib/nodecreds"})
				w := filewatch.NewPolling(time.Hour, errors.New("test"))
				defer w.Close()
				tw := newTargetWatch(w, files, []string{target}, root)
				desired := snap("a", "r.test", "u").Set
				sync := func(disturb func()) {
					res, err := files.Apply(t.Context(), []string{target}, desired, true)
					if err != nil || res[0].Err != nil {
						t.Fatalf("sync: %v %v", err, res[0].Err)
					}
					disturb()
					tw.wrote(res)
					tw.refresh()
					tw.polledDrift() // as Run does after each sync
				}
				sync(func() {})
				if tw.polledDrift() {
					t.Fatal("a tick after the agent's own write reported drift")
				}
				if duringSync {
					sync(func() { tt.disturb(t, path) })
				} else {
					tt.disturb(t, path)
				}
				if !tw.polledDrift() {
					t.Fatal("the change was not seen")
				}
				sync(func() {})
				if tw.polledDrift() {
					t.Error("a tick after the correction reported drift")
				}
			})
		}
	}
}

// TestLinkedTargetPolledForDrift: a target that is an absolute symlink (taken
// under the host root, as the node sees it) is compared where it
// resolves, so the agent's own write is not drift; re-pointing the link is.
func TestLinkedTargetPolledForDrift(t *testing.T) {
	root := t.TempDir()
	target := "/var/lib/kubelet/config.json"
	must(t, os.MkdirAll(filepath.Join(root, "var/lib/kubelet"), 0o700))
	must(t, os.Symlink("/etc/creds/config.json", filepath.Join(root, target)))
	files := nodefile.New(nodefile.Options{HostRoot: root, StateDir: "/var/lib/nodecreds"})
	w := filewatch.NewPolling(time.Hour, errors.New("test"))
	defer w.Close()
	tw := newTargetWatch(w, files, []string{target}, root)
	res, err := files.Apply(t.Context(), []string{target}, snap("a", "r.test", "u").Set, true)
	if err != nil || res[0].Err != nil {
		t.Fatalf("sync: %v %v", err, res[0].Err)
	}
	tw.wrote(res)
	tw.refresh()
	tw.polledDrift()
	for i := range 2 {
		if tw.polledDrift() || tw.drifted(target) {
			t.Fatalf("tick %d: the agent's own write through the link reported drift", i)
		}
	}
	must(t, os.Remove(filepath.Join(root, target)))
	must(t, os.Symlink("/etc/other/config.json", filepath.Join(root, target)))
	if !tw.polledDrift() {
		t.Error("the link re-pointed was not seen")
	}
}

// TestRepointedFolderLinkIsWatched: re-pointing a link on the way to a
// target (`ln -sfn /data/d2 /root/.docker`) is an event in the folder that
// holds the link, which is watched: the target where it now leads is
// synced within about a second, and watched from then on — also when it
// needed nothing at first.
func TestRepointedFolderLinkIsWatched(t *testing.T) {
	tests := []struct {
		name  string
		ready bool // d2 already holds what the sync writes
		above bool // the link re-pointed is a folder above, made a link
	}{
		{"the new folder's file needs a sync", false, false},
		{"the new folder's file is already in sync", true, false},
		{"a folder above the target's replaced by a link", false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			target := "/root/.docker/config.json"
			for _, d := range []string{"data/d1", "data/d2", "root", "data/home/.docker"} {
				must(t, os.MkdirAll(filepath.Join(root, d), 0o700))
			}
			must(t, os.Symlink("/data/d1", filepath.Join(root, "root/.docker")))
			d2 := filepath.Join(root, "data/d2/config.json")
			if tt.above {
				d2 = filepath.Join(root, "data/home/.docker/config.json")
			}
			src := &signalSource{fakeSource: fakeSource{snaps: []source.Snapshot{snap("a", "r.test", "u")}}, changed: make(chan struct{}, 1), completed: make(chan struct{}, 1)}
			files := nodefile.New(nodefile.Options{HostRoot: root, StateDir: "/var/lib/nodecreds"})
			rep := &statusReporter{}
			a := New(src, files, Options{Targets: []string{target}, HostRoot: root, Prune: true, Debounce: 50 * time.Millisecond, Resync: time.Hour, Reporters: []Reporter{rep}}, logrus.NewEntry(logrus.New()))
			ctx, cancel := context.WithCancel(t.Context())
			done := make(chan error, 1)
			go func() { done <- a.Run(ctx) }()
			defer func() { cancel(); <-done }()
			testsupport.Eventually(t, 5*time.Second, "the first sync", func() bool { return rep.n() == 1 })
			if tt.ready {
				testsupport.WriteFile(t, d2, string(testsupport.ReadFile(t, filepath.Join(root, "data/d1/config.json"))), 0o600)
			} else {
				testsupport.WriteFile(t, d2, `{"auths":{"other.test":{"auth":"bzpv"}}}`, 0o644)
			}
			if tt.above {
				// /root becomes a link to /data/home
				must(t, os.Symlink("/data/home", filepath.Join(root, "root.tmp")))
				must(t, os.Rename(filepath.Join(root, "root"), filepath.Join(root, "root.old")))
				must(t, os.Rename(filepath.Join(root, "root.tmp"), filepath.Join(root, "root")))
			} else {
				// ln -sfn /data/d2 /root/.docker
				must(t, os.Symlink("/data/d2", filepath.Join(root, "root/.docker.tmp")))
				must(t, os.Rename(filepath.Join(root, "root/.docker.tmp"), filepath.Join(root, "root/.docker")))
			}
			if !tt.ready {
				testsupport.Eventually(t, 3*time.Second, "d2 synced", func() bool {
					data, _ := os.ReadFile(d2)
					return strings.Contains(string(data), `"r.test"`) && modeIs(d2, 0o600)() == nil
				})
			}
			// Watched from now on.
			before := rep.n()
			must(t, os.Chmod(d2, 0o644))
			testsupport.Eventually(t, 3*time.Second, "a sync after d2 changed", func() bool { return rep.n() > before && modeIs(d2, 0o600)() == nil })
		})
	}
}
