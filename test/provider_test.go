package test

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

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

// TestPluginInstallFailureKeepsSyncing: a plugin that cannot be installed
// (a file where its folder should be, then a folder others can write)
// stops nothing: `sync --once` syncs the files and exits 1 naming the
// problem; the daemon syncs and follows rotations, logs the failure, and
// installs the plugin once the folder is fixed.
func TestPluginInstallFailureKeepsSyncing(t *testing.T) {
	const reg = "plugin.example.test"
	root := t.TempDir()
	testsupport.WriteFile(t, filepath.Join(root, "opt/nodecreds/bin"), "not a folder", 0o644)
	sec := newSecretDir(t, ".dockerconfigjson", dockerconfigjson(t, map[string]string{reg: "u:plugin-canary-1"}))
	args := []string{"--source", "dir", "--secret-dir", sec.dir, "--host-root", root, "--install-credential-provider", "/opt/nodecreds/bin", "--metrics-addr", "0"}
	kubelet, plugin := filepath.Join(root, kubeletFile), filepath.Join(root, "opt/nodecreds/bin/nodecreds")

	_, stderr, code := run(t, append([]string{"sync", "--once"}, args...)...)
	if code != 1 || !strings.Contains(stderr, "/opt/nodecreds/bin") || authIn(kubelet, reg) != testsupport.B64("u:plugin-canary-1") {
		t.Errorf("sync --once: exit %d, kubelet file synced: %v; want 1, the files synced and the plugin's folder named:\n%s",
			code, authIn(kubelet, reg) != "", stderr)
	}

	agent := startAgent(t, args...)
	sec.swap(".dockerconfigjson", dockerconfigjson(t, map[string]string{reg: "u:plugin-canary-2"}))
	testsupport.Eventually(t, 20*time.Second, "a rotation applied while the plugin cannot be installed", func() bool {
		return authIn(kubelet, reg) == testsupport.B64("u:plugin-canary-2")
	})
	testsupport.Eventually(t, 10*time.Second, "the failure logged, naming the folder", func() bool {
		return strings.Contains(agent.logs.String(), "credential-provider plugin not installed") && strings.Contains(agent.logs.String(), "/opt/nodecreds/bin")
	})
	// Fixed, but the folder above is left world-writable: refused, named.
	if err := os.Remove(filepath.Join(root, "opt/nodecreds/bin")); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(root, "opt/nodecreds"), 0o777); err != nil {
		t.Fatal(err)
	}
	testsupport.Eventually(t, 40*time.Second, "the world-writable folder named in the log", func() bool {
		return strings.Contains(agent.logs.String(), "chmod go-w /opt/nodecreds")
	})
	if _, err := os.Stat(plugin); err == nil {
		t.Error("the plugin was installed in a folder anyone can write")
	}
	if err := os.Chmod(filepath.Join(root, "opt/nodecreds"), 0o755); err != nil {
		t.Fatal(err)
	}
	testsupport.Eventually(t, 40*time.Second, "the plugin installed once the folder is fixed", func() bool {
		_, err := os.Stat(plugin)
		return err == nil
	})
	if c := agent.stop(t); c != 0 {
		t.Errorf("agent exit %d after SIGTERM", c)
	}
	assertNoSecrets(t, "agent log", agent.logs.String()+stderr, "plugin-canary-1", "plugin-canary-2")
}
