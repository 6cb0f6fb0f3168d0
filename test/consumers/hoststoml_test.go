package consumers

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	containerd16 "github.com/containerd/containerd/log"
	docker16 "github.com/containerd/containerd/remotes/docker"
	config16 "github.com/containerd/containerd/remotes/docker/config"
	docker2 "github.com/containerd/containerd/v2/core/remotes/docker"
	config2 "github.com/containerd/containerd/v2/core/remotes/docker/config"
	containerd2 "github.com/containerd/log"
	gotoml "github.com/pelletier/go-toml/v2"
	"github.com/sirupsen/logrus"

	"github.com/nodecreds/nodecreds/internal/hoststoml"
)

// judgedHost is what containerd makes of one host of a hosts.toml: every
// routing and TLS setting, and the headers.
type judgedHost struct {
	Scheme, Host, Path string
	Capabilities       uint
	Header             http.Header
	SkipVerify         bool
	RootCAs            int // number of CA subjects added beyond none (nil pool: -1)
	ClientCerts        int
}

// verdict is one containerd's reading of a certs.d folder: the hosts of a
// pull from folderHost, or the error, and whether it rejected hosts.toml
// (logged and ignored, as both versions do).
type verdict struct {
	Hosts    []judgedHost
	Err      string
	Rejected bool
}

type judge struct {
	name string
	read func(t testing.TB, root, folderHost string) verdict
}

var judges = []judge{
	{"containerd 1.6", func(t testing.TB, root, folderHost string) (v verdict) {
		// 1.6 panics on some files (a non-table under [host]): a file it
		// cannot read.
		defer recoverAsRejected(&v)
		logs, ctx := captureLogs16(t)
		hosts, err := config16.ConfigureHosts(ctx, config16.HostOptions{HostDir: config16.HostDirFromRoot(root)})(folderHost)
		v = verdict{Rejected: strings.Contains(logs.String(), "failed to decode hosts.toml")}
		if err != nil {
			v.Err = err.Error()
			return v
		}
		for _, h := range hosts {
			v.Hosts = append(v.Hosts, judgeHost(h.Scheme, h.Host, h.Path, uint(h.Capabilities), h.Header, h.Client))
		}
		return v
	}},
	{"containerd 2", func(t testing.TB, root, folderHost string) (v verdict) {
		defer recoverAsRejected(&v)
		logs, ctx := captureLogs2(t)
		hosts, err := config2.ConfigureHosts(ctx, config2.HostOptions{HostDir: config2.HostDirFromRoot(root)})(folderHost)
		v = verdict{Rejected: strings.Contains(logs.String(), "failed to decode")}
		if err != nil {
			v.Err = err.Error()
			return v
		}
		for _, h := range hosts {
			v.Hosts = append(v.Hosts, judgeHost(h.Scheme, h.Host, h.Path, uint(h.Capabilities), h.Header, h.Client))
		}
		return v
	}},
}

func recoverAsRejected(v *verdict) {
	if r := recover(); r != nil {
		*v = verdict{Err: fmt.Sprintf("panic: %v", r), Rejected: true}
	}
}

func captureLogs16(t testing.TB) (*bytes.Buffer, context.Context) {
	var buf bytes.Buffer
	l := logrus.New()
	l.SetOutput(&buf)
	l.SetLevel(logrus.DebugLevel)
	return &buf, containerd16.WithLogger(context.Background(), logrus.NewEntry(l))
}

func captureLogs2(t testing.TB) (*bytes.Buffer, context.Context) {
	var buf bytes.Buffer
	l := logrus.New()
	l.SetOutput(&buf)
	l.SetLevel(logrus.DebugLevel)
	return &buf, containerd2.WithLogger(context.Background(), logrus.NewEntry(l))
}

func judgeHost(scheme, host, path string, caps uint, header http.Header, client *http.Client) judgedHost {
	j := judgedHost{Scheme: scheme, Host: host, Path: path, Capabilities: caps, Header: header, RootCAs: -1}
	if client != nil {
		if tr, ok := client.Transport.(*http.Transport); ok && tr.TLSClientConfig != nil {
			j.SkipVerify = tr.TLSClientConfig.InsecureSkipVerify
			j.ClientCerts = len(tr.TLSClientConfig.Certificates)
			if tr.TLSClientConfig.RootCAs != nil {
				sys, _ := x509.SystemCertPool()
				j.RootCAs = 0
				if !tr.TLSClientConfig.RootCAs.Equal(sys) {
					j.RootCAs = 1
				}
			}
		}
	}
	return j
}

// writeFolder makes a certs.d root with folder/hosts.toml (data nil: none)
// and a CA file ca.pem in it that hosts.toml may name.
func writeFolder(t testing.TB, folder string, data []byte) string {
	t.Helper()
	root := t.TempDir()
	dir := filepath.Join(root, folder)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.pem"), testCA(t), 0o600); err != nil {
		t.Fatal(err)
	}
	if data != nil {
		if err := os.WriteFile(filepath.Join(dir, "hosts.toml"), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func testCA(t testing.TB) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "hoststoml test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// withoutAuthorization is h without its Authorization lines (any case),
// and those lines.
func withoutAuthorization(h http.Header) (rest http.Header, auth []string) {
	rest = http.Header{}
	for k, v := range h {
		if http.CanonicalHeaderKey(k) == "Authorization" {
			auth = append(auth, v...)
			continue
		}
		rest[k] = v
	}
	return rest, auth
}

// checkMerge judges one merge with both containerds: what they read from
// the output equals what they read from the input, but for the
// Authorization of the hosts in headers, which is ours.
func checkMerge(t *testing.T, folder string, in []byte, headers map[string]string) hoststoml.Result {
	t.Helper()
	fh, err := hoststoml.FolderHost(folder)
	if err != nil {
		t.Fatal(err)
	}
	orig := bytes.Clone(in)
	// As the agent allows for keys without a scheme: a header goes into a
	// plain-HTTP section only of a loopback host.
	plain := map[string]bool{}
	for h := range headers {
		plain[h] = hoststoml.IsLocalhost(h)
	}
	res, err := hoststoml.Merge(in, folder, hoststoml.Options{Headers: headers, PlainHTTP: plain})
	if !bytes.Equal(in, orig) {
		t.Fatal("Merge changed its input")
	}
	if err != nil {
		return hoststoml.Result{}
	}
	for _, j := range judges {
		before := j.read(t, writeFolder(t, folder, in), fh)
		after := j.read(t, writeFolder(t, folder, res.Data), fh)
		if in == nil {
			if after.Rejected || after.Err != "" {
				t.Fatalf("%s rejects the created file (%s):\n%s", j.name, after.Err, res.Data)
			}
		} else if before.Rejected || before.Err != "" {
			continue // containerd does not read the input; Merge's own check is all there is
		}
		if res.NoHostTable && res.Changed && j.name == "containerd 1.6" {
			// An empty file (or comments only) is read as none; with a
			// top-level header only, 1.6 ignores it: Merge says so.
			if !after.Rejected {
				t.Fatalf("NoHostTable, but containerd 1.6 reads %q", res.Data)
			}
			continue
		}
		if after.Rejected || after.Err != "" {
			t.Fatalf("%s reads the input but rejects the output (%s)\n in: %q\nout: %q", j.name, after.Err, in, res.Data)
		}
		if in == nil {
			// A created file routes as no file did: the registry itself.
			// containerd 2 tries https first, then http, for a loopback
			// registry on another port without a file; a created file says http.
			wantScheme := before.Hosts[0].Scheme
			if j.name == "containerd 2" && strings.HasPrefix(before.Hosts[0].Host, "127.") {
				wantScheme = "http"
			}
			if len(after.Hosts) != 2 || after.Hosts[0].Host != before.Hosts[0].Host || after.Hosts[1].Host != before.Hosts[0].Host ||
				after.Hosts[0].Scheme != wantScheme {
				t.Fatalf("%s: created file routes to %+v, no file to %+v", j.name, after.Hosts, before.Hosts)
			}
			if _, auth := withoutAuthorization(after.Hosts[0].Header); !slices.Equal(auth, []string{headers[before.Hosts[0].Host]}) {
				t.Fatalf("%s: the created host does not carry our header", j.name)
			}
			continue
		}
		if len(after.Hosts) != len(before.Hosts) {
			t.Fatalf("%s: %d hosts before, %d after\n in: %q\nout: %q", j.name, len(before.Hosts), len(after.Hosts), in, res.Data)
		}
		for i := range before.Hosts {
			b, a := before.Hosts[i], after.Hosts[i]
			brest, bauth := withoutAuthorization(b.Header)
			arest, aauth := withoutAuthorization(a.Header)
			if len(brest) == 0 {
				brest = nil
			}
			if len(arest) == 0 {
				arest = nil
			}
			b.Header, a.Header = brest, arest
			if fmt.Sprintf("%+v", b) != fmt.Sprintf("%+v", a) {
				t.Fatalf("%s: host %d changed beyond Authorization\nbefore %+v\n after %+v\n in: %q\nout: %q", j.name, i, b, a, in, res.Data)
			}
			want, ours := headers[a.Host]
			if _, mixed := schemesIn(in); mixed[a.Host] {
				// Named over plain HTTP and over HTTPS: which section this
				// host is, containerd's report does not say (containerd 2
				// may try HTTPS first on an http:// host); hoststoml's own
				// tests cover each section's rule.
				continue
			}
			// A host the file names over plain HTTP (containerd 2 may
			// try HTTPS first there, falling back to HTTP) gets our
			// header only where its key allows it.
			free := ours && plainIn(in)[a.Host] && !plain[a.Host]
			ours = ours && !free && (a.Scheme == "https" || a.Scheme == "http" && plain[a.Host])
			// TLS that is not verified gets no header (docs/security.md);
			// whatever Authorization such a host had stays.
			unverified := headers[a.Host] != "" && b.SkipVerify
			if unverified && !slices.Equal(aauth, bauth) {
				t.Fatalf("%s: host %d (%s) skips TLS verification, but its Authorization changed\n in: %q\nout: %q", j.name, i, a.Host, in, res.Data)
			}
			ours = ours && !unverified
			root := i == len(before.Hosts)-1
			switch {
			case free && !slices.Equal(aauth, bauth):
				t.Fatalf("%s: host %d (%s) is plain HTTP in the file and its key does not allow it, but its Authorization changed\n in: %q\nout: %q", j.name, i, a.Host, in, res.Data)
			case ours && !root && !slices.Equal(aauth, []string{want}):
				t.Fatalf("%s: host %d (%s) is ours but does not carry our header\n in: %q\nout: %q", j.name, i, a.Host, in, res.Data)
			case ours && root && !slices.Equal(aauth, []string{want}) && !slices.Equal(aauth, bauth):
				t.Fatalf("%s: top level is ours and carries neither our header nor its own", j.name)
			case !ours && !slices.Equal(aauth, bauth):
				t.Fatalf("%s: host %d (%s) is not ours but its Authorization changed\n in: %q\nout: %q", j.name, i, a.Host, in, res.Data)
			}
		}
	}
	return res
}

// plainIn lists the hosts data names over plain HTTP (a host key or
// server with the scheme http, as containerd parses them).
func plainIn(data []byte) map[string]bool {
	plain, _ := schemesIn(data)
	return plain
}

// schemesIn returns the hosts the file names over plain HTTP only, and those
// it names over both plain HTTP and HTTPS (in two sections).
func schemesIn(data []byte) (plain, mixed map[string]bool) {
	var doc struct {
		Server string         `toml:"server"`
		Host   map[string]any `toml:"host"`
	}
	plain, mixed = map[string]bool{}, map[string]bool{}
	if gotoml.Unmarshal(data, &doc) != nil {
		return plain, mixed
	}
	keys := []string{doc.Server}
	for k := range doc.Host {
		keys = append(keys, k)
	}
	secure := map[string]bool{}
	for _, k := range keys {
		if k == "" {
			continue
		}
		if !strings.HasPrefix(k, "http") {
			k = "https://" + k // containerd's parseHostConfig
		}
		if u, err := url.Parse(k); err == nil {
			switch u.Scheme {
			case "http":
				plain[u.Host] = true
			case "https":
				secure[u.Host] = true
			}
		}
	}
	for h := range plain {
		if secure[h] {
			delete(plain, h)
			mixed[h] = true
		}
	}
	return plain, mixed
}

// unchangedOutside asserts, without hoststoml's parser, that out is in with
// Authorization values replaced by ours and lines holding ours (or the
// header table line right above one) added; nothing else. Every input line
// is in the output in order, but a line setting an Authorization, which
// keeps its bytes before and after the value.
func unchangedOutside(t *testing.T, in, out []byte) {
	t.Helper()
	marker := strconv.Quote(ourBasic)
	inLines := strings.SplitAfter(string(in), "\n")
	outLines := strings.SplitAfter(string(out), "\n")
	fail := func(why string, args ...any) {
		t.Helper()
		t.Fatalf("%s\n in: %q\nout: %q", fmt.Sprintf(why, args...), in, out)
	}
	isHeaderTable := func(l string) bool {
		l = strings.TrimSpace(l)
		return strings.HasPrefix(l, "[") && (strings.HasSuffix(l, ".header]") || l == "[header]")
	}
	i, j := 0, 0
	for i < len(inLines) && inLines[i] == "" {
		i++
	}
	for j < len(outLines) {
		o := outLines[j]
		switch {
		case i < len(inLines) && (o == inLines[i] || (i == len(inLines)-1 && !strings.HasSuffix(inLines[i], "\n") && strings.TrimRight(o, "\r\n") == inLines[i])):
			i, j = i+1, j+1
		case isHeaderTable(o) && j+1 < len(outLines) && strings.Contains(outLines[j+1], marker) &&
			!(i < len(inLines) && strings.Contains(strings.ToLower(inLines[i]), "authorization")):
			j++ // a header table added for our key
		case strings.Contains(o, marker):
			before, after, _ := strings.Cut(o, marker)
			switch {
			case i < len(inLines) && strings.HasPrefix(inLines[i], before) && strings.Contains(strings.ToLower(before), "authorization"):
				// Replaced: the input's value ends where the rest of the line is the same.
				rest := strings.Join(inLines[i:], "")[len(before):]
				tail := strings.TrimRight(after, "\r\n")
				// The tail ends the line: the first match followed by a
				// line end or the end of the file (a space inside the
				// value is not the tail " ").
				k := -1
				for off := 0; off <= len(rest); {
					j := strings.Index(rest[off:], tail)
					if j < 0 {
						break
					}
					if r := rest[off+j+len(tail):]; tail == "" || r == "" || strings.HasPrefix(r, "\n") || strings.HasPrefix(r, "\r\n") {
						k = off + j
						break
					}
					off += j + 1
				}
				if k < 0 || (tail == "" && strings.ContainsAny(rest[:k], "\n")) {
					fail("the bytes after a replaced value changed: %q", after)
				}
				if tail == "" {
					k = strings.IndexAny(rest, "\r\n")
					if k < 0 {
						k = len(rest)
					}
				}
				consumed := len(before) + k + len(tail)
				if r := rest[k+len(tail):]; strings.HasPrefix(r, "\r\n") {
					consumed += 2
				} else if strings.HasPrefix(r, "\n") {
					consumed++
				}
				for i < len(inLines) && consumed >= len(inLines[i]) {
					consumed -= len(inLines[i])
					i++
				}
				if consumed != 0 {
					fail("a replaced value does not end a line")
				}
			case strings.HasSuffix(strings.TrimSpace(before), "Authorization ="):
				// Added: a line of its own.
				if strings.TrimRight(after, "\r\n") != "" {
					fail("added line %q is not just our key", o)
				}
			default:
				fail("line %q holds our value but neither replaces nor adds a key", o)
			}
			j++
		case strings.TrimRight(o, "\r\n") == "" && j == len(outLines)-1:
			j++
		case o == "\n" || o == "\r\n":
			// the newline added before a table at a bare end of file
			if i != len(inLines) && !(i == len(inLines)-1 && inLines[i] == "") {
				fail("an empty line was added in the middle")
			}
			j++
		default:
			fail("output line %q is neither an input line nor ours", o)
		}
	}
	for ; i < len(inLines); i++ {
		if inLines[i] != "" {
			fail("input line %q is missing from the output", inLines[i])
		}
	}
}

const (
	ourBasic   = "Basic bm9kZWNyZWRzOnMzY3IzdA==" // nodecreds:s3cr3t
	otherBasic = "Basic YWRtaW46YWRtaW4="         // admin:admin
)

func TestHostsTOMLJudgedByContainerd(t *testing.T) {
	tests := []struct {
		name    string
		folder  string
		in      *string
		headers map[string]string
	}{
		{"no file: created", "reg.example.com_5000_", nil, map[string]string{"reg.example.com:5000": ourBasic}},
		{"no file, loopback: created with http", "127.0.0.1:5123", nil, map[string]string{"127.0.0.1:5123": ourBasic}},
		{
			// containerd 1.6 ignores this file ("invalid `host` tree"); 2.x reads it.
			"1.6's invalid host tree: top-level server and header only", "upstream.example",
			strptr("server = \"https://upstream.example\"\n\n[header]\n  Authorization = \"" + otherBasic + "\"\n  X-Keep = \"kept\"\n"),
			map[string]string{"upstream.example": ourBasic},
		},
		{
			"admin's mirror section with a comment", "upstream.example",
			strptr("server = \"https://upstream.example\"\n\n# Team mirror: pulls go here first. Ask #infra before changing.\n[host.\"https://mirror.example:5001\"]\n  capabilities = [\"pull\", \"resolve\"] # no push through the mirror\n  ca = \"ca.pem\"\n  skip_verify = false\n"),
			map[string]string{"mirror.example:5001": ourBasic},
		},
		{
			"admin's mirror with its own header table and an older Authorization", "upstream.example",
			strptr("server = \"https://upstream.example\"\n\n[host.\"https://mirror.example:5001\"]\n  capabilities = [\"pull\", \"resolve\"]\n  [host.\"https://mirror.example:5001\".header]\n    x-custom = [\"a\", \"b\"]\n    authorization = [\"" + otherBasic + "\", \"Basic second\"] # two lines\n\n[host.\"https://other.example\"]\n  capabilities = [\"pull\"]\n  [host.\"https://other.example\".header]\n    Authorization = \"" + otherBasic + "\"\n"),
			map[string]string{"mirror.example:5001": ourBasic, "upstream.example": ourBasic},
		},
		{
			// spegel's writer (pkg/oci/containerd/mirror.go templateHosts):
			// literal strings, dial_timeout, no newline at the end.
			"spegel's generated file", "docker.io",
			strptr("server = 'https://registry-1.docker.io'\n\n[host.'http://127.0.0.1:30020']\ncapabilities = ['pull', 'resolve']\ndial_timeout = '200ms'\n\n[host.'http://127.0.0.1:30021']\ncapabilities = ['pull', 'resolve']\ndial_timeout = '200ms'"),
			map[string]string{"registry-1.docker.io": ourBasic},
		},
		{
			"spegel's generated file with its own mirror credentials", "ghcr.io",
			strptr("server = 'https://ghcr.io'\n\n[host.'http://127.0.0.1:30020']\ncapabilities = ['pull', 'resolve']\ndial_timeout = '200ms'\n[host.'http://127.0.0.1:30020'.header]\nAuthorization = '" + otherBasic + "'"),
			map[string]string{"127.0.0.1:30020": ourBasic, "ghcr.io": ourBasic},
		},
		{
			"inline header table and dotted header keys", "upstream.example",
			strptr("[host.\"https://a.example\"]\nheader = { X = \"1\", Authorization = \"" + otherBasic + "\" }\n[host.\"https://b.example\"]\nheader.X-Team = \"t\"\noverride_path = true\n"),
			map[string]string{"a.example": ourBasic, "b.example": ourBasic},
		},
		{
			"CRLF and a host key without a scheme", "upstream.example",
			strptr("server = \"upstream.example\"\r\n[host.\"mirror.example\"]\r\n  capabilities = [\"pull\"]\r\n"),
			map[string]string{"mirror.example": ourBasic},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var in []byte
			if tt.in != nil {
				in = []byte(*tt.in)
			}
			res := checkMerge(t, tt.folder, in, tt.headers)
			if !res.Changed {
				t.Fatalf("nothing merged into %q", in)
			}
			if in != nil {
				unchangedOutside(t, in, res.Data)
			}
			if in == nil {
				return
			}
			back, remove, err := hoststoml.Restore(res.Data, tt.folder, res.Record)
			if err != nil || remove || !bytes.Equal(back, in) {
				t.Fatalf("Restore: err %v, remove %v\n got: %q\nwant: %q", err, remove, back, in)
			}
		})
	}
}

// TestHostsTOMLOnContainerd16NeedsHostTable: the file Merge creates is read
// by 1.6 with our header on the registry's host; the top-level form is not.
func TestHostsTOMLOnContainerd16NeedsHostTable(t *testing.T) {
	folder, host := "upstream.example", "upstream.example"
	topLevel := []byte("server = \"https://upstream.example\"\n\n[header]\n  Authorization = \"" + ourBasic + "\"\n")
	if v := judges[0].read(t, writeFolder(t, folder, topLevel), host); !v.Rejected {
		t.Fatalf("containerd 1.6 read the top-level-only form: %+v", v)
	}
	res, err := hoststoml.Merge(nil, folder, hoststoml.Options{Headers: map[string]string{host: ourBasic}})
	if err != nil {
		t.Fatal(err)
	}
	for _, j := range judges {
		v := j.read(t, writeFolder(t, folder, res.Data), host)
		if v.Rejected || v.Err != "" || len(v.Hosts) == 0 || v.Hosts[0].Host != host || !slices.Equal(v.Hosts[0].Header.Values("Authorization"), []string{ourBasic}) {
			t.Fatalf("%s: created file read as %+v", j.name, v)
		}
	}
}

// TestHostsTOMLTokenHeader: a Bearer registry on 127.0.0.1 whose token
// endpoint wants Basic credentials. containerd 2 sends the hosts.toml
// header with the token request (2.1, "Add hosts.toml headers to auth
// requests") and resolves; containerd 1.6 does not send it there and fails.
func TestHostsTOMLTokenHeader(t *testing.T) {
	var tokenAuth []string
	mux := http.NewServeMux()
	srv := httptest.NewServer(mux) // binds 127.0.0.1
	t.Cleanup(srv.Close)
	mux.HandleFunc("/token", func(w http.ResponseWriter, r *http.Request) {
		tokenAuth = append(tokenAuth, r.Header.Get("Authorization"))
		if r.Header.Get("Authorization") != ourBasic {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"token":"t0ken","access_token":"t0ken","expires_in":300}`)
	})
	mux.HandleFunc("/v2/", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer t0ken" {
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="%s/token",service="test"`, srv.URL))
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
		w.Header().Set("Docker-Content-Digest", "sha256:"+strings.Repeat("a", 64))
		w.Header().Set("Content-Length", "2")
		if r.Method != http.MethodHead {
			_, _ = io.WriteString(w, "{}")
		}
	})
	host := strings.TrimPrefix(srv.URL, "http://")
	res, err := hoststoml.Merge(nil, host, hoststoml.Options{Headers: map[string]string{host: ourBasic}})
	if err != nil {
		t.Fatal(err)
	}
	root := writeFolder(t, host, res.Data)
	ref := host + "/team/app:1"

	_, ctx2 := captureLogs2(t)
	r2 := docker2.NewResolver(docker2.ResolverOptions{Hosts: config2.ConfigureHosts(ctx2, config2.HostOptions{HostDir: config2.HostDirFromRoot(root)})})
	if _, _, err := r2.Resolve(ctx2, ref); err != nil {
		t.Fatalf("containerd 2 did not resolve through the token endpoint: %v (token requests carried our header: %v)", err, slices.Contains(tokenAuth, ourBasic))
	}
	if !slices.Contains(tokenAuth, ourBasic) {
		t.Fatal("containerd 2 resolved without sending our header to the token endpoint")
	}

	tokenAuth = nil
	_, ctx16 := captureLogs16(t)
	r16 := docker16.NewResolver(docker16.ResolverOptions{Hosts: config16.ConfigureHosts(ctx16, config16.HostOptions{HostDir: config16.HostDirFromRoot(root)})})
	if _, _, err := r16.Resolve(ctx16, ref); err == nil {
		t.Fatal("containerd 1.6 resolved a Bearer registry with only a hosts.toml header; the docs say it cannot")
	}
	if slices.Contains(tokenAuth, ourBasic) {
		t.Fatal("containerd 1.6 sent the hosts.toml header to the token endpoint")
	}
}

// FuzzHostsTOMLMerge: any hosts.toml containerd reads, merged, is read by
// containerd 1.6 and 2 as the same hosts with the same settings and headers
// but for the Authorization of hosts we hold credentials for, which is ours;
// every input line is still in the output in order but for Authorization
// values; what Merge refuses is returned untouched.
func FuzzHostsTOMLMerge(f *testing.F) {
	for _, s := range []string{
		"",
		"server = \"https://upstream.example\"\n[header]\nAuthorization = \"Basic a\"\n",
		"server = \"https://upstream.example\"\n\n# comment\n[host.\"https://mirror.example:5001\"]\n  capabilities = [\"pull\", \"resolve\"] # c\n  ca = \"ca.pem\"\n",
		"[host.\"https://mirror.example:5001\"]\n[host.\"https://mirror.example:5001\".header]\nX = [\"1\",\"2\"]\n[host.\"https://b.example\"]\nskip_verify = true\n",
		"server = 'https://registry-1.docker.io'\n\n[host.'http://127.0.0.1:30020']\ncapabilities = ['pull', 'resolve']\ndial_timeout = '200ms'",
		"[host.\"https://a.example\"]\nheader = { X = \"1\", authorization = [\"Basic x\"] }\n",
		"[host.\"https://b.example\"]\r\nheader.X-Team = \"t\"\r\noverride_path = true\r\n",
		"[host]\n[host.\"mirror.example:5001\"]\ncapabilities = []\n",
		"[host.\"http://mirror.example:5001\"]\n[host.\"mirror.example:5001\"]",
		"server = \"https://upstream.example\"\n[header]\nAuthorization = \"Basic a\" ",
	} {
		f.Add([]byte(s), uint8(0xff))
	}
	candidates := []string{"upstream.example", "mirror.example:5001", "b.example", "a.example", "registry-1.docker.io", "127.0.0.1:30020"}
	f.Fuzz(func(t *testing.T, data []byte, pick uint8) {
		if data == nil {
			data = []byte{}
		}
		headers := map[string]string{}
		for i, c := range candidates {
			if pick&(1<<i) != 0 {
				headers[c] = ourBasic
			}
		}
		folder := "upstream.example"
		if pick&0x80 != 0 {
			folder = "docker.io"
		}
		res := checkMerge(t, folder, data, headers)
		if res.Changed {
			unchangedOutside(t, data, res.Data)
		}
	})
}

func strptr(s string) *string { return &s }
