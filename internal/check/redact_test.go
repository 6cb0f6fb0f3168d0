package check

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/nodecreds/nodecreds/internal/kubeletcred"
	"github.com/nodecreds/nodecreds/internal/testsupport"
)

// keyCanary is a password sitting in the keys of files on the node.
const keyCanary = "Zq7CanaryKeyPw9"

// TestKeysPrintedWithoutPasswords: a password in a key of a file on the
// node — the file the kubelet reads (ENTRY, the probe warning), a file it
// does not read ("elsewhere"), or a file it cannot read (the warning
// naming the bad entry) — never reaches the table or the JSON, whatever
// the key's shape.
func TestKeysPrintedWithoutPasswords(t *testing.T) {
	for _, key := range testsupport.UserInfoKeys(keyCanary) {
		t.Run(key, func(t *testing.T) {
			entry := map[string]any{key: map[string]string{"auth": testsupport.B64("robot:pw")}}
			broken := map[string]any{key: map[string]string{"auth": "%%%"}}
			for name, files := range map[string]map[string]any{
				"kubelet file":                             {"var/lib/kubelet/config.json": entry},
				"a file the kubelet skips":                 {"var/lib/kubelet/config.json": map[string]any{}, "root/.docker/config.json": entry},
				"a file the kubelet reads no further than": {"var/lib/kubelet/config.json": map[string]any{"other.test": map[string]string{"auth": testsupport.B64("o:p")}}, "root/.docker/config.json": entry},
				"an entry that breaks the file":            {"var/lib/kubelet/config.json": broken},
			} {
				root := t.TempDir()
				for p, auths := range files {
					b, err := json.Marshal(map[string]any{"auths": auths})
					if err != nil {
						t.Fatal(err)
					}
					put(t, root, p, string(b))
				}
				rep := Run(t.Context(), Options{
					HostRoot: root, KubeletRootDir: "/var/lib/kubelet",
					Images:     []string{"registry.example.com/team/app:v1", "127.0.0.1:5000/app", "x.example.com/app"},
					Registries: []string{"registry.example.com", "registry.example.com:5000", "robot"},
					Prober:     refusingProber{},
				})
				var out bytes.Buffer
				if err := json.NewEncoder(&out).Encode(rep); err != nil {
					t.Fatal(err)
				}
				if err := rep.WriteTable(&out); err != nil {
					t.Fatal(err)
				}
				if leak := testsupport.Leak(out.String(), keyCanary); leak != "" {
					t.Errorf("%s: check prints %q of the password:\n%s", name, leak, out.String())
				}
			}
		})
	}
}

// The case: the ENTRY column and the JSON's entry name the
// registry, not the password.
func TestEntryOfAKeyWithUserInfo(t *testing.T) {
	root := t.TempDir()
	put(t, root, "var/lib/kubelet/config.json", `{"auths":{"https://robot:`+keyCanary+`@registry.example.com":{"auth":"`+testsupport.B64("robot:pw")+`"}}}`)
	rep := Run(t.Context(), Options{HostRoot: root, KubeletRootDir: "/var/lib/kubelet", Images: []string{"registry.example.com/team/app:v1"}})
	if len(rep.Results) != 1 || !rep.Results[0].Found || rep.Results[0].Entry != "https://<redacted>@registry.example.com" || rep.Results[0].Username != "robot" {
		t.Errorf("results %+v, want the entry found as https://<redacted>@registry.example.com", rep.Results)
	}
}

// refusingProber fails every login, so the warning naming the entry the
// registry refused is printed too.
type refusingProber struct{}

func (refusingProber) Probe(_ context.Context, _, _ string, _ kubeletcred.Cred) ProbeResult {
	return ProbeResult{Status: 401, Error: strings.ToUpper("unauthorized")}
}
