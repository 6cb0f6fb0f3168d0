package test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nodecreds/nodecreds/internal/testsupport"
)

// TestBadInputChangesNothing feeds the real binary hostile sources and
// settings. Each case must exit non-zero (1 for a bad source, 2 for bad
// usage), leave the node's files byte-identical, say what is wrong, and
// never echo a secret value.
func TestBadInputChangesNothing(t *testing.T) {
	const canary = "bad-input-canary-pw"
	canaryAuth := testsupport.B64("u:" + canary)
	big := `{"auths":{"r.test":{"auth":"` + strings.Repeat("A", 1<<20) + `"}}}`
	tests := []struct {
		name  string
		files map[string]string // Secret folder content
		args  []string          // extra flags
		yaml  string            // a --config file, when set
		code  int
		want  string // in the output
	}{
		{name: "not JSON", files: map[string]string{".dockerconfigjson": "auths=" + canary}, code: 1, want: "not valid JSON"},
		{name: "wrong shape", files: map[string]string{".dockerconfigjson": `["` + canaryAuth + `"]`}, code: 1, want: "not a JSON object"},
		{name: "auths not an object", files: map[string]string{".dockerconfigjson": `{"auths":["` + canaryAuth + `"]}`}, code: 1, want: `\"auths\" is an array`},
		{name: "entry not an object", files: map[string]string{".dockerconfigjson": `{"auths":{"r.test":"` + canaryAuth + `"}}`}, code: 1, want: `registry \"r.test\": entry is a string`},
		{name: "auth not base64", files: map[string]string{".dockerconfigjson": `{"auths":{"r.test":{"auth":"*` + canary + `"}}}`}, code: 1, want: "not valid base64"},
		{name: "auth without colon", files: map[string]string{".dockerconfigjson": `{"auths":{"r.test":{"auth":"` + testsupport.B64(canary) + `"}}}`}, code: 1, want: "no ':'"},
		{name: "empty user", files: map[string]string{".dockerconfigjson": `{"auths":{"r.test":{"auth":"` + testsupport.B64(":"+canary) + `"}}}`}, code: 1, want: "empty user"},
		{name: "empty key", files: map[string]string{".dockerconfigjson": `{"auths":{"":{"auth":"` + canaryAuth + `"}}}`}, code: 1, want: "empty registry key"},
		{name: "key with spaces", files: map[string]string{".dockerconfigjson": `{"auths":{"r test":{"auth":"` + canaryAuth + `"}}}`}, code: 1, want: "white space"},
		{name: "scheme without host", files: map[string]string{".dockerconfigjson": `{"auths":{"https://":{"auth":"` + canaryAuth + `"}}}`}, code: 1, want: "no host"},
		{name: "key with user-info", files: map[string]string{".dockerconfigjson": `{"auths":{"u:` + canary + `@r.test":{"auth":"` + canaryAuth + `"}}}`}, code: 1, want: "user-info"},
		{name: "wildcard-only key", files: map[string]string{".dockerconfigjson": `{"auths":{"*.*":{"auth":"` + canaryAuth + `"}}}`}, code: 1, want: "matches every host"},
		{name: "no credentials", files: map[string]string{".dockerconfigjson": `{"auths":{"r.test":{"email":"a@b"}}}`}, code: 1, want: "no credentials"},
		{name: "empty file", files: map[string]string{".dockerconfigjson": ""}, code: 1, want: "empty"},
		{name: "binary garbage", files: map[string]string{".dockerconfigjson": "\x00\x01\xff" + canary}, code: 1, want: "not valid JSON"},
		{name: "trailing garbage", files: map[string]string{".dockerconfigjson": `{"auths":{}}` + canary}, code: 1, want: "not valid JSON"},
		{name: "dockercfg holding dockerconfigjson", files: map[string]string{".dockercfg": `{"auths":{"r.test":{"auth":"` + canaryAuth + `"}}}`}, code: 1, want: ".dockerconfigjson content"},
		{name: "no credentials key", files: map[string]string{"password": canary}, code: 1, want: "no .dockerconfigjson or .dockercfg key"},
		{name: "oversized", files: map[string]string{".dockerconfigjson": big}, code: 1, want: "larger than the 1 MiB"},
		{name: "config with unknown key", files: good(), yaml: "source: dir\nsecret-dirs: [/x]\n", code: 2, want: "unknown settings secret-dirs"},
		{name: "config with wrong type", files: good(), yaml: "prune: sometimes\n", code: 2, want: "prune"},
		{name: "invalid flag value", files: good(), args: []string{"--resync", "soon"}, code: 2, want: "resync"},
		{name: "invalid source", files: good(), args: []string{"--source", "ldap"}, code: 2, want: "--source"},
		{name: "relative target", files: good(), args: []string{"--target", "config.json"}, code: 2, want: "absolute"},
		{name: "target in /", files: good(), args: []string{"--target", "/config.json"}, code: 2, want: "/ is a system folder"},
		{name: "target in /etc", files: good(), args: []string{"--target", "/var/lib/kubelet/config.json,/etc/config.json"}, code: 2, want: "/etc is a system folder"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			existing := `{"auths":{"keep.test":{"auth":"` + testsupport.B64("k:keep") + `"}},"credsStore":"x"}`
			for _, f := range []string{kubeletFile, dockerFile} {
				writeNodeFile(t, filepath.Join(root, f), existing)
			}
			secret := filepath.Join(t.TempDir(), "secret")
			if err := os.MkdirAll(secret, 0o700); err != nil {
				t.Fatal(err)
			}
			for name, content := range tt.files {
				if err := os.WriteFile(filepath.Join(secret, name), []byte(content), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			args := []string{"sync", "--once", "--source", "dir", "--secret-dir", secret, "--host-root", root, "--metrics-addr", "0", "--log-level", "debug"}
			if tt.yaml != "" {
				cfg := filepath.Join(t.TempDir(), "c.yaml")
				if err := os.WriteFile(cfg, []byte(tt.yaml), 0o600); err != nil {
					t.Fatal(err)
				}
				args = append(args, "--config", cfg)
			}
			args = append(args, tt.args...)
			stdout, stderr, code := run(t, args...)
			out := stdout + stderr
			if code != tt.code {
				t.Errorf("exit %d, want %d\n%s", code, tt.code, out)
			}
			if !strings.Contains(out, tt.want) {
				t.Errorf("output does not say %q:\n%s", tt.want, out)
			}
			for _, f := range []string{kubeletFile, dockerFile} {
				if got := string(testsupport.ReadFile(t, filepath.Join(root, f))); got != existing {
					t.Errorf("%s changed:\n%s", f, got)
				}
			}
			assertNoSecrets(t, "output", out, canary, canaryAuth, testsupport.B64(canary), testsupport.B64(":"+canary))
		})
	}
}

func good() map[string]string {
	return map[string]string{".dockerconfigjson": `{"auths":{"r.test":{"auth":"` + testsupport.B64("u:p") + `"}}}`}
}

func writeNodeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}
