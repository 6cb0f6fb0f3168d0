package provider

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	credv1 "k8s.io/kubelet/pkg/apis/credentialprovider/v1"

	"github.com/nodecreds/nodecreds/internal/testsupport"
)

func request(image string) string {
	b, _ := json.Marshal(credv1.CredentialProviderRequest{
		TypeMeta: metav1.TypeMeta{APIVersion: APIVersion, Kind: "CredentialProviderRequest"},
		Image:    image,
	})
	return string(b)
}

func TestServe(t *testing.T) {
	root := t.TempDir()
	file := filepath.Join(root, "var/lib/kubelet/config.json")
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		t.Fatal(err)
	}
	doc := `{"auths":{"https://reg.test:5000/v2/":{"auth":"` + testsupport.B64("robot:provider-canary") + `"},"reg.test:5000/team":{"auth":"` + testsupport.B64("teamrobot:tr") + `"},"team.test/private":{"auth":"` + testsupport.B64("t:tt") + `"},"docker.io":{"auth":"` + testsupport.B64("hub:h") + `"}}}`
	if err := os.WriteFile(file, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	o := Options{HostRoot: root, File: "/var/lib/kubelet/config.json", CacheDuration: 10 * time.Second}
	tests := []struct {
		image string
		want  map[string]string // pattern → user
	}{
		// Every entry of the image's registry, whatever its path: the
		// kubelet keeps the answer for every image of the registry and
		// matches paths itself.
		{"reg.test:5000/other/app:v1", map[string]string{"reg.test:5000": "robot", "reg.test:5000/team": "teamrobot"}},
		{"reg.test:5000/team/app:v1", map[string]string{"reg.test:5000/team": "teamrobot", "reg.test:5000": "robot"}},
		{"team.test/private/app@sha256:" + strings.Repeat("a", 64), map[string]string{"team.test/private": "t"}},
		{"team.test/public/app", map[string]string{"team.test/private": "t"}},
		{"busybox", map[string]string{"docker.io": "hub"}},
		{"other.test/app", nil},
		{"reg.test/app", nil}, // port differs
	}
	for _, tt := range tests {
		var out bytes.Buffer
		if err := Serve(strings.NewReader(request(tt.image)), &out, o); err != nil {
			t.Fatalf("%s: %v", tt.image, err)
		}
		// Decode strictly into the kubelet's own published types.
		dec := json.NewDecoder(&out)
		dec.DisallowUnknownFields()
		var resp credv1.CredentialProviderResponse
		if err := dec.Decode(&resp); err != nil {
			t.Fatalf("%s: the response does not decode into the kubelet's type: %v", tt.image, err)
		}
		if resp.APIVersion != APIVersion || resp.Kind != "CredentialProviderResponse" || resp.CacheKeyType != credv1.RegistryPluginCacheKeyType || resp.CacheDuration == nil || resp.CacheDuration.Duration != 10*time.Second {
			t.Errorf("%s: response header %+v", tt.image, resp)
		}
		got := map[string]string{}
		for k, a := range resp.Auth {
			got[k] = a.Username
		}
		if len(got) != len(tt.want) {
			t.Errorf("%s: auth %v, want %v", tt.image, got, tt.want)
		}
		for k, u := range tt.want {
			if got[k] != u {
				t.Errorf("%s: auth %v, want %v", tt.image, got, tt.want)
			}
		}
	}
}

func TestServeRefusesBadRequests(t *testing.T) {
	root := t.TempDir()
	o := Options{HostRoot: root, File: "/var/lib/kubelet/config.json", CacheDuration: time.Second}
	for _, in := range []string{
		"", "not json", `{"apiVersion":"credentialprovider.kubelet.k8s.io/v1alpha1","kind":"CredentialProviderRequest","image":"a/b"}`,
		`{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"Other","image":"a/b"}`,
		`{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderRequest"}`,
	} {
		if err := Serve(strings.NewReader(in), &bytes.Buffer{}, o); !errors.Is(err, ErrBadRequest) {
			t.Errorf("%q: err %v, want ErrBadRequest", in, err)
		}
	}
	// A file the kubelet could not read is an error that names the file,
	// not the credential in it.
	file := filepath.Join(root, "var/lib/kubelet/config.json")
	_ = os.MkdirAll(filepath.Dir(file), 0o700)
	_ = os.WriteFile(file, []byte(`{"auths":{"r.test":{"auth":"%%%provider-canary"}}}`), 0o600)
	err := Serve(strings.NewReader(request("r.test/app")), &bytes.Buffer{}, o)
	if err == nil || !strings.Contains(err.Error(), "/var/lib/kubelet/config.json") || strings.Contains(err.Error(), "canary") {
		t.Errorf("corrupt file: %v", err)
	}
}
