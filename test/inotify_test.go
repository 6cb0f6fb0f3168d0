package test

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nodecreds/nodecreds/internal/testsupport"
)

// hogEnv makes the test binary a helper that takes every inotify instance
// its user may have, says how many, and holds them until stdin closes.
const hogEnv = "NODECREDS_TEST_INOTIFY_HOG"

func hogInotify() {
	n := 0
	for {
		if _, err := unix.InotifyInit1(unix.IN_CLOEXEC); err != nil {
			fmt.Printf("exhausted after %d: %v\n", n, err)
			break
		}
		n++
	}
	_, _ = io.Copy(io.Discard, os.Stdin)
	os.Exit(0)
}

// hogUID is a user no process on this machine runs as: the limit
// (fs.inotify.max_user_instances) is per user, so exhausting it for this
// one leaves root's containerd, kubelet and tests alone.
const hogUID = 47211

func asHogUser(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: hogUID, Gid: hogUID}}
}

// TestInotifyExhausted: with every inotify instance of its user taken (a
// busy node where containerd, the kubelet and log shippers hold them), the
// agent starts anyway, says once that it polls (log, metric), and still
// applies a Secret change and corrects drift.
func TestInotifyExhausted(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root to run the agent as another user (make test runs as root)")
	}
	// Everything the agent (as that user) needs: its binary, a root and a
	// Secret folder it owns.
	work := t.TempDir()
	bin := filepath.Join(work, "nodecreds")
	testsupport.WriteFile(t, bin, string(testsupport.ReadFile(t, plainBinary)), 0o755)
	root := filepath.Join(work, "root")
	const reg = "poll.example.test"
	sec := newSecretDir(t, ".dockerconfigjson", dockerconfigjson(t, map[string]string{reg: "u:inotify-canary-1"}))
	for _, dir := range []string{work, root, filepath.Dir(sec.dir), sec.dir} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	chownTree(t, work)
	chownTree(t, filepath.Dir(sec.dir))
	for d := filepath.Dir(work); d != "/"; d = filepath.Dir(d) {
		_ = os.Chmod(d, 0o755) // t.TempDir's parents are 0700
	}
	for d := filepath.Dir(filepath.Dir(sec.dir)); d != "/"; d = filepath.Dir(d) {
		_ = os.Chmod(d, 0o755)
	}

	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	helper := filepath.Join(work, "helper")
	testsupport.WriteFile(t, helper, string(testsupport.ReadFile(t, self)), 0o755)
	hog := exec.Command(helper)
	hog.Env = append(os.Environ(), hogEnv+"=1")
	asHogUser(hog)
	stdin, err := hog.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := hog.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := hog.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); _ = hog.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || !strings.Contains(line, "too many open files") {
		t.Fatalf("the helper did not exhaust its inotify instances: %q %v", line, err)
	}
	limit, _ := os.ReadFile("/proc/sys/fs/inotify/max_user_instances")
	t.Logf("helper: %s(fs.inotify.max_user_instances = %s)", line, strings.TrimSpace(string(limit)))

	addr := testsupport.FreeAddr(t)
	agent := exec.Command(bin, "sync", "--source", "dir", "--secret-dir", sec.dir, "--host-root", root, "--metrics-addr", addr, "--log-level", "debug")
	asHogUser(agent)
	logs := testsupport.Start(t, "agent", agent)
	kubelet := filepath.Join(root, kubeletFile)
	testsupport.Eventually(t, 15*time.Second, "the first sync without inotify", func() bool {
		return authIn(kubelet, reg) == testsupport.B64("u:inotify-canary-1")
	})
	testsupport.Eventually(t, 5*time.Second, "/readyz 200", func() bool { return httpStatus("http://"+addr+"/readyz") == 200 })

	sec.swap(".dockerconfigjson", dockerconfigjson(t, map[string]string{reg: "u:inotify-canary-2"}))
	took := testsupport.Eventually(t, 10*time.Second, "a ..data swap seen by polling", func() bool {
		return authIn(kubelet, reg) == testsupport.B64("u:inotify-canary-2")
	})
	t.Logf("..data swap to the kubelet file while polling: %s", took)

	testsupport.WriteFile(t, kubelet, `{"auths":{}}`, 0o600)
	took = testsupport.Eventually(t, 10*time.Second, "drift corrected by polling", func() bool {
		return authIn(kubelet, reg) == testsupport.B64("u:inotify-canary-2")
	})
	t.Logf("drift to corrected while polling: %s", took)

	metrics := httpBody(t, "http://"+addr+"/metrics")
	for _, watch := range []string{"sources", "targets"} {
		if want := `nodecreds_watch_polling{watch="` + watch + `"} 1`; !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if n := strings.Count(logs.String(), "inotify unavailable; polling instead"); n != 2 {
		t.Errorf("the agent said it polls %d times, want once per watch (2)", n)
	}
	// Still running and healthy (ProcessState is only set by Wait, so it
	// cannot tell; the health endpoint can).
	if code := httpStatus("http://" + addr + "/healthz"); code != 200 {
		t.Fatalf("/healthz = %d: the agent exited or is stuck", code)
	}
	assertNoSecrets(t, "agent logs", logs.String(), "inotify-canary-1", "inotify-canary-2")
}

func chownTree(t *testing.T, dir string) {
	t.Helper()
	err := filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, hogUID, hogUID)
	})
	if err != nil {
		t.Fatal(err)
	}
}
