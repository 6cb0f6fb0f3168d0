package test

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nodecreds/nodecreds/internal/testsupport"
)

const (
	kubeletFile = "var/lib/kubelet/config.json"
	dockerFile  = "root/.docker/config.json"
)

// TestAgentFollowsMountedSecret runs the real agent on a kubelet-style
// mounted Secret folder: first sync, rotation by ..data swap, drift after a
// delete and after tampering, a foreign entry kept, SIGTERM exit 0 with the
// files left in place, and no secret in logs or metrics at debug level.
func TestAgentFollowsMountedSecret(t *testing.T) {
	const (
		pw1 = "canary-pw-one-7f3a"
		pw2 = "canary-pw-two-91bc"
		reg = "registry.example.test:5000"
	)
	root := t.TempDir()
	sec := newSecretDir(t, ".dockerconfigjson", dockerconfigjson(t, map[string]string{reg: "robot:" + pw1}))
	addr := testsupport.FreeAddr(t)
	agent := startAgent(t, "--source", "dir", "--secret-dir", sec.dir, "--host-root", root,
		"--metrics-addr", addr, "--log-level", "debug", "--resync", "1h")
	kubelet, docker := filepath.Join(root, kubeletFile), filepath.Join(root, dockerFile)
	want1, want2 := testsupport.B64("robot:"+pw1), testsupport.B64("robot:"+pw2)

	testsupport.Eventually(t, 20*time.Second, "first sync of both files", func() bool {
		return authIn(kubelet, reg) == want1 && authIn(docker, reg) == want1
	})
	testsupport.Eventually(t, 5*time.Second, "/readyz 200", func() bool { return httpStatus("http://"+addr+"/readyz") == 200 })

	// Rotation by ..data swap, as the kubelet updates a mounted Secret.
	start := time.Now()
	sec.swap(".dockerconfigjson", dockerconfigjson(t, map[string]string{reg: "robot:" + pw2}))
	took := testsupport.Eventually(t, 5*time.Second, "rotation in both files", func() bool {
		return authIn(kubelet, reg) == want2 && authIn(docker, reg) == want2
	})
	t.Logf("..data swap to both files updated: %s", took)
	if time.Since(start) > 2*time.Second {
		t.Errorf("rotation took %s, want about a second at most", time.Since(start))
	}

	// Drift: the file is deleted.
	if err := os.Remove(kubelet); err != nil {
		t.Fatal(err)
	}
	testsupport.Eventually(t, 3*time.Second, "deleted file restored", func() bool { return authIn(kubelet, reg) == want2 })

	// Drift: our entry tampered with while someone adds their own entry.
	tampered := `{"auths":{"` + reg + `":{"auth":"` + testsupport.B64("evil:x") + `"},"mine.example.test":{"auth":"` + testsupport.B64("me:pw") + `"}},"credsStore":"pass"}`
	// Written as the docker CLI writes: a temp file renamed over the target.
	// (A writer that truncates in place can lose its write to any
	// concurrent replacer, and hands the kubelet half a file meanwhile.)
	tmp := docker + ".tmp-test"
	if err := os.WriteFile(tmp, []byte(tampered), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, docker); err != nil {
		t.Fatal(err)
	}
	testsupport.Eventually(t, 3*time.Second, "tampered entry corrected", func() bool { return authIn(docker, reg) == want2 })
	if authIn(docker, "mine.example.test") != testsupport.B64("me:pw") {
		t.Errorf("a foreign entry added by hand was lost")
	}
	var doc map[string]any
	if err := json.Unmarshal(testsupport.ReadFile(t, docker), &doc); err != nil || doc["credsStore"] != "pass" {
		t.Errorf("credsStore lost: %v %v", err, doc["credsStore"])
	}

	// The counters move after the file is written: wait for the drift to be
	// counted, then check the rest.
	var metrics string
	testsupport.Eventually(t, 3*time.Second, "drift correction counted", func() bool {
		metrics = httpBody(t, "http://"+addr+"/metrics")
		return strings.Contains(metrics, "nodecreds_drift_corrections_total")
	})
	for _, want := range []string{"nodecreds_syncs_total", "nodecreds_drift_corrections_total", "nodecreds_entries", "nodecreds_sync_duration_seconds", "nodecreds_last_success_timestamp_seconds"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	// SIGTERM: exit 0, nothing removed.
	if code := agent.stop(t); code != 0 {
		t.Errorf("exit code after SIGTERM = %d, want 0", code)
	}
	if authIn(kubelet, reg) != want2 || authIn(docker, reg) != want2 {
		t.Errorf("stopping the agent changed the node files")
	}
	logs := agent.logs.String()
	assertNoSecrets(t, "agent logs", logs, pw1, pw2, want1, want2, testsupport.B64("evil:x"), testsupport.B64("me:pw"))

	// Modes and owner of what nodecreds creates, and a state file that
	// keeps fingerprints, not the credentials it wrote.
	for path, want := range map[string]os.FileMode{
		kubelet: 0o600, filepath.Dir(kubelet): 0o700,
		filepath.Join(root, "var/lib/nodecreds/state.json"): 0o600, filepath.Join(root, "var/lib/nodecreds"): 0o700,
	} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s mode %o, want %o", path, fi.Mode().Perm(), want)
		}
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != 0 || st.Gid != 0 {
			t.Errorf("%s owned by %d:%d, want root", path, st.Uid, st.Gid)
		}
	}
	assertNoSecrets(t, "state file", string(testsupport.ReadFile(t, filepath.Join(root, "var/lib/nodecreds/state.json"))), pw1, pw2, want1, want2)

	// cleanup and check at debug level leak nothing either.
	out, errOut, code := run(t, "check", "--host-root", root, "--image", reg+"/app", "-o", "json", "--log-level", "debug")
	if code != 0 {
		t.Errorf("check exit %d: %s", code, errOut)
	}
	assertNoSecrets(t, "check output", out+errOut, pw1, pw2, want1, want2)
	out, errOut, code = run(t, "cleanup", "--host-root", root, "--log-level", "debug")
	if code != 0 {
		t.Errorf("cleanup exit %d: %s", code, errOut)
	}
	assertNoSecrets(t, "cleanup output", out+errOut, pw1, pw2, want1, want2, testsupport.B64("me:pw"))
	assertNoSecrets(t, "/metrics", metrics, pw1, pw2, want1, want2)
	if !strings.Contains(logs, `"level":"debug"`) {
		t.Errorf("no debug lines logged; the leak check did not cover debug level")
	}
}

// TestAgentKeepsLastGoodOnInvalidSource: a rotation to a broken Secret
// leaves the files as they are, is reported naming the key, and a later
// good version is applied.
func TestAgentKeepsLastGoodOnInvalidSource(t *testing.T) {
	const reg = "r.example.test"
	root := t.TempDir()
	sec := newSecretDir(t, ".dockerconfigjson", dockerconfigjson(t, map[string]string{reg: "u:good-canary-1"}))
	agent := startAgent(t, "--source", "dir", "--secret-dir", sec.dir, "--host-root", root, "--metrics-addr", "0", "--log-level", "debug")
	kubelet := filepath.Join(root, kubeletFile)
	testsupport.Eventually(t, 20*time.Second, "first sync", func() bool { return authIn(kubelet, reg) == testsupport.B64("u:good-canary-1") })
	before := testsupport.ReadFile(t, kubelet)

	sec.swap(".dockerconfigjson", []byte(`{"auths":{"`+reg+`":{"auth":"`+testsupport.B64("no-colon-canary-2")+`"}}}`))
	testsupport.Eventually(t, 5*time.Second, "the invalid source reported", func() bool {
		return strings.Contains(agent.logs.String(), `registry \"r.example.test\": \"auth\" does not decode to user:password`)
	})
	if string(testsupport.ReadFile(t, kubelet)) != string(before) {
		t.Errorf("an invalid source changed the node file")
	}
	sec.swap(".dockerconfigjson", dockerconfigjson(t, map[string]string{reg: "u:good-canary-3"}))
	testsupport.Eventually(t, 5*time.Second, "the next good version applied", func() bool { return authIn(kubelet, reg) == testsupport.B64("u:good-canary-3") })
	agent.stop(t)
	assertNoSecrets(t, "agent logs", agent.logs.String(), "good-canary-1", "no-colon-canary-2", testsupport.B64("no-colon-canary-2"), "good-canary-3")
}

func httpStatus(url string) int {
	resp, err := http.Get(url)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

func httpBody(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
