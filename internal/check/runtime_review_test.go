package check

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/distribution/reference"

	"github.com/nodecreds/nodecreds/internal/hostfs"
	"github.com/nodecreds/nodecreds/internal/testsupport"
)

// reviewCanary is a password written into refs and headers.
const reviewCanary = "Wv4ReviewCanaryPw"

// runAndPrint runs check and returns its JSON followed by its table.
func runAndPrint(t *testing.T, o Options) (Report, string) {
	t.Helper()
	rep := Run(t.Context(), o)
	var out bytes.Buffer
	if err := json.NewEncoder(&out).Encode(rep); err != nil {
		t.Fatal(err)
	}
	if err := rep.WriteTable(&out); err != nil {
		t.Fatal(err)
	}
	return rep, out.String()
}

// TestRefsPrintedWithoutUserInfo: a password in the user-info (or any
// other password-like place) of a ref — the sandbox image containerd's
// configuration names, an --image, a --registry — never reaches the table
// or the JSON, on the kubelet's side or containerd's. An image reference
// that parses is printed as it is (what looks like a password there is a
// tag).
func TestRefsPrintedWithoutUserInfo(t *testing.T) {
	for _, key := range testsupport.UserInfoKeys(reviewCanary) {
		t.Run(key, func(t *testing.T) {
			root := t.TempDir()
			o := Options{HostRoot: root, KubeletRootDir: "/var/lib/kubelet", Registries: []string{key}, Runtime: &RuntimeOptions{
				CertsDir: "/etc/containerd/certs.d", ConfigFile: "/etc/containerd/config.toml", StateDir: "/var/lib/nodecreds", Version: "2.0.1", Sandbox: true,
				Challenger: fakeChallenger{},
			}}
			sandbox := "reg.test/pause:3.9"
			if _, err := reference.ParseNormalizedNamed(key); err != nil {
				// A valid reference is printed as it is: what
				// looks like a password there is a tag.
				o.Images, sandbox = []string{key}, key
			}
			put(t, root, "etc/containerd/config.toml", fmt.Sprintf("version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\nsandbox_image = %q\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\nconfig_path = \"/etc/containerd/certs.d\"\n", sandbox))
			rep, out := runAndPrint(t, o)
			if rep.OK {
				t.Errorf("check passes for %q", key)
			}
			if leak := testsupport.Leak(out, reviewCanary); leak != "" {
				t.Errorf("check prints %q of the password:\n%s", leak, out)
			}
		})
	}
}

// TestUsernameThatHoldsThePassword: a username that is the password,
// holds it, or comes with no password (a token passed as the username) is
// not shown — in a config.json the kubelet reads (USERNAME) or in a Basic
// header of a hosts.toml (HEADER) — and check still says a header is there.
func TestUsernameThatHoldsThePassword(t *testing.T) {
	for _, tt := range []struct{ name, user, password string }{
		{"the username is the password", reviewCanary, reviewCanary},
		{"the username holds the password", "robot-" + reviewCanary, reviewCanary},
		{"no password: the username is the token", reviewCanary, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			up := testsupport.B64(tt.user + ":" + tt.password)
			put(t, root, "var/lib/kubelet/config.json", `{"auths":{"reg.test":{"auth":"`+up+`"}}}`)
			put(t, root, "etc/containerd/config.toml", configV2)
			put(t, root, "etc/containerd/certs.d/reg.test/hosts.toml", "[host.\"https://reg.test\".header]\nAuthorization = \"Basic "+up+"\"\n[host.\"https://m.test\".header]\nAuthorization = \"basic  "+up+"\"\n")
			rep, out := runAndPrint(t, Options{HostRoot: root, KubeletRootDir: "/var/lib/kubelet", Images: []string{"reg.test/app"}, Runtime: &RuntimeOptions{
				CertsDir: "/etc/containerd/certs.d", ConfigFile: "/etc/containerd/config.toml", StateDir: "/var/lib/nodecreds", Version: "2.0.1",
			}})
			if !rep.Results[0].Found || !rep.Runtime.Results[0].Hosts[0].Header {
				t.Fatalf("the credentials are not found:\n%s", out)
			}
			if leak := testsupport.Leak(out, reviewCanary); leak != "" {
				t.Errorf("check prints %q of the password:\n%s", leak, out)
			}
		})
	}
}

// TestTableRowsCannotBeForged: text from the node's files — a username in
// a config.json or a Basic header, a host, config_path, the sandbox image —
// holding a newline, a tab, a carriage return, an escape sequence or a
// bidirectional override reaches the table escaped: no row of its own, no
// terminal control.
func TestTableRowsCannotBeForged(t *testing.T) {
	const forged = "\n FORGED\tOK"
	for _, tt := range []struct{ name, user string }{
		{"newline", "robot" + forged},
		{"carriage return", "robot\rFORGED"},
		{"escape sequence", "robot\x1b[2J\x1b]0;FORGED\x07"},
		{"bidirectional override", "robot\u202eFORGED"},
		{"invalid UTF-8", "robot\xff\xfeFORGED"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			up := testsupport.B64(tt.user + ":" + reviewCanary)
			put(t, root, "var/lib/kubelet/config.json", `{"auths":{"reg.test":{"auth":"`+up+`"}}}`)
			certs := "/etc/containerd/certs.d" + strings.ReplaceAll(tt.user, "\xff\xfe", "")
			quoted, _ := json.Marshal(certs) // a TOML string too
			put(t, root, "etc/containerd/config.toml", "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\nconfig_path = "+string(quoted)+"\n")
			put(t, root, certs[1:]+"/reg.test/hosts.toml", "[host.\"https://reg.test\".header]\nAuthorization = \"Basic "+up+"\"\n")
			rep := Run(t.Context(), Options{HostRoot: root, KubeletRootDir: "/var/lib/kubelet", Images: []string{"reg.test/app"}, Runtime: &RuntimeOptions{
				CertsDir: "/etc/containerd/certs.d", ConfigFile: "/etc/containerd/config.toml", StateDir: "/var/lib/nodecreds", Version: "1.6.20",
			}})
			if !rep.Results[0].Found || len(rep.Runtime.Results) != 1 || len(rep.Runtime.Results[0].Hosts) == 0 || !rep.Runtime.Results[0].Hosts[0].Header {
				t.Fatalf("the credentials are not found: %+v %+v", rep.Results, rep.Runtime)
			}
			var out bytes.Buffer
			if err := rep.WriteTable(&out); err != nil {
				t.Fatal(err)
			}
			for i, r := range out.String() {
				if r != '\n' && !unicode.IsGraphic(r) || r == utf8.RuneError {
					t.Fatalf("the table holds %U at byte %d:\n%s", r, i, out.String())
				}
			}
			for _, l := range strings.Split(out.String(), "\n") {
				if strings.HasPrefix(strings.TrimSpace(l), "FORGED") {
					t.Fatalf("a row is forged:\n%s", out.String())
				}
			}
		})
	}
}

// answer is a host's answer to the challenge request.
type answer struct {
	challenge string
	status    int
	err       string
}

// scriptedChallenger answers per host; a host not in it cannot be reached.
type scriptedChallenger map[string]answer

func (s scriptedChallenger) Challenge(_ context.Context, _, host string) (string, int, string) {
	a, ok := s[host]
	if !ok {
		return "", 0, descRefused
	}
	return a.challenge, a.status, a.err
}

// TestRuntimeExitNotOKWhenThePullFails: check passes only when containerd
// can pull — not when no host it tries answers as a registry, nor when it
// reads a hosts.toml (or folder) that check cannot read.
func TestRuntimeExitNotOKWhenThePullFails(t *testing.T) {
	const hosts = "[host.\"https://mirror.test\"]\n[host.\"https://reg.test\".header]\nAuthorization = \"Basic cm9ib3Q6cHc=\"\n"
	tests := []struct {
		name  string
		setup func(t *testing.T, certs string)
		chal  scriptedChallenger
		ok    bool
	}{
		{name: "the mirror open, the registry unreachable", chal: scriptedChallenger{"mirror.test": {"", 200, ""}}, ok: true},
		{name: "the registry asks and gets its header", chal: scriptedChallenger{"reg.test": {"basic", 401, ""}}, ok: true},
		{name: "every host unreachable", chal: scriptedChallenger{}},
		{name: "every host times out", chal: scriptedChallenger{"mirror.test": {"", 0, descTimeout}, "reg.test": {"", 0, descTimeout}}},
		{name: "no host is a registry (404, 500)", chal: scriptedChallenger{"mirror.test": {"", 404, ""}, "reg.test": {"", 500, ""}}},
		{name: "the registry forbids (403)", chal: scriptedChallenger{"reg.test": {"", 403, ""}}},
		{name: "hosts.toml is a FIFO", chal: scriptedChallenger{"mirror.test": {"", 200, ""}, "reg.test": {"", 200, ""}}, setup: func(t *testing.T, certs string) {
			if err := syscall.Mkfifo(filepath.Join(certs, "reg.test", "hosts.toml"), 0o600); err != nil {
				t.Skip(err)
			}
		}},
		{name: "hosts.toml is too large", chal: scriptedChallenger{"mirror.test": {"", 200, ""}, "reg.test": {"", 200, ""}}, setup: func(t *testing.T, certs string) {
			testsupport.WriteFile(t, filepath.Join(certs, "reg.test", "hosts.toml"), hosts+"#"+strings.Repeat("x", hostfs.MaxFileSize)+"\n", 0o600)
		}},
		{name: "the registry's folder is a file", chal: scriptedChallenger{"reg.test:5000": {"", 200, ""}}, setup: func(t *testing.T, certs string) {
			testsupport.WriteFile(t, filepath.Join(certs, "reg.test_5000_"), "", 0o600)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			put(t, root, "etc/containerd/config.toml", configV2)
			certs := filepath.Join(root, "etc/containerd/certs.d")
			image := "reg.test/app"
			if tt.setup != nil {
				if err := os.MkdirAll(filepath.Join(certs, "reg.test"), 0o700); err != nil {
					t.Fatal(err)
				}
				tt.setup(t, certs)
				image = "reg.test:5000/app"
				if _, err := os.Stat(filepath.Join(certs, "reg.test_5000_")); err != nil {
					image = "reg.test/app"
				}
			} else {
				put(t, root, "etc/containerd/certs.d/reg.test/hosts.toml", hosts)
			}
			rep, ok := runRuntime(t.Context(), Options{HostRoot: root, Images: []string{image}, Runtime: &RuntimeOptions{
				CertsDir: "/etc/containerd/certs.d", ConfigFile: "/etc/containerd/config.toml", StateDir: "/var/lib/nodecreds", Version: "2.1.0",
				Challenger: tt.chal,
			}})
			if ok != tt.ok || rep.Results[0].OK != tt.ok {
				t.Errorf("ok %v (result %v), want %v: %+v", ok, rep.Results[0].OK, tt.ok, rep.Results[0])
			}
		})
	}
}

// TestHostsPrintedWithoutUserInfo: a password in a mirror's URL or in
// `server` (user-info, or where a port or a path goes) never reaches the
// table or the JSON; the host is named by its host[:port] only.
func TestHostsPrintedWithoutUserInfo(t *testing.T) {
	for _, key := range testsupport.UserInfoKeys(reviewCanary) {
		t.Run(key, func(t *testing.T) {
			quoted, _ := json.Marshal(key)
			for name, file := range map[string]string{
				"mirror": "[host." + string(quoted) + "]\n[host.\"https://reg.test\".header]\nAuthorization = \"Basic cm9ib3Q6cHc=\"\n",
				"server": "server = " + string(quoted) + "\n[host.\"https://reg.test\".header]\nAuthorization = \"Basic cm9ib3Q6cHc=\"\n",
			} {
				root := t.TempDir()
				put(t, root, "etc/containerd/config.toml", configV2)
				put(t, root, "etc/containerd/certs.d/reg.test/hosts.toml", file)
				_, out := runAndPrint(t, Options{HostRoot: root, KubeletRootDir: "/var/lib/kubelet", Images: []string{"reg.test/app"}, Runtime: &RuntimeOptions{
					CertsDir: "/etc/containerd/certs.d", ConfigFile: "/etc/containerd/config.toml", StateDir: "/var/lib/nodecreds", Version: "2.1.0",
					Challenger: fakeChallenger{},
				}})
				if leak := testsupport.Leak(out, reviewCanary); leak != "" {
					t.Errorf("%s: check prints %q of the password:\n%s", name, leak, out)
				}
			}
		})
	}
}
