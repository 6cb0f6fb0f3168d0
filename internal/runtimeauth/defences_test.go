package runtimeauth

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nodecreds/nodecreds/internal/dockercfg"
	"github.com/nodecreds/nodecreds/internal/testsupport"
)

// Each test states a promise of docs/runtime-auth.md and docs/security.md
// ("The containerd header target"): the first of each kind came from an
// adversarial review (branch review-rt), the variants after it are of the
// same class.

// A file created for a registry takes precedence over _default in
// containerd's lookup (host_port_, host, then _default): creating it moves
// that registry's pulls off the admin's _default mirror to the upstream.
// Any annotated-Secret author picks the registry name.
func TestNoFileCreatedOverDefault(t *testing.T) {
	const pass = "kP3wL8zQ1vN6"
	n := newNode(t)
	def := "# every registry through the corporate mirror\nserver = \"https://mirror.corp.test\"\n\n[host.\"https://mirror.corp.test\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
	n.write(t, "_default", def)
	n.sync(t, annotated(source("ns/a", item("ghcr.test", pass))), pass)
	if n.exists("ghcr.test") {
		t.Fatalf("created ghcr.test/hosts.toml: containerd now uses it instead of _default, so ghcr.test pulls bypass the _default mirror (routing changed):\n%s", n.read(t, "ghcr.test"))
	}
}

// containerd reads a folder's docker-style ca.crt / client.cert / client.key
// only while it has no hosts.toml (loadHostDir: len(hosts.toml)==0 →
// loadCertFiles). Creating hosts.toml drops the admin's CA and client
// certificate for that registry: a TLS change, not a header.
func TestNoFileCreatedNextToDockerStyleCerts(t *testing.T) {
	const pass = "hT7yB2mX9cV4"
	n := newNode(t)
	dir := filepath.Join(n.root, certsDir, "r.test:5000")
	for _, f := range []string{"ca.crt", "client.cert", "client.key"} {
		testsupport.WriteFile(t, filepath.Join(dir, f), "-----BEGIN X-----\n", 0o600)
	}
	n.sync(t, annotated(source("ns/a", item("r.test:5000", pass))), pass)
	if n.exists("r.test:5000") {
		t.Fatalf("created hosts.toml next to ca.crt/client.cert: containerd stops reading them (private CA and mTLS cert dropped):\n%s", n.read(t, "r.test:5000"))
	}
}

// A mirror section that is plain http gets the Basic header of a key
// that says https://: the password crosses the network in clear. Any
// writer of a hosts.toml can add such a section for a host we hold.
func TestNoHTTPSKeyHeaderInPlainHTTPSection(t *testing.T) {
	const pass = "qW5eR8tY1uI3"
	n := newNode(t)
	n.write(t, "docker.io", "server = \"https://registry-1.docker.io\"\n\n[host.\"http://mirror.test:5000\"]\n  capabilities = [\"pull\", \"resolve\"]\n")
	n.sync(t, annotated(source("ns/a", item("https://mirror.test:5000", pass))), pass)
	if got := n.read(t, "docker.io"); strings.Contains(got, basic(pass)) {
		t.Fatalf("Basic credentials of an https:// key written into an http:// host section:\n%s", got)
	}
}

// Without `server`, containerd sends the top level's requests (and its
// [header]) to the host the image reference names. A folder reached under
// another name (certs.d/other.test -> r.test, a common way to share one
// mirror config) then sends r.test's password to other.test.
func TestNoTopLevelHeaderWithoutServer(t *testing.T) {
	const pass = "zX4cV7bN0mA2"
	n := newNode(t)
	n.write(t, "r.test", "# shared mirror config, no server\n[host.\"https://mirror.test\"]\n  capabilities = [\"pull\", \"resolve\"]\n")
	if err := os.Symlink("r.test", filepath.Join(n.root, certsDir, "other.test")); err != nil {
		t.Fatal(err)
	}
	n.sync(t, annotated(source("ns/a", item("r.test", pass))), pass)
	if got := n.read(t, "other.test"); strings.Contains(got, basic(pass)) {
		t.Fatalf("containerd pulling other.test/img reads this file and sends r.test's header to other.test (top level, no server):\n%s", got)
	}
}

// Cleanup that cannot undo a change (here: someone added a second,
// lower-case authorization line) keeps nodecreds' credential in the file
// and reports nothing: `nodecreds cleanup` logs "nothing of nodecreds'
// left" and exits 0.
func TestCleanupReportsCredentialItCannotRemove(t *testing.T) {
	const pass = "sD6fG9hJ2kL5"
	n := newNode(t)
	n.sync(t, annotated(source("ns/a", item("r.test", pass))), pass)
	n.write(t, "r.test", n.read(t, "r.test")+"    authorization = \"Basic YWRtaW46YWRtaW4=\"\n")
	results, err := Cleanup(t.Context(), n.engine)
	if err != nil {
		t.Fatal(err)
	}
	if got := n.read(t, "r.test"); strings.Contains(got, basic(pass)) {
		for _, r := range results {
			if r.Err != nil || r.Warning != "" {
				return // reported: acceptable
			}
		}
		t.Fatalf("cleanup left nodecreds' credential and reported nothing (%+v):\n%s", results, got)
	}
}

// docs: "a nodecreds without [hostsToml] ignores the field". It also drops
// it when it saves the state (every sync), same version: after a downgrade
// and upgrade, cleanup no longer knows the header, and the credential
// stays in hosts.toml for good.
func TestRecordsSurviveOlderStateWriter(t *testing.T) {
	const pass = "pO1iU4yT7rE0"
	n := newNode(t)
	n.write(t, "docker.io", adminFile)
	// The node files have a state too, which the older binary rewrites.
	if _, err := n.engine.Apply(t.Context(), []string{"/var/lib/kubelet/config.json"}, dockercfg.Set{item("r.test", pass)}, true); err != nil {
		t.Fatal(err)
	}
	n.sync(t, annotated(source("ns/a", item("mirror.test:5000", pass))), pass)
	// What the previous release's saveState writes: State{Version, Targets}.
	sp := filepath.Join(n.root, stateDir, "state.json")
	var st map[string]json.RawMessage
	if err := json.Unmarshal(testsupport.ReadFile(t, sp), &st); err != nil {
		t.Fatal(err)
	}
	delete(st, "hostsToml")
	b, _ := json.Marshal(st)
	testsupport.WriteFile(t, sp, string(b), 0o600)
	if _, err := Cleanup(t.Context(), n.engine); err != nil {
		t.Fatal(err)
	}
	if got := n.read(t, "docker.io"); strings.Contains(got, basic(pass)) {
		t.Fatalf("after a downgrade round trip, cleanup leaves the credential in the admin's file:\n%s", got)
	}
}

// The admitted window: the record is saved, the write never happens
// (crash). Before the restart an admin adds their own Authorization to the
// same host. The record's AddedTable then removes the admin's header.
func TestHeaderNotOursStays(t *testing.T) {
	const pass = "lK8jH5gF2dS9"
	n := newNode(t)
	orig := "server = \"https://r.test\"\n\n[host.\"https://r.test\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
	n.write(t, "r.test", orig)
	n.sync(t, annotated(source("ns/a", item("r.test", pass))), pass)
	// Crash: the file never got nodecreds' write; the admin adds theirs.
	admin := orig + "[host.\"https://r.test\".header]\n  Authorization = \"Basic YWRtaW46c2VjcmV0\"\n"
	n.write(t, "r.test", admin)
	d := annotated(source("ns/a", item("r.test", pass)))
	d.Annotated = nil
	n.sync(t, d, pass)
	if got := n.read(t, "r.test"); got != admin {
		t.Fatalf("admin's header lost after the crash window:\n%s", got)
	}
}

// A hosts.toml that is a symlink is followed (in the host root): the
// header lands in whatever TOML file it points at, here containerd's own
// config.toml, and a missing target is created anywhere in the host root.
// Nothing stays inside DIR.
func TestNoLinkFollowedUnderDir(t *testing.T) {
	const pass = "vB3nM6qW9eR2"
	n := newNode(t)
	cfg := filepath.Join(n.root, "etc/containerd/config.toml")
	testsupport.WriteFile(t, cfg, "version = 2\n[plugins]\n", 0o644)
	if err := os.MkdirAll(filepath.Join(n.root, certsDir, "r.test"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/containerd/config.toml", n.path("r.test")); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(n.root, certsDir, "new.test"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/cron.d/nodecreds", n.path("new.test")); err != nil {
		t.Fatal(err)
	}
	results, _, err := n.writer.Sync(t.Context(), annotated(source("ns/a", item("r.test", pass), item("new.test", pass))))
	if err != nil {
		t.Fatal(err)
	}
	if got := string(testsupport.ReadFile(t, cfg)); strings.Contains(got, basic(pass)) {
		t.Fatalf("header written through a symlink into containerd's config.toml (%+v):\n%s", results, got)
	}
	if _, err := os.Lstat(filepath.Join(n.root, "etc/cron.d/nodecreds")); err == nil {
		t.Fatal("file created outside DIR through a symlinked hosts.toml: /etc/cron.d/nodecreds")
	}
}

// containerd looks up host_port_ before host:port. A key spelled
// "registry.corp_5000_" (underscores are valid host characters) makes
// nodecreds create an empty folder of that name; containerd then uses it
// for registry.corp:5000 and ignores the admin's registry.corp:5000 and
// _default configuration (mirrors, ca): routing changed by a Secret author,
// with no file and no warning.
func TestNoNonCanonicalFolderCreated(t *testing.T) {
	const pass = "cX2zA5sD8fG1"
	n := newNode(t)
	admin := "server = \"https://registry.corp:5000\"\nca = \"/etc/pki/corp.pem\"\n\n[host.\"https://mirror.corp:5000\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
	n.write(t, "registry.corp:5000", admin)
	n.sync(t, annotated(source("ns/a", item("registry.corp_5000_", pass))), pass)
	if _, err := os.Lstat(filepath.Join(n.root, certsDir, "registry.corp_5000_")); err == nil {
		t.Fatal("created certs.d/registry.corp_5000_/: containerd reads it before registry.corp:5000/ and _default, so the admin's mirror and ca no longer apply")
	}
}
