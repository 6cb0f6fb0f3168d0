package check

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nodecreds/nodecreds/internal/hostfs"
	"github.com/nodecreds/nodecreds/internal/kubeletcred"
	"github.com/nodecreds/nodecreds/internal/testsupport"
)

func put(t *testing.T, root, path, content string) {
	t.Helper()
	p := filepath.Join(root, path)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestRunFileOrderAndWarnings(t *testing.T) {
	const img = "reg.test/app"
	good := `{"auths":{"reg.test":{"auth":"` + testsupport.B64("user:secret-pw") + `"}}}`
	tests := []struct {
		name     string
		files    map[string]string
		wantOK   bool
		wantFile string
		warn     string
	}{
		{name: "kubelet file", files: map[string]string{"var/lib/kubelet/config.json": good}, wantOK: true, wantFile: "/var/lib/kubelet/config.json"},
		{name: "docker file when the kubelet has none", files: map[string]string{"root/.docker/config.json": good}, wantOK: true, wantFile: "/root/.docker/config.json"},
		{
			name:     "broken kubelet file is skipped",
			files:    map[string]string{"var/lib/kubelet/config.json": `{"auths":`, "root/.docker/config.json": good},
			wantOK:   true,
			wantFile: "/root/.docker/config.json",
			warn:     "skips it silently",
		},
		{
			name:     "one undecodable auth breaks the whole kubelet file",
			files:    map[string]string{"var/lib/kubelet/config.json": `{"auths":{"x.test":{"auth":"%%%"},"reg.test":{"auth":"` + testsupport.B64("user:pw") + `"}}}`},
			wantOK:   false,
			wantFile: "",
			warn:     "cannot read it",
		},
		{
			name:     "empty kubelet file hides the next one",
			files:    map[string]string{"var/lib/kubelet/config.json": `{}`, "root/.docker/config.json": good},
			wantOK:   false,
			wantFile: "/var/lib/kubelet/config.json",
			warn:     "stops there",
		},
		{
			name:     "credentials only where the kubelet does not look",
			files:    map[string]string{"var/lib/kubelet/config.json": `{"auths":{"other.test":{"auth":"` + testsupport.B64("o:p") + `"}}}`, "root/.docker/config.json": good},
			wantOK:   false,
			wantFile: "/var/lib/kubelet/config.json",
			warn:     "the kubelet reads only /var/lib/kubelet/config.json",
		},
		{name: "legacy .dockercfg when no config.json", files: map[string]string{"root/.dockercfg": `{"reg.test":{"auth":"` + testsupport.B64("user:pw") + `"}}`}, wantOK: true, wantFile: "/root/.dockercfg"},
		{name: "nothing at all", wantOK: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			for p, c := range tt.files {
				put(t, root, p, c)
			}
			rep := Run(t.Context(), Options{HostRoot: root, KubeletRootDir: "/var/lib/kubelet", Images: []string{img}})
			if rep.OK != tt.wantOK || rep.File != tt.wantFile {
				t.Errorf("ok=%v file=%q, want ok=%v file=%q", rep.OK, rep.File, tt.wantOK, tt.wantFile)
			}
			if tt.wantOK && (rep.Results[0].Username != "user" || rep.Results[0].Entry != "reg.test") {
				t.Errorf("result = %+v", rep.Results[0])
			}
			if tt.warn != "" && !strings.Contains(strings.Join(rep.Warnings, "\n"), tt.warn) {
				t.Errorf("warnings %q lack %q", rep.Warnings, tt.warn)
			}
			var out bytes.Buffer
			_ = json.NewEncoder(&out).Encode(rep)
			_ = rep.WriteTable(&out)
			for _, s := range []string{"secret-pw", testsupport.B64("user:secret-pw")} {
				if strings.Contains(out.String(), s) {
					t.Errorf("output leaks a secret")
				}
			}
		})
	}
}

func TestRunBadReference(t *testing.T) {
	rep := Run(t.Context(), Options{HostRoot: t.TempDir(), KubeletRootDir: "/var/lib/kubelet", Images: []string{"UPPER/Case:bad"}})
	if rep.OK || rep.Results[0].Error == "" {
		t.Errorf("a bad reference was accepted: %+v", rep)
	}
}

// A FIFO or an oversized file in the kubelet's search order is reported at
// once, not waited on or read whole, and makes the check fail.
func TestRunRefusesSpecialAndHugeFiles(t *testing.T) {
	good := `{"auths":{"reg.test":{"auth":"` + testsupport.B64("user:pw") + `"}}}`
	tests := []struct {
		name string
		make func(t *testing.T, p string)
		warn string
	}{
		{"fifo", func(t *testing.T, p string) {
			if err := unix.Mkfifo(p, 0o600); err != nil {
				t.Fatal(err)
			}
		}, "FIFO"},
		{"over the size limit", func(t *testing.T, p string) {
			if err := os.WriteFile(p, bytes.Repeat([]byte(" "), hostfs.MaxFileSize+1), 0o600); err != nil {
				t.Fatal(err)
			}
		}, "too large"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			put(t, root, "root/.docker/config.json", good)
			p := filepath.Join(root, "var/lib/kubelet/config.json")
			if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
				t.Fatal(err)
			}
			tt.make(t, p)
			done := make(chan Report, 1)
			go func() {
				done <- Run(t.Context(), Options{HostRoot: root, KubeletRootDir: "/var/lib/kubelet", Images: []string{"reg.test/app"}})
			}()
			var rep Report
			select {
			case rep = <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("check blocked")
			}
			if rep.OK {
				t.Error("check passed with an unreadable kubelet file")
			}
			if w := strings.Join(rep.Warnings, "\n"); !strings.Contains(w, tt.warn) || !strings.Contains(w, "/var/lib/kubelet/config.json") {
				t.Errorf("warnings %q do not name the file and say %q", w, tt.warn)
			}
			if _, err := kubeletcred.ProviderAnswer(root, "/var/lib/kubelet/config.json", "reg.test/app"); err == nil || !strings.Contains(err.Error(), tt.warn) {
				t.Errorf("ProviderAnswer: want an error saying %q, got %v", tt.warn, err)
			}
		})
	}
}

// TestRunNamesEveryCredential: check lists every key the kubelet tries, and
// says where it files two under one index key (no defined order; the
// plugin answers with the first).
func TestRunNamesEveryCredential(t *testing.T) {
	root := t.TempDir()
	put(t, root, "var/lib/kubelet/config.json", `{"auths":{"r.test":{"auth":"`+testsupport.B64("b:1")+`"},"https://r.test/":{"auth":"`+testsupport.B64("a:2")+`"},"r.test/team":{"auth":"`+testsupport.B64("t:3")+`"}}}`)
	rep := Run(t.Context(), Options{HostRoot: root, KubeletRootDir: "/var/lib/kubelet", Images: []string{"r.test/team/app:v1"}})
	r := rep.Results[0]
	if !rep.OK || r.Entry != "r.test/team" || strings.Join(r.Entries, " ") != "r.test/team https://r.test/ r.test" {
		t.Errorf("result %+v", r)
	}
	if w := strings.Join(rep.Warnings, "\n"); !strings.Contains(w, `"https://r.test/" and "r.test" under one key (r.test)`) || !strings.Contains(w, `plugin answers with "https://r.test/" only`) {
		t.Errorf("warnings %q do not say that two keys share one index key", rep.Warnings)
	}
	var out bytes.Buffer
	_ = rep.WriteTable(&out)
	if !strings.Contains(out.String(), "r.test/team,https://r.test/,r.test") {
		t.Errorf("table does not list every entry:\n%s", out.String())
	}
}

// recordingProber records where it was asked to log in, and lets every
// login in.
type recordingProber struct {
	mu    sync.Mutex
	asked []string
}

func (p *recordingProber) Probe(_ context.Context, registry, _ string, _ kubeletcred.Cred) ProbeResult {
	p.mu.Lock()
	p.asked = append(p.asked, registry)
	p.mu.Unlock()
	return ProbeResult{OK: true, Status: 200}
}

// TestDockerHubCredentialProbedAtDockerHubOnly: the kubelet hands Docker
// Hub's credential to every image whose first part has no dot or colon,
// localhost/... included. check probes it at Docker Hub only: for
// localhost it warns that the runtime sends Docker Hub's password there
// and sends nothing itself; a --registry name without a dot or colon
// (other than localhost) is no registry host to the kubelet and is
// refused; and a --registry host gets Docker Hub's credential only where
// the kubelet would give it to that host's images (never for
// reg.example.com).
func TestDockerHubCredentialProbedAtDockerHubOnly(t *testing.T) {
	hub := `{"auths":{"https://index.docker.io/v1/":{"auth":"` + testsupport.B64("hubuser:HubCanary123") + `"}}}`
	tests := []struct {
		name       string
		images     []string
		registries []string
		wantFound  bool
		wantProbe  string // where the prober is asked; "" for nowhere
		wantErr    string // in the result's error
		wantWarn   string
	}{
		{name: "a single-label registry", registries: []string{"myregistry"}, wantErr: "is not a registry host: the kubelet pulls myregistry/... from Docker Hub"},
		{name: "a single-label registry as a URL", registries: []string{"https://myregistry/"}, wantErr: "is not a registry host"},
		{name: "localhost as a registry", registries: []string{"localhost"}, wantFound: true, wantWarn: "sends Docker Hub's password to localhost"},
		{name: "an image on localhost", images: []string{"localhost/app:v1"}, wantFound: true, wantWarn: "sends Docker Hub's password to localhost"},
		{name: "a registry with a domain", registries: []string{"reg.example.com"}},
		{name: "a registry with a port", registries: []string{"myregistry:5000"}},
		{name: "an image on localhost with a port", images: []string{"localhost:5000/app"}},
		{name: "an image whose first part has no dot", images: []string{"myregistry/app"}, wantFound: true, wantProbe: "docker.io"},
		{name: "a short image name", images: []string{"busybox"}, wantFound: true, wantProbe: "docker.io"},
		{name: "docker.io as a registry", registries: []string{"docker.io"}, wantFound: true, wantProbe: "docker.io"},
		{name: "index.docker.io as a registry", registries: []string{"index.docker.io"}, wantFound: true, wantProbe: "index.docker.io"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			put(t, root, "var/lib/kubelet/config.json", hub)
			prober := &recordingProber{}
			rep := Run(t.Context(), Options{HostRoot: root, KubeletRootDir: "/var/lib/kubelet", Images: tt.images, Registries: tt.registries, Prober: prober})
			r := rep.Results[0]
			if r.Found != tt.wantFound || !strings.Contains(r.Error, tt.wantErr) {
				t.Errorf("result %+v; want found=%v and an error saying %q", r, tt.wantFound, tt.wantErr)
			}
			want := []string{}
			if tt.wantProbe != "" {
				want = []string{tt.wantProbe}
			}
			if got := append([]string{}, prober.asked...); !slices.Equal(got, want) {
				t.Errorf("probed %v, want %v", got, want)
			}
			warnings := strings.Join(rep.Warnings, "\n")
			if tt.wantWarn != "" {
				if !strings.Contains(warnings, tt.wantWarn) || r.Probe == nil || !r.Probe.NotSent || rep.OK {
					t.Errorf("warnings %q, probe %+v, ok=%v: want a warning saying %q, the probe not sent, and not ok", warnings, r.Probe, rep.OK, tt.wantWarn)
				}
				var out bytes.Buffer
				_ = rep.WriteTable(&out)
				if !strings.Contains(out.String(), "not sent") {
					t.Errorf("the table does not say the probe was not sent:\n%s", out.String())
				}
			}
			var out bytes.Buffer
			_ = json.NewEncoder(&out).Encode(rep)
			_ = rep.WriteTable(&out)
			if leak := testsupport.Leak(out.String(), "HubCanary123"); leak != "" {
				t.Errorf("output holds %q", leak)
			}
		})
	}
}
