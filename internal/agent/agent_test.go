package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/nodecreds/nodecreds/internal/containerdconf"
	"github.com/nodecreds/nodecreds/internal/dockercfg"
	"github.com/nodecreds/nodecreds/internal/metrics"
	"github.com/nodecreds/nodecreds/internal/nodefile"
	"github.com/nodecreds/nodecreds/internal/nodestatus"
	"github.com/nodecreds/nodecreds/internal/runtimeauth"
	"github.com/nodecreds/nodecreds/internal/source"
	"github.com/nodecreds/nodecreds/internal/testsupport"
)

// fakeSource hands out whatever snapshots the test sets.
type fakeSource struct{ snaps []source.Snapshot }

func (f *fakeSource) Snapshots() []source.Snapshot { return f.snaps }
func (f *fakeSource) Changed() <-chan struct{}     { return nil }
func (f *fakeSource) Ready() <-chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}

// fakeFiles records what would be applied (as the kubelet's file would get
// it) and can inject an error.
type fakeFiles struct {
	desired     dockercfg.Set
	prune       bool
	hold        []string
	injectError error
}

func (f *fakeFiles) Sync(_ context.Context, targets []string, d nodefile.Desired) ([]nodefile.Result, error) {
	f.desired, _ = dockercfg.View(dockercfg.Kubelet, d.Sources...)
	f.prune, f.hold = d.Prune, d.Hold
	out := make([]nodefile.Result, len(targets))
	for i, t := range targets {
		out[i] = nodefile.Result{Target: t, Entries: len(f.desired), Err: f.injectError}
	}
	return out, nil
}
func (f *fakeFiles) Route(p string) (string, []string, error) { return p, nil, nil }

type fakeReporter struct{ got []nodestatus.SyncStatus }

func (f *fakeReporter) Report(_ context.Context, st nodestatus.SyncStatus) { f.got = append(f.got, st) }

func snap(name, key, user string) source.Snapshot {
	return source.Snapshot{Name: name, Revision: name + "-rev", Set: dockercfg.Set{{Key: key, Entry: dockercfg.Entry{Username: user, Password: "p"}}}}
}

func bad(name string, err error) source.Snapshot {
	return source.Snapshot{Name: name, Revision: name + "-bad", Err: fmt.Errorf("%s: %w", name, err)}
}

func TestSync(t *testing.T) {
	invalid := &dockercfg.ValidationError{Problems: []dockercfg.Problem{{Key: "r.test", Reason: `"auth" is not valid base64`}}}
	tests := []struct {
		name       string
		prune      bool
		before     []source.Snapshot // an earlier sync, to set last good
		now        []source.Snapshot
		wantKeys   []string
		wantUser   map[string]string
		wantPrune  bool
		wantHold   []string
		wantOK     bool
		wantReason string
	}{
		{
			name:      "first wins across sources",
			prune:     true,
			now:       []source.Snapshot{snap("a", "docker.io", "from-a"), snap("b", "https://index.docker.io/v1/", "from-b")},
			wantKeys:  []string{"docker.io"},
			wantUser:  map[string]string{"docker.io": "from-a"},
			wantPrune: true, wantOK: true, wantReason: "Synced",
		},
		{
			name:      "an invalid source keeps its last good state",
			prune:     true,
			before:    []source.Snapshot{snap("a", "r.test", "good")},
			now:       []source.Snapshot{bad("a", invalid)},
			wantKeys:  []string{"r.test"},
			wantUser:  map[string]string{"r.test": "good"},
			wantPrune: true, wantOK: false, wantReason: "SourceInvalid",
		},
		{
			// Only what the unknown source may have written is held on the
			// node; every other source's entries that left still go.
			name:      "an invalid source never good: apply the rest, hold back only its entries",
			prune:     true,
			now:       []source.Snapshot{bad("a", invalid), snap("b", "q.test", "b")},
			wantKeys:  []string{"q.test"},
			wantHold:  []string{"a"},
			wantPrune: true, wantOK: false, wantReason: "SourceInvalid",
		},
		{
			// The Node is gone (or the agent has no node name): a Secret
			// for some nodes applies nowhere, even one applied before.
			name:      "a node-selected source whose Node is unknown applies nowhere",
			prune:     true,
			before:    []source.Snapshot{snap("a", "r.test", "good"), snap("b", "q.test", "b")},
			now:       []source.Snapshot{bad("a", source.ErrNodeUnknown), snap("b", "q.test", "b")},
			wantKeys:  []string{"q.test"},
			wantPrune: true, wantOK: false, wantReason: "SourceNodeUnknown",
		},
		{
			name:      "a deleted source counts as empty with prune",
			prune:     true,
			before:    []source.Snapshot{snap("a", "r.test", "good")},
			now:       []source.Snapshot{bad("a", source.ErrNotFound)},
			wantKeys:  []string{},
			wantPrune: true, wantOK: false, wantReason: "SourceNotFound",
		},
		{
			name:      "a deleted source keeps its entries without prune",
			prune:     false,
			before:    []source.Snapshot{snap("a", "r.test", "good")},
			now:       []source.Snapshot{bad("a", source.ErrNotFound)},
			wantKeys:  []string{"r.test"},
			wantPrune: false, wantOK: false, wantReason: "SourceNotFound",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := &fakeSource{snaps: tt.before}
			files := &fakeFiles{}
			rep := &fakeReporter{}
			health := &metrics.Health{}
			a := New(src, files, Options{Targets: []string{"/t"}, Prune: tt.prune, Health: health, Reporters: []Reporter{rep}}, logrus.NewEntry(logrus.New()))
			if tt.before != nil {
				a.Sync(t.Context(), "test")
			}
			src.snaps = tt.now
			o := a.Sync(t.Context(), "test")
			if got := files.desired.Keys(); !slices.Equal(nonNil(got), tt.wantKeys) {
				t.Errorf("applied keys %v, want %v", got, tt.wantKeys)
			}
			for _, it := range files.desired {
				if want, ok := tt.wantUser[it.Key]; ok && it.Entry.Username != want {
					t.Errorf("%s from user %q, want %q", it.Key, it.Entry.Username, want)
				}
			}
			if files.prune != tt.wantPrune || !slices.Equal(files.hold, tt.wantHold) {
				t.Errorf("prune = %v hold %v, want %v %v", files.prune, files.hold, tt.wantPrune, tt.wantHold)
			}
			if len(tt.wantHold) > 0 && !strings.Contains(rep.got[len(rep.got)-1].Message, "stay on the node until it can be read") {
				t.Errorf("the condition does not say that entries are held back: %q", rep.got[len(rep.got)-1].Message)
			}
			if (o.Err == nil) != tt.wantOK {
				t.Errorf("outcome error %v, want ok=%v", o.Err, tt.wantOK)
			}
			last := rep.got[len(rep.got)-1]
			if last.OK != tt.wantOK || last.Reason != tt.wantReason || last.Revision != o.Revision {
				t.Errorf("reported %+v, want ok=%v reason=%s", last, tt.wantOK, tt.wantReason)
			}
			if !tt.wantOK && last.Message == "" {
				t.Errorf("no message for a failure")
			}
		})
	}
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func TestTargetErrorIsReportedAndNotReady(t *testing.T) {
	health := &metrics.Health{}
	rep := &fakeReporter{}
	files := &fakeFiles{injectError: errors.New("/t: read-only file system")}
	a := New(&fakeSource{snaps: []source.Snapshot{snap("a", "r.test", "u")}}, files, Options{Targets: []string{"/t"}, Prune: true, Health: health, Reporters: []Reporter{rep}}, logrus.NewEntry(logrus.New()))
	o := a.Sync(t.Context(), "test")
	if o.Err == nil || health.Ready() {
		t.Fatalf("a failed target left err=%v ready=%v", o.Err, health.Ready())
	}
	if st := rep.got[0]; st.Reason != "TargetError" || st.Message != "/t: read-only file system" {
		t.Errorf("reported %+v", st)
	}
	files.injectError = nil
	if o := a.Sync(t.Context(), "test"); o.Err != nil || !health.Ready() {
		t.Errorf("recovery: err=%v ready=%v", o.Err, health.Ready())
	}
}

// A corrupt state file stops every write; the log and the Node condition
// must say so (reason StateError, the file and the remedy), not read
// "Synced" with status False.
func TestStateErrorIsLoggedAndReported(t *testing.T) {
	root := t.TempDir()
	statePath := filepath.Join(root, "var/lib/nodecreds/state.json")
	if err := os.MkdirAll(filepath.Dir(statePath), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(statePath, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	files := nodefile.New(nodefile.Options{HostRoot: root, StateDir: "/var/lib/nodecreds"})
	rep := &fakeReporter{}
	logger, hook := logtest.NewNullLogger()
	a := New(&fakeSource{snaps: []source.Snapshot{snap("a", "r.test", "u")}}, files, Options{Targets: []string{"/var/lib/kubelet/config.json"}, Prune: true, Reporters: []Reporter{rep}}, logrus.NewEntry(logger))
	o := a.Sync(t.Context(), "test")
	if o.Err == nil {
		t.Fatal("sync succeeded with a corrupt state")
	}
	st := rep.got[0]
	if st.OK || st.Reason != "StateError" || !strings.Contains(st.Message, statePath) || !strings.Contains(st.Message, "move it away") {
		t.Errorf("reported %+v", st)
	}
	logged := false
	for _, e := range hook.AllEntries() {
		if err, _ := e.Data[logrus.ErrorKey].(error); e.Level == logrus.ErrorLevel && err != nil && strings.Contains(err.Error(), statePath) {
			logged = true
		}
	}
	if !logged {
		t.Errorf("the state error was not logged: %v", hook.AllEntries())
	}
}

// TestStatusCarriesNotes: a watch that polls is said in the condition's
// message, whether the sync succeeded or not.
func TestStatusCarriesNotes(t *testing.T) {
	note := "targets: inotify unavailable (no inotify instance: too many open files); polling every 1s"
	ok := Outcome{Notes: []string{note}}.Status()
	if !ok.OK || !strings.HasSuffix(ok.Message, "; "+note) {
		t.Errorf("ok status = %+v", ok)
	}
	bad := Outcome{Notes: []string{note}, Err: errors.New("x"), FilesErr: errors.New("state unusable")}.Status()
	if bad.OK || !strings.HasSuffix(bad.Message, "; "+note) {
		t.Errorf("failed status = %+v", bad)
	}
}

// TestStatusOfRuntimeProblems: containerd problems make the reason of a
// sync that is otherwise fine (condition True, a warning), each with its
// fix in the message; a failure keeps its own reason; a failed hosts.toml
// is a failure, never "Synced".
func TestStatusOfRuntimeProblems(t *testing.T) {
	p := containerdconf.Problem{Reason: containerdconf.ReasonConfigPathMultipleFolders, Message: "config_path holds 2 folders.", Fix: "Set config_path."}
	ok := Outcome{RuntimeProblems: []containerdconf.Problem{p}}.Status()
	if !ok.OK || !ok.Warn || ok.Reason != p.Reason || !strings.Contains(ok.Message, p.Message+" Fix: "+p.Fix) {
		t.Errorf("status with a runtime problem = %+v", ok)
	}
	failed := Outcome{RuntimeProblems: []containerdconf.Problem{p}, Err: errors.New("x"), Results: []nodefile.Result{{Target: "/t", Err: errors.New("t: cannot write")}}}.Status()
	if failed.OK || failed.Warn || failed.Reason != "TargetError" || !strings.Contains(failed.Message, p.Message) {
		t.Errorf("failed status with a runtime problem = %+v", failed)
	}
	hosts := errors.New("/etc/containerd/certs.d/r.test/hosts.toml: not valid TOML")
	bad := Outcome{Err: hosts, Runtime: []runtimeauth.Result{{Path: "/etc/containerd/certs.d/r.test/hosts.toml", Err: hosts}}}.Status()
	if bad.OK || bad.Reason != "Error" || !strings.Contains(bad.Message, hosts.Error()) {
		t.Errorf("status of a failed hosts.toml = %+v", bad)
	}
	lock := Outcome{Err: errors.New("containerd hosts.toml: state locked")}.Status()
	if lock.OK || lock.Reason != "Error" || !strings.Contains(lock.Message, "state locked") {
		t.Errorf("status of a failed runtime sync = %+v", lock)
	}
}

// signalSource is a source whose change signals the test sends.
type signalSource struct {
	fakeSource
	changed, completed chan struct{}
}

func (s *signalSource) Changed() <-chan struct{}   { return s.changed }
func (s *signalSource) Completed() <-chan struct{} { return s.completed }

// notifyingFiles tells each Apply on a channel.
type notifyingFiles struct {
	fakeFiles
	applied chan struct{}
}

func (f *notifyingFiles) Sync(ctx context.Context, targets []string, d nodefile.Desired) ([]nodefile.Result, error) {
	f.applied <- struct{}{}
	return f.fakeFiles.Sync(ctx, targets, d)
}

// TestCompleteChangesSyncAtOnce: a whole new version (a watch event, the
// kubelet's ..data swap) is synced at once, not a debounce later; what
// follows it within the debounce is coalesced into one more sync; a change
// that may still be under way (a key file written in place) waits for the
// debounce.
func TestCompleteChangesSyncAtOnce(t *testing.T) {
	const debounce = time.Second
	src := &signalSource{fakeSource: fakeSource{snaps: []source.Snapshot{snap("a", "r.test", "u")}}, changed: make(chan struct{}, 1), completed: make(chan struct{}, 1)}
	files := &notifyingFiles{applied: make(chan struct{}, 10)}
	a := New(src, files, Options{Targets: []string{"/var/lib/kubelet/config.json"}, HostRoot: t.TempDir(), Prune: true, Debounce: debounce, Resync: time.Hour}, logrus.NewEntry(logrus.New()))
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() { cancel(); <-done }()

	within := func(d time.Duration) bool {
		select {
		case <-files.applied:
			return true
		case <-time.After(d):
			return false
		}
	}
	if !within(5 * time.Second) {
		t.Fatal("no sync at start")
	}
	time.Sleep(debounce + 100*time.Millisecond)
	start := time.Now()
	src.completed <- struct{}{}
	if !within(debounce / 2) {
		t.Fatalf("a complete change was not synced at once (nothing after %v)", time.Since(start))
	}
	src.completed <- struct{}{} // right after: coalesced, after the debounce
	if within(debounce / 2) {
		t.Fatal("a second change right after the first was not debounced")
	}
	if !within(5 * time.Second) {
		t.Fatal("the second change was never synced")
	}
	time.Sleep(debounce + 100*time.Millisecond)
	src.changed <- struct{}{}
	if within(debounce / 2) {
		t.Fatal("a change that may be under way was synced before the debounce")
	}
	if !within(5 * time.Second) {
		t.Fatal("the change under way was never synced")
	}
}

// countingReporter counts syncs, safely across goroutines.
type countingReporter struct{ n atomic.Int32 }

func (c *countingReporter) Report(context.Context, nodestatus.SyncStatus) { c.n.Add(1) }

// TestOwnWritesAreNotDrift: the inotify events of the agent's own writes
// do not cost another sync; anyone else's write to a target, replacing it
// or writing it in place, is drift and corrected.
func TestOwnWritesAreNotDrift(t *testing.T) {
	root := t.TempDir()
	target := "/var/lib/kubelet/config.json"
	path := filepath.Join(root, target)
	src := &signalSource{fakeSource: fakeSource{snaps: []source.Snapshot{snap("a", "r.test", "u")}}, changed: make(chan struct{}, 1), completed: make(chan struct{}, 1)}
	files := nodefile.New(nodefile.Options{HostRoot: root, StateDir: "/var/lib/nodecreds"})
	syncs := &countingReporter{}
	a := New(src, files, Options{Targets: []string{target}, HostRoot: root, Prune: true, Debounce: 50 * time.Millisecond, Resync: time.Hour, Reporters: []Reporter{syncs}}, logrus.NewEntry(logrus.New()))
	runAgent(t, a)
	settle := func(want int32, what string) { t.Helper(); settleSyncs(t, syncs, want, what) }
	settle(1, "start (creates the file)")
	src.snaps = []source.Snapshot{snap("a", "r.test", "v")}
	src.completed <- struct{}{}
	settle(2, "a rotation (rewrites the file)")

	ours := authFor("v")
	for i, disturb := range []func(){
		func() { // a docker login: a new file renamed over
			testsupport.WriteFile(t, path+".new", `{"auths":{"other.test":{"auth":"eDp5"}}}`, 0o600)
			if err := os.Rename(path+".new", path); err != nil {
				t.Fatal(err)
			}
		},
		func() { // an editor writing in place
			if err := os.WriteFile(path, []byte(`{"auths":{}}`), 0o600); err != nil {
				t.Fatal(err)
			}
		},
	} {
		disturb()
		settle(int32(3+i), fmt.Sprintf("drift %d", i+1))
		if !strings.Contains(string(testsupport.ReadFile(t, path)), ours) {
			t.Fatalf("drift %d was not corrected:\n%s", i+1, testsupport.ReadFile(t, path))
		}
	}
}

// runAgent runs a until the test ends.
func runAgent(t *testing.T, a *Agent) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

// settleSyncs waits until the agent synced want times in all, then ten
// debounces more, and fails unless that is all: any extra sync (its own
// write taken for drift) would be done by then.
func settleSyncs(t *testing.T, syncs *countingReporter, want int32, what string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for syncs.n.Load() < want && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)
	if got := syncs.n.Load(); got != want {
		t.Fatalf("%s: %d syncs, want %d", what, got, want)
	}
}

func authFor(user string) string {
	return (dockercfg.Entry{Username: user, Password: "p"}).Auth()
}

// TestRegistriesLoggedAreBounded: a source of thousands of registries
// does not write them all into every log line.
func TestRegistriesLoggedAreBounded(t *testing.T) {
	set := func(n int) dockercfg.Set {
		s := make(dockercfg.Set, n)
		for i := range s {
			s[i].Key = fmt.Sprintf("r%02d.test", i)
		}
		return s
	}
	for _, tt := range []struct {
		n, named, more int
	}{{0, 0, 0}, {3, 3, 0}, {loggedRegistries, loggedRegistries, 0}, {10000, loggedRegistries, 10000 - loggedRegistries}} {
		f := registries(set(tt.n))
		if got := len(f["registries"].([]string)); got != tt.named {
			t.Errorf("%d registries: %d named, want %d", tt.n, got, tt.named)
		}
		if more, _ := f["moreRegistries"].(int); more != tt.more {
			t.Errorf("%d registries: moreRegistries %v, want %d", tt.n, f["moreRegistries"], tt.more)
		}
	}
}

// appliesSource is a source whose last good snapshots no longer apply to
// the node (its labels changed, or its Node is gone).
type appliesSource struct {
	fakeSource
	applies bool
}

func (s *appliesSource) StillApplies(source.Snapshot) bool { return s.applies }

// TestLastGoodOnlyWhereItStillApplies: a Secret for some nodes that turns
// unreadable keeps its last good content in force only while its last good
// selector still matches the node; relabelled out (or the Node gone), it
// applies nowhere.
func TestLastGoodOnlyWhereItStillApplies(t *testing.T) {
	invalid := &dockercfg.ValidationError{Problems: []dockercfg.Problem{{Reason: "annotation does not parse"}}}
	for _, applies := range []bool{true, false} {
		src := &appliesSource{fakeSource: fakeSource{snaps: []source.Snapshot{snap("a", "r.test", "good")}}, applies: applies}
		files := &fakeFiles{}
		a := New(src, files, Options{Targets: []string{"/t"}, Prune: true}, logrus.NewEntry(logrus.New()))
		a.Sync(t.Context(), "test")
		src.snaps = []source.Snapshot{bad("a", invalid)}
		a.Sync(t.Context(), "test")
		if got := len(files.desired) == 1; got != applies || len(files.hold) != 0 {
			t.Errorf("still applies %v: last good in force %v (hold %v)", applies, got, files.hold)
		}
	}
}
