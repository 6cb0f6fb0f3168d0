package nodefile

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nodecreds/nodecreds/internal/dockercfg"
	"github.com/nodecreds/nodecreds/internal/hostfs"
	"github.com/nodecreds/nodecreds/internal/jsonwalk"
	"github.com/nodecreds/nodecreds/internal/testsupport"
)

const (
	kubeletFile = "/var/lib/kubelet/config.json"
	dockerFile  = "/root/.docker/config.json"
	stateDir    = "/var/lib/nodecreds"
)

func newEngine(t *testing.T) (*Engine, string) {
	t.Helper()
	root := t.TempDir()
	return New(Options{HostRoot: root, StateDir: stateDir, Now: func() time.Time {
		return time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
	}}), root
}

func apply(t *testing.T, e *Engine, targets []string, desired dockercfg.Set, prune bool) []Result {
	t.Helper()
	res, err := e.Apply(t.Context(), targets, desired, prune)
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	return res
}

func mustOK(t *testing.T, res []Result) {
	t.Helper()
	for _, r := range res {
		if r.Err != nil {
			t.Fatalf("target %s: %v", r.Target, r.Err)
		}
	}
}

func readJSON(t *testing.T, path string) map[string]any {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatalf("%s is not valid JSON: %v\n%s", path, err, data)
	}
	return m
}

func auths(t *testing.T, path string) map[string]any {
	t.Helper()
	a, _ := readJSON(t, path)["auths"].(map[string]any)
	return a
}

func authOf(t *testing.T, path, key string) string {
	t.Helper()
	e, _ := auths(t, path)[key].(map[string]any)
	s, _ := e["auth"].(string)
	return s
}

func TestApplyCreatesFilesWithSafeModes(t *testing.T) {
	e, root := newEngine(t)
	res := apply(t, e, []string{kubeletFile, dockerFile}, dockercfg.Set{item("r.io", "u", "p")}, true)
	mustOK(t, res)
	for _, tgt := range []string{kubeletFile, dockerFile} {
		p := filepath.Join(root, tgt)
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %o, want 600", tgt, fi.Mode().Perm())
		}
		di, _ := os.Stat(filepath.Dir(p))
		if di.Mode().Perm() != 0o700 {
			t.Errorf("%s folder mode %o, want 700", tgt, di.Mode().Perm())
		}
		if got := authOf(t, p, "r.io"); got != (dockercfg.Entry{Username: "u", Password: "p"}).Auth() {
			t.Errorf("%s auth = %q", tgt, got)
		}
	}
	st, err := os.Stat(filepath.Join(root, stateDir, stateFileName))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("state file: %v mode %v", err, st)
	}
	if !res[0].Changed || res[0].Entries != 1 {
		t.Errorf("result = %+v", res[0])
	}
}

func TestApplyNoChangeDoesNotWrite(t *testing.T) {
	e, root := newEngine(t)
	p := filepath.Join(root, kubeletFile)
	testsupport.WriteFile(t, p, `{"auths":{"other.io":{"auth":"bzpw"}},"credsStore":"x"}`, 0o600)
	desired := dockercfg.Set{item("r.io", "u", "p")}
	mustOK(t, apply(t, e, []string{kubeletFile}, desired, true))
	before, _ := os.Stat(p)
	stateBefore, _ := os.Stat(filepath.Join(root, stateDir, stateFileName))
	time.Sleep(20 * time.Millisecond) // let a rewrite show in mtime
	res := apply(t, e, []string{kubeletFile}, desired, true)
	mustOK(t, res)
	after, _ := os.Stat(p)
	stateAfter, _ := os.Stat(filepath.Join(root, stateDir, stateFileName))
	if res[0].Changed || !after.ModTime().Equal(before.ModTime()) || ino(after) != ino(before) {
		t.Errorf("unchanged content was rewritten")
	}
	if !stateAfter.ModTime().Equal(stateBefore.ModTime()) || ino(stateAfter) != ino(stateBefore) {
		t.Errorf("state file was rewritten although nothing changed")
	}
}

func ino(fi os.FileInfo) uint64 { return fi.Sys().(*syscall.Stat_t).Ino }

func TestApplyKeepsEverythingElse(t *testing.T) {
	e, root := newEngine(t)
	p := filepath.Join(root, dockerFile)
	orig := `{
  "auths": {
    "other.io": {"auth": "b3RoZXI6cHc=", "email": "o@x"},
    "https://index.docker.io/v1/": {"auth": "aHViOnB3"}
  },
  "credsStore": "desktop",
  "credHelpers": {"gcr.io": "gcloud"},
  "HttpHeaders": {"X-Meta": "1"},
  "proxies": {"default": {"httpProxy": "http://127.0.0.1:3128"}},
  "futureField": {"n": 12345678901234567890, "list": [1.50, true, null]}
}`
	testsupport.WriteFile(t, p, orig, 0o600)
	mustOK(t, apply(t, e, []string{dockerFile}, dockercfg.Set{item("docker.io", "u", "p"), item("r.io", "u", "p")}, true))

	got := docOf(t, string(testsupport.ReadFile(t, p)))
	want := docOf(t, orig)
	for k, v := range want.top {
		if k == "auths" {
			continue
		}
		if string(jsonwalk.Compact(got.top[k])) != string(jsonwalk.Compact(v)) {
			t.Errorf("top-level %q = %s, want %s", k, got.top[k], v)
		}
	}
	if fingerprint(got.auths["other.io"]) != fingerprint(want.auths["other.io"]) {
		t.Errorf("foreign entry changed: %s", got.auths["other.io"])
	}
	// The docker CLI's file gets Docker Hub under the key the docker CLI
	// reads: ours now, the foreign one displaced.
	if fingerprint(got.auths[dockercfg.DockerHubKey]) != fingerprint(json.RawMessage(`{"auth":"dTpw"}`)) {
		t.Errorf("foreign Docker Hub entry was not displaced by ours: %s", got.auths[dockercfg.DockerHubKey])
	}

	// The registry leaves the sources: the displaced entry comes back as it was.
	res := apply(t, e, []string{dockerFile}, dockercfg.Set{item("r.io", "u", "p")}, true)
	mustOK(t, res)
	got = docOf(t, string(testsupport.ReadFile(t, p)))
	if fingerprint(got.auths["https://index.docker.io/v1/"]) != fingerprint(want.auths["https://index.docker.io/v1/"]) {
		t.Errorf("displaced entry not restored: %s", got.auths["https://index.docker.io/v1/"])
	}
	if _, ok := got.auths["docker.io"]; ok {
		t.Errorf("pruned entry still there")
	}

	// Cleanup: back to exactly the original value.
	cres, err := e.Cleanup(t.Context(), nil)
	if err != nil {
		t.Fatal(err)
	}
	mustOK(t, cres)
	if !docOf(t, string(testsupport.ReadFile(t, p))).equal(want) {
		t.Errorf("after cleanup the file differs from the original:\n%s", testsupport.ReadFile(t, p))
	}
	if _, err := os.Stat(filepath.Join(root, stateDir, stateFileName)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("state file left after a full cleanup: %v", err)
	}
}

func TestPruneOffKeepsEntries(t *testing.T) {
	e, root := newEngine(t)
	mustOK(t, apply(t, e, []string{kubeletFile}, dockercfg.Set{item("r.io", "u", "p")}, true))
	mustOK(t, apply(t, e, []string{kubeletFile}, nil, false))
	if _, ok := auths(t, filepath.Join(root, kubeletFile))["r.io"]; !ok {
		t.Fatal("entry removed although prune is off")
	}
	mustOK(t, apply(t, e, []string{kubeletFile}, nil, true))
	if _, err := os.Stat(filepath.Join(root, kubeletFile)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a file nodecreds created and that is now empty should go (an empty file hides the next one from the kubelet): %v", err)
	}
}

func TestCleanupKeepsFilesWithOthersData(t *testing.T) {
	e, root := newEngine(t)
	mustOK(t, apply(t, e, []string{kubeletFile}, dockercfg.Set{item("r.io", "u", "p")}, true))
	p := filepath.Join(root, kubeletFile)
	// Someone adds an entry of their own to the file we created.
	m := readJSON(t, p)
	m["auths"].(map[string]any)["mine.io"] = map[string]any{"auth": "bWU6cA=="}
	b, _ := json.Marshal(m)
	testsupport.WriteFile(t, p, string(b), 0o600)

	res, err := e.Cleanup(t.Context(), nil)
	if err != nil {
		t.Fatal(err)
	}
	mustOK(t, res)
	a := auths(t, p)
	if _, ok := a["mine.io"]; !ok || len(a) != 1 {
		t.Errorf("after cleanup auths = %v, want only mine.io", a)
	}
}

func TestCorruptTargetIsSetAside(t *testing.T) {
	e, root := newEngine(t)
	p := filepath.Join(root, kubeletFile)
	testsupport.WriteFile(t, p, `{"auths": {"half`, 0o644)
	res := apply(t, e, []string{kubeletFile}, dockercfg.Set{item("r.io", "u", "p")}, true)
	mustOK(t, res)
	aside := p + ".corrupt-20261126T100000Z"
	if res[0].SetAside != aside {
		t.Errorf("SetAside = %q, want %q", res[0].SetAside, aside)
	}
	if string(testsupport.ReadFile(t, aside)) != `{"auths": {"half` {
		t.Errorf("set-aside copy differs")
	}
	if fi, _ := os.Stat(aside); fi.Mode().Perm() != 0o600 {
		t.Errorf("set-aside mode %o", fi.Mode().Perm())
	}
	if authOf(t, p, "r.io") == "" {
		t.Errorf("corrupt target not replaced")
	}
	if len(res[0].Warnings) == 0 {
		t.Errorf("no warning about the corrupt file")
	}
}

func TestCorruptTargetLeftAloneWhenNothingToWrite(t *testing.T) {
	e, root := newEngine(t)
	p := filepath.Join(root, kubeletFile)
	testsupport.WriteFile(t, p, `not json`, 0o600)
	res := apply(t, e, []string{kubeletFile}, nil, true)
	mustOK(t, res)
	if string(testsupport.ReadFile(t, p)) != "not json" || res[0].Changed {
		t.Errorf("a corrupt file nodecreds has nothing for was changed")
	}
	if len(res[0].Warnings) == 0 {
		t.Errorf("no warning")
	}
}

func TestModeAndOwnerKept(t *testing.T) {
	e, root := newEngine(t)
	strict := filepath.Join(root, kubeletFile)
	loose := filepath.Join(root, dockerFile)
	testsupport.WriteFile(t, strict, `{}`, 0o400)
	testsupport.WriteFile(t, loose, `{}`, 0o644)
	// Another user's file needs root to make (make test runs as root; the
	// unit tier may not): without it, the owner check is left to make test.
	owner := os.Getuid() == 0
	if owner {
		if err := os.Chown(loose, 1234, 4321); err != nil {
			t.Fatal(err)
		}
	}
	mustOK(t, apply(t, e, []string{kubeletFile, dockerFile}, dockercfg.Set{item("r.io", "u", "p")}, true))
	if fi, _ := os.Stat(strict); fi.Mode().Perm() != 0o400 {
		t.Errorf("stricter mode not kept: %o", fi.Mode().Perm())
	}
	fi, _ := os.Stat(loose)
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("loose mode not tightened: %o", fi.Mode().Perm())
	}
	if st := fi.Sys().(*syscall.Stat_t); owner && (st.Uid != 1234 || st.Gid != 4321) {
		t.Errorf("owner not kept: %d:%d", st.Uid, st.Gid)
	}
}

func TestSymlinks(t *testing.T) {
	tests := []struct {
		name     string
		link     string // symlink placed at the kubelet target
		wantPath string // where the content must land, under root
	}{
		{"absolute link is taken under the host root", "/etc/creds/config.json", "/etc/creds/config.json"},
		{"relative link", "../shared/config.json", "/var/lib/shared/config.json"},
		{"climbing out with .. stays under the root", "../../../../../../../../outside/config.json", "/outside/config.json"},
		{"dangling link is written through", "/does/not/exist/config.json", "/does/not/exist/config.json"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			parent := t.TempDir()
			root := filepath.Join(parent, "root")
			e := New(Options{HostRoot: root, StateDir: stateDir})
			link := filepath.Join(root, kubeletFile)
			if err := os.MkdirAll(filepath.Dir(link), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(tt.link, link); err != nil {
				t.Fatal(err)
			}
			mustOK(t, apply(t, e, []string{kubeletFile}, dockercfg.Set{item("r.io", "u", "p")}, true))
			if fi, err := os.Lstat(link); err != nil || fi.Mode()&fs.ModeSymlink == 0 {
				t.Errorf("the link was replaced: %v", err)
			}
			if authOf(t, filepath.Join(root, tt.wantPath), "r.io") == "" {
				t.Errorf("content not at %s", tt.wantPath)
			}
			// Nothing was written outside the root.
			entries, _ := os.ReadDir(parent)
			if len(entries) != 1 {
				t.Errorf("something was written outside the host root: %v", entries)
			}
		})
	}
}

func TestOneFailingTargetDoesNotStopOthers(t *testing.T) {
	e, root := newEngine(t)
	if err := os.MkdirAll(filepath.Join(root, kubeletFile), 0o700); err != nil { // a directory where the file should be
		t.Fatal(err)
	}
	res := apply(t, e, []string{kubeletFile, dockerFile}, dockercfg.Set{item("r.io", "u", "p")}, true)
	if res[0].Err == nil || !strings.Contains(res[0].Err.Error(), "directory") || !strings.Contains(res[0].Err.Error(), filepath.Join(root, kubeletFile)) {
		t.Errorf("want an error naming the path and saying it is a directory, got %v", res[0].Err)
	}
	if res[1].Err != nil || authOf(t, filepath.Join(root, dockerFile), "r.io") == "" {
		t.Errorf("second target not synced: %v", res[1].Err)
	}
	leftovers, _ := filepath.Glob(filepath.Join(root, "var/lib/kubelet/.*nodecreds*"))
	if len(leftovers) != 0 {
		t.Errorf("temp files left: %v", leftovers)
	}
}

func TestRelativeTargetRefused(t *testing.T) {
	e, _ := newEngine(t)
	res := apply(t, e, []string{"relative/config.json"}, nil, true)
	if res[0].Err == nil {
		t.Error("a relative target was accepted")
	}
}

// TestConcurrentWriter runs a docker-login-style writer (read, add an entry,
// write a temp file, rename over) in a tight loop while the engine rotates
// the desired set. None of the writer's entries may be lost by nodecreds
// (except, in a -tags noexchange build, in the window that docs/security.md
// names). Without any load on the machine the hook makes the windows that
// load opens: every other swap of nodecreds waits for the writer to rename
// one more file, so that the swap replaces a file it did not read and puts
// a stale one in place; the swap after waits for the writer to read that
// stale file, so that what the writer makes of it lands around the swap
// that may end the sync.
func TestConcurrentWriter(t *testing.T) {
	for run := range 3 {
		t.Run(fmt.Sprint(run), func(t *testing.T) {
			e, root := newEngine(t)
			p := filepath.Join(root, dockerFile)
			testsupport.WriteFile(t, p, `{"auths":{}}`, 0o600)

			const writes = 300
			var reads, wrote, finished atomic.Int64
			writer := make(chan error, 1)
			go func() {
				defer finished.Store(1)
				for i := range writes {
					_, err := rewrite(p, func(m map[string]any) {
						reads.Add(1)
						login(fmt.Sprintf("w%d.io", i))(m)
					})
					if err != nil {
						writer <- err
						return
					}
					wrote.Add(1)
				}
				writer <- nil
			}()
			wait := func(n *atomic.Int64) {
				for was := n.Load(); n.Load() == was && finished.Load() == 0; {
					runtime.Gosched()
				}
			}
			swaps := 0
			e.hooks.beforeSwap = func() {
				if swaps++; swaps%2 == 1 {
					wait(&wrote)
				} else {
					wait(&reads)
				}
			}
			for i := 0; ; i++ {
				select {
				case err := <-writer:
					if err != nil {
						t.Fatal(err)
					}
				default:
					res := apply(t, e, []string{dockerFile}, dockercfg.Set{item("r.io", "u", fmt.Sprintf("p%d", i))}, true)
					if err := res[0].Err; err != nil && !errors.Is(err, ErrContended) {
						t.Fatal(err)
					}
					continue
				}
				break
			}
			e.hooks.beforeSwap = nil
			mustOK(t, apply(t, e, []string{dockerFile}, dockercfg.Set{item("r.io", "u", "final")}, true))
			a := auths(t, p)
			lost := 0
			for i := range writes {
				if _, ok := a[fmt.Sprintf("w%d.io", i)]; !ok {
					lost++
					if !hostfs.RenameFlagsOff {
						t.Errorf("writer's entry w%d.io was lost", i)
					}
				}
			}
			if hostfs.RenameFlagsOff {
				// Without RENAME_EXCHANGE a writer renaming its file in between
				// nodecreds' last check and its rename is not seen (docs/security.md
				// says so); every file either wrote stays whole (the writer parses
				// each one it reads).
				t.Logf("without renameat2's flags, %d of the writer's %d entries were lost", lost, writes)
			}
			if authOf(t, p, "r.io") != (dockercfg.Entry{Username: "u", Password: "final"}).Auth() {
				t.Errorf("our entry is not the final one")
			}
		})
	}
}

// TestInterruptedWriteConverges simulates a crash after the state intent was
// saved but before the target was replaced, then a restart with a new
// desired set: the foreign entry the interrupted write was displacing must
// survive.
func TestInterruptedWriteConverges(t *testing.T) {
	e, root := newEngine(t)
	p := filepath.Join(root, kubeletFile)
	foreign := `{"auth":"Zm9yZWlnbjpwdw=="}`
	testsupport.WriteFile(t, p, `{"auths":{"https://r.io":`+foreign+`}}`, 0o600)
	raw, _ := json.Marshal(dockercfg.Entry{Username: "u", Password: "p"})
	st := &State{Version: stateVersion, Targets: map[string]*TargetState{
		kubeletFile: {Pending: map[string]string{"r.io": fingerprint(raw)}, Displaced: map[string]json.RawMessage{"https://r.io": json.RawMessage(foreign)}},
	}}
	writeState(t, root, st)
	mustOK(t, apply(t, e, []string{kubeletFile}, dockercfg.Set{item("other.io", "u", "p")}, true))
	a := auths(t, p)
	if e, _ := a["https://r.io"].(map[string]any); e == nil || e["auth"] != "Zm9yZWlnbjpwdw==" {
		t.Errorf("foreign entry lost after an interrupted write: %v", a)
	}
	if _, ok := a["other.io"]; !ok {
		t.Errorf("new entry missing: %v", a)
	}
}

// writeState saves st as the engine would, in root's state folder.
func writeState(t *testing.T, root string, st *State) {
	t.Helper()
	r, err := hostfs.OpenRoot(root)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	d, err := r.OpenDir(stateDir, true, 0o700)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := saveState(d, st, nil); err != nil {
		t.Fatal(err)
	}
}

// TestCrashLeftoversSwept: temp files a killed nodecreds left (next to a
// target, and of the state) are removed by the next process's first sync,
// and a long-running engine leaves none of its own.
func TestCrashLeftoversSwept(t *testing.T) {
	e, root := newEngine(t)
	leftovers := []string{
		filepath.Join(root, "var/lib/kubelet/.config.json.nodecreds-0123456789abcdef"),
		filepath.Join(root, stateDir, ".state.json.fedcba9876543210"),
	}
	for _, p := range leftovers {
		testsupport.WriteFile(t, p, "half a file", 0o600)
	}
	for i := range 3 {
		mustOK(t, apply(t, e, []string{kubeletFile, dockerFile}, dockercfg.Set{item("r.io", "u", fmt.Sprint("p", i))}, true))
	}
	for _, pattern := range []string{"var/lib/kubelet/.*", "root/.docker/.*", stateDir + "/.*"} {
		if left, _ := filepath.Glob(filepath.Join(root, pattern)); len(left) != 0 {
			t.Errorf("left behind: %v", left)
		}
	}
}

func readState(t *testing.T, root string) *State {
	t.Helper()
	s := &State{Targets: map[string]*TargetState{}}
	if err := decodeState(testsupport.ReadFile(t, filepath.Join(root, stateDir, stateFileName)), s); err != nil {
		t.Fatal(err)
	}
	return s
}

// TestUpgradeFromStateOf2026_11: testdata/upgrade-2026-11 is a node as the
// release of 2026-11 left it (its state.json written by that release's
// code, which has no "from"). This nodecreds reads it, respells the
// kubelet file's Docker Hub key as the Secret spells it, records sources,
// and cleanup still restores what that release displaced. The state keeps
// version 1 and only adds a field that release ignores, so rolling back
// to it stays possible.
func TestUpgradeFromStateOf2026_11(t *testing.T) {
	e, root := newEngine(t)
	src := filepath.Join("testdata", "upgrade-2026-11")
	err := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(root, rel), 0o700)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(root, rel), data, 0o600)
	})
	if err != nil {
		t.Fatal(err)
	}
	old := readState(t, root)
	if len(old.Targets) != 2 || len(old.Targets[kubeletFile].Owned) != 3 || len(old.Targets[kubeletFile].Displaced) != 1 || !old.Targets[dockerFile].Created {
		t.Fatalf("the state of 2026-11 read as %+v", old.Targets)
	}
	dockerBefore := testsupport.ReadFile(t, filepath.Join(root, dockerFile))

	set, _, err := dockercfg.Parse([]byte(`{"auths":{"r.example.test":{"auth":"b3VyczpvLXB3"},"docker.io":{"auth":"aHViOmgtcHc=","email":"h@example.test"},"*.glob.example.test":{"username":"g","password":"g-pw"}}}`), dockercfg.ConfigJSON)
	if err != nil {
		t.Fatal(err)
	}
	res, err := e.Sync(t.Context(), []string{kubeletFile, dockerFile}, Desired{Sources: []dockercfg.NamedSet{{Name: "nodecreds/registry-credentials", Set: set}}, Prune: true})
	if err != nil {
		t.Fatal(err)
	}
	mustOK(t, res)
	kubelet := docOf(t, string(testsupport.ReadFile(t, filepath.Join(root, kubeletFile))))
	if got := slices.Sorted(maps.Keys(kubelet.auths)); !slices.Equal(got, []string{"*.glob.example.test", "docker.io", "keep.example.test", "r.example.test"}) {
		t.Errorf("kubelet file after the upgrade: %v", got)
	}
	if !bytes.Equal(testsupport.ReadFile(t, filepath.Join(root, dockerFile)), dockerBefore) || res[1].Changed {
		t.Errorf("the docker CLI's file, already as it should be, was rewritten")
	}
	st := readState(t, root)
	if st.Version != 1 || st.Targets[kubeletFile].From["docker.io"] != "nodecreds/registry-credentials" || len(st.Targets[kubeletFile].Displaced) != 1 {
		t.Errorf("state after the upgrade: %+v", st.Targets[kubeletFile])
	}

	res, err = e.Cleanup(t.Context(), nil)
	if err != nil {
		t.Fatal(err)
	}
	mustOK(t, res)
	kubelet = docOf(t, string(testsupport.ReadFile(t, filepath.Join(root, kubeletFile))))
	if got := slices.Sorted(maps.Keys(kubelet.auths)); !slices.Equal(got, []string{"https://r.example.test/v1/", "keep.example.test"}) || string(kubelet.top["credsStore"]) != `"pass"` {
		t.Errorf("kubelet file after cleanup: %v %s", got, kubelet.top)
	}
	if _, err := os.Stat(filepath.Join(root, dockerFile)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the docker CLI's file nodecreds created is still there after cleanup: %v", err)
	}
}

// TestForeignKeyDisplacedOnlyByTheSameIndexKey: a foreign entry is
// displaced only by a key the kubelet files alike; r.test/v1 (a path to
// the kubelet) or r.test/team/ leaves the foreign r.test the kubelet uses
// for other images in place.
func TestForeignKeyDisplacedOnlyByTheSameIndexKey(t *testing.T) {
	for key, displaced := range map[string]bool{"r.test/v1": false, "r.test/team/": false, "https://r.test/": true, "r.test/v2/": true} {
		e, root := newEngine(t)
		testsupport.WriteFile(t, filepath.Join(root, kubeletFile), `{"auths":{"r.test":{"auth":"Zjpw"}}}`, 0o600)
		res := apply(t, e, []string{kubeletFile}, dockercfg.Set{item(key, "u", "p")}, true)
		mustOK(t, res)
		if got := len(res[0].Displaced) == 1; got != displaced {
			t.Errorf("%s: foreign r.test displaced %v, want %v", key, got, displaced)
		}
	}
}

// TestFileTheKubeletRefusesIsFixedOrReported (found by review): a file the
// kubelet reads none of because of something another writer put there is
// never left looking in sync. An entry it cannot decode that a later entry
// of its key replaces is dropped by writing the file anew (no consumer
// reads it); a refused entry or HttpHeaders that stays is an error naming
// it (never its value), every sync, and nodecreds' entries are still
// written.
func TestFileTheKubeletRefusesIsFixedOrReported(t *testing.T) {
	good := `{"auth":"Zjpw"}`
	tests := []struct {
		name, file string
		err        string // "" when fixed
	}{
		{"a bad auth replaced by a later entry of its key", `{"auths":{"f.test":{"auth":"not base64!"},"f.test":` + good + `}}`, ""},
		{"a bad entry wiped by a later null auths", `{"auths":{"f.test":{"auth":"%%%"}},"auths":null,"auths":{"g.test":` + good + `}}`, ""},
		{"a bad auth that stays", `{"auths":{"f.test":{"auth":"not base64!"}}}`, `entry "f.test" has an "auth" that does not decode`},
		{"a number where a string belongs", `{"auths":{"f.test":{"auth":"Zjpw","Email":1}}}`, `entry "f.test" has "email" of the wrong type`},
		{"HttpHeaders not strings", `{"auths":{"f.test":` + good + `},"HttpHeaders":{"X":1}}`, `"HttpHeaders" is not an object of strings`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, root := newEngine(t)
			p := filepath.Join(root, kubeletFile)
			testsupport.WriteFile(t, p, tt.file, 0o600)
			for range 2 {
				res, err := e.Apply(t.Context(), []string{kubeletFile}, dockercfg.Set{item("r.io", "u", "p")}, true)
				if err != nil {
					t.Fatal(err)
				}
				switch {
				case tt.err == "" && res[0].Err != nil:
					t.Errorf("not fixed: %v", res[0].Err)
				case tt.err != "" && (!errors.Is(res[0].Err, ErrUnreadable) || !strings.Contains(res[0].Err.Error(), tt.err)):
					t.Errorf("error %v, want one saying %s", res[0].Err, tt.err)
				}
			}
			if !strings.Contains(string(testsupport.ReadFile(t, p)), `"r.io"`) {
				t.Error("nodecreds' entry not written")
			}
		})
	}
}
