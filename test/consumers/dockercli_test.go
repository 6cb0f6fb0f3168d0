package consumers

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	dockerconfig "github.com/docker/cli/cli/config"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"

	"github.com/nodecreds/nodecreds/internal/testsupport"
)

// TestDockerCLIReadsWhatNodecredsWrites loads root's docker config, as
// nodecreds leaves it, with the docker CLI's own config package and with
// go-containerregistry's keychain (which reads it the docker-CLI way), and
// checks that each returns the user and password the Secret holds — next to
// the foreign settings the file had.
func TestDockerCLIReadsWhatNodecredsWrites(t *testing.T) {
	root := t.TempDir()
	secretDir := filepath.Join(t.TempDir(), "secret")
	if err := os.MkdirAll(secretDir, 0o700); err != nil {
		t.Fatal(err)
	}
	creds := map[string]string{
		"reg.example.test": "alice:pw-with:colons",
		"127.0.0.1:5000":   "bob:b",
		// A Secret names Docker Hub as docker.io; the docker CLI looks it
		// up only as https://index.docker.io/v1/.
		"docker.io": "hubuser:hub-pw",
	}
	auths := map[string]any{}
	for reg, up := range creds {
		auths[reg] = map[string]string{"auth": testsupport.B64(up)}
	}
	secret, err := json.Marshal(map[string]any{"auths": auths})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(secretDir, ".dockerconfigjson"), secret, 0o600); err != nil {
		t.Fatal(err)
	}
	dockerDir := filepath.Join(root, "root/.docker")
	if err := os.MkdirAll(dockerDir, 0o700); err != nil {
		t.Fatal(err)
	}
	existing := `{"auths":{"keep.example.test":{"auth":"` + testsupport.B64("k:kk") + `"}},"HttpHeaders":{"X-Test":"1"},"psFormat":"table {{.ID}}","proxies":{"default":{"noProxy":"127.0.0.1"}}}`
	if err := os.WriteFile(filepath.Join(dockerDir, "config.json"), []byte(existing), 0o600); err != nil {
		t.Fatal(err)
	}
	sync := exec.Command(binary, "sync", "--once", "--source", "dir", "--secret-dir", secretDir, "--host-root", root, "--metrics-addr", "0")
	if out, err := sync.CombinedOutput(); err != nil {
		t.Fatalf("nodecreds sync: %v\n%s", err, out)
	}

	cf, err := dockerconfig.Load(dockerDir)
	if err != nil {
		t.Fatalf("the docker CLI cannot load the file: %v", err)
	}
	for _, tc := range []struct{ lookup, user, pass string }{
		{"reg.example.test", "alice", "pw-with:colons"},
		{"127.0.0.1:5000", "bob", "b"},
		{"https://index.docker.io/v1/", "hubuser", "hub-pw"},
		{"keep.example.test", "k", "kk"},
	} {
		ac, err := cf.GetAuthConfig(tc.lookup)
		if err != nil {
			t.Fatalf("GetAuthConfig(%s): %v", tc.lookup, err)
		}
		if ac.Username != tc.user || ac.Password != tc.pass {
			t.Errorf("docker CLI: %s → user %q (password matches: %v), want %q", tc.lookup, ac.Username, ac.Password == tc.pass, tc.user)
		}
	}
	if cf.HTTPHeaders["X-Test"] != "1" || cf.PsFormat != "table {{.ID}}" || cf.Proxies["default"].NoProxy != "127.0.0.1" {
		t.Errorf("docker CLI settings lost: headers %v psFormat %q proxies %v", cf.HTTPHeaders, cf.PsFormat, cf.Proxies)
	}

	// go-containerregistry's default keychain, pointed at the same folder.
	t.Setenv("DOCKER_CONFIG", dockerDir)
	for _, tc := range []struct{ image, user, pass string }{
		{"reg.example.test/team/app:v1", "alice", "pw-with:colons"},
		{"127.0.0.1:5000/app:v1", "bob", "b"},
		{"busybox", "hubuser", "hub-pw"},
	} {
		ref, err := name.ParseReference(tc.image)
		if err != nil {
			t.Fatal(err)
		}
		auth, err := authn.DefaultKeychain.Resolve(ref.Context())
		if err != nil {
			t.Fatalf("keychain for %s: %v", tc.image, err)
		}
		cfg, err := auth.Authorization()
		if err != nil {
			t.Fatal(err)
		}
		if cfg.Username != tc.user || cfg.Password != tc.pass {
			t.Errorf("go-containerregistry: %s → user %q (password matches: %v), want %q", tc.image, cfg.Username, cfg.Password == tc.pass, tc.user)
		}
	}
}
