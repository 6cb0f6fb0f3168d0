package consumers

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"k8s.io/kubernetes/pkg/credentialprovider"

	"github.com/nodecreds/nodecreds/internal/testsupport"
)

// need fails the test, naming the package to install, when a real
// component is missing: these tests are never skipped as passing.
func need(t *testing.T, bin, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(bin)
	if err != nil {
		t.Fatalf("%s not found: install Debian's %s (make deps does)", bin, pkg)
	}
	return p
}

// registryProc is Debian's docker-registry (distribution) on 127.0.0.1
// with htpasswd auth.
type registryProc struct {
	t        *testing.T
	bin      string
	htpasswd string
	dir      string
	addr     string
	cmd      *exec.Cmd
	logs     *testsupport.Buffer
}

// realRegistry starts a registry with one user and returns host:port.
func realRegistry(t *testing.T, user, pass string) string {
	return startRegistry(t, user, pass).addr
}

func startRegistry(t *testing.T, user, pass string) *registryProc {
	t.Helper()
	r := &registryProc{t: t, bin: need(t, "docker-registry", "docker-registry"), htpasswd: need(t, "htpasswd", "apache2-utils"), dir: t.TempDir()}
	r.addr = testsupport.FreeAddr(t)
	cfg := fmt.Sprintf(`version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: %s
http:
  addr: %s
  secret: test-only-http-secret
auth:
  htpasswd:
    realm: nodecreds-test
    path: %s
`, filepath.Join(r.dir, "data"), r.addr, filepath.Join(r.dir, "htpasswd"))
	if err := os.WriteFile(filepath.Join(r.dir, "config.yml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.stop)
	r.start(user, pass)
	return r
}

// start (re)writes the htpasswd file for user and starts the registry;
// distribution reads that file at start-up, so a password change is a
// restart on the same address and storage.
func (r *registryProc) start(user, pass string) {
	r.htpasswdArgs("-Bbc", user, pass)
	r.run()
}

// setPassword adds user, or changes its password, keeping the other users
// (htpasswd without -c, as an admin adds a second user), and restarts the
// registry.
func (r *registryProc) setPassword(user, pass string) {
	r.stop()
	r.htpasswdArgs("-Bb", user, pass)
	r.run()
}

func (r *registryProc) htpasswdArgs(args ...string) {
	r.t.Helper()
	args = slices.Insert(args, 1, filepath.Join(r.dir, "htpasswd"))
	if out, err := exec.Command(r.htpasswd, args...).CombinedOutput(); err != nil {
		r.t.Fatalf("htpasswd: %v\n%s", err, out)
	}
}

// run starts the registry on its address and waits until it answers.
func (r *registryProc) run() {
	t := r.t
	t.Helper()
	r.logs = &testsupport.Buffer{}
	r.cmd = exec.Command(r.bin, "serve", filepath.Join(r.dir, "config.yml"))
	r.cmd.Stdout, r.cmd.Stderr = r.logs, r.logs
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get("http://" + r.addr + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusUnauthorized {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("docker-registry did not come up on %s:\n%s", r.addr, r.logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (r *registryProc) stop() {
	if r.cmd != nil && r.cmd.Process != nil {
		_ = r.cmd.Process.Kill()
		_ = r.cmd.Wait()
	}
}

// setLogLevel restarts the registry logging at level (error by default):
// info logs each request with the user it authenticated.
func (r *registryProc) setLogLevel(level string) {
	r.t.Helper()
	cfgPath := filepath.Join(r.dir, "config.yml")
	cfg := string(testsupport.ReadFile(r.t, cfgPath))
	changed := regexp.MustCompile(`(?m)^  level: \w+$`).ReplaceAllString(cfg, "  level: "+level)
	if changed == cfg && !strings.Contains(cfg, "  level: "+level+"\n") {
		r.t.Fatal("registryProc's config has no log level line to change")
	}
	testsupport.WriteFile(r.t, cfgPath, changed, 0o600)
	r.stop()
	r.run()
}

// rotate makes pass the only password, of user alone.
func (r *registryProc) rotate(user, pass string) {
	r.stop()
	r.start(user, pass)
}

// pushImage builds a tiny OCI image layout and pushes it with skopeo.
func pushImage(t *testing.T, skopeo, ref, user, pass string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "oci")
	img, err := random.Image(512, 1)
	if err != nil {
		t.Fatal(err)
	}
	// skopeo's oci: transport wants OCI media types throughout.
	img = mutate.ConfigMediaType(mutate.MediaType(img, types.OCIManifestSchema1), types.OCIConfigJSON)
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": "v1"})); err != nil {
		t.Fatal(err)
	}
	authfile := filepath.Join(t.TempDir(), "push-auth.json")
	host := strings.SplitN(ref, "/", 2)[0]
	testsupport.WriteFile(t, authfile, `{"auths":{"`+host+`":{"auth":"`+testsupport.B64(user+":"+pass)+`"}}}`, 0o600)
	out, err := exec.Command(skopeo, "copy", "--insecure-policy", "--dest-tls-verify=false", "--dest-authfile", authfile,
		"oci:"+dir+":v1", "docker://"+ref).CombinedOutput()
	if err != nil {
		t.Fatalf("skopeo copy: %v\n%s", err, out)
	}
}

func skopeoInspect(skopeo, ref string, args ...string) ([]byte, error) {
	return exec.Command(skopeo, append(append([]string{"inspect", "--tls-verify=false"}, args...), "docker://"+ref)...).CombinedOutput()
}

type checkReport struct {
	OK       bool     `json:"ok"`
	File     string   `json:"file"`
	Warnings []string `json:"warnings"`
	Results  []struct {
		Found    bool   `json:"found"`
		Entry    string `json:"entry"`
		Username string `json:"username"`
		Probe    *struct {
			OK     bool   `json:"ok"`
			Status int    `json:"status"`
			Error  string `json:"error"`
		} `json:"probe"`
	} `json:"results"`
}

func checkProbe(t *testing.T, root, image string) (checkReport, string, int) {
	t.Helper()
	return checkProbeRef(t, root, "--image", image)
}

// checkProbeRef runs check --probe for one --image or --registry.
func checkProbeRef(t *testing.T, root, flag, ref string) (checkReport, string, int) {
	t.Helper()
	cmd := exec.Command(binary, "check", "--host-root", root, flag, ref, "--probe", "--timeout", "10s", "-o", "json")
	out, err := cmd.Output()
	code := 0
	if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	var rep checkReport
	if err := json.Unmarshal(out, &rep); err != nil || len(rep.Results) != 1 {
		t.Fatalf("check -o json printed %q: %v", out, err)
	}
	return rep, string(out), code
}

func syncFrom(t *testing.T, root string, creds map[string]string) {
	t.Helper()
	auths := map[string]any{}
	for reg, up := range creds {
		auths[reg] = map[string]string{"auth": testsupport.B64(up)}
	}
	doc, _ := json.Marshal(map[string]any{"auths": auths})
	secretDir := filepath.Join(t.TempDir(), "secret")
	testsupport.WriteFile(t, filepath.Join(secretDir, ".dockerconfigjson"), string(doc), 0o600)
	if out, err := exec.Command(binary, "sync", "--once", "--source", "dir", "--secret-dir", secretDir, "--host-root", root, "--metrics-addr", "0").CombinedOutput(); err != nil {
		t.Fatalf("nodecreds sync: %v\n%s", err, out)
	}
}

// TestRealRegistry: a private image on a real registry is refused
// anonymously; after nodecreds writes the node files, skopeo pulls its
// manifest with either file, the kubelet's own lookup returns the Secret's
// credentials, and `nodecreds check --probe` logs in. A wrong password is
// reported as the registry's refusal, without the password.
func TestRealRegistry(t *testing.T) {
	skopeo := need(t, "skopeo", "skopeo")
	const user, pass = "robot", "registry-canary-pw"
	host := realRegistry(t, user, pass)
	image := host + "/team/app:v1"
	pushImage(t, skopeo, image, user, pass)

	if out, err := skopeoInspect(skopeo, image, "--no-creds"); err == nil {
		t.Fatalf("anonymous access was allowed, so this test would prove nothing:\n%s", out)
	}

	root := t.TempDir()
	syncFrom(t, root, map[string]string{host: user + ":" + pass})
	for _, f := range []string{"var/lib/kubelet/config.json", "root/.docker/config.json"} {
		if out, err := skopeoInspect(skopeo, image, "--authfile", filepath.Join(root, f)); err != nil {
			t.Errorf("skopeo inspect --authfile %s: %v\n%s", f, err, out)
		}
	}

	cfg, err := credentialprovider.ReadDockerConfigJSONFile([]string{filepath.Join(root, "var/lib/kubelet")})
	if err != nil {
		t.Fatal(err)
	}
	ring := &credentialprovider.BasicDockerKeyring{}
	ring.Add(nil, cfg)
	creds, ok := ring.Lookup(host + "/team/app")
	if !ok || creds[0].Username != user || creds[0].Password != pass {
		t.Errorf("the kubelet's lookup does not return the Secret's credentials (found %v)", ok)
	}

	rep, out, code := checkProbe(t, root, image)
	if code != 0 || !rep.OK || rep.Results[0].Probe == nil || !rep.Results[0].Probe.OK || rep.Results[0].Probe.Status != 200 {
		t.Errorf("check --probe: exit %d\n%s", code, out)
	}

	// The registry alone, host:port on loopback: the probe logs in there
	// (it used to fail with "not a repository").
	rep, out, code = checkProbeRef(t, root, "--registry", host)
	if code != 0 || !rep.OK || rep.Results[0].Probe == nil || !rep.Results[0].Probe.OK || rep.Results[0].Probe.Status != 200 {
		t.Errorf("check --registry %s --probe: exit %d\n%s", host, code, out)
	}

	// A wrong password: the registry's refusal, exit 1, no secret shown.
	bad := t.TempDir()
	syncFrom(t, bad, map[string]string{host: user + ":wrong-canary-pw"})
	rep, out, code = checkProbe(t, bad, image)
	if code != 1 || rep.OK || rep.Results[0].Probe == nil || rep.Results[0].Probe.Status != 401 || !strings.Contains(rep.Results[0].Probe.Error, "UNAUTHORIZED") {
		t.Errorf("check --probe with a wrong password: exit %d\n%s", code, out)
	}
	if !strings.Contains(strings.Join(rep.Warnings, " "), "anonymous pulls") {
		t.Errorf("no warning that a wrong entry breaks anonymous pulls: %v", rep.Warnings)
	}
	if rep, out, code := checkProbeRef(t, bad, "--registry", host); code != 1 || rep.Results[0].Probe == nil || rep.Results[0].Probe.Status != 401 {
		t.Errorf("check --registry --probe with a wrong password: exit %d\n%s", code, out)
	}
	for _, s := range []string{pass, "wrong-canary-pw", testsupport.B64(user + ":wrong-canary-pw")} {
		if strings.Contains(out, s) {
			t.Errorf("check output contains a secret")
		}
	}
	if out, err := skopeoInspect(skopeo, image, "--authfile", filepath.Join(bad, "var/lib/kubelet/config.json")); err == nil {
		t.Errorf("skopeo accepted the wrong password, so the probe test proves nothing:\n%s", out)
	}

	// A registry that does not answer.
	down := t.TempDir()
	deadHost := testsupport.FreeAddr(t)
	syncFrom(t, down, map[string]string{deadHost: "u:p"})
	if rep, out, code := checkProbe(t, down, deadHost+"/app:v1"); code != 1 || rep.Results[0].Probe.OK || rep.Results[0].Probe.Error == "" {
		t.Errorf("check --probe against a closed port: exit %d\n%s", code, out)
	}
}

// TestProbeBearerFlow runs check --probe against a registry that uses the
// bearer-token flow (a token service on 127.0.0.1 that checks basic auth,
// in front of go-containerregistry's in-memory registry).
func TestProbeBearerFlow(t *testing.T) {
	const user, pass = "tok-user", "bearer-canary-pw"
	const token = "test-token-123"
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	var srv *httptest.Server
	mux := http.NewServeMux()
	mux.HandleFunc("/token", func(w http.ResponseWriter, r *http.Request) {
		u, p, ok := r.BasicAuth()
		if !ok || u != user || p != pass {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = w.Write([]byte(`{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}`))
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"token": token, "expires_in": 300})
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+token {
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="%s/token",service="test"`, srv.URL))
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = w.Write([]byte(`{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`))
			return
		}
		reg.ServeHTTP(w, r)
	})
	srv = httptest.NewServer(mux) // binds 127.0.0.1
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")

	root := t.TempDir()
	syncFrom(t, root, map[string]string{host: user + ":" + pass})
	if rep, out, code := checkProbe(t, root, host+"/team/app:v1"); code != 0 || !rep.Results[0].Probe.OK {
		t.Errorf("bearer login with the right password: exit %d\n%s", code, out)
	}
	bad := t.TempDir()
	syncFrom(t, bad, map[string]string{host: user + ":nope"})
	rep, out, code := checkProbe(t, bad, host+"/team/app:v1")
	if code != 1 || rep.Results[0].Probe.OK || rep.Results[0].Probe.Status != 401 {
		t.Errorf("bearer login with a wrong password: exit %d\n%s", code, out)
	}
	if strings.Contains(out, pass) {
		t.Errorf("output contains the password")
	}
}
