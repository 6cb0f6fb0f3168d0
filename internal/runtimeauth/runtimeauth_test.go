package runtimeauth

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nodecreds/nodecreds/internal/dockercfg"
	"github.com/nodecreds/nodecreds/internal/nodefile"
	"github.com/nodecreds/nodecreds/internal/testsupport"
)

const (
	certsDir = "/etc/containerd/certs.d"
	stateDir = "/var/lib/nodecreds"
)

// node is a host root with a certs.d folder, an engine and a writer.
type node struct {
	root   string
	engine *nodefile.Engine
	writer *Writer
}

func newNode(t *testing.T) *node {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, certsDir), 0o755); err != nil {
		t.Fatal(err)
	}
	e := nodefile.New(nodefile.Options{HostRoot: root, StateDir: stateDir})
	return &node{root: root, engine: e, writer: New(certsDir, e)}
}

func (n *node) path(folder string) string {
	return filepath.Join(n.root, certsDir, folder, "hosts.toml")
}

func (n *node) write(t *testing.T, folder, content string) {
	t.Helper()
	testsupport.WriteFile(t, n.path(folder), content, 0o644)
}

func (n *node) read(t *testing.T, folder string) string {
	t.Helper()
	return string(testsupport.ReadFile(t, n.path(folder)))
}

func (n *node) exists(folder string) bool {
	_, err := os.Lstat(n.path(folder))
	return err == nil
}

// sync runs the writer and fails on any error; it checks that no output
// holds a password.
func (n *node) sync(t *testing.T, d Desired, passwords ...string) []Result {
	t.Helper()
	results, skipped, err := n.writer.Sync(t.Context(), d)
	if err != nil {
		t.Fatalf("Sync: %v", err)
	}
	noLeak(t, fmt.Sprint(results, skipped), passwords...)
	for _, r := range results {
		if r.Err != nil {
			t.Fatalf("Sync %s: %v", r.Path, r.Err)
		}
	}
	return results
}

func noLeak(t *testing.T, text string, passwords ...string) {
	t.Helper()
	for _, p := range passwords {
		if l := testsupport.Leak(text, p); l != "" {
			t.Fatalf("output holds %q of a password: %s", l, text)
		}
		if l := testsupport.Leak(text, base64.StdEncoding.EncodeToString([]byte("robot:"+p))); l != "" {
			t.Fatalf("output holds %q of an auth string: %s", l, text)
		}
	}
}

func source(name string, items ...dockercfg.Item) dockercfg.NamedSet {
	return dockercfg.NamedSet{Name: name, Set: items}
}

func item(key, pass string) dockercfg.Item {
	return dockercfg.Item{Key: key, Entry: dockercfg.Entry{Username: "robot", Password: pass}}
}

func annotated(sources ...dockercfg.NamedSet) Desired {
	d := Desired{Sources: sources, Annotated: map[string]bool{}}
	for _, s := range sources {
		d.Annotated[s.Name] = true
	}
	return d
}

func basic(pass string) string {
	return `Authorization = "Basic ` + base64.StdEncoding.EncodeToString([]byte("robot:"+pass)) + `"`
}

const adminFile = `# The team's mirror; do not remove (ticket 42).
server = "https://registry-1.docker.io"

[host."https://mirror.test:5000"]
  capabilities = ["pull", "resolve"]   # pulls only
  # X-Team below is the mirror's own header.
  [host."https://mirror.test:5000".header]
    X-Team = "blue"
`

func TestCreateMergeRotateRestore(t *testing.T) {
	const pass1, pass2 = "zQ7vK2wP9xL1", "mN4bT8rY3cH6"
	n := newNode(t)
	n.write(t, "docker.io", adminFile)

	// Create the registry's own file, and merge into the admin's mirror section.
	n.sync(t, annotated(source("ns/a", item("mirror.test:5000", pass1))), pass1)
	own := n.read(t, "mirror.test:5000")
	if !strings.Contains(own, `server = "https://mirror.test:5000"`) || !strings.Contains(own, basic(pass1)) {
		t.Fatalf("created file:\n%s", own)
	}
	if fi, err := os.Stat(n.path("mirror.test:5000")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("created file mode: %v %v", fi.Mode(), err)
	}
	merged := n.read(t, "docker.io")
	if !strings.Contains(merged, basic(pass1)) {
		t.Fatalf("mirror section without the header:\n%s", merged)
	}
	if got := withoutLine(merged, basic(pass1)); got != adminFile {
		t.Fatalf("admin's bytes outside the header changed:\n%s", got)
	}
	if fi, _ := os.Stat(n.path("docker.io")); fi.Mode().Perm() != 0o600 {
		t.Fatalf("merged file mode %v, want 0600", fi.Mode())
	}

	// Nothing to do: nothing written.
	if rs := n.sync(t, annotated(source("ns/a", item("mirror.test:5000", pass1))), pass1); len(rs) != 0 {
		t.Fatalf("second sync: %+v", rs)
	}

	// Rotation.
	n.sync(t, annotated(source("ns/a", item("mirror.test:5000", pass2))), pass1, pass2)
	if got := n.read(t, "docker.io"); !strings.Contains(got, basic(pass2)) || strings.Contains(got, basic(pass1)) || withoutLine(got, basic(pass2)) != adminFile {
		t.Fatalf("after rotation:\n%s", got)
	}

	// Drift: someone edits the header; the next sync puts it right.
	n.write(t, "docker.io", strings.Replace(n.read(t, "docker.io"), basic(pass2), `Authorization = "Basic Zm9vOmJhcg=="`, 1))
	n.sync(t, annotated(source("ns/a", item("mirror.test:5000", pass2))), pass2)
	if got := n.read(t, "docker.io"); withoutLine(got, basic(pass2)) != adminFile {
		t.Fatalf("drift not corrected:\n%s", got)
	}

	// The annotation goes: the admin's file as it was, ours removed.
	d := annotated(source("ns/a", item("mirror.test:5000", pass2)))
	d.Annotated = nil
	n.sync(t, d, pass2)
	if got := n.read(t, "docker.io"); got != adminFile {
		t.Fatalf("not restored:\n%s", got)
	}
	if n.exists("mirror.test:5000") {
		t.Fatalf("created file left behind")
	}
	if _, err := os.Lstat(filepath.Join(n.root, certsDir, "mirror.test:5000")); err == nil {
		t.Fatal("the folder made for the created file left behind: containerd would read it instead of _default")
	}
	if _, err := os.Stat(filepath.Join(n.root, stateDir, "state.json")); err == nil {
		t.Fatalf("state file left with nothing recorded")
	}
}

func withoutLine(s, sub string) string {
	var out []string
	for _, l := range strings.SplitAfter(s, "\n") {
		if !strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "")
}

func TestCleanupRestoresOriginalBytes(t *testing.T) {
	const pass = "gF5jW1qX7sD2"
	n := newNode(t)
	n.write(t, "docker.io", adminFile)
	withAuth := "server = \"https://r.test\"\r\n\r\n[host.\"https://r.test\"]\r\n  capabilities = [\"pull\"]\r\n[host.\"https://r.test\".header]\r\n  authorization = \"Basic b2xkOm9sZA==\"\r\n"
	n.write(t, "r.test", withAuth)
	n.sync(t, annotated(source("ns/a", item("mirror.test:5000", pass), item("r.test", pass), item("docker.io", pass))), pass)
	if got := n.read(t, "r.test"); strings.Contains(got, "b2xkOm9sZA==") {
		t.Fatalf("previous header not replaced:\n%s", got)
	}
	results, err := Cleanup(t.Context(), n.engine)
	if err != nil {
		t.Fatal(err)
	}
	noLeak(t, fmt.Sprint(results), pass)
	for _, r := range results {
		if r.Err != nil || r.Warning != "" {
			t.Fatalf("cleanup %s: %v %s", r.Path, r.Err, r.Warning)
		}
	}
	if got := n.read(t, "docker.io"); got != adminFile {
		t.Fatalf("docker.io not restored:\n%q", got)
	}
	if got := n.read(t, "r.test"); got != withAuth {
		t.Fatalf("r.test not restored:\n%q", got)
	}
	if n.exists("mirror.test:5000") {
		t.Fatal("created file left behind")
	}
	if _, err := os.Lstat(filepath.Join(n.root, certsDir, "mirror.test:5000")); err == nil {
		t.Fatal("the folder made for the created file left behind: containerd would read it instead of _default")
	}
	if rs, err := Cleanup(t.Context(), n.engine); err != nil || len(rs) != 0 {
		t.Fatalf("second cleanup: %v %+v", err, rs)
	}
}

// TestCleanupKeepsAFolderSomeoneFilled: certificates put in the folder
// nodecreds made stay, with their folder, when cleanup removes its file.
func TestCleanupKeepsAFolderSomeoneFilled(t *testing.T) {
	const pass = "hJ2mQ8wE5tR1"
	n := newNode(t)
	n.sync(t, annotated(source("ns/a", item("mirror.test:5000", pass))), pass)
	ca := filepath.Join(n.root, certsDir, "mirror.test:5000", "ca.crt")
	testsupport.WriteFile(t, ca, "certificate\n", 0o644)
	results, err := Cleanup(t.Context(), n.engine)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range results {
		if r.Err != nil {
			t.Fatalf("cleanup %s: %v", r.Path, r.Err)
		}
	}
	if n.exists("mirror.test:5000") {
		t.Fatal("created file left behind")
	}
	if got := string(testsupport.ReadFile(t, ca)); got != "certificate\n" {
		t.Fatalf("someone's certificate changed: %q", got)
	}
}

func TestLeftAlone(t *testing.T) {
	const pass = "uE3kR9vB6nZ0"
	n := newNode(t)
	invalid := "server = \"https://r.test\"\n[host.\"https://r.test\"\n"
	n.write(t, "r.test", invalid)
	def := "[host.\"https://r.test\"]\n  capabilities = [\"pull\"]\n"
	n.write(t, "_default", def)
	results, skipped, err := n.writer.Sync(t.Context(), annotated(source("ns/a",
		item("r.test", pass), item("r.test/team", pass), item("*.glob.test", pass),
		dockercfg.Item{Key: "token.test", Entry: dockercfg.Entry{IdentityToken: pass}})))
	if err != nil {
		t.Fatal(err)
	}
	noLeak(t, fmt.Sprint(results, skipped), pass)
	if n.read(t, "r.test") != invalid {
		t.Fatal("invalid TOML changed")
	}
	if len(results) != 1 || results[0].Err != nil || !strings.Contains(results[0].Warning, n.path("r.test")) {
		t.Fatalf("want one warning naming the file: %+v", results)
	}
	if n.read(t, "_default") != def {
		t.Fatal("_default written")
	}
	if len(skipped) != 3 {
		t.Fatalf("skipped: %q", skipped)
	}
	for _, f := range []string{"r.test_team", "token.test", "*.glob.test"} {
		if n.exists(f) {
			t.Fatalf("%s written", f)
		}
	}
}

func TestPrecedenceAndOptIn(t *testing.T) {
	const first, second, plain = "aH2mQ8xT5wK9", "bJ6nV1yU4eL3", "cS9fG3pO7iW5"
	n := newNode(t)
	d := Desired{
		Sources: []dockercfg.NamedSet{
			source("ns/plain", item("only-files.test", plain)),
			source("ns/first", item("r.test", first)),
			source("ns/second", item("https://r.test/", second), item("docker.io", second)),
		},
		Annotated: map[string]bool{"ns/first": true, "ns/second": true},
	}
	n.sync(t, d, first, second, plain)
	if got := n.read(t, "r.test"); !strings.Contains(got, basic(first)) {
		t.Fatalf("first source does not win:\n%s", got)
	}
	if got := n.read(t, "docker.io"); !strings.Contains(got, `server = "https://registry-1.docker.io"`) || !strings.Contains(got, basic(second)) {
		t.Fatalf("Docker Hub:\n%s", got)
	}
	if n.exists("only-files.test") {
		t.Fatal("a Secret without the annotation contributed a header")
	}
	// A held source: the files with records stay as they are.
	d.Hold, d.Annotated = true, nil
	n.sync(t, d, first, second)
	if got := n.read(t, "r.test"); !strings.Contains(got, basic(first)) {
		t.Fatalf("held: header removed:\n%s", got)
	}
}

func TestStateKeepsTargetsAndRecords(t *testing.T) {
	const pass = "dR1tY6hN2mC8"
	n := newNode(t)
	target := "/var/lib/kubelet/config.json"
	set := dockercfg.Set{item("r.test", pass)}
	if _, err := n.engine.Apply(t.Context(), []string{target}, set, true); err != nil {
		t.Fatal(err)
	}
	n.sync(t, annotated(source("ns/a", item("r.test", pass))), pass)
	// The node files' engine saves the state: the records survive it.
	if _, err := n.engine.Cleanup(t.Context(), []string{target}); err != nil {
		t.Fatal(err)
	}
	recs := testsupport.ReadFile(t, filepath.Join(n.root, stateDir, "hoststoml.json"))
	if !bytes.Contains(recs, []byte(`r.test/hosts.toml`)) {
		t.Fatalf("records lost: %s", recs)
	}
	if fi, err := os.Stat(filepath.Join(n.root, stateDir, "hoststoml.json")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("records file mode: %v %v", fi, err)
	}
	if _, err := Cleanup(t.Context(), n.engine); err != nil {
		t.Fatal(err)
	}
	if n.exists("r.test") {
		t.Fatal("created file left behind")
	}
}

// TestIdleSyncsSkipTheRecords: once a sync found no record, a sync with
// no header to write takes no lock and reads nothing; a record kept (from
// this run or an earlier one) always gets the full sync, so what left the
// Secrets is restored.
func TestIdleSyncsSkipTheRecords(t *testing.T) {
	root := t.TempDir()
	files := nodefile.New(nodefile.Options{HostRoot: root, StateDir: "/var/lib/nodecreds"})
	w := New("/etc/containerd/certs.d", files)
	if files.HostsTOMLIdle() {
		t.Fatal("idle before any look at the records")
	}
	if _, _, err := w.Sync(t.Context(), Desired{}); err != nil {
		t.Fatal(err)
	}
	if !files.HostsTOMLIdle() {
		t.Fatal("not idle after a sync that found and left no record")
	}
	held := Desired{Sources: []dockercfg.NamedSet{{Name: "a", Set: dockercfg.Set{{Key: "r.test", Entry: dockercfg.Entry{Username: "u", Password: "p"}}}}}, Annotated: map[string]bool{"a": true}}
	if _, _, err := w.Sync(t.Context(), held); err != nil {
		t.Fatal(err)
	}
	if files.HostsTOMLIdle() {
		t.Fatal("idle while a record is kept")
	}
	hosts := filepath.Join(root, "etc/containerd/certs.d/r.test/hosts.toml")
	if _, err := os.Stat(hosts); err != nil {
		t.Fatal(err)
	}
	if _, _, err := w.Sync(t.Context(), Desired{}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(hosts); !os.IsNotExist(err) {
		t.Errorf("the file nodecreds created stays after its registry left: %v", err)
	}
	if !files.HostsTOMLIdle() {
		t.Error("not idle once the last record went")
	}
}

// TestAdminsModeComesBack: an admin's hosts.toml is 0600 while it holds a
// header of nodecreds' (a credential), and gets its own mode back with its
// content when the header goes — when the registry leaves the Secrets, and
// on cleanup.
func TestAdminsModeComesBack(t *testing.T) {
	admin := "# the admin's\nserver = \"https://registry-1.docker.io\"\n\n[host.\"https://m.test\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
	held := Desired{Sources: []dockercfg.NamedSet{{Name: "a", Set: dockercfg.Set{{Key: "m.test", Entry: dockercfg.Entry{Username: "u", Password: "p"}}}}}, Annotated: map[string]bool{"a": true}}
	for _, how := range []string{"the registry leaves", "cleanup"} {
		t.Run(how, func(t *testing.T) {
			root := t.TempDir()
			file := filepath.Join(root, "etc/containerd/certs.d/docker.io/hosts.toml")
			testsupport.WriteFile(t, file, admin, 0o644)
			files := nodefile.New(nodefile.Options{HostRoot: root, StateDir: "/var/lib/nodecreds"})
			w := New("/etc/containerd/certs.d", files)
			if _, _, err := w.Sync(t.Context(), held); err != nil {
				t.Fatal(err)
			}
			if fi, err := os.Stat(file); err != nil || fi.Mode().Perm() != 0o600 || !strings.Contains(string(testsupport.ReadFile(t, file)), "Authorization") {
				t.Fatalf("with the header: %v %v", fi.Mode(), err)
			}
			var err error
			if how == "cleanup" {
				_, err = Cleanup(t.Context(), files)
			} else {
				_, _, err = w.Sync(t.Context(), Desired{})
			}
			if err != nil {
				t.Fatal(err)
			}
			fi, err := os.Stat(file)
			if err != nil || fi.Mode().Perm() != 0o644 || string(testsupport.ReadFile(t, file)) != admin {
				t.Errorf("after the header went: mode %v (%v), want 0644 and the admin's bytes:\n%s", fi.Mode(), err, testsupport.ReadFile(t, file))
			}
		})
	}
}

// TestModeStaysTightWhileOurValueIsThere: an admin renames a section that
// holds a header of nodecreds' (so the record no longer finds it there),
// then another held host leaves and the file is written back: the value
// nodecreds wrote is still in the file, so it stays 0600 (a review's
// finding: the mode was judged on the record alone and came back 0644).
func TestModeStaysTightWhileOurValueIsThere(t *testing.T) {
	root := t.TempDir()
	file := filepath.Join(root, "etc/containerd/certs.d/docker.io/hosts.toml")
	admin := "server = \"https://registry-1.docker.io\"\n\n[host.\"https://a.test\"]\n  capabilities = [\"pull\"]\n\n[host.\"https://c.test\"]\n  capabilities = [\"pull\"]\n"
	testsupport.WriteFile(t, file, admin, 0o644)
	files := nodefile.New(nodefile.Options{HostRoot: root, StateDir: "/var/lib/nodecreds"})
	w := New("/etc/containerd/certs.d", files)
	entry := func(key string) dockercfg.Item {
		return dockercfg.Item{Key: key, Entry: dockercfg.Entry{Username: "u-" + key, Password: "p"}}
	}
	both := Desired{Sources: []dockercfg.NamedSet{{Name: "s", Set: dockercfg.Set{entry("a.test"), entry("c.test")}}}, Annotated: map[string]bool{"s": true}}
	if _, _, err := w.Sync(t.Context(), both); err != nil {
		t.Fatal(err)
	}
	got := string(testsupport.ReadFile(t, file))
	if !strings.Contains(got, `[host."https://a.test".header]`) {
		t.Fatalf("no header for a.test:\n%s", got)
	}
	// The admin renames a's section, header and all, to b.test.
	testsupport.WriteFile(t, file, strings.ReplaceAll(got, `"https://a.test"`, `"https://b.test"`), 0o600)
	onlyA := Desired{Sources: []dockercfg.NamedSet{{Name: "s", Set: dockercfg.Set{entry("a.test")}}}, Annotated: map[string]bool{"s": true}}
	if _, _, err := w.Sync(t.Context(), onlyA); err != nil {
		t.Fatal(err)
	}
	ourA := (dockercfg.Entry{Username: "u-a.test", Password: "p"}).Auth()
	after := string(testsupport.ReadFile(t, file))
	if !strings.Contains(after, ourA) {
		t.Fatalf("the moved value is gone; the test no longer covers the case:\n%s", after)
	}
	if fi, err := os.Stat(file); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("the file holds a value nodecreds wrote at mode %v (%v), want 0600", fi.Mode().Perm(), err)
	}
}
