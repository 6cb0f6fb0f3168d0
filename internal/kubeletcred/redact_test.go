package kubeletcred

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/nodecreds/nodecreds/internal/testsupport"
)

// TestErrorsAndStringsHideKeyPasswords: the error naming an entry the
// kubelet cannot decode (it reaches `check`'s warnings and the
// credential-provider's stderr, which the kubelet puts into Pod events)
// and a Cred's String print the key without its password.
func TestErrorsAndStringsHideKeyPasswords(t *testing.T) {
	const canary = "Zq7CanaryKeyPw9"
	for _, key := range testsupport.UserInfoKeys(canary) {
		root := t.TempDir()
		doc, err := json.Marshal(map[string]any{"auths": map[string]any{key: map[string]string{"auth": "%%%"}}})
		if err != nil {
			t.Fatal(err)
		}
		testsupport.WriteFile(t, filepath.Join(root, "var/lib/kubelet/config.json"), string(doc), 0o600)
		_, err = ProviderAnswer(root, "/var/lib/kubelet/config.json", "registry.example.com/app")
		if err == nil {
			t.Fatalf("%q: an undecodable auth was accepted", key)
		}
		for what, text := range map[string]string{"error": err.Error(), "String": Cred{Key: key, Username: "u", Password: "p"}.String(), "%#v": fmt.Sprintf("%#v", Cred{Key: key})} {
			if leak := testsupport.Leak(text, canary); leak != "" {
				t.Errorf("%q: %s %q holds %q of the password", key, what, text, leak)
			}
		}
	}
}
