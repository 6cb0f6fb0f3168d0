package runtimeauth

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nodecreds/nodecreds/internal/testsupport"
)

// listing is every name under the certs.d folder (links not followed).
func (n *node) listing(t *testing.T) []string {
	t.Helper()
	var out []string
	base := filepath.Join(n.root, certsDir)
	err := filepath.WalkDir(base, func(p string, _ os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(base, p)
		out = append(out, rel)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func warnings(results []Result) string {
	var w []string
	for _, r := range results {
		if r.Warning != "" {
			w = append(w, r.Warning)
		}
	}
	return strings.Join(w, "\n")
}

// Creating is routing: a file is created only where containerd reads no
// configuration for the host at all; anywhere else nothing new appears,
// and a warning names the folder containerd reads and the fix.
func TestCreateOnlyWhereNothingIsRead(t *testing.T) {
	const pass = "yT6uI9oP2aS5"
	host := "<ours>"
	tests := []struct {
		name  string
		key   string
		setup func(t *testing.T, n *node)
		warn  string // the warning names this; "" for none expected
	}{
		{"_default folder without hosts.toml (its ca applies)", "r.test", func(t *testing.T, n *node) {
			testsupport.WriteFile(t, filepath.Join(n.root, certsDir, "_default", "ca.crt"), "x", 0o644)
		}, "_default"},
		{"host_port_ folder, empty", "r.test:5000", func(t *testing.T, n *node) {
			mkdir(t, filepath.Join(n.root, certsDir, "r.test_5000_"))
		}, "r.test_5000_"},
		{"host:port folder, empty", "r.test:5000", func(t *testing.T, n *node) {
			mkdir(t, filepath.Join(n.root, certsDir, "r.test:5000"))
		}, "r.test:5000"},
		{"host folder with a client certificate only", "r.test", func(t *testing.T, n *node) {
			testsupport.WriteFile(t, filepath.Join(n.root, certsDir, "r.test", "client.cert"), "x", 0o644)
		}, "ca/client"},
		{"host folder is a link to another folder", "r.test", func(t *testing.T, n *node) {
			mkdir(t, filepath.Join(n.root, certsDir, "shared"))
			symlink(t, "shared", filepath.Join(n.root, certsDir, "r.test"))
		}, "symlink"},
		{"host_port_ is a link", "r.test:5000", func(t *testing.T, n *node) {
			symlink(t, "/etc", filepath.Join(n.root, certsDir, "r.test_5000_"))
		}, "symlink"},
		{"host name is a regular file", "r.test", func(t *testing.T, n *node) {
			testsupport.WriteFile(t, filepath.Join(n.root, certsDir, "r.test"), "x", 0o644)
		}, "not a folder"},
		{"underscore host", "a_b.test", nil, ""},
		{"host_port_ spelling as a key", "r.test_5000_", nil, ""},
		{"port out of range", "r.test:70000", nil, ""},
		{"space in the host", "r .test", nil, ""},
		{"bracketed IPv4", "[127.0.0.1]:5000", nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := newNode(t)
			if tt.setup != nil {
				tt.setup(t, n)
			}
			before := n.listing(t)
			results := n.sync(t, annotated(source("ns/a", item(tt.key, pass))), pass)
			if after := n.listing(t); !slices.Equal(before, after) {
				t.Fatalf("created something for %s %s:\nbefore %q\nafter  %q", host, tt.key, before, after)
			}
			if w := warnings(results); tt.warn != "" && (!strings.Contains(w, tt.warn) || !strings.Contains(w, "nodecreds will keep its header") && tt.warn != "not a folder") {
				t.Fatalf("warning %q does not name %q and the fix", w, tt.warn)
			}
		})
	}
}

// The file containerd reads first (host_port_) is the one merged, and no
// host:port folder appears next to it.
func TestMergesTheFolderContainerdReads(t *testing.T) {
	const pass = "gH3jK6lZ9xC2"
	n := newNode(t)
	orig := "server = \"https://r.test:5000\"\n\n[host.\"https://r.test:5000\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
	n.write(t, "r.test_5000_", orig)
	n.sync(t, annotated(source("ns/a", item("r.test:5000", pass))), pass)
	if got := n.read(t, "r.test_5000_"); !strings.Contains(got, basic(pass)) {
		t.Fatalf("host_port_ file not merged:\n%s", got)
	}
	if _, err := os.Lstat(filepath.Join(n.root, certsDir, "r.test:5000")); err == nil {
		t.Fatal("created r.test:5000 next to r.test_5000_")
	}
}

// A credential goes only to the host it is for, over the scheme its key
// allows; a section left without it is reported.
func TestHeaderOnlyToItsHostAndScheme(t *testing.T) {
	const pass = "vN8mB5cX2zL7"
	tests := []struct {
		name, folder, in, key string
		want                  bool
	}{
		{"http mirror, key without scheme", "docker.io", "server = \"https://registry-1.docker.io\"\n[host.\"http://m.test\"]\n  capabilities = [\"pull\"]\n", "m.test", false},
		{"http mirror, key says http", "docker.io", "server = \"https://registry-1.docker.io\"\n[host.\"http://m.test\"]\n  capabilities = [\"pull\"]\n", "http://m.test", true},
		{"https mirror, http key", "docker.io", "server = \"https://registry-1.docker.io\"\n[host.\"https://m.test\"]\n  capabilities = [\"pull\"]\n", "http://m.test", true},
		{"plain-HTTP server with a header table, https key", "r.test", "server = \"http://r.test\"\n[host.\"https://mirror.test\"]\n[header]\n  X = \"1\"\n", "https://r.test", false},
		{"no server, top-level header table", "r.test", "[host.\"https://mirror.test\"]\n[header]\n  Authorization = \"Basic YWRtaW46YQ==\"\n", "r.test", false},
		{"server names another host", "r.test", "server = \"https://other.test\"\n[host.\"https://mirror.test\"]\n[header]\n  X = \"1\"\n", "r.test", false},
		{"server names the host", "r.test", "server = \"https://r.test\"\n[host.\"https://mirror.test\"]\n[header]\n  X = \"1\"\n", "r.test", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := newNode(t)
			n.write(t, tt.folder, tt.in)
			results := n.sync(t, annotated(source("ns/a", item(tt.key, pass))), pass)
			got := n.read(t, tt.folder)
			if strings.Contains(got, basic(pass)) != tt.want {
				t.Fatalf("header written = %v, want %v:\n%s", !tt.want, tt.want, got)
			}
			if !tt.want && got != tt.in {
				t.Fatalf("file changed:\n%s", got)
			}
			if !tt.want && warnings(results) == "" {
				t.Fatalf("nothing reported: %+v", results)
			}
		})
	}
}

// A loopback registry of a key without a scheme gets a plain-HTTP server
// (containerd's default for it), header included: the traffic stays on
// the node (docs/security.md).
func TestLoopbackWithoutScheme(t *testing.T) {
	const pass = "qA1sD4fG7hJ0"
	n := newNode(t)
	n.sync(t, annotated(source("ns/a", item("127.0.0.1:5000", pass))), pass)
	if got := n.read(t, "127.0.0.1:5000"); !strings.Contains(got, `server = "http://127.0.0.1:5000"`) || !strings.Contains(got, basic(pass)) {
		t.Fatalf("loopback file:\n%s", got)
	}
}

// No link under DIR is followed: a hosts.toml linked to another one, a
// host folder linked elsewhere; a recorded file that became a link fails
// cleanup, which cannot say whether our header is still there.
func TestLinksUnderDirRefused(t *testing.T) {
	const pass = "wE2rT5yU8iO1"
	n := newNode(t)
	other := "server = \"https://o.test\"\n[host.\"https://r.test\"]\n  capabilities = [\"pull\"]\n"
	n.write(t, "o.test", other)
	mkdir(t, filepath.Join(n.root, certsDir, "r.test"))
	symlink(t, "../o.test/hosts.toml", n.path("r.test"))
	outside := filepath.Join(n.root, "srv/certs")
	testsupport.WriteFile(t, filepath.Join(outside, "hosts.toml"), other, 0o644)
	symlink(t, "/srv/certs", filepath.Join(n.root, certsDir, "q.test"))
	results, _, err := n.writer.Sync(t.Context(), annotated(source("ns/a", item("r.test", pass), item("q.test", pass))))
	if err != nil {
		t.Fatal(err)
	}
	noLeak(t, fmt.Sprint(results), pass)
	if got := string(testsupport.ReadFile(t, filepath.Join(outside, "hosts.toml"))); got != other {
		t.Fatalf("written through a linked folder:\n%s", got)
	}
	if !strings.Contains(warnings(results), "q.test") {
		t.Fatalf("linked folder not reported: %+v", results)
	}
	var linkReported bool
	for _, r := range results {
		linkReported = linkReported || strings.Contains(r.Path, "r.test") && (r.Warning != "" || r.Err != nil)
	}
	if !linkReported {
		t.Fatalf("linked hosts.toml not reported: %+v", results)
	}

	// A recorded file replaced by a link: cleanup cannot look, and says so.
	m := newNode(t)
	m.sync(t, annotated(source("ns/a", item("r.test", pass))), pass)
	kept := m.read(t, "r.test")
	testsupport.WriteFile(t, filepath.Join(m.root, "srv/kept.toml"), kept, 0o600)
	if err := os.Remove(m.path("r.test")); err != nil {
		t.Fatal(err)
	}
	symlink(t, "/srv/kept.toml", m.path("r.test"))
	rs, err := Cleanup(t.Context(), m.engine)
	if err != nil {
		t.Fatal(err)
	}
	noLeak(t, fmt.Sprint(rs), pass)
	if len(rs) != 1 || rs[0].Err == nil || !strings.Contains(rs[0].Err.Error(), m.path("r.test")[len(m.root):]) {
		t.Fatalf("cleanup of a linked file: %+v", rs)
	}
}

// Cleanup that cannot take our header out fails, naming the file and
// never the value; the record stays for the next try.
func TestCleanupFailsWhileOurHeaderStays(t *testing.T) {
	const pass = "rT4yU7iO0pA3"
	tests := []struct {
		name string
		edit func(string) string
	}{
		{"second Authorization line", func(s string) string { return s + "    AUTHORIZATION = \"Basic eDp5\"\n" }},
		{"file made invalid TOML", func(s string) string { return s + "[host.\"https://r.test\"\n" }},
		{"our key moved inline", func(s string) string {
			return strings.Replace(s, "[host.\"https://r.test\".header]\n  "+basic(pass)+"\n", "", 1) + "[host.\"https://x.test\"]\n  header = { " + basic(pass) + " }\n"
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := newNode(t)
			orig := "server = \"https://r.test\"\n\n[host.\"https://r.test\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
			n.write(t, "r.test", orig)
			n.sync(t, annotated(source("ns/a", item("r.test", pass))), pass)
			n.write(t, "r.test", tt.edit(n.read(t, "r.test")))
			rs, err := Cleanup(t.Context(), n.engine)
			if err != nil {
				t.Fatal(err)
			}
			noLeak(t, fmt.Sprint(rs), pass)
			if !strings.Contains(n.read(t, "r.test"), "cm9ib3Q6") {
				return // taken out: fine
			}
			if len(rs) != 1 || rs[0].Err == nil || !strings.Contains(rs[0].Err.Error(), "r.test/hosts.toml") {
				t.Fatalf("cleanup left our header and did not fail: %+v", rs)
			}
			if _, err := os.Stat(filepath.Join(n.root, stateDir, "hoststoml.json")); err != nil {
				t.Fatalf("record dropped: %v", err)
			}
		})
	}
}

// A value someone else put where nodecreds had written one stays when
// nodecreds lets go of the host; while it holds the host, its own value
// wins (drift) and what was there before nodecreds comes back at the end.
func TestSomeoneElsesValue(t *testing.T) {
	const pass = "zM1xN4bV7cQ0"
	adminBefore := "server = \"https://r.test\"\n\n[host.\"https://r.test\"]\n  capabilities = [\"pull\"]\n[host.\"https://r.test\".header]\n  Authorization = \"Basic YWRtaW46b2xk\"\n"
	later := "Authorization = \"Basic YWRtaW46bmV3\""
	t.Run("replaced by the admin, then released", func(t *testing.T) {
		n := newNode(t)
		n.write(t, "r.test", adminBefore)
		n.sync(t, annotated(source("ns/a", item("r.test", pass))), pass)
		edited := strings.Replace(n.read(t, "r.test"), basic(pass), later, 1)
		n.write(t, "r.test", edited)
		if _, err := Cleanup(t.Context(), n.engine); err != nil {
			t.Fatal(err)
		}
		if got := n.read(t, "r.test"); got != edited {
			t.Fatalf("the admin's later header was not left:\n%s", got)
		}
	})
	t.Run("drift while held, then released", func(t *testing.T) {
		n := newNode(t)
		n.write(t, "r.test", adminBefore)
		n.sync(t, annotated(source("ns/a", item("r.test", pass))), pass)
		n.write(t, "r.test", strings.Replace(n.read(t, "r.test"), basic(pass), later, 1))
		n.sync(t, annotated(source("ns/a", item("r.test", pass))), pass)
		if got := n.read(t, "r.test"); !strings.Contains(got, basic(pass)) {
			t.Fatalf("drift not corrected:\n%s", got)
		}
		if _, err := Cleanup(t.Context(), n.engine); err != nil {
			t.Fatal(err)
		}
		if got := n.read(t, "r.test"); got != adminBefore {
			t.Fatalf("not restored to what was there before nodecreds:\n%s", got)
		}
	})
	t.Run("crash between record and write, admin header meanwhile, still held", func(t *testing.T) {
		n := newNode(t)
		orig := "server = \"https://r.test\"\n\n[host.\"https://r.test\"]\n  capabilities = [\"pull\"]\n"
		n.write(t, "r.test", orig)
		n.sync(t, annotated(source("ns/a", item("r.test", pass))), pass)
		// The record as saved before the write (pending), the write lost.
		rp := filepath.Join(n.root, stateDir, "hoststoml.json")
		var f map[string]any
		if err := json.Unmarshal(testsupport.ReadFile(t, rp), &f); err != nil {
			t.Fatal(err)
		}
		for _, r := range f["files"].(map[string]any) {
			r.(map[string]any)["pending"] = true
		}
		b, _ := json.Marshal(f)
		testsupport.WriteFile(t, rp, string(b), 0o600)
		n.write(t, "r.test", adminBefore)
		n.sync(t, annotated(source("ns/a", item("r.test", pass))), pass)
		if _, err := Cleanup(t.Context(), n.engine); err != nil {
			t.Fatal(err)
		}
		if got := n.read(t, "r.test"); got != adminBefore {
			t.Fatalf("the admin's header, there before our write happened, not restored:\n%s", got)
		}
	})
}

// Records an earlier build kept in state.json move to hoststoml.json and
// cleanup uses them.
func TestRecordsMovedOutOfStateFile(t *testing.T) {
	const pass = "hB6nJ9mK2lP5"
	n := newNode(t)
	n.write(t, "docker.io", adminFile)
	n.sync(t, annotated(source("ns/a", item("mirror.test:5000", pass))), pass)
	rp := filepath.Join(n.root, stateDir, "hoststoml.json")
	var f struct {
		Files json.RawMessage `json:"files"`
	}
	if err := json.Unmarshal(testsupport.ReadFile(t, rp), &f); err != nil {
		t.Fatal(err)
	}
	testsupport.WriteFile(t, filepath.Join(n.root, stateDir, "state.json"), `{"version":1,"targets":{},"hostsToml":`+string(f.Files)+`}`, 0o600)
	if err := os.Remove(rp); err != nil {
		t.Fatal(err)
	}
	if _, err := Cleanup(t.Context(), n.engine); err != nil {
		t.Fatal(err)
	}
	if got := n.read(t, "docker.io"); got != adminFile {
		t.Fatalf("not restored from the moved records:\n%s", got)
	}
	if b, err := os.ReadFile(filepath.Join(n.root, stateDir, "state.json")); err == nil && strings.Contains(string(b), "hostsToml") {
		t.Fatalf("records left in state.json: %s", b)
	}
}

func mkdir(t *testing.T, p string) {
	t.Helper()
	if err := os.MkdirAll(p, 0o755); err != nil {
		t.Fatal(err)
	}
}

func symlink(t *testing.T, target, p string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, p); err != nil {
		t.Fatal(err)
	}
}
