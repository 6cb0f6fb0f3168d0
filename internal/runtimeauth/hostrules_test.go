package runtimeauth

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nodecreds/nodecreds/internal/dockercfg"
	"github.com/nodecreds/nodecreds/internal/hostfs"
	"github.com/nodecreds/nodecreds/internal/hoststoml"
	"github.com/nodecreds/nodecreds/internal/nodefile"
	"github.com/nodecreds/nodecreds/internal/testsupport"
)

// docker.io and registry-1.docker.io are two
// registries to the kubelet (and to View's precedence) but one Host here:
// opts.Headers is keyed by Host, so the registry listed last wins, whatever
// the precedence. A lower-precedence Secret's `registry-1.docker.io` key
// puts its header into the file containerd reads for every docker.io pull.
func TestDockerHubAliasesKeepPrecedence(t *testing.T) {
	const first, second = "kP4tR7wQ1zX8", "mN2bV5cX8zL1"
	admin := "server = \"https://registry-1.docker.io\"\n\n[host.\"https://registry-1.docker.io\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
	tests := []struct {
		name          string
		firstAnnot    bool
		adminFile     bool
		want, notWant string
	}{
		{"both annotated, file created", true, false, basic(first), basic(second)},
		{"both annotated, admin's docker.io file", true, true, basic(first), basic(second)},
		// docker.io is won by a Secret without the annotation: no header
		// for docker.io pulls (docs/runtime-auth.md), yet the alias brings one.
		{"winner not annotated, admin's docker.io file", false, true, "", basic(second)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := newNode(t)
			if tt.adminFile {
				n.write(t, "docker.io", admin)
			}
			d := Desired{
				Sources: []dockercfg.NamedSet{
					source("ns/first", item("docker.io", first)),
					source("ns/second", item("registry-1.docker.io", second)),
				},
				Annotated: map[string]bool{"ns/first": tt.firstAnnot, "ns/second": true},
			}
			n.sync(t, d, first, second)
			got := ""
			if n.exists("docker.io") {
				got = n.read(t, "docker.io")
			}
			if tt.want != "" && !strings.Contains(got, tt.want) || strings.Contains(got, tt.notWant) {
				t.Fatalf("docker.io/hosts.toml carries the lower-precedence Secret's header:\n%s", got)
			}
		})
	}
}

// The check that nothing exists (route) and the
// create (OpenSub with create, which takes an existing folder as its own)
// are apart: a folder that appears in between (Docker-style certificates,
// _default) gets a hosts.toml that makes containerd ignore it.
func TestFolderAppearingAfterTheCheck(t *testing.T) {
	const pass = "sD3fG6hJ9kL2"
	tests := []struct {
		name    string
		between string // file created between the check and the create
	}{
		{"certificates for the host", "r.test/ca.crt"},
		{"_default", "_default/hosts.toml"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := newNode(t)
			d := annotated(source("ns/a", item("r.test", pass)))
			regs, _ := d.Registries()
			opts := hoststoml.Options{Headers: map[string]string{}, PlainHTTP: map[string]bool{}}
			for _, r := range regs {
				opts.Headers[r.Host] = r.value
				opts.PlainHTTP[r.Host] = r.PlainHTTP
			}
			err := n.engine.WithHostsTOML(t.Context(), func(root *hostfs.Root, recs *nodefile.HostsTOMLRecords) error {
				plans, _ := n.writer.plans(root, regs)
				testsupport.WriteFile(t, filepath.Join(n.root, certsDir, tt.between), "x", 0o644)
				for _, p := range slices.Sorted(func(yield func(string) bool) {
					for k := range plans {
						if !yield(k) {
							return
						}
					}
				}) {
					if r := syncFile(root, recs, p, plans[p], opts); r.Err != nil {
						t.Logf("%s: %v", p, r.Err)
					}
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if n.exists("r.test") {
				t.Fatalf("hosts.toml created although %s appeared before the create:\n%s", tt.between, n.read(t, "r.test"))
			}
		})
	}
}

// For an IPv6 literal without a port containerd's
// hostDirectory still cuts at the last ':' ("[2001:db8::5]" →
// "[2001:db8:_5]_", tried first: 1.6.20 and 2.4 hosts.go). spellings()
// skips that form, so nodecreds creates "[2001:db8::5]" where containerd
// reads another folder: "created only where containerd reads nothing"
// does not hold (and the header never reaches containerd).
func TestIPv6FolderContainerdReadsFirst(t *testing.T) {
	const pass = "zX4cV7bN0mQ3"
	n := newNode(t)
	testsupport.WriteFile(t, filepath.Join(n.root, certsDir, "[2001:db8:_5]_", "ca.crt"), "x", 0o644)
	before := n.listing(t)
	n.sync(t, annotated(source("ns/a", item("[2001:db8::5]", pass))), pass)
	if after := n.listing(t); !slices.Equal(before, after) {
		t.Fatalf("created a folder containerd does not read for [2001:db8::5]:\nbefore %q\nafter  %q", before, after)
	}
}

// skip_verify = true in an https section: TLS without
// verification is plain text to anyone on the path who can answer; the
// plain-HTTP rule ("never in clear unless the key says so") does not look
// at it. A tool that can write certs.d adds the section and reads the
// credential off the wire.
func TestNoHeaderIntoUnverifiedTLSSection(t *testing.T) {
	const pass = "pL5oK8iJ1uH4"
	n := newNode(t)
	in := "server = \"https://mirror.test\"\n\n[host.\"https://r.test\"]\n  capabilities = [\"pull\", \"resolve\"]\n  skip_verify = true\n"
	n.write(t, "mirror.test", in)
	n.sync(t, annotated(source("ns/a", item("r.test", pass))), pass)
	if got := n.read(t, "mirror.test"); strings.Contains(got, basic(pass)) {
		t.Fatalf("header written into a section that skips TLS verification:\n%s", got)
	}
}
