// Package consumers proves that the files nodecreds writes are read by
// the kubelet's own credential code (k8s.io/kubernetes/pkg/credentialprovider)
// exactly as intended, including next to foreign entries and after
// displacing one. It is a module of its own because importing
// k8s.io/kubernetes needs a replace line per staging module.
package consumers

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"k8s.io/kubernetes/pkg/credentialprovider"

	"github.com/nodecreds/nodecreds/internal/testsupport"
)

var binary string

func TestMain(m *testing.M) {
	// The agents these tests run name registries nothing answers for:
	// a verification login would look those names up in the machine's
	// DNS, traffic to another address. Tests of verification pass
	// --verify=on against a registry on 127.0.0.1.
	if err := os.Setenv("NODECREDS_VERIFY", "off"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	dir, err := os.MkdirTemp("", "nodecreds-compat-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "nodecreds")
	if err := testsupport.BuildNodecreds("../..", binary); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type want struct {
	image    string // what a Pod names
	user     string
	password string
}

func TestKubeletReadsWhatNodecredsWrites(t *testing.T) {
	tests := []struct {
		name     string
		format   string // .dockerconfigjson or .dockercfg
		secret   string
		existing string // kubelet file before the sync, "" for none
		wants    []want
		none     []string // images the kubelet must find no credentials for
	}{
		{
			name:   "plain host and host with port",
			format: ".dockerconfigjson",
			secret: `{"auths":{"reg.example.test":{"auth":"` + testsupport.B64("alice:pa:ss") + `"},"127.0.0.1:5000":{"username":"bob","password":"b-pw"}}}`,
			wants: []want{
				{"reg.example.test/team/app:v1", "alice", "pa:ss"},
				{"127.0.0.1:5000/app@sha256:" + fmt.Sprintf("%064d", 0), "bob", "b-pw"},
			},
			none: []string{"other.example.test/app", "127.0.0.1:5001/app"},
		},
		{
			name:   "legacy dockercfg with a scheme, a path and a glob",
			format: ".dockercfg",
			secret: `{"https://reg.example.test/v1/":{"auth":"` + testsupport.B64("c:1") + `","email":"c@x"},"team.example.test/private":{"auth":"` + testsupport.B64("d:2") + `"},"*.glob.example.test":{"auth":"` + testsupport.B64("e:3") + `"}}`,
			wants: []want{
				{"reg.example.test/app", "c", "1"},
				{"team.example.test/private/app", "d", "2"},
				{"eu.glob.example.test/app", "e", "3"},
			},
			none: []string{"team.example.test/public/app", "a.b.glob.example.test/app"},
		},
		{
			name:   "Docker Hub aliases and short names",
			format: ".dockerconfigjson",
			secret: `{"auths":{"docker.io":{"auth":"` + testsupport.B64("hub:h-pw") + `"}}}`,
			wants:  []want{{"docker.io/library/busybox", "hub", "h-pw"}, {"docker.io/team/app", "hub", "h-pw"}},
			// Written as https://index.docker.io/v1/, the kubelet would
			// hand Docker Hub's password to a registry on the node's
			// localhost too; as the Secret spells it, it does not.
			none: []string{"localhost/app"},
		},
		{
			// registry-1.docker.io is a registry of its own to the kubelet,
			// not Docker Hub.
			name:   "registry-1.docker.io is not Docker Hub",
			format: ".dockerconfigjson",
			secret: `{"auths":{"registry-1.docker.io":{"auth":"` + testsupport.B64("r1:r-pw") + `"}}}`,
			wants:  []want{{"registry-1.docker.io/team/app", "r1", "r-pw"}},
			none:   []string{"docker.io/library/busybox", "docker.io/team/app", "localhost/app"},
		},
		{
			// The kubelet matches hosts case-sensitively: an upper-case key
			// is another registry and must not displace the working one.
			name:     "keys differing only in case are two registries",
			format:   ".dockerconfigjson",
			secret:   `{"auths":{"R.EXAMPLE.TEST/":{"auth":"` + testsupport.B64("upper:u-pw") + `"}}}`,
			existing: `{"auths":{"r.example.test":{"auth":"` + testsupport.B64("lower:l-pw") + `"}}}`,
			wants:    []want{{"r.example.test/app", "lower", "l-pw"}},
		},
		{
			name:     "next to foreign entries and displacing one for the same registry",
			format:   ".dockerconfigjson",
			secret:   `{"auths":{"reg.example.test":{"auth":"` + testsupport.B64("ours:new") + `"}}}`,
			existing: `{"auths":{"https://reg.example.test":{"auth":"` + testsupport.B64("theirs:old") + `"},"keep.example.test":{"auth":"` + testsupport.B64("k:kk") + `"}},"credsStore":"secretservice","HttpHeaders":{"X":"y"}}`,
			wants: []want{
				{"reg.example.test/app", "ours", "new"},
				{"keep.example.test/app", "k", "kk"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			secretDir := filepath.Join(t.TempDir(), "secret")
			testsupport.WriteFile(t, filepath.Join(secretDir, tt.format), tt.secret, 0o600)
			kubeletDir := filepath.Join(root, "var/lib/kubelet")
			if tt.existing != "" {
				testsupport.WriteFile(t, filepath.Join(kubeletDir, "config.json"), tt.existing, 0o600)
			}
			sync := exec.Command(binary, "sync", "--once", "--source", "dir", "--secret-dir", secretDir, "--host-root", root, "--metrics-addr", "0")
			if out, err := sync.CombinedOutput(); err != nil {
				t.Fatalf("nodecreds sync: %v\n%s", err, out)
			}

			// The kubelet's own reading: the first config.json that parses
			// in its search order, with --root-dir first.
			cfg, err := credentialprovider.ReadDockerConfigJSONFile([]string{kubeletDir})
			if err != nil {
				t.Fatalf("the kubelet cannot read %s: %v", kubeletDir, err)
			}
			ring := &credentialprovider.BasicDockerKeyring{}
			ring.Add(nil, cfg)
			for _, w := range tt.wants {
				creds, ok := ring.Lookup(repoOf(w.image))
				if !ok || len(creds) == 0 {
					t.Errorf("%s: the kubelet finds no credentials", w.image)
					continue
				}
				if creds[0].Username != w.user || creds[0].Password != w.password {
					t.Errorf("%s: the kubelet would use user %q (password matches: %v), want %q", w.image, creds[0].Username, creds[0].Password == w.password, w.user)
				}
				// nodecreds check agrees with the kubelet.
				if found, user := check(t, root, w.image); !found || user != creds[0].Username {
					t.Errorf("%s: nodecreds check says found=%v user=%q, the kubelet uses %q", w.image, found, user, creds[0].Username)
				}
			}
			for _, img := range tt.none {
				if creds, ok := ring.Lookup(repoOf(img)); ok {
					t.Errorf("%s: the kubelet would send %d credentials, want none", img, len(creds))
				}
				if found, _ := check(t, root, img); found {
					t.Errorf("%s: nodecreds check finds credentials the kubelet would not use", img)
				}
			}

			// The file as a whole: other fields are still there.
			if tt.existing != "" {
				var before, after map[string]json.RawMessage
				_ = json.Unmarshal([]byte(tt.existing), &before)
				_ = json.Unmarshal(testsupport.ReadFile(t, filepath.Join(kubeletDir, "config.json")), &after)
				for k, v := range before {
					if k != "auths" && !jsonEqual(v, after[k]) {
						t.Errorf("top-level %q changed: %s → %s", k, v, after[k])
					}
				}
			}

			// Cleanup gives the kubelet back exactly what it had.
			if out, err := exec.Command(binary, "cleanup", "--host-root", root).CombinedOutput(); err != nil {
				t.Fatalf("nodecreds cleanup: %v\n%s", err, out)
			}
			if tt.existing == "" {
				if _, err := credentialprovider.ReadDockerConfigJSONFile([]string{kubeletDir}); err == nil {
					t.Errorf("after cleanup the kubelet still finds a config.json nodecreds created")
				}
				return
			}
			cfg, err = credentialprovider.ReadDockerConfigJSONFile([]string{kubeletDir})
			if err != nil {
				t.Fatal(err)
			}
			var orig struct {
				Auths credentialprovider.DockerConfig `json:"auths"`
			}
			if err := json.Unmarshal([]byte(tt.existing), &orig); err != nil {
				t.Fatal(err)
			}
			if len(cfg) != len(orig.Auths) {
				t.Errorf("after cleanup the kubelet sees %d entries, originally %d", len(cfg), len(orig.Auths))
			}
			for k, e := range orig.Auths {
				if cfg[k].Username != e.Username || cfg[k].Password != e.Password {
					t.Errorf("after cleanup entry %q is not the original", k)
				}
			}
		})
	}
}

// check runs `nodecreds check -o json` for one image.
func check(t *testing.T, root, image string) (bool, string) {
	t.Helper()
	out, _ := exec.Command(binary, "check", "--host-root", root, "--image", image, "-o", "json").Output()
	var rep struct {
		Results []struct {
			Found    bool   `json:"found"`
			Username string `json:"username"`
		} `json:"results"`
	}
	if err := json.Unmarshal(out, &rep); err != nil || len(rep.Results) != 1 {
		t.Fatalf("nodecreds check -o json printed %q: %v", out, err)
	}
	return rep.Results[0].Found, rep.Results[0].Username
}

// repoOf is what the kubelet passes to Lookup: the image name without tag
// or digest (the images here are already fully qualified).
func repoOf(image string) string {
	if i := bytes.IndexByte([]byte(image), '@'); i >= 0 {
		image = image[:i]
	}
	slash := bytes.LastIndexByte([]byte(image), '/')
	if colon := bytes.LastIndexByte([]byte(image), ':'); colon > slash {
		image = image[:colon]
	}
	return image
}

func jsonEqual(a, b json.RawMessage) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	xa, _ := json.Marshal(x)
	ya, _ := json.Marshal(y)
	return bytes.Equal(xa, ya)
}
