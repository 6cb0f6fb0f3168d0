package nodefile

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/nodecreds/nodecreds/internal/dockercfg"
	"github.com/nodecreds/nodecreds/internal/testsupport"
)

// TestMemoryNeverHidesAChange: an engine that remembers what it read and
// wrote must end every sync exactly where a freshly started one (nothing
// remembered: a restarted agent) ends, whatever happened to the files in
// between — the same bytes in every target and in the state file.
func TestMemoryNeverHidesAChange(t *testing.T) {
	targets := []string{kubeletFile, dockerFile}
	set := func(pw string, keys ...string) dockercfg.Set {
		var s dockercfg.Set
		for _, k := range keys {
			s = append(s, item(k, "u", pw+"-"+k))
		}
		return s
	}
	// Each step changes something behind the engine's back (or not), then
	// syncs.
	steps := []struct {
		name    string
		disturb func(t *testing.T, root string, prevState []byte)
		desired dockercfg.Set
	}{
		{"first sync", nil, set("a", "r1.io", "r2.io", "r3.io")},
		{"nothing changed", nil, set("a", "r1.io", "r2.io", "r3.io")},
		{"one entry rotated", nil, set("b", "r1.io", "r2.io", "r3.io")},
		{"a foreign entry added", func(t *testing.T, root string, _ []byte) {
			edit(t, root, kubeletFile, `"r1.io"`, `"them.io": {"auth": "dGhlbTpwdw=="}, "r1.io"`)
		}, set("b", "r1.io", "r2.io", "r3.io")},
		{"our entry changed in place, same length", func(t *testing.T, root string, _ []byte) {
			e := (dockercfg.Entry{Username: "u", Password: "b-r2.io"}).Auth()
			edit(t, root, dockerFile, e, strings.ToUpper(e[:4])+e[4:])
		}, set("b", "r1.io", "r2.io", "r3.io")},
		{"a foreign byte changed, same length", func(t *testing.T, root string, _ []byte) {
			edit(t, root, kubeletFile, "dGhlbTpwdw==", "dGhlbTpwdx==")
		}, set("c", "r1.io", "r2.io", "r3.io")},
		{"the state put back to an older copy", func(t *testing.T, root string, prev []byte) {
			testsupport.WriteFile(t, filepath.Join(root, stateDir, stateFileName), string(prev), 0o600)
		}, set("c", "r1.io", "r2.io", "r3.io")},
		{"a target deleted", func(t *testing.T, root string, _ []byte) {
			if err := os.Remove(filepath.Join(root, dockerFile)); err != nil {
				t.Fatal(err)
			}
		}, set("c", "r1.io", "r2.io")},
		{"cleaned up by another process", func(t *testing.T, root string, _ []byte) {
			other := New(Options{HostRoot: root, StateDir: stateDir, Now: fixedNow})
			if _, err := other.Cleanup(t.Context(), nil); err != nil {
				t.Fatal(err)
			}
		}, set("c", "r1.io", "r2.io")},
		{"the same content written anew by someone else", func(t *testing.T, root string, _ []byte) {
			p := filepath.Join(root, kubeletFile)
			testsupport.WriteFile(t, p, string(testsupport.ReadFile(t, p)), 0o600)
		}, set("d", "r1.io")},
	}
	warmRoot, coldRoot := t.TempDir(), t.TempDir()
	warm := New(Options{HostRoot: warmRoot, StateDir: stateDir, Now: fixedNow})
	var prevWarm, prevCold []byte
	for _, s := range steps {
		if s.disturb != nil {
			s.disturb(t, warmRoot, prevWarm)
			s.disturb(t, coldRoot, prevCold)
		}
		prevWarm, prevCold = stateBytes(t, warmRoot), stateBytes(t, coldRoot)
		mustOK(t, apply(t, warm, targets, s.desired, true))
		mustOK(t, apply(t, New(Options{HostRoot: coldRoot, StateDir: stateDir, Now: fixedNow}), targets, s.desired, true))
		for _, f := range append(targets, filepath.Join(stateDir, stateFileName)) {
			w, _ := os.ReadFile(filepath.Join(warmRoot, f))
			c, _ := os.ReadFile(filepath.Join(coldRoot, f))
			if !bytes.Equal(w, c) {
				t.Fatalf("after %q, %s differs between an engine that remembers and a fresh one:\n%s\nfresh:\n%s", s.name, f, w, c)
			}
		}
	}
}

// edit replaces old by new in a node file, the way another tool would:
// a whole new file, renamed over.
func edit(t *testing.T, root, file, old, repl string) {
	t.Helper()
	p := filepath.Join(root, file)
	s := string(testsupport.ReadFile(t, p))
	if !strings.Contains(s, old) {
		t.Fatalf("%s does not hold %q:\n%s", file, old, s)
	}
	testsupport.WriteFile(t, p+".tmp", strings.Replace(s, old, repl, 1), 0o600)
	if err := os.Rename(p+".tmp", p); err != nil {
		t.Fatal(err)
	}
}

func stateBytes(t *testing.T, root string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, stateDir, stateFileName))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return b
}

// TestOneStateSaveBeforeAndAfterAllTargets: a sync of several targets
// records every target's intent in one state save before it replaces any
// of them, and every final record in one save after the last — seen as the
// order in which the files appear (one inotify queue keeps it).
func TestOneStateSaveBeforeAndAfterAllTargets(t *testing.T) {
	e, root := newEngine(t)
	targets := []string{kubeletFile, dockerFile}
	mustOK(t, apply(t, e, targets, dockercfg.Set{item("r.io", "u", "p0")}, true))

	w, err := fsnotify.NewWatcher()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	watched := map[string]string{
		filepath.Join(root, stateDir, stateFileName): "state",
		filepath.Join(root, kubeletFile):             "kubelet",
		filepath.Join(root, dockerFile):              "docker",
	}
	for p := range watched {
		if err := w.Add(filepath.Dir(p)); err != nil {
			t.Fatal(err)
		}
	}
	for i := 1; i <= 3; i++ {
		mustOK(t, apply(t, e, targets, dockercfg.Set{item("r.io", "u", fmt.Sprintf("p%d", i))}, true))
	}
	var seen []string
	timeout := time.After(2 * time.Second)
	for len(seen) < 12 {
		select {
		case ev := <-w.Events:
			if name, ok := watched[ev.Name]; ok && ev.Has(fsnotify.Create) {
				seen = append(seen, name)
			}
		case err := <-w.Errors:
			t.Fatal(err)
		case <-timeout:
			t.Fatalf("only these files were replaced: %v", seen)
		}
	}
	want := strings.Repeat("state kubelet docker state ", 3)
	if got := strings.Join(seen, " ") + " "; got != want {
		t.Errorf("files replaced in the order\n%s\nwant\n%s", got, want)
	}
}

// fixedNow stamps stale fingerprints the same in every engine of a
// comparison, whatever second each ran in.
func fixedNow() time.Time { return time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC) }
