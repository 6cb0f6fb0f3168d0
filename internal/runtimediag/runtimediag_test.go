package runtimediag

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nodecreds/nodecreds/internal/containerdconf"
	"github.com/nodecreds/nodecreds/internal/runtimeauth"
	"github.com/nodecreds/nodecreds/internal/testsupport"
)

// registry answers /v2/ as a registry with the given challenge would
// ("" for none: 200), on 127.0.0.1, and fails the test on any request
// carrying credentials.
func registry(t *testing.T, challenge string) runtimeauth.Registry {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "" {
			t.Errorf("the challenge was asked with credentials")
		}
		if challenge == "" {
			return
		}
		w.Header().Set("WWW-Authenticate", challenge)
		w.WriteHeader(http.StatusUnauthorized)
	}))
	t.Cleanup(srv.Close)
	return runtimeauth.Registry{Host: strings.TrimPrefix(srv.URL, "http://"), Scheme: "http", PlainHTTP: true}
}

// goodConfig is a containerd configuration that reads dir's hosts.toml.
func goodConfig(t *testing.T, root, dir string) {
	testsupport.WriteFile(t, filepath.Join(root, "etc/containerd/config.toml"),
		"version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \""+dir+"\"\n", 0o600)
}

func TestProblems(t *testing.T) {
	const certs = "/etc/containerd/certs.d"
	for _, tc := range []struct {
		name      string
		version   string
		config    func(t *testing.T, root string)
		challenge string
		want      []string // the reasons, in order
	}{
		{"all well on 1.6 with a Basic registry", "containerd://1.6.20", func(t *testing.T, root string) { goodConfig(t, root, certs) }, `Basic realm="r"`, nil},
		{"a Bearer registry on 1.6", "containerd://1.6.20", func(t *testing.T, root string) { goodConfig(t, root, certs) }, `Bearer realm="x"`, []string{containerdconf.ReasonBearerNeedsContainerd21}},
		{"a Bearer registry on 2.1", "containerd://v2.1.4", func(t *testing.T, root string) { goodConfig(t, root, certs) }, `Bearer realm="x"`, nil},
		{"a challenge neither Basic nor Bearer", "containerd://2.2.0", func(t *testing.T, root string) { goodConfig(t, root, certs) }, `Negotiate`, []string{containerdconf.ReasonChallengeNotBasic}},
		{"no challenge at all", "containerd://1.6.20", func(t *testing.T, root string) { goodConfig(t, root, certs) }, "", nil},
		{"two folders on 2.2 (containerd #12808)", "containerd://2.2.1", func(t *testing.T, root string) {
			goodConfig(t, root, certs+":/etc/docker/certs.d")
		}, `Basic realm="r"`, []string{containerdconf.ReasonConfigPathMultipleFolders}},
		// containerd then runs with its defaults: no config_path on 1.x.
		{"no configuration file", "containerd://1.6.20", func(*testing.T, string) {}, `Basic realm="r"`, []string{containerdconf.ReasonConfigPathUnset}},
		{"a configuration that does not parse", "containerd://1.6.20", func(t *testing.T, root string) {
			testsupport.WriteFile(t, filepath.Join(root, "etc/containerd/config.toml"), "version = 2\n[plugins\n", 0o600)
		}, `Basic realm="r"`, []string{"ContainerdConfigUnreadable"}},
		{"CRI-O", "cri-o://1.31.0", func(t *testing.T, root string) { goodConfig(t, root, certs) }, `Basic realm="r"`, []string{"RuntimeNotContainerd"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			tc.config(t, root)
			reg := registry(t, tc.challenge)
			d := New(root, "/etc/containerd/config.toml", certs, tc.version)
			go func() { _ = d.Run(t.Context()) }()
			// The first answer does not wait for the registry; the
			// challenge, once learnt, is told by Changed.
			d.Problems([]runtimeauth.Registry{reg})
			if tc.version != "cri-o://1.31.0" {
				select {
				case <-d.Changed():
				case <-time.After(10 * time.Second):
					t.Fatal("the challenge was never learnt")
				}
			}
			var got []string
			for _, p := range d.Problems([]runtimeauth.Registry{reg}) {
				got = append(got, p.Reason)
				if p.Message == "" || p.Fix == "" {
					t.Errorf("%s without its message or fix: %+v", p.Reason, p)
				}
			}
			if strings.Join(got, ",") != strings.Join(tc.want, ",") {
				t.Errorf("problems %v, want %v", got, tc.want)
			}
		})
	}
}

// TestUnreachableRegistryIsNotAProblem: a registry that cannot be reached
// says nothing about the header; it is asked again later, not at every sync.
func TestUnreachableRegistryIsNotAProblem(t *testing.T) {
	root := t.TempDir()
	goodConfig(t, root, "/etc/containerd/certs.d")
	srv := httptest.NewServer(http.NotFoundHandler())
	host := strings.TrimPrefix(srv.URL, "http://")
	srv.Close() // nothing listens there now
	reg := runtimeauth.Registry{Host: host, Scheme: "http", PlainHTTP: true}
	d := New(root, "/etc/containerd/config.toml", "/etc/containerd/certs.d", "containerd://1.6.20")
	d.Problems([]runtimeauth.Registry{reg})
	key := <-d.queue
	if _, err := d.ask(t.Context(), key); err == nil {
		t.Fatal("a closed port answered")
	}
	d.challenges[key] = challenge{failed: time.Now()}
	if ps := d.Problems([]runtimeauth.Registry{reg}); len(ps) != 0 {
		t.Errorf("problems for an unreachable registry: %+v", ps)
	}
	select {
	case k := <-d.queue:
		t.Errorf("%s asked again at once", k)
	default:
	}
}

// TestProblemsShowNoConfigValue: nothing of containerd's files reaches a
// problem (the log, the Node condition, the Events) but a plain path: a
// config_path or an import holding anything else — a password pasted in,
// a line break — is not shown, wherever the problem names it.
func TestProblemsShowNoConfigValue(t *testing.T) {
	const canary = "Zq9Wv7pLmX Kj3=" // a space and '=': no plain path
	const certs = "/etc/containerd/certs.d"
	v2 := func(registry string) string {
		return "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n" + registry
	}
	for _, tc := range []struct {
		name, version, config string
		extra                 map[string]string // more files, by node path
	}{
		{"config_path elsewhere", "containerd://1.6.20", v2(`config_path = "/srv/` + canary + `"`), nil},
		{"config_path of two folders", "containerd://2.2.1", v2(`config_path = "` + certs + `:/srv/` + canary + `"`), nil},
		{"config_path of two folders, version unknown", "", v2(`config_path = "` + certs + `:/srv/` + canary + `"`), nil},
		{"config_path with a line break", "containerd://1.6.20", v2(`config_path = "/srv/x\nFix: ` + canary + `"`), nil},
		{"a missing import", "containerd://1.6.20", "version = 2\nimports = [\"/etc/containerd/" + canary + ".toml\"]\n", nil},
		{"an import glob that is no pattern", "containerd://1.6.20", "version = 2\nimports = [\"/etc/containerd/[" + canary + "*\"]\n", nil},
		{"an import that does not parse", "containerd://1.6.20", "version = 2\nimports = [\"" + canary + ".toml\"]\n",
			map[string]string{"/etc/containerd/" + canary + ".toml": "version = [\n"}},
		{"an import that imports a missing one", "containerd://1.6.20", "version = 2\nimports = [\"" + canary + ".toml\"]\n",
			map[string]string{"/etc/containerd/" + canary + ".toml": "imports = [\"nothing.toml\"]\n"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			testsupport.WriteFile(t, filepath.Join(root, "etc/containerd/config.toml"), tc.config, 0o600)
			for p, content := range tc.extra {
				testsupport.WriteFile(t, filepath.Join(root, p), content, 0o600)
			}
			d := New(root, "/etc/containerd/config.toml", certs, tc.version)
			ps := d.Problems([]runtimeauth.Registry{{Host: "r.test"}})
			if len(ps) == 0 {
				t.Fatal("no problem told")
			}
			for _, p := range ps {
				text := p.Reason + " " + p.Message + " " + p.Fix
				if leak := testsupport.Leak(text, canary); leak != "" {
					t.Errorf("%q of the configuration in %s", leak, text)
				}
				if strings.Contains(text, "\n") {
					t.Errorf("a line break in %q", text)
				}
			}
		})
	}
}

// TestChallengesForgetRegistriesGone: what is kept of the challenges is
// bounded by the registries of the Secrets now, however many came and
// went (an annotated Secret's keys edited again and again).
func TestChallengesForgetRegistriesGone(t *testing.T) {
	root := t.TempDir()
	goodConfig(t, root, "/etc/containerd/certs.d")
	d := New(root, "/etc/containerd/config.toml", "/etc/containerd/certs.d", "containerd://1.6.20")
	answer := func() { // what Run does, without the network
		for {
			select {
			case key := <-d.queue:
				d.learnt(key, "basic", nil)
			default:
				return
			}
		}
	}
	const perRound = 32
	for round := range 100 {
		regs := make([]runtimeauth.Registry, perRound)
		for i := range regs {
			regs[i] = runtimeauth.Registry{Host: fmt.Sprintf("r%d-%d.test", round, i)}
		}
		d.Problems(regs)
		answer()
		d.Problems(regs)
	}
	d.mu.Lock()
	n := len(d.challenges)
	d.mu.Unlock()
	if n > perRound {
		t.Errorf("%d challenges kept for %d registries", n, perRound)
	}
}

// TestRegistryURL: the challenge is asked the way containerd talks to the
// registry, so a loopback registry keyed without a scheme (plain HTTP in
// containerd) is asked over HTTP, not failed over HTTPS every 10 minutes.
func TestRegistryURL(t *testing.T) {
	for _, tc := range []struct {
		r    runtimeauth.Registry
		want string
	}{
		{runtimeauth.Registry{Host: "r.test"}, "https://r.test"},
		{runtimeauth.Registry{Host: "r.test:5000", Scheme: "https"}, "https://r.test:5000"},
		{runtimeauth.Registry{Host: "r.test", Scheme: "http", PlainHTTP: true}, "http://r.test"},
		{runtimeauth.Registry{Host: "127.0.0.1:5000", PlainHTTP: true}, "http://127.0.0.1:5000"},
	} {
		if got := registryURL(tc.r); got != tc.want {
			t.Errorf("registryURL(%+v) = %s, want %s", tc.r, got, tc.want)
		}
	}
}

// TestNoHeaderNoProblem: with no header written (no Secret annotated yet)
// there is nothing containerd could fail to use, whatever its state.
func TestNoHeaderNoProblem(t *testing.T) {
	root := t.TempDir()
	testsupport.WriteFile(t, filepath.Join(root, "etc/containerd/config.toml"), "not toml [", 0o600)
	d := New(root, "/etc/containerd/config.toml", "/etc/containerd/certs.d", "")
	if ps := d.Problems(nil); len(ps) != 0 {
		t.Errorf("problems with no registry: %+v", ps)
	}
}
