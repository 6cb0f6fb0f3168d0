package nodefile

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nodecreds/nodecreds/internal/dockercfg"
	"github.com/nodecreds/nodecreds/internal/hostfs"
	"github.com/nodecreds/nodecreds/internal/testsupport"
)

// renameOver puts content at path the way docker login does: a temp file
// renamed over it.
func renameOver(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	tmp := path + ".writer-tmp"
	testsupport.WriteFile(t, tmp, content, mode)
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// once returns f wrapped to run only on its first call.
func once(f func()) func() {
	done := false
	return func() {
		if !done {
			done = true
			f()
		}
	}
}

// leftovers lists the names nodecreds may leave next to a target.
func leftovers(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.Contains(e.Name(), ".nodecreds-") {
			out = append(out, e.Name())
		}
	}
	return out
}

// TestDropNeverRemovesAnotherWritersFile: a file nodecreds created is
// removed once nothing is left in it (the Secret emptied, or cleanup), but
// never when another writer renamed a file of its own over it between
// nodecreds' read and the removal, nor when a third file appears while the
// second is off its name: every entry of theirs ends up in the target.
func TestDropNeverRemovesAnotherWritersFile(t *testing.T) {
	theirs := func(keys ...string) string {
		var parts []string
		for _, k := range keys {
			parts = append(parts, fmt.Sprintf("%q:{\"auth\":\"dzpw\"}", k))
		}
		return `{"auths":{` + strings.Join(parts, ",") + `}}`
	}
	tests := []struct {
		name         string
		cleanup      bool
		beforeRemove string // renamed over the target between read and removal
		whileAway    string // renamed to the target's name while the file is off it
		want         []string
		gone         bool // the target is to be removed
		setAside     bool // a corrupt copy is to be kept
	}{
		{name: "nothing in the way", gone: true},
		{name: "a new file renamed over it", beforeRemove: theirs("theirs.test"), want: []string{"theirs.test"}},
		{name: "cleanup: a new file renamed over it", cleanup: true, beforeRemove: theirs("theirs.test"), want: []string{"theirs.test"}},
		{name: "the same bytes renamed over it", beforeRemove: "same", gone: true},
		{name: "a third file while the second is away", beforeRemove: theirs("second.test"), whileAway: theirs("third.test"), want: []string{"second.test", "third.test"}},
		{name: "cleanup: a third file while the second is away", cleanup: true, beforeRemove: theirs("second.test"), whileAway: theirs("third.test"), want: []string{"second.test", "third.test"}},
		{name: "a corrupt second file, then a third", beforeRemove: "{garbage", whileAway: theirs("third.test"), want: []string{"third.test"}, setAside: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, root := newEngine(t)
			p := filepath.Join(root, kubeletFile)
			mustOK(t, apply(t, e, []string{kubeletFile}, dockercfg.Set{item("r.io", "u", "p")}, true))
			ours := string(testsupport.ReadFile(t, p))
			if tt.beforeRemove != "" {
				content := tt.beforeRemove
				if content == "same" {
					content = ours
				}
				e.hooks.beforeRemove = once(func() { renameOver(t, p, content, 0o600) })
			}
			if tt.whileAway != "" {
				e.hooks.whileAway = once(func() { renameOver(t, p, tt.whileAway, 0o600) })
			}
			var res []Result
			var err error
			if tt.cleanup {
				res, err = e.Cleanup(t.Context(), nil)
			} else {
				res, err = e.Apply(t.Context(), []string{kubeletFile}, nil, true)
			}
			if err != nil {
				t.Fatal(err)
			}
			mustOK(t, res)
			if tt.gone {
				if _, err := os.Stat(p); !os.IsNotExist(err) {
					t.Fatalf("the emptied file was not removed: %v", err)
				}
			} else {
				a := auths(t, p)
				for _, k := range tt.want {
					if _, ok := a[k]; !ok {
						t.Errorf("the other writer's entry %s was lost: the file holds %v", k, a)
					}
				}
				if _, ok := a["r.io"]; ok {
					t.Errorf("nodecreds' pruned entry is still there: %v", a)
				}
			}
			if left := leftovers(t, filepath.Dir(p)); len(left) != 0 {
				t.Errorf("left behind: %v", left)
			}
			if res[0].Left == nil || *res[0].Left != stampOf(t, p) {
				t.Errorf("the result does not say what is on disk")
			}
			copies, _ := filepath.Glob(p + ".corrupt-*")
			if tt.setAside != (len(copies) == 1) {
				t.Errorf("corrupt copies: %v, want one: %v", copies, tt.setAside)
			}
		})
	}
}

// TestHeldFileMergedAtStart: a file another writer put at a target, taken
// off its name by a nodecreds process that then died before merging it, is
// merged by the next one rather than swept away.
func TestHeldFileMergedAtStart(t *testing.T) {
	e, root := newEngine(t)
	p := filepath.Join(root, kubeletFile)
	testsupport.WriteFile(t, p, `{"auths":{"current.test":{"auth":"dzpw"}}}`, 0o600)
	held := filepath.Join(filepath.Dir(p), ".config.json.nodecreds-held-0123456789abcdef")
	testsupport.WriteFile(t, held, `{"auths":{"held.test":{"auth":"dzpw"}},"credsStore":"x"}`, 0o600)
	mustOK(t, apply(t, e, []string{kubeletFile}, dockercfg.Set{item("r.io", "u", "p")}, true))
	a := auths(t, p)
	for _, k := range []string{"current.test", "held.test", "r.io"} {
		if _, ok := a[k]; !ok {
			t.Errorf("%s missing: %v", k, a)
		}
	}
	if readJSON(t, p)["credsStore"] != "x" {
		t.Errorf("the held file's top-level field was not merged")
	}
	if left := leftovers(t, filepath.Dir(p)); len(left) != 0 {
		t.Errorf("left behind: %v", left)
	}
}

// TestLoosenedPermissionsCorrected: a file holding nodecreds' credentials is
// never left readable by group or others, whether its mode was loosened
// in place or the same bytes were written anew with a looser mode; the
// warning names the old mode, and another owner is reported.
func TestLoosenedPermissionsCorrected(t *testing.T) {
	tests := []struct {
		name     string
		disturb  func(t *testing.T, p string)
		rotate   bool // the sync also writes new content
		wantMode os.FileMode
		warn     []string // each must appear in one warning
		sameIno  bool     // corrected in place, not rewritten
		root     bool     // needs root to give the file away
	}{
		{name: "chmod 0644", disturb: chmod(0o644), wantMode: 0o600, warn: []string{"0644"}, sameIno: true},
		{name: "chmod 0640", disturb: chmod(0o640), wantMode: 0o600, warn: []string{"0640"}, sameIno: true},
		{name: "chmod 0604", disturb: chmod(0o604), wantMode: 0o600, warn: []string{"0604"}, sameIno: true},
		{name: "chmod 0440 keeps the owner's stricter bits", disturb: chmod(0o440), wantMode: 0o400, warn: []string{"0440"}, sameIno: true},
		{name: "stricter 0400 is kept without a warning", disturb: chmod(0o400), wantMode: 0o400, sameIno: true},
		{name: "same bytes written anew at 0644", disturb: func(t *testing.T, p string) {
			renameOver(t, p, string(testsupport.ReadFile(t, p)), 0o644)
		}, wantMode: 0o600, warn: []string{"0644"}},
		{name: "chmod 0644, then new content", disturb: chmod(0o644), rotate: true, wantMode: 0o600, warn: []string{"0644"}},
		{name: "chown 1000", disturb: chown(1000), wantMode: 0o600, warn: []string{"uid 1000"}, sameIno: true, root: true},
		{name: "chown 1000 and chmod 0644", disturb: func(t *testing.T, p string) { chown(1000)(t, p); chmod(0o644)(t, p) },
			wantMode: 0o600, warn: []string{"uid 1000", "0644"}, sameIno: true, root: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.root && os.Geteuid() != 0 {
				t.Fatal("needs root to give a file to another user (make test runs as root)")
			}
			e, root := newEngine(t)
			p := filepath.Join(root, kubeletFile)
			mustOK(t, apply(t, e, []string{kubeletFile}, dockercfg.Set{item("r.io", "u", "p")}, true))
			tt.disturb(t, p)
			before := testsupport.ReadFile(t, p)
			fiBefore, _ := os.Stat(p)
			pw := "p"
			if tt.rotate {
				pw = "q"
			}
			res := apply(t, e, []string{kubeletFile}, dockercfg.Set{item("r.io", "u", pw)}, true)
			mustOK(t, res)
			fi, err := os.Stat(p)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != tt.wantMode {
				t.Errorf("mode %04o after the sync, want %04o", fi.Mode().Perm(), tt.wantMode)
			}
			if tt.sameIno && !tt.rotate && (ino(fi) != ino(fiBefore) || string(testsupport.ReadFile(t, p)) != string(before)) {
				t.Errorf("the file was rewritten; only its mode was to change")
			}
			for _, w := range tt.warn {
				if !slices.ContainsFunc(res[0].Warnings, func(s string) bool { return strings.Contains(s, w) }) {
					t.Errorf("no warning naming %q: %q", w, res[0].Warnings)
				}
			}
			if res[0].Left == nil || *res[0].Left != stampOf(t, p) {
				t.Errorf("the result does not say what is on disk")
			}
			if len(tt.warn) == 0 && len(res[0].Warnings) != 0 {
				t.Errorf("unexpected warnings: %q", res[0].Warnings)
			}
			// The next sync finds nothing more to say about the mode.
			again := apply(t, e, []string{kubeletFile}, dockercfg.Set{item("r.io", "u", pw)}, true)
			mustOK(t, again)
			if again[0].Changed {
				t.Errorf("a second sync changed the file again")
			}
		})
	}
}

func chmod(mode os.FileMode) func(*testing.T, string) {
	return func(t *testing.T, p string) {
		t.Helper()
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
	}
}

func chown(uid int) func(*testing.T, string) {
	return func(t *testing.T, p string) {
		t.Helper()
		if err := os.Chown(p, uid, uid); err != nil {
			t.Fatal(err)
		}
	}
}

// TestCorruptCopiesBounded: garbage renamed over a target again and again
// leaves at most maxCorruptCopies copies next to it, the newest ones; a
// file of the operator's that only looks like a copy is left alone.
func TestCorruptCopiesBounded(t *testing.T) {
	root := t.TempDir()
	now := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
	e := New(Options{HostRoot: root, StateDir: stateDir, Now: func() time.Time { return now }})
	p := filepath.Join(root, kubeletFile)
	mine := p + ".corrupt-keep-this"
	testsupport.WriteFile(t, mine, "an operator's note", 0o600)
	var want []string
	for i := range 12 {
		renameOver(t, p, fmt.Sprintf("{garbage %d", i), 0o600)
		res := apply(t, e, []string{kubeletFile}, dockercfg.Set{item("r.io", "u", "p")}, true)
		mustOK(t, res)
		if res[0].SetAside == "" {
			t.Fatalf("round %d: the corrupt file was not set aside", i)
		}
		want = append(want, res[0].SetAside)
		if i%3 != 0 {
			now = now.Add(time.Second) // and sometimes several in one second
		}
	}
	got, _ := filepath.Glob(p + ".corrupt-2*")
	slices.Sort(got)
	want = want[len(want)-maxCorruptCopies:]
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("copies kept:\n%v\nwant the newest %d:\n%v", got, maxCorruptCopies, want)
	}
	if string(testsupport.ReadFile(t, mine)) != "an operator's note" {
		t.Errorf("a file that only looks like a copy was touched")
	}
	if data := string(testsupport.ReadFile(t, got[len(got)-1])); data != "{garbage 11" {
		t.Errorf("the newest copy holds %q", data)
	}
}

// TestLeftoversSweptWithoutWriting: temp files a killed nodecreds left
// (holding the old credentials, after a swap) go with the next process's
// first sync even when it has nothing to write, in every target folder
// and the state folder.
func TestLeftoversSweptWithoutWriting(t *testing.T) {
	e, root := newEngine(t)
	desired := dockercfg.Set{item("r.io", "u", "p")}
	mustOK(t, apply(t, e, []string{kubeletFile}, desired, true))
	left := []string{
		filepath.Join(root, "var/lib/kubelet/.config.json.nodecreds-0123456789abcdef"),
		filepath.Join(root, "root/.docker/.config.json.nodecreds-fedcba9876543210"), // a target with no file
		filepath.Join(root, stateDir, ".state.json.0011223344556677"),
	}
	for _, l := range left {
		testsupport.WriteFile(t, l, `{"auths":{"r.io":{"auth":"b2xkOnB3"}}}`, 0o600)
	}
	// Names that merely look like nodecreds' are an admin's.
	var admins []string
	for _, n := range []string{".config.json.nodecreds-backup", ".config.json.nodecreds-held-mine", ".config.json.nodecreds-0123456789ABCDEF", ".config.json.nodecreds-held-0123456789abcdef0"} {
		admins = append(admins, filepath.Join(root, "var/lib/kubelet", n))
		testsupport.WriteFile(t, admins[len(admins)-1], `{"auths":{"admin.test":{"auth":"YTpi"}}}`, 0o600)
	}
	// A new process: nothing to write, the kubelet file is in sync and
	// the docker one has nothing of ours.
	e2 := New(Options{HostRoot: root, StateDir: stateDir})
	res := apply(t, e2, []string{kubeletFile}, desired, true)
	mustOK(t, res)
	res = apply(t, e2, []string{dockerFile}, nil, true)
	mustOK(t, res)
	if res[0].Changed {
		t.Fatalf("the docker file was written")
	}
	for _, l := range left {
		if _, err := os.Stat(l); !os.IsNotExist(err) {
			t.Errorf("%s not swept: %v", l, err)
		}
	}
	for _, admin := range admins {
		if data, err := os.ReadFile(admin); err != nil || string(data) != `{"auths":{"admin.test":{"auth":"YTpi"}}}` {
			t.Errorf("an admin's file %s, named like nodecreds' own, was touched: %q %v", admin, data, err)
		}
	}
	if _, ok := auths(t, filepath.Join(root, kubeletFile))["admin.test"]; ok {
		t.Errorf("an admin's file was merged as a held file")
	}
}

// TestLoosenedForeignFileWithoutFownerCapability: with the DaemonSet's
// capabilities (none), the agent cannot narrow the mode of a file another
// user owns; the sync fails with an error naming the capability and the
// remedy, and says who owns it, instead of leaving it readable silently.
// Run as a child process that drops CAP_FOWNER before syncing.
func TestLoosenedForeignFileWithoutFownerCapability(t *testing.T) {
	if os.Getenv("NODECREDS_TEST_NOFOWNER") == "1" {
		noFownerChild(t)
		return
	}
	if os.Geteuid() != 0 {
		t.Fatal("needs root to give a file to another user (make test runs as root)")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	e, root := newEngine(t)
	p := filepath.Join(root, kubeletFile)
	mustOK(t, apply(t, e, []string{kubeletFile}, dockercfg.Set{item("r.io", "u", "p")}, true))
	chown(1000)(t, p)
	chmod(0o644)(t, p)
	before := testsupport.ReadFile(t, p)
	cmd := execCommand(exe, "-test.run=^TestLoosenedForeignFileWithoutFownerCapability$", "-test.v")
	cmd.Env = append(os.Environ(), "NODECREDS_TEST_NOFOWNER=1", "NODECREDS_TEST_ROOT="+root)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child failed: %v\n%s", err, out)
	}
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o644 || string(testsupport.ReadFile(t, p)) != string(before) {
		t.Errorf("the file changed: mode %04o", fi.Mode().Perm())
	}
}

func noFownerChild(t *testing.T) {
	if err := dropCapability(unix.CAP_FOWNER); err != nil {
		t.Fatalf("dropping CAP_FOWNER: %v", err)
	}
	e := New(Options{HostRoot: os.Getenv("NODECREDS_TEST_ROOT"), StateDir: stateDir})
	res, err := e.Apply(t.Context(), []string{kubeletFile}, dockercfg.Set{item("r.io", "u", "p")}, true)
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Err == nil || !strings.Contains(res[0].Err.Error(), "FOWNER") || !strings.Contains(res[0].Err.Error(), "0644") || !strings.Contains(res[0].Err.Error(), "chown") {
		t.Fatalf("want an error naming the mode, the FOWNER capability and the remedy, got %v", res[0].Err)
	}
	if !slices.ContainsFunc(res[0].Warnings, func(w string) bool { return strings.Contains(w, "uid 1000") }) {
		t.Fatalf("the other owner is not reported: %q", res[0].Warnings)
	}
}

// stampOf is what the file at path holds, as the agent's watch sees it.
func stampOf(t *testing.T, path string) FileID {
	t.Helper()
	f, _, err := hostfs.OpenRegular(path)
	if errors.Is(err, fs.ErrNotExist) {
		return FileID{}
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	info, err := hostfs.Stat(f)
	if err != nil {
		t.Fatal(err)
	}
	return hostfs.StampOf(testsupport.ReadFile(t, path), info)
}

// TestSwapKeepsAnotherWritersFile: a file another writer renames over the
// target between nodecreds' read and its swap is merged (its entries
// kept), or, if it does not parse, kept as one corrupt copy; nothing is
// left next to the target, and the result says what is on disk.
func TestSwapKeepsAnotherWritersFile(t *testing.T) {
	tests := []struct {
		name   string
		theirs string
		want   []string
		copies int
	}{
		{"a file with an entry of its own", `{"auths":{"theirs.test":{"auth":"dzpw"}},"credsStore":"x"}`, []string{"theirs.test", "r.io"}, 0},
		{"garbage", "{garbage", []string{"r.io"}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, root := newEngine(t)
			p := filepath.Join(root, kubeletFile)
			mustOK(t, apply(t, e, []string{kubeletFile}, dockercfg.Set{item("r.io", "u", "p")}, true))
			e.hooks.beforeSwap = once(func() { renameOver(t, p, tt.theirs, 0o600) })
			res := apply(t, e, []string{kubeletFile}, dockercfg.Set{item("r.io", "u", "q")}, true)
			mustOK(t, res)
			a := auths(t, p)
			for _, k := range tt.want {
				if _, ok := a[k]; !ok {
					t.Errorf("%s missing: %v", k, a)
				}
			}
			if authOf(t, p, "r.io") != (dockercfg.Entry{Username: "u", Password: "q"}).Auth() {
				t.Errorf("ours is not the new one")
			}
			if left := leftovers(t, filepath.Dir(p)); len(left) != 0 {
				t.Errorf("left behind: %v", left)
			}
			if copies, _ := filepath.Glob(p + ".corrupt-*"); len(copies) != tt.copies {
				t.Errorf("corrupt copies %v, want %d", copies, tt.copies)
			}
			if res[0].Left == nil || *res[0].Left != stampOf(t, p) {
				t.Errorf("the result does not say what is on disk")
			}
		})
	}
}

// TestHeldFilesBounded: however many files are held next to a target (a
// writer that raced every attempt of syncs that gave up), at most maxHeld
// stay on disk, merged into one beyond that, and every entry of theirs
// reaches the target.
func TestHeldFilesBounded(t *testing.T) {
	e, root := newEngine(t)
	p := filepath.Join(root, kubeletFile)
	const n = 6
	for i := range n {
		testsupport.WriteFile(t, fmt.Sprintf("%s/.config.json.nodecreds-held-%016x", filepath.Dir(p), i),
			fmt.Sprintf(`{"auths":{"held-%d.test":{"auth":"dzpw"}}}`, i), 0o600)
	}
	var during []string
	e.hooks.beforeSwap = once(func() { during = leftovers(t, filepath.Dir(p)) })
	mustOK(t, apply(t, e, []string{kubeletFile}, dockercfg.Set{item("r.io", "u", "p")}, true))
	if len(during) > maxHeld {
		t.Errorf("%d held files on disk during the sync: %v", len(during), during)
	}
	a := auths(t, p)
	for i := range n {
		if _, ok := a[fmt.Sprintf("held-%d.test", i)]; !ok {
			t.Errorf("held-%d.test missing: %v", i, a)
		}
	}
	if left := leftovers(t, filepath.Dir(p)); len(left) != 0 {
		t.Errorf("left behind: %v", left)
	}
}

// TestCorruptCopyLeavesWithItsSource: a copy of a corrupt target that held
// a source's entries cannot be read to take them out, so it goes when that
// source stops applying to the node (a node moved out of a pool must keep
// the pool's password in no file) and on cleanup; it stays while the source
// applies, while it is held (unknown), and without prune. A copy of a file
// that held nothing of nodecreds' is the owner's and stays.
func TestCorruptCopyLeavesWithItsSource(t *testing.T) {
	poolA := dockercfg.NamedSet{Name: "ns/pool-a", Set: dockercfg.Set{item("a.pool.test", "a", "copy-canary-a")}}
	poolB := dockercfg.NamedSet{Name: "ns/pool-b", Set: dockercfg.Set{item("b.pool.test", "b", "b-pw")}}
	sync := func(t *testing.T, e *Engine, d Desired) []Result {
		t.Helper()
		res, err := e.Sync(t.Context(), []string{kubeletFile}, d)
		if err != nil {
			t.Fatal(err)
		}
		mustOK(t, res)
		return res
	}
	tests := []struct {
		name  string
		then  func(t *testing.T, e *Engine) []Result
		stays bool
	}{
		{"the node moves to another pool", func(t *testing.T, e *Engine) []Result {
			return sync(t, e, Desired{Sources: []dockercfg.NamedSet{poolB}, Prune: true})
		}, false},
		{"the source still applies", func(t *testing.T, e *Engine) []Result {
			return sync(t, e, Desired{Sources: []dockercfg.NamedSet{poolA, poolB}, Prune: true})
		}, true},
		{"the source cannot be read", func(t *testing.T, e *Engine) []Result {
			return sync(t, e, Desired{Sources: []dockercfg.NamedSet{poolB}, Prune: true, Hold: []string{"ns/pool-a"}})
		}, true},
		{"prune off", func(t *testing.T, e *Engine) []Result {
			return sync(t, e, Desired{Sources: []dockercfg.NamedSet{poolB}})
		}, true},
		{"cleanup", func(t *testing.T, e *Engine) []Result {
			res, err := e.Cleanup(t.Context(), nil)
			if err != nil {
				t.Fatal(err)
			}
			mustOK(t, res)
			return res
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, root := newEngine(t)
			p := filepath.Join(root, kubeletFile)
			sync(t, e, Desired{Sources: []dockercfg.NamedSet{poolA}, Prune: true})
			// A stray comma: the file holding pool A's entry is corrupt;
			// the next sync keeps a copy of it, pool A's password and all.
			data := testsupport.ReadFile(t, p)
			renameOver(t, p, string(data[:len(data)-3])+",}\n", 0o600)
			res := sync(t, e, Desired{Sources: []dockercfg.NamedSet{poolA}, Prune: true})
			copyPath := res[0].SetAside
			if copyPath == "" || !strings.Contains(string(testsupport.ReadFile(t, copyPath)), testsupport.B64("a:copy-canary-a")) {
				t.Fatalf("no copy holding pool A's entry was made: %+v", res[0])
			}
			res = tt.then(t, e)
			_, err := os.Stat(copyPath)
			if tt.stays != (err == nil) {
				t.Errorf("copy kept: %v, want %v (warnings %q)", err == nil, tt.stays, res[0].Warnings)
			}
			if !tt.stays && !strings.Contains(strings.Join(res[0].Warnings, "\n"), "removed "+copyPath) {
				t.Errorf("the removal is not reported: %q", res[0].Warnings)
			}
		})
	}

	t.Run("a copy of a file holding nothing of nodecreds' stays", func(t *testing.T) {
		e, root := newEngine(t)
		p := filepath.Join(root, kubeletFile)
		testsupport.WriteFile(t, p, `{"auths":{"theirs.test":{"auth":"dTpw"}},}`, 0o600)
		res := sync(t, e, Desired{Sources: []dockercfg.NamedSet{poolA}, Prune: true})
		if res[0].SetAside == "" {
			t.Fatal("no copy made")
		}
		sync(t, e, Desired{Sources: []dockercfg.NamedSet{poolB}, Prune: true})
		if res, err := e.Cleanup(t.Context(), nil); err != nil || res[0].Err != nil {
			t.Fatal(err, res)
		}
		if _, err := os.Stat(res[0].SetAside); err != nil {
			t.Errorf("the owner's copy went: %v", err)
		}
	})
}

// TestCorruptCopyRecordedBeforeItIsMade: a copy of a corrupt target that
// may hold a source's credentials is in the state on disk before the copy
// exists, so a kill at any instant after (here: the disk as it is just
// before the swap, taken up by a fresh engine) or any error later never
// leaves a copy the state does not know: it still goes when the source
// stops applying, and on cleanup. A record whose copy never appeared is
// dropped, and never removes a file that later takes its name.
func TestCorruptCopyRecordedBeforeItIsMade(t *testing.T) {
	const canary = "recorded-copy-canary"
	poolA := dockercfg.NamedSet{Name: "ns/pool-a", Set: dockercfg.Set{item("a.pool.test", "a", canary)}}
	poolB := dockercfg.NamedSet{Name: "ns/pool-b", Set: dockercfg.Set{item("b.pool.test", "b", "b-pw")}}
	sync := func(t *testing.T, e *Engine, sources ...dockercfg.NamedSet) []Result {
		t.Helper()
		res, err := e.Sync(t.Context(), []string{kubeletFile}, Desired{Sources: sources, Prune: true})
		if err != nil {
			t.Fatal(err)
		}
		mustOK(t, res)
		return res
	}
	holding := func(t *testing.T, dir string) []string {
		t.Helper()
		var out []string
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if data, err := os.ReadFile(filepath.Join(dir, e.Name())); err == nil && strings.Contains(string(data), testsupport.B64("a:"+canary)) {
				out = append(out, e.Name())
			}
		}
		return out
	}

	t.Run("killed after the copy is made", func(t *testing.T) {
		e, root := newEngine(t)
		p := filepath.Join(root, kubeletFile)
		sync(t, e, poolA, poolB)
		data := testsupport.ReadFile(t, p)
		renameOver(t, p, string(data[:len(data)-3])+",}\n", 0o600) // a stray comma
		crashed := t.TempDir()
		e.hooks.beforeSwap = once(func() {
			if err := os.CopyFS(crashed, os.DirFS(root)); err != nil {
				t.Fatal(err)
			}
		})
		if res := sync(t, e, poolA, poolB); res[0].SetAside == "" {
			t.Fatal("no copy made")
		}
		dir := filepath.Join(crashed, filepath.Dir(kubeletFile))
		if len(holding(t, dir)) < 2 {
			t.Fatalf("the disk at the kill holds no copy: %v", holding(t, dir))
		}
		after := New(Options{HostRoot: crashed, StateDir: stateDir})
		sync(t, after, poolB) // the node left pool A
		if left := holding(t, dir); len(left) != 0 {
			t.Errorf("pool A's password is still in %v", left)
		}
	})

	t.Run("a record without its copy", func(t *testing.T) {
		e, root := newEngine(t)
		p := filepath.Join(root, kubeletFile)
		sync(t, e, poolA, poolB)
		st := readState(t, root)
		const name = "config.json.corrupt-20260101T000000Z"
		st.Targets[kubeletFile].Copies = map[string][]string{name: {"ns/pool-a"}}
		writeState(t, root, st)
		sync(t, e, poolA, poolB)
		if copies := readState(t, root).Targets[kubeletFile].Copies; len(copies) != 0 {
			t.Errorf("the record of a copy that never appeared stays: %v", copies)
		}
		admin := filepath.Join(filepath.Dir(p), name)
		testsupport.WriteFile(t, admin, "an admin's file", 0o600)
		sync(t, e, poolB)
		if _, err := os.Stat(admin); err != nil {
			t.Errorf("a file that took the name of a copy never made was removed: %v", err)
		}
	})
}

// TestHeldFilesMergedOneAtATime: however many held files there are, and
// however large, a sync holds one of them and their union so far in
// memory, never all: what would take the union (or the target) past the
// limits of one file stays on disk, reported, and everything else reaches
// the target.
func TestHeldFilesMergedOneAtATime(t *testing.T) {
	e, root := newEngine(t)
	p := filepath.Join(root, kubeletFile)
	dir := filepath.Dir(p)
	const n, pad = 40, 2 << 20
	for i := range n {
		testsupport.WriteFile(t, fmt.Sprintf("%s/.config.json.nodecreds-held-%016x", dir, i),
			fmt.Sprintf(`{"auths":{"held-%d.test":{"auth":"dzpw"}},"pad%d":"%s"}`, i, i, strings.Repeat("A", pad)), 0o600)
	}
	// The most the Go heap held during the sync, sampled; a GC target
	// well under what n files take keeps garbage from hiding it.
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(32 << 20))
	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	stop, peak := make(chan struct{}), make(chan uint64)
	go func() {
		var most uint64
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			most = max(most, ms.HeapAlloc)
			select {
			case <-stop:
				peak <- most
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()
	res := apply(t, e, []string{kubeletFile}, dockercfg.Set{item("r.io", "u", "p")}, true)
	close(stop)
	most := <-peak
	grew := (most - min(most, base.HeapAlloc)) >> 20
	mustOK(t, res)
	t.Logf("heap grew %d MiB", grew)
	if grew > 48 {
		t.Errorf("the heap grew by %d MiB during the sync (%d held files of %d MiB)", grew, n, pad>>20)
	}
	a := auths(t, p)
	merged := 0
	for i := range n {
		if _, ok := a[fmt.Sprintf("held-%d.test", i)]; ok {
			merged++
		}
	}
	left := leftovers(t, dir)
	if merged == 0 || merged+len(left) != n {
		t.Errorf("%d held files merged, %d left on disk, of %d", merged, len(left), n)
	}
	if w := strings.Join(res[0].Warnings, "\n"); len(left) > 0 && !strings.Contains(w, "left as it is") {
		t.Errorf("the files left are not reported: %q", w)
	}
}

// TestHeldFileNewerThanOurStaleWriteAfterACrash: another writer (docker
// login) renames its file over the target between nodecreds' read and its
// swap, changing its own entry P1 -> P2; the swap puts nodecreds' file,
// built on P1, in place and holds theirs; nodecreds is killed there. The
// next start sees the target is exactly the file nodecreds was writing, so
// the held file is newer for every key: P2 wins, and nodecreds' rotation
// stays. If anyone wrote the target after the kill, the target is newer
// and wins instead: no rule reverts a newer value.
func TestHeldFileNewerThanOurStaleWriteAfterACrash(t *testing.T) {
	entry := func(user, pass string) string {
		return fmt.Sprintf(`{"auth":%q}`, testsupport.B64(user+":"+pass))
	}
	tests := []struct {
		name       string
		atRetry    bool   // killed at the swap of the merge that follows the hold
		afterCrash string // renamed over the target before the restart
		want       string // mine.test's password
	}{
		{"restarted as the kill left it", false, "", "P2"},
		{"killed at the next swap", true, "", "P2"},
		{"the target written again after the kill", false, `{"auths":{"mine.test":` + entry("me", "P3") + `}}`, "P3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, root := newEngine(t)
			p := filepath.Join(root, kubeletFile)
			testsupport.WriteFile(t, p, `{"auths":{"mine.test":`+entry("me", "P1")+`}}`, 0o600)
			mustOK(t, apply(t, e, []string{kubeletFile}, dockercfg.Set{item("r.test", "robot", "v1")}, true))
			// docker login saves P2 (and what it loaded of ours) just
			// before the swap of the rotation to v2.
			loaded := readJSON(t, p)
			loaded["auths"].(map[string]any)["mine.test"] = map[string]any{"auth": testsupport.B64("me:P2")}
			theirs, _ := json.Marshal(loaded)
			crashed := t.TempDir()
			kill := once(func() {
				if err := os.CopyFS(crashed, os.DirFS(root)); err != nil {
					t.Fatal(err)
				}
			})
			swaps := 0
			e.hooks.beforeSwap = func() {
				switch swaps++; {
				case swaps == 1:
					renameOver(t, p, string(theirs), 0o600)
				case tt.atRetry:
					kill()
				}
			}
			if !tt.atRetry {
				e.hooks.afterHold = kill
			}
			mustOK(t, apply(t, e, []string{kubeletFile}, dockercfg.Set{item("r.test", "robot", "v2")}, true))
			if hostfs.RenameFlagsOff {
				// Without the exchange their file is found before the
				// rename, never replaced and held: merged at once.
				if got := authOf(t, p, "mine.test"); got != testsupport.B64("me:P2") {
					t.Errorf("mine.test holds %q, want me:P2", got)
				}
				return
			}
			cp := filepath.Join(crashed, kubeletFile)
			held := leftovers(t, filepath.Dir(cp))
			if len(held) == 0 {
				t.Fatal("the disk at the kill holds no held file")
			}
			// The copy's change times in the order of the original's:
			// the swap, then the hold.
			for _, f := range append([]string{cp}, filepath.Join(filepath.Dir(cp), held[0])) {
				if err := os.Chmod(f, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			if tt.afterCrash != "" {
				renameOver(t, cp, tt.afterCrash, 0o600)
			}
			after := New(Options{HostRoot: crashed, StateDir: stateDir})
			mustOK(t, apply(t, after, []string{kubeletFile}, dockercfg.Set{item("r.test", "robot", "v2")}, true))
			if got := authOf(t, cp, "mine.test"); got != testsupport.B64("me:"+tt.want) {
				t.Errorf("mine.test holds %q, want me:%s", got, tt.want)
			}
			if got := authOf(t, cp, "r.test"); got != testsupport.B64("robot:v2") {
				t.Errorf("r.test holds %q, want the rotation's v2", got)
			}
			if left := leftovers(t, filepath.Dir(cp)); len(left) != 0 {
				t.Errorf("left behind: %v", left)
			}
		})
	}
}

// TestOtherWritersFileKeptWithoutFreeInodes: the file system runs out of
// inodes just as another writer's file is swapped out for nodecreds' (the
// review's tmpfs of 400 inodes): holding it takes a rename, which needs no
// inode, so it is never left under a temp name for the next start to
// sweep; the sync reports the full disk, and once there is room again the
// writer's entry reaches the target.
func TestOtherWritersFileKeptWithoutFreeInodes(t *testing.T) {
	e, root := newEngine(t)
	p := filepath.Join(root, kubeletFile)
	dir := filepath.Dir(p)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=1m,nr_inodes=64,mode=0700"); err != nil {
		t.Fatalf("mount tmpfs: %v (the test needs root with CAP_SYS_ADMIN, as on the project's machines)", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	testsupport.WriteFile(t, p, `{"auths":{"mine.test":{"auth":"bWU6UDE="}}}`, 0o600)
	mustOK(t, apply(t, e, []string{kubeletFile}, dockercfg.Set{item("r.test", "robot", "v1")}, true))
	fill := filepath.Join(dir, "fill")
	e.hooks.beforeSwap = once(func() {
		renameOver(t, p, `{"auths":{"new.test":{"auth":"ZG9ja2VyOmxvZ2lu"},"mine.test":{"auth":"bWU6UDE="}}}`, 0o600)
		if err := os.Mkdir(fill, 0o700); err != nil {
			t.Fatal(err)
		}
		for i := 0; ; i++ {
			f, err := os.Create(filepath.Join(fill, fmt.Sprint(i)))
			if err != nil {
				// Out of inodes: one back, for nodecreds' temp file,
				// and none is left once it is made.
				if err := os.Remove(filepath.Join(fill, fmt.Sprint(i-1))); err != nil {
					t.Fatal(err)
				}
				break
			}
			f.Close()
		}
	})
	res := apply(t, e, []string{kubeletFile}, dockercfg.Set{item("r.test", "robot", "v2")}, true)
	if res[0].Err == nil {
		t.Log("synced although out of inodes")
	}
	var temps, held []string
	for _, n := range leftovers(t, dir) {
		if strings.HasPrefix(n, heldPrefix("config.json")) {
			held = append(held, n)
		} else {
			temps = append(temps, n)
		}
	}
	if len(temps) != 0 {
		t.Errorf("the next start would sweep %v", temps)
	}
	if res[0].Err != nil && len(held) == 0 && authOf(t, p, "new.test") == "" {
		t.Fatalf("the other writer's file is neither held nor at the target (%v)", res[0].Err)
	}
	if err := os.RemoveAll(fill); err != nil {
		t.Fatal(err)
	}
	restarted := New(Options{HostRoot: root, StateDir: stateDir})
	mustOK(t, apply(t, restarted, []string{kubeletFile}, dockercfg.Set{item("r.test", "robot", "v2")}, true))
	if authOf(t, p, "new.test") == "" || authOf(t, p, "r.test") != testsupport.B64("robot:v2") {
		t.Errorf("after the restart the target holds %v", auths(t, p))
	}
	if left := leftovers(t, dir); len(left) != 0 {
		t.Errorf("left behind: %v", left)
	}
}
