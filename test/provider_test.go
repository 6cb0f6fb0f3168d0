package test

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nodecreds/nodecreds/internal/testsupport"
)

// TestCredentialProviderCommand runs the real binary as the kubelet does:
// a request on stdin, the answer or an error and the exit code the kubelet
// acts on.
func TestCredentialProviderCommand(t *testing.T) {
	const canary = "provider-cmd-canary"
	root := t.TempDir()
	kubeletFile := filepath.Join(root, "var/lib/kubelet/config.json")
	if err := os.MkdirAll(filepath.Dir(kubeletFile), 0o700); err != nil {
		t.Fatal(err)
	}
	good := `{"auths":{"reg.test:5000":{"auth":"` + testsupport.B64("robot:"+canary) + `"}}}`
	req := func(image string) string {
		return `{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderRequest","image":"` + image + `"}`
	}
	tests := []struct {
		name     string
		file     string // kubelet file content, "" for none
		stdin    string
		args     []string
		env      []string
		wantCode int
		wantOut  string // in stdout
		wantErr  string // in stderr
		empty    bool   // an answer without credentials
	}{
		{name: "match", file: good, stdin: req("reg.test:5000/team/app"), wantCode: 0, wantOut: `"reg.test:5000":{"username":"robot"`},
		{name: "unknown image: empty answer", file: good, stdin: req("other.test/app"), wantCode: 0, wantOut: `"cacheKeyType":"Registry"`, empty: true},
		{name: "no kubelet file: empty answer", stdin: req("reg.test:5000/app"), wantCode: 0, wantOut: `"cacheKeyType":"Registry"`, empty: true},
		{name: "cache duration from the environment", file: good, stdin: req("reg.test:5000/app"), env: []string{"NODECREDS_CACHE_DURATION=7s"}, wantCode: 0, wantOut: `"cacheDuration":"7s"`},
		{name: "default cache duration", file: good, stdin: req("reg.test:5000/app"), wantCode: 0, wantOut: `"cacheDuration":"1s"`},
		{name: "not JSON", file: good, stdin: "hello", wantCode: 1, wantErr: "invalid CredentialProviderRequest"},
		{name: "older protocol", file: good, stdin: strings.Replace(req("reg.test:5000/app"), "/v1", "/v1alpha1", 1), wantCode: 1, wantErr: "v1alpha1"},
		{name: "unreadable kubelet file", file: `{"auths":{"reg.test:5000":{"auth":"%%` + canary + `"}}}`, stdin: req("reg.test:5000/app"), wantCode: 1, wantErr: "/var/lib/kubelet/config.json"},
		{name: "negative cache", file: good, stdin: req("reg.test:5000/app"), args: []string{"--cache-duration=-1s"}, wantCode: 2, wantErr: "--cache-duration"},
		{name: "unknown flag", file: good, stdin: req("reg.test:5000/app"), args: []string{"--cache=1s"}, wantCode: 2, wantErr: "unknown flag"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_ = os.Remove(kubeletFile)
			if tt.file != "" {
				if err := os.WriteFile(kubeletFile, []byte(tt.file), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			cmd := exec.Command(binary, append([]string{"credential-provider", "--host-root", root}, tt.args...)...)
			cmd.Stdin = strings.NewReader(tt.stdin)
			cmd.Env = append(os.Environ(), tt.env...)
			var out, errb bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &errb
			_ = cmd.Run()
			if code := cmd.ProcessState.ExitCode(); code != tt.wantCode {
				t.Errorf("exit %d, want %d; stderr: %s", code, tt.wantCode, errb.String())
			}
			if !strings.Contains(out.String(), tt.wantOut) || !strings.Contains(errb.String(), tt.wantErr) {
				t.Errorf("stdout %q (want %q), stderr %q (want %q)", redactPasswords(out.String()), tt.wantOut, errb.String(), tt.wantErr)
			}
			if tt.wantCode == 0 {
				var v struct {
					Auth map[string]any `json:"auth"`
				}
				if err := json.Unmarshal(out.Bytes(), &v); err != nil || errb.Len() != 0 {
					t.Errorf("an answer must be one JSON document and nothing on stderr: %v %q", err, errb.String())
				}
				if tt.empty != (len(v.Auth) == 0) {
					t.Errorf("credentials in the answer: %d, want empty=%v", len(v.Auth), tt.empty)
				}
			} else if out.Len() != 0 {
				t.Errorf("a failure wrote to stdout, where the kubelet reads an answer: %q", out.String())
			}
			assertNoSecrets(t, "stderr", errb.String(), canary, testsupport.B64("robot:"+canary))
		})
	}
}

func redactPasswords(s string) string {
	if i := strings.Index(s, `"password":"`); i >= 0 {
		return s[:i] + `"password":"…"}}}`
	}
	return s
}
