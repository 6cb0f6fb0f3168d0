package agent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/nodecreds/nodecreds/internal/dockercfg"
	"github.com/nodecreds/nodecreds/internal/filewatch"
	"github.com/nodecreds/nodecreds/internal/nodefile"
	"github.com/nodecreds/nodecreds/internal/runtimeauth"
	"github.com/nodecreds/nodecreds/internal/source"
	"github.com/nodecreds/nodecreds/internal/testsupport"
)

const certsDir = "/etc/containerd/certs.d"

// runtimeSnap is a source opted in to the runtime target.
func runtimeSnap(key, user string) source.Snapshot {
	s := snap("a", key, user)
	s.RuntimeAuth = true
	return s
}

// TestHostsTOMLDriftIsCorrectedAtOnce: a hosts.toml changed by someone
// else is brought back in line by the watch, long before the resync (an
// hour here), and the correction's own events cause no further sync.
func TestHostsTOMLDriftIsCorrectedAtOnce(t *testing.T) {
	root := t.TempDir()
	target := "/var/lib/kubelet/config.json"
	hosts := filepath.Join(root, certsDir, "r.test", "hosts.toml")
	src := &signalSource{fakeSource: fakeSource{snaps: []source.Snapshot{runtimeSnap("r.test", "u")}}, changed: make(chan struct{}, 1), completed: make(chan struct{}, 1)}
	files := nodefile.New(nodefile.Options{HostRoot: root, StateDir: "/var/lib/nodecreds"})
	syncs := &countingReporter{}
	a := New(src, files, Options{Targets: []string{target}, HostRoot: root, Prune: true, Debounce: 50 * time.Millisecond, Resync: time.Hour,
		Reporters: []Reporter{syncs}, Runtime: runtimeauth.New(certsDir, files)}, logrus.NewEntry(logrus.New()))
	runAgent(t, a)
	settle := func(want int32, what string) { t.Helper(); settleSyncs(t, syncs, want, what) }
	settle(1, "start (creates the hosts.toml)")
	header := "Basic " + authFor("u")
	if !strings.Contains(string(testsupport.ReadFile(t, hosts)), header) {
		t.Fatalf("no header after the first sync:\n%s", testsupport.ReadFile(t, hosts))
	}
	mirrorFile := filepath.Join(root, certsDir, "docker.io", "hosts.toml")
	adminHead := "# the admin's mirror\nserver = \"https://registry-1.docker.io\"\n\n"
	admin := adminHead + "[host.\"https://r.test\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
	tests := []struct {
		name    string
		disturb func(t *testing.T)
		check   func(t *testing.T)
	}{
		{"the header edited in place", func(t *testing.T) {
			b := testsupport.ReadFile(t, hosts)
			must(t, os.WriteFile(hosts, []byte(strings.Replace(string(b), authFor("u"), authFor("x"), 1)), 0o600))
		}, func(t *testing.T) { hasHeader(t, hosts, header) }},
		// (A folder left without its hosts.toml is not written into: its
		// certificate files would then be ignored; runtimeauth's tests.)
		{"the host folder removed", func(t *testing.T) { must(t, os.RemoveAll(filepath.Dir(hosts))) }, func(t *testing.T) { hasHeader(t, hosts, header) }},
		{"a new host folder naming r.test as a mirror", func(t *testing.T) {
			must(t, os.MkdirAll(filepath.Dir(mirrorFile), 0o755))
			testsupport.WriteFile(t, mirrorFile+".tmp", admin, 0o644)
			must(t, os.Rename(mirrorFile+".tmp", mirrorFile))
		}, func(t *testing.T) {
			got := string(testsupport.ReadFile(t, mirrorFile))
			if !strings.Contains(got, header) || !strings.HasPrefix(got, adminHead) {
				t.Errorf("the mirror section did not get the header, or the admin's lines changed:\n%s", got)
			}
		}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.disturb(t)
			// Two syncs at most: the admin's rename is two events apart
			// from its folder's creation.
			deadline := time.Now().Add(3 * time.Second)
			for syncs.n.Load() < int32(2+i) && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			time.Sleep(500 * time.Millisecond)
			tt.check(t)
			n := syncs.n.Load()
			time.Sleep(500 * time.Millisecond)
			if got := syncs.n.Load(); got != n {
				t.Errorf("%d more syncs after the correction: its own write taken for drift", got-n)
			}
		})
	}
}

func hasHeader(t *testing.T, path, header string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil || !strings.Contains(string(b), header) {
		t.Errorf("%s not corrected (%v):\n%s", path, err, b)
	}
}

// TestCertsPollingComparesWithWhatWasLeft: without inotify, a tick sees a
// changed or removed hosts.toml and a new host folder, and never the
// agent's own writes.
func TestCertsPollingComparesWithWhatWasLeft(t *testing.T) {
	tests := []struct {
		name    string
		disturb func(t *testing.T, dir string)
	}{
		{"a header edited", func(t *testing.T, dir string) {
			p := filepath.Join(dir, "r.test", "hosts.toml")
			b := testsupport.ReadFile(t, p)
			must(t, os.WriteFile(p, []byte(strings.Replace(string(b), "Basic", "Basix", 1)), 0o600))
		}},
		{"removed", func(t *testing.T, dir string) { must(t, os.Remove(filepath.Join(dir, "r.test", "hosts.toml"))) }},
		{"a new host folder", func(t *testing.T, dir string) {
			testsupport.WriteFile(t, filepath.Join(dir, "m.test", "hosts.toml"), "server = \"https://m.test\"\n", 0o600)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			files := nodefile.New(nodefile.Options{HostRoot: root, StateDir: "/var/lib/nodecreds"})
			writer := runtimeauth.New(certsDir, files)
			w := filewatch.NewPolling(time.Hour, errors.New("test"))
			defer w.Close()
			dir := filepath.Join(root, certsDir)
			cw := newCertsWatch(w, dir)
			sync := func() {
				s := runtimeSnap("r.test", "u")
				res, _, err := writer.Sync(t.Context(), runtimeauth.Desired{Sources: []dockercfg.NamedSet{{Name: s.Name, Set: s.Set}}, Annotated: map[string]bool{s.Name: true}})
				if err != nil {
					t.Fatal(err)
				}
				for _, r := range res {
					if r.Err != nil {
						t.Fatalf("sync: %v", r.Err)
					}
				}
				cw.refresh()
			}
			sync()
			if cw.polledDrift() {
				t.Fatal("a tick after the agent's own write reported drift")
			}
			tt.disturb(t, dir)
			if !cw.polledDrift() {
				t.Fatal("the change was not seen")
			}
			sync()
			if cw.polledDrift() {
				t.Error("a tick after the correction reported drift")
			}
		})
	}
}

// TestCertsWatchBoundsInotifyWatches: inotify watches are a per-user
// limit shared with every root process on the node (the kubelet,
// containerd), and the host folders are as many as the registries of the
// annotated Secrets: the watch takes at most maxHostWatches of them (the
// rest are corrected at the resync), however many there are.
func TestCertsWatchBoundsInotifyWatches(t *testing.T) {
	for _, n := range []int{3, maxHostWatches + 300} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			dir := t.TempDir()
			for i := range n {
				must(t, os.Mkdir(filepath.Join(dir, fmt.Sprintf("r%d.test", i)), 0o700))
			}
			w := filewatch.New(time.Hour)
			defer w.Close()
			if why := w.Polling(); why != "" {
				t.Skipf("no inotify here: %s", why)
			}
			cw := newCertsWatch(w, dir)
			cw.refresh()
			watched := 0
			for _, d := range cw.hostDirs() {
				if w.Watching(d) {
					watched++
				}
			}
			if !w.Watching(dir) {
				t.Error("the certs folder is not watched")
			}
			if want := min(n, maxHostWatches); watched != want {
				t.Errorf("%d host folders watched of %d, want %d", watched, n, want)
			}
		})
	}
}
