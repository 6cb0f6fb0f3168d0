package test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nodecreds/nodecreds/internal/check/checktest"
	"github.com/nodecreds/nodecreds/internal/testsupport"
)

// TestProbeContactsOnlyTheRegistryAsked runs the real binary's `check
// --probe` through an HTTPS proxy that records every CONNECT: for
// --registry and --image alike, the only host contacted is the registry
// named. A bare --registry host used to be read as a Docker Hub repository,
// sending that registry's password to Docker Hub's token service.
func TestProbeContactsOnlyTheRegistryAsked(t *testing.T) {
	const canary = "probe-proxy-canary-pw"
	root := t.TempDir()
	writeNodeFile(t, filepath.Join(root, kubeletFile), `{"auths":{"reg.test":{"auth":"`+testsupport.B64("robot:"+canary)+`"},"reg.test:5443":{"auth":"`+testsupport.B64("robot:"+canary)+`"}}}`)
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--registry", "reg.test"}, "CONNECT reg.test:443"},
		{[]string{"--registry", "https://reg.test/"}, "CONNECT reg.test:443"},
		{[]string{"--registry", "reg.test:5443"}, "CONNECT reg.test:5443"},
		{[]string{"--image", "reg.test/team/app:v1"}, "CONNECT reg.test:443"},
		{[]string{"--image", "reg.test:5443/app@sha256:" + strings.Repeat("a", 64)}, "CONNECT reg.test:5443"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			rec := &checktest.RecordingProxy{}
			proxy := httptest.NewServer(rec)
			defer proxy.Close()
			cmd := []string{"check", "--host-root", root, "--probe", "--timeout", "5s", "-o", "json"}
			stdout, stderr, code := runEnv(t, []string{"HTTPS_PROXY=" + proxy.URL, "HTTP_PROXY=" + proxy.URL, "NO_PROXY="}, append(cmd, tt.args...)...)
			if code != 1 {
				t.Errorf("exit %d through a refusing proxy, want 1\n%s%s", code, stdout, stderr)
			}
			got := rec.Seen()
			if len(got) == 0 {
				t.Fatalf("the probe sent nothing through the proxy:\n%s%s", stdout, stderr)
			}
			for _, h := range got {
				if h != tt.want {
					t.Errorf("the probe contacted %q; want only %q (all: %v)", h, tt.want, got)
				}
			}
			assertNoSecrets(t, "output", stdout+stderr, canary, testsupport.B64("robot:"+canary))
		})
	}
}

// TestFIFOTargetDoesNotHangTheAgent: a FIFO at the kubelet file used to
// block the agent for good while it held the state lock. Now `sync --once`
// reports it at once and still syncs the other target; the daemon keeps
// applying rotations to the other target and stops on SIGTERM; `cleanup`
// returns.
func TestFIFOTargetDoesNotHangTheAgent(t *testing.T) {
	root := t.TempDir()
	fifo := filepath.Join(root, kubeletFile)
	if err := os.MkdirAll(filepath.Dir(fifo), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	secret := newSecretDir(t, ".dockerconfigjson", dockerconfigjson(t, map[string]string{"r.test": "u:fifo-canary-1"}))
	start := time.Now()
	_, stderr, code := run(t, "sync", "--once", "--source", "dir", "--secret-dir", secret.dir, "--host-root", root, "--metrics-addr", "0")
	if code != 1 || !strings.Contains(stderr, fifo) || !strings.Contains(stderr, "FIFO") {
		t.Errorf("sync --once: exit %d, want 1 and an error naming %s as a FIFO:\n%s", code, fifo, stderr)
	}
	if took := time.Since(start); took > 30*time.Second {
		t.Errorf("sync --once took %s", took)
	}
	if authIn(filepath.Join(root, dockerFile), "r.test") != testsupport.B64("u:fifo-canary-1") {
		t.Error("the other target was not synced")
	}

	addr := testsupport.FreeAddr(t)
	agent := startAgent(t, "--source", "dir", "--secret-dir", secret.dir, "--host-root", root, "--metrics-addr", addr)
	secret.swap(".dockerconfigjson", dockerconfigjson(t, map[string]string{"r.test": "u:fifo-canary-2"}))
	testsupport.Eventually(t, 20*time.Second, "the rotation on the other target", func() bool {
		return authIn(filepath.Join(root, dockerFile), "r.test") == testsupport.B64("u:fifo-canary-2")
	})
	resp, err := http.Get("http://" + addr + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		t.Errorf("/readyz says ready while a target cannot be synced: %s", body)
	}
	if c := agent.stop(t); c != 0 {
		t.Errorf("agent exit %d after SIGTERM", c)
	}
	done := make(chan int, 1)
	go func() { _, _, c := run(t, "cleanup", "--host-root", root); done <- c }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("cleanup blocked on the FIFO")
	}
	assertNoSecrets(t, "agent log", agent.logs.String(), "fifo-canary-1", "fifo-canary-2", testsupport.B64("u:fifo-canary-2"))
}

// TestSIGTERMWhileTheLockIsHeld: with the state lock held by another
// process, the agent (waiting for it) exits within 2 s of SIGTERM — the
// DaemonSet's grace period is 10 s — leaving every file as it was.
func TestSIGTERMWhileTheLockIsHeld(t *testing.T) {
	root := t.TempDir()
	before := `{"auths":{"keep.test":{"auth":"` + testsupport.B64("k:keep") + `"}}}`
	writeNodeFile(t, filepath.Join(root, kubeletFile), before)
	lockPath := filepath.Join(root, "var/lib/nodecreds/lock")
	if err := os.MkdirAll(filepath.Dir(lockPath), 0o700); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(lockPath, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	secret := newSecretDir(t, ".dockerconfigjson", dockerconfigjson(t, map[string]string{"r.test": "u:lock-canary"}))
	agent := startAgent(t, "--source", "dir", "--secret-dir", secret.dir, "--host-root", root, "--metrics-addr", "0")
	time.Sleep(time.Second) // the agent is now waiting for the lock
	start := time.Now()
	if err := agent.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-agent.done:
	case <-time.After(5 * time.Second):
		t.Fatal("the agent did not stop within 5 s of SIGTERM while waiting for the lock")
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("the agent took %s to stop after SIGTERM, want under 2 s", took)
	}
	if got := string(testsupport.ReadFile(t, filepath.Join(root, kubeletFile))); got != before {
		t.Errorf("the kubelet file changed: %s", got)
	}
	if _, err := os.Stat(filepath.Join(root, dockerFile)); err == nil {
		t.Error("the docker file was written while the lock was held")
	}
}
