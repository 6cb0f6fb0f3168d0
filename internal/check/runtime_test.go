package check

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nodecreds/nodecreds/internal/containerdconf"
	"github.com/nodecreds/nodecreds/internal/hoststoml"
	"github.com/nodecreds/nodecreds/internal/testsupport"
)

const (
	runtimePw  = "Qz8Kx7Wv3Jp2Ln"
	configV2   = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\nsandbox_image = \"reg.test/pause:3.9\"\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\nconfig_path = \"/etc/containerd/certs.d\"\n"
	configV3   = "version = 3\n[plugins.\"io.containerd.cri.v1.images\".registry]\nconfig_path = \"/etc/containerd/certs.d:/etc/docker/certs.d\"\n"
	configNone = "version = 2\n"
)

func basic(user string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+runtimePw))
}

// mirrorFile is an admin's hosts.toml: a mirror with its own header, then
// the registry's section with nodecreds' header.
func mirrorFile() string {
	return `server = "https://reg.test"
# the admin's mirror
[host."https://mirror.test"]
  capabilities = ["pull", "resolve"]
  [host."https://mirror.test".header]
    Authorization = "` + basic("mirroruser") + `"
[host."https://reg.test"]
  [host."https://reg.test".header]
    Authorization = "` + basic("robot") + `"
`
}

// records says nodecreds wrote reg.test's header in file.
func records(file string) string {
	b, _ := json.Marshal(map[string]any{"version": 1, "files": map[string]hoststoml.Record{
		file: {Changes: []hoststoml.Change{{Section: "https://reg.test", Action: hoststoml.AddedTable, Ours: hoststoml.Fingerprint(basic("robot"))}}},
	}})
	return string(b)
}

// fakeChallenger answers with a fixed challenge per host.
type fakeChallenger map[string]string

func (f fakeChallenger) Challenge(_ context.Context, _, host string) (string, int, string) {
	if c, ok := f[host]; ok {
		return c, http.StatusUnauthorized, ""
	}
	return "", http.StatusOK, ""
}

type hostWant struct{ url, user, by string }

func TestRuntime(t *testing.T) {
	const certs = "/etc/containerd/certs.d"
	regFile := certs + "/reg.test/hosts.toml"
	tests := []struct {
		name     string
		files    map[string]string
		version  string
		images   []string
		sandbox  bool
		chal     fakeChallenger
		ok       bool
		problems []string // reasons, report's then results'
		file     string   // of the first result
		hosts    []hostWant
	}{{
		name:    "the sandbox image: the mirror, then the registry, in containerd's order; nodecreds' header told from another's",
		files:   map[string]string{"etc/containerd/config.toml": configV2, "etc/containerd/certs.d/reg.test/hosts.toml": mirrorFile(), "var/lib/nodecreds/hoststoml.json": records(regFile)},
		version: "containerd://1.6.20~ds1", sandbox: true, ok: true, file: regFile,
		hosts: []hostWant{{"https://mirror.test", "mirroruser", "other"}, {"https://reg.test", "robot", "nodecreds"}, {"https://reg.test", "", ""}},
	}, {
		name:    "host_port_ spelling first",
		files:   map[string]string{"etc/containerd/config.toml": configV2, "etc/containerd/certs.d/reg.test_5000_/hosts.toml": "[host.\"https://reg.test:5000\".header]\nAuthorization = \"" + basic("u5") + "\"\n", "etc/containerd/certs.d/reg.test:5000/hosts.toml": "server = \"https://elsewhere.test\"\n"},
		version: "2.0.1", images: []string{"reg.test:5000/app:v1"}, ok: true, file: certs + "/reg.test_5000_/hosts.toml",
		hosts: []hostWant{{"https://reg.test:5000", "u5", "other"}, {"https://reg.test:5000", "", ""}},
	}, {
		name:    "_default when the registry has no folder",
		files:   map[string]string{"etc/containerd/config.toml": configV2, "etc/containerd/certs.d/_default/hosts.toml": "[host.\"https://mirror.test\".header]\nAuthorization = \"" + basic("m") + "\"\n"},
		version: "2.0.1", images: []string{"other.test/app"}, ok: true, file: certs + "/_default/hosts.toml",
		hosts: []hostWant{{"https://mirror.test", "m", "other"}, {"https://other.test", "", ""}},
	}, {
		name:    "no folder: the registry alone, no header",
		files:   map[string]string{"etc/containerd/config.toml": configV2},
		version: "1.6.20", images: []string{"nginx"}, ok: false,
		hosts: []hostWant{{"https://registry-1.docker.io", "", ""}},
	}, {
		name:    "two folders on 2.2: #12808, no file read",
		files:   map[string]string{"etc/containerd/config.toml": configV3, "etc/containerd/certs.d/reg.test/hosts.toml": mirrorFile()},
		version: "containerd://v2.2.1", images: []string{"reg.test/app"}, ok: false,
		problems: []string{containerdconf.ReasonConfigPathMultipleFolders},
		hosts:    []hostWant{{"https://reg.test", "", ""}},
	}, {
		name:    "two folders on 1.6: read in turn",
		files:   map[string]string{"etc/containerd/config.toml": configV3, "etc/docker/certs.d/reg.test/hosts.toml": mirrorFile()},
		version: "1.6.20", images: []string{"reg.test/app"}, ok: true, file: "/etc/docker/certs.d/reg.test/hosts.toml",
		hosts: []hostWant{{"https://mirror.test", "mirroruser", "other"}, {"https://reg.test", "robot", "other"}, {"https://reg.test", "", ""}},
	}, {
		name:    "config_path unset on 1.6",
		files:   map[string]string{"etc/containerd/config.toml": configNone, "etc/containerd/certs.d/reg.test/hosts.toml": mirrorFile()},
		version: "1.6.20", images: []string{"reg.test/app"}, ok: false,
		problems: []string{containerdconf.ReasonConfigPathUnset},
		hosts:    []hostWant{{"https://reg.test", "", ""}},
	}, {
		name:   "version unknown: not guessed",
		files:  map[string]string{"etc/containerd/config.toml": configNone},
		images: []string{"reg.test/app"}, ok: false,
		problems: []string{containerdconf.ReasonRuntimeVersionUnknown},
		hosts:    []hostWant{{"https://reg.test", "", ""}},
	}, {
		name:    "1.6 ignores a file without a host section",
		files:   map[string]string{"etc/containerd/config.toml": configV2, "etc/containerd/certs.d/reg.test/hosts.toml": "server = \"https://reg.test\"\n[header]\nAuthorization = \"" + basic("top") + "\"\n"},
		version: "1.6.20", images: []string{"reg.test/app"}, ok: false, file: regFile,
		problems: []string{"NoHostSection"},
		hosts:    []hostWant{{"https://reg.test", "top", "other"}},
	}, {
		name:    "probe: a Bearer registry on 1.6, a mirror asking with no header",
		files:   map[string]string{"etc/containerd/config.toml": configV2, "etc/containerd/certs.d/reg.test/hosts.toml": "[host.\"https://open-mirror.test\"]\n[host.\"https://reg.test\".header]\nAuthorization = \"" + basic("robot") + "\"\n"},
		version: "1.6.20", images: []string{"reg.test/app"}, ok: false, file: regFile,
		chal:     fakeChallenger{"open-mirror.test": "basic", "reg.test": "bearer"},
		problems: []string{"NoHeader", containerdconf.ReasonBearerNeedsContainerd21},
		hosts:    []hostWant{{"https://open-mirror.test", "", ""}, {"https://reg.test", "robot", "other"}, {"https://reg.test", "", ""}},
	}, {
		name:    "probe: Bearer on 2.1, an open mirror without a header",
		files:   map[string]string{"etc/containerd/config.toml": configV2, "etc/containerd/certs.d/reg.test/hosts.toml": "[host.\"https://open-mirror.test\"]\n[host.\"https://reg.test\".header]\nAuthorization = \"" + basic("robot") + "\"\n"},
		version: "2.1.0", images: []string{"reg.test/app"}, ok: true, file: regFile,
		chal:  fakeChallenger{"reg.test": "bearer"},
		hosts: []hostWant{{"https://open-mirror.test", "", ""}, {"https://reg.test", "robot", "other"}, {"https://reg.test", "", ""}},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			for p, c := range tt.files {
				put(t, root, p, c)
			}
			ro := &RuntimeOptions{CertsDir: certs, ConfigFile: "/etc/containerd/config.toml", StateDir: "/var/lib/nodecreds", Version: tt.version, Sandbox: tt.sandbox}
			if tt.chal != nil {
				ro.Challenger = tt.chal
			}
			rep, ok := runRuntime(t.Context(), Options{HostRoot: root, Images: tt.images, Runtime: ro})
			if rep.Error != "" {
				t.Fatalf("error: %s", rep.Error)
			}
			var reasons []string
			for _, p := range rep.Problems {
				reasons = append(reasons, p.Reason)
			}
			res := rep.Results[0]
			for _, p := range res.Problems {
				reasons = append(reasons, p.Reason)
			}
			if ok != tt.ok || strings.Join(reasons, ",") != strings.Join(tt.problems, ",") || res.File != tt.file {
				t.Fatalf("ok %v, problems %v, file %q; want %v, %v, %q (%+v)", ok, reasons, res.File, tt.ok, tt.problems, tt.file, rep)
			}
			var got []hostWant
			for _, h := range res.Hosts {
				got = append(got, hostWant{h.URL, h.Username, h.WrittenBy})
			}
			if len(got) != len(tt.hosts) {
				t.Fatalf("hosts %+v, want %+v", got, tt.hosts)
			}
			for i := range got {
				if got[i] != tt.hosts[i] {
					t.Fatalf("hosts %+v, want %+v", got, tt.hosts)
				}
			}
		})
	}
}

// TestRuntimeNeverPrintsHeaders: no header value, password or part of
// either in the table or the JSON, whatever the header's shape.
func TestRuntimeNeverPrintsHeaders(t *testing.T) {
	values := []string{
		basic("robot"),
		"Bearer " + runtimePw,
		"Basic " + base64.StdEncoding.EncodeToString([]byte(runtimePw)), // no colon: no username
		runtimePw,
	}
	for _, v := range values {
		root := t.TempDir()
		put(t, root, "etc/containerd/config.toml", configV2)
		put(t, root, "etc/containerd/certs.d/reg.test/hosts.toml", "[host.\"https://reg.test\".header]\nAuthorization = [\""+v+"\", \""+v+"\"]\n[host.\"https://m.test\".header]\nauthorization = \""+v+"\"\n")
		rep := Run(t.Context(), Options{HostRoot: root, KubeletRootDir: "/var/lib/kubelet", Images: []string{"reg.test/app"}, Runtime: &RuntimeOptions{
			CertsDir: "/etc/containerd/certs.d", ConfigFile: "/etc/containerd/config.toml", StateDir: "/var/lib/nodecreds", Version: "1.6.20", Sandbox: true,
			Challenger: fakeChallenger{"reg.test": "bearer", "m.test": "other"},
		}})
		var out bytes.Buffer
		if err := json.NewEncoder(&out).Encode(rep); err != nil {
			t.Fatal(err)
		}
		if err := rep.WriteTable(&out); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out.String(), "https://m.test") {
			t.Fatalf("the hosts are not in the output:\n%s", out.String())
		}
		for _, secret := range []string{runtimePw, strings.TrimPrefix(strings.TrimPrefix(v, "Basic "), "Bearer ")} {
			if leak := testsupport.Leak(out.String(), secret); leak != "" {
				t.Errorf("check prints %q of a header:\n%s", leak, out.String())
			}
		}
	}
}

// TestChallengeSendsNoCredential: the challenge is asked without any
// Authorization, and read from a fixed set.
func TestChallengeSendsNoCredential(t *testing.T) {
	tests := []struct {
		header string
		status int
		want   string
	}{
		{`Bearer realm="https://auth.test/token",service="r"`, 401, "bearer"},
		{`Basic realm="r"`, 401, "basic"},
		{`Negotiate ` + runtimePw, 401, "other"},
		{"", 200, ""},
	}
	for _, tt := range tests {
		var sawAuth atomic.Bool
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("Authorization") != "" {
				sawAuth.Store(true)
			}
			if tt.header != "" {
				w.Header().Set("WWW-Authenticate", tt.header)
			}
			w.WriteHeader(tt.status)
		}))
		host := strings.TrimPrefix(srv.URL, "http://")
		got, status, errDesc := RegistryProber{Timeout: 5 * time.Second}.Challenge(t.Context(), "http", host)
		srv.Close()
		if got != tt.want || status != tt.status || errDesc != "" || sawAuth.Load() {
			t.Errorf("Challenge (%q) = %q, %d, %q, auth sent %v; want %q, %d", tt.header, got, status, errDesc, sawAuth.Load(), tt.want, tt.status)
		}
	}
}
