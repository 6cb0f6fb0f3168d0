package check

import (
	"bytes"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/distribution/reference"

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
