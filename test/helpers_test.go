// Package test holds end-to-end tests that run the real nodecreds binary
// against real folders and read its files with the real consumers.
package test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/nodecreds/nodecreds/internal/testsupport"
)

// binary is the nodecreds binary built once for the whole package, with
// the race detector; plainBinary is built as released (no cgo, no
// symbols), for tests where the detector would distort timing (kill -9 at
// random points) or memory (the memory limit).
var binary, plainBinary string

func TestMain(m *testing.M) {
	if os.Getenv(hogEnv) != "" {
		hogInotify() // a helper process of TestInotifyExhausted
		return
	}
	if bin := os.Getenv(netnsEnv); bin != "" {
		probeInNetns(bin) // a helper process of TestProbeThroughAProxyReachesTheRegistryItself
		return
	}
	if bin := os.Getenv(hostsNetnsEnv); bin != "" {
		probeWithHosts(bin) // a helper process of TestProbeSendsNoCredentialWhereItDoesNotBelong
		return
	}
	// The agents these tests run name registries nothing answers for:
	// a verification login would look those names up in the machine's
	// DNS, traffic to another address. Tests of verification pass
	// --verify=on against a registry on 127.0.0.1.
	if err := os.Setenv("NODECREDS_VERIFY", "off"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	dir, err := os.MkdirTemp("", "nodecreds-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "nodecreds")
	plainBinary = filepath.Join(dir, "nodecreds-plain")
	chartTool = filepath.Join(dir, "chart")
	for _, build := range []func() error{
		func() error { return testsupport.BuildNodecreds("..", binary, "-race") },
		func() error { return testsupport.BuildRelease("..", plainBinary, "") },
		func() error { return buildChartTool(chartTool) },
	} {
		if err := build(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// dockerconfigjson builds a .dockerconfigjson document from registry →
// user:password pairs.
func dockerconfigjson(t *testing.T, creds map[string]string) []byte {
	t.Helper()
	auths := map[string]any{}
	for reg, up := range creds {
		auths[reg] = map[string]string{"auth": testsupport.B64(up)}
	}
	b, err := json.Marshal(map[string]any{"auths": auths})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// secretDir lays out a folder the way the kubelet mounts a Secret: the data
// in a timestamped folder, ..data pointing at it, and each key a link
// through ..data.
type secretDir struct {
	t   *testing.T
	dir string
	n   int
}

func newSecretDir(t *testing.T, key string, data []byte) *secretDir {
	t.Helper()
	s := &secretDir{t: t, dir: filepath.Join(t.TempDir(), "secret")}
	if err := os.MkdirAll(s.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	s.swap(key, data)
	if err := os.Symlink(filepath.Join("..data", key), filepath.Join(s.dir, key)); err != nil {
		t.Fatal(err)
	}
	return s
}

// swap publishes new data as the kubelet's AtomicWriter does: write a new
// timestamped folder, point ..data_tmp at it, rename over ..data, remove
// the old folder.
func (s *secretDir) swap(key string, data []byte) {
	s.t.Helper()
	s.n++
	ts := fmt.Sprintf("..2026_11_26_10_00_%02d.%09d", s.n, s.n)
	if err := os.MkdirAll(filepath.Join(s.dir, ts), 0o755); err != nil {
		s.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(s.dir, ts, key), data, 0o644); err != nil {
		s.t.Fatal(err)
	}
	old, _ := os.Readlink(filepath.Join(s.dir, "..data"))
	tmp := filepath.Join(s.dir, "..data_tmp")
	if err := os.Symlink(ts, tmp); err != nil {
		s.t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(s.dir, "..data")); err != nil {
		s.t.Fatal(err)
	}
	if old != "" {
		if err := os.RemoveAll(filepath.Join(s.dir, old)); err != nil {
			s.t.Fatal(err)
		}
	}
}

// agentProc is a running `nodecreds sync`.
type agentProc struct {
	cmd  *exec.Cmd
	logs *testsupport.Buffer
	done chan error // the exit, once; tests may take it
	// exited is closed once the process is waited for, so cleanup can tell
	// without reading ProcessState while Wait writes it.
	exited chan struct{}
}

func startAgent(t *testing.T, args ...string) *agentProc {
	t.Helper()
	return startAgentOf(t, binary, args...)
}

// startAgentOf runs `sync` of the nodecreds binary bin (another release's,
// in the upgrade tests).
func startAgentOf(t *testing.T, bin string, args ...string) *agentProc {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"sync"}, args...)...)
	p := &agentProc{cmd: cmd, logs: &testsupport.Buffer{}, done: make(chan error, 1), exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.logs, p.logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.done <- cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = cmd.Process.Kill()
			<-p.exited
		}
		if t.Failed() {
			t.Logf("agent logs:\n%s", p.logs.String())
		}
	})
	return p
}

// stop sends SIGTERM and returns the exit code.
func (p *agentProc) stop(t *testing.T) int {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode()
	case <-time.After(10 * time.Second):
		t.Fatal("agent did not stop within 10s of SIGTERM")
		return -1
	}
}

// run runs nodecreds to completion and returns stdout, stderr and the exit code.
func run(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	return runEnv(t, nil, args...)
}

// authIn returns the auth of key in a config.json, or "" when absent or
// unreadable.
func authIn(path, key string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	var doc struct {
		Auths map[string]struct {
			Auth string `json:"auth"`
		} `json:"auths"`
	}
	if json.Unmarshal(data, &doc) != nil {
		return ""
	}
	return doc.Auths[key].Auth
}

// assertNoSecrets fails when any canary value shows up in text.
func assertNoSecrets(t *testing.T, where, text string, secrets ...string) {
	t.Helper()
	for _, s := range secrets {
		if s != "" && strings.Contains(text, s) {
			t.Errorf("%s contains a secret value (%d chars)", where, len(s))
		}
	}
}

// runEnv is run with extra environment variables.
func runEnv(t *testing.T, env []string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		if ee := (*exec.ExitError)(nil); !errors.As(err, &ee) {
			t.Fatalf("running nodecreds %v: %v", args, err)
		}
	}
	return out.String(), errb.String(), cmd.ProcessState.ExitCode()
}

// nodeEvents counts the Events of reason recorded on Node node (in
// default, where the agent records them).
func nodeEvents(t *testing.T, client kubernetes.Interface, node, reason string) int {
	t.Helper()
	events, err := client.CoreV1().Events("default").List(t.Context(), metav1.ListOptions{FieldSelector: "involvedObject.name=" + node})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range events.Items {
		if e.Reason == reason {
			n++
		}
	}
	return n
}
