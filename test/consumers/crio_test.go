package consumers

import (
	"encoding/json"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"go.podman.io/image/v5/docker"
	"go.podman.io/image/v5/docker/reference"
	"go.podman.io/image/v5/pkg/docker/config"
	"go.podman.io/image/v5/types"

	"github.com/nodecreds/nodecreds/internal/testsupport"
)

// basicRegistry is an in-memory registry on 127.0.0.1 that wants one
// user's Basic credentials and remembers which user each authenticated
// request came as (never the password: only whether it matched).
type basicRegistry struct {
	host  string
	inner http.Handler

	mu         sync.Mutex
	user, pass string
	seen       []string
}

func newBasicRegistry(t *testing.T, user, pass string) *basicRegistry {
	t.Helper()
	r := &basicRegistry{inner: registry.New(registry.Logger(log.New(io.Discard, "", 0))), user: user, pass: pass}
	srv := httptest.NewServer(r)
	t.Cleanup(srv.Close)
	r.host = strings.TrimPrefix(srv.URL, "http://")
	return r
}

func (r *basicRegistry) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	u, p, ok := req.BasicAuth()
	r.mu.Lock()
	good := ok && u == r.user && p == r.pass
	if ok {
		entry := u
		if u == r.user && !good {
			entry += " (wrong password)"
		}
		r.seen = append(r.seen, entry)
	}
	r.mu.Unlock()
	if !good {
		w.Header().Set("WWW-Authenticate", `Basic realm="nodecreds-test"`)
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	r.inner.ServeHTTP(w, req)
}

func (r *basicRegistry) setPassword(pass string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pass = pass
}

// users returns the distinct users seen since the last call, and forgets them.
func (r *basicRegistry) users() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := slices.Compact(slices.Sorted(slices.Values(r.seen)))
	r.seen = nil
	return s
}

func (r *basicRegistry) push(t *testing.T, repoTag string) {
	t.Helper()
	img, err := random.Image(256, 1)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(r.host+"/"+repoTag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	auth := &authn.Basic{Username: r.user, Password: r.pass}
	r.mu.Unlock()
	if err := remote.Write(ref, img, remote.WithAuth(auth)); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	r.users()
}

// TestCRIOReadsTheKubeletFile points CRI-O's global_auth_file (and
// pause_image_auth_file, read the same way) at the kubelet file nodecreds
// writes, and reads it with the code CRI-O vendors for it:
// go.podman.io/image/v5 v5.38.0, CRI-O v1.35 to v1.36's version
// (server.go sets SystemContext.AuthFilePath = GlobalAuthFile). It proves
// which keys match, then pulls through a registries.conf mirror on another
// host the way CRI-O's PullImage does: with the kubelet's credentials for
// the image's registry in SystemContext.DockerAuthConfig, which the library
// drops for the mirror and replaces with the mirror's own entry in the file.
func TestCRIOReadsTheKubeletFile(t *testing.T) {
	upstream := newBasicRegistry(t, "up-user", "up:pw")
	mirror := newBasicRegistry(t, "mirror-user", "mirror-pw-1")

	root := t.TempDir()
	kubeletFile := filepath.Join(root, "var/lib/kubelet/config.json")
	secretDir := filepath.Join(t.TempDir(), "secret")
	secret := func(mirrorPass string) {
		s, err := json.Marshal(map[string]any{"auths": map[string]any{
			upstream.host:               map[string]string{"auth": testsupport.B64("up-user:up:pw")},
			mirror.host:                 map[string]string{"username": "mirror-user", "password": mirrorPass},
			"docker.io":                 map[string]string{"auth": testsupport.B64("hub:hub-pw")},
			"team.example.test":         map[string]string{"auth": testsupport.B64("team:team-pw")},
			"team.example.test/private": map[string]string{"auth": testsupport.B64("private:private-pw")},
		}})
		if err != nil {
			t.Fatal(err)
		}
		testsupport.WriteFile(t, filepath.Join(secretDir, ".dockerconfigjson"), string(s), 0o600)
		sync := exec.Command(binary, "sync", "--once", "--source", "dir", "--secret-dir", secretDir, "--host-root", root, "--metrics-addr", "0")
		if out, err := sync.CombinedOutput(); err != nil {
			t.Fatalf("nodecreds sync: %v\n%s", err, out)
		}
	}
	secret("mirror-pw-1")

	// /etc/containers/registries.conf as an admin writes it for a
	// pull-through mirror on another host; the test's own, never the
	// machine's.
	confDir := t.TempDir()
	testsupport.WriteFile(t, filepath.Join(confDir, "registries.conf"), `
[[registry]]
location = "`+upstream.host+`"
insecure = true

[[registry.mirror]]
location = "`+mirror.host+`/cache"
insecure = true
`, 0o600)
	sys := &types.SystemContext{
		AuthFilePath:                kubeletFile,
		SystemRegistriesConfPath:    filepath.Join(confDir, "registries.conf"),
		SystemRegistriesConfDirPath: filepath.Join(confDir, "registries.conf.d"),
		RegistriesDirPath:           filepath.Join(confDir, "registries.d"),
	}

	t.Run("keys", func(t *testing.T) {
		for _, tc := range []struct{ image, user, pass string }{
			{upstream.host + "/app", "up-user", "up:pw"},
			{mirror.host + "/cache/app", "mirror-user", "mirror-pw-1"},
			// A Secret's docker.io key serves Docker Hub's short names.
			{"busybox", "hub", "hub-pw"},
			{"docker.io/team/app", "hub", "hub-pw"},
			// A key with a path serves that namespace only, ahead of the
			// host's key.
			{"team.example.test/private/app", "private", "private-pw"},
			{"team.example.test/privateer/app", "team", "team-pw"},
			{"team.example.test/public/app", "team", "team-pw"},
			{"other.example.test/app", "", ""},
		} {
			ref, err := reference.ParseNormalizedNamed(tc.image)
			if err != nil {
				t.Fatal(err)
			}
			got, err := config.GetCredentialsForRef(sys, ref)
			if err != nil {
				t.Fatalf("%s: CRI-O cannot read the kubelet file: %v", tc.image, err)
			}
			if got.Username != tc.user || got.Password != tc.pass {
				t.Errorf("%s: CRI-O would use user %q (password matches: %v), want %q", tc.image, got.Username, got.Password == tc.pass, tc.user)
			}
		}
	})

	upstream.push(t, "app:v1")
	mirror.push(t, "cache/app:v1")
	upstream.push(t, "only-upstream:v1")
	// The kubelet's credentials for the upstream, as it passes them in the
	// CRI PullImageRequest and CRI-O puts them in DockerAuthConfig.
	kubelet := &types.DockerAuthConfig{Username: "up-user", Password: "up:pw"}
	pull := func(t *testing.T, image string, withKubelet bool) {
		t.Helper()
		s := *sys
		if withKubelet {
			s.DockerAuthConfig = kubelet
		}
		ref, err := docker.ParseReference("//" + image)
		if err != nil {
			t.Fatal(err)
		}
		src, err := ref.NewImageSource(t.Context(), &s)
		if err != nil {
			t.Fatalf("pull %s: %v", image, err)
		}
		defer src.Close()
		if _, _, err := src.GetManifest(t.Context(), nil); err != nil {
			t.Fatalf("manifest of %s: %v", image, err)
		}
	}
	expect := func(t *testing.T, r *basicRegistry, what string, want ...string) {
		t.Helper()
		if got := r.users(); !slices.Equal(got, want) {
			t.Errorf("%s saw users %q, want %q", what, got, want)
		}
	}

	t.Run("mirror on another host gets its own credentials", func(t *testing.T) {
		pull(t, upstream.host+"/app:v1", true)
		expect(t, mirror, "mirror", "mirror-user")
		expect(t, upstream, "upstream")
	})
	t.Run("upstream after the mirror misses gets the kubelet's", func(t *testing.T) {
		pull(t, upstream.host+"/only-upstream:v1", true)
		expect(t, mirror, "mirror", "mirror-user")
		expect(t, upstream, "upstream", "up-user")
	})
	t.Run("without the kubelet's credentials, as for the pause image", func(t *testing.T) {
		pull(t, upstream.host+"/only-upstream:v1", false)
		expect(t, mirror, "mirror", "mirror-user")
		expect(t, upstream, "upstream", "up-user")
	})
	t.Run("rotation is read on the next pull", func(t *testing.T) {
		mirror.setPassword("mirror-pw-2")
		secret("mirror-pw-2")
		// The same SystemContext, as CRI-O keeps it for its lifetime.
		pull(t, upstream.host+"/app:v1", true)
		expect(t, mirror, "mirror", "mirror-user")
		expect(t, upstream, "upstream")
	})
}
