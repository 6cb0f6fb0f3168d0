// Package testsupport holds the small helpers every test package of this
// repository (both modules) needs, written once.
package testsupport

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// B64 is padded standard base64, as an auths entry's "auth" holds it.
func B64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// WriteFile writes content to path with mode, creating missing folders
// (0700), and sets mode exactly (whatever the umask).
func WriteFile(t testing.TB, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

// ReadFile reads path or fails the test.
func ReadFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// FreeAddr returns a free 127.0.0.1 address (host:port).
func FreeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// LoginWriter writes path the way `docker login` does, n times in a
// goroutine: read it, add the entry key(i) (auth "dzpw"), write a temp file
// and rename it over path, pausing between writes. The channel yields the
// first error, or nil once all n are written.
func LoginWriter(path string, n int, key func(i int) string, pause time.Duration) <-chan error {
	done := make(chan error, 1)
	go func() {
		for i := range n {
			if err := loginOnce(path, key(i)); err != nil {
				done <- err
				return
			}
			time.Sleep(pause)
		}
		done <- nil
	}()
	return done
}

func loginOnce(path, key string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		return fmt.Errorf("the writer read invalid JSON: %w", err)
	}
	a, _ := m["auths"].(map[string]any)
	if a == nil {
		a = map[string]any{}
		m["auths"] = a
	}
	a[key] = map[string]any{"auth": "dzpw"}
	out, err := json.Marshal(m)
	if err != nil {
		return err
	}
	tmp := path + ".login-tmp"
	if err := os.WriteFile(tmp, out, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// BuildNodecreds builds ./cmd/nodecreds of the checkout at repoRoot into
// out with extra go build flags (-race, -trimpath, ...), for tests that run
// the real binary.
func BuildNodecreds(repoRoot, out string, flags ...string) error {
	args := append(append([]string{"build"}, flags...), "-o", out, "./cmd/nodecreds")
	cmd := exec.Command("go", args...)
	cmd.Dir = repoRoot
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("building nodecreds (%v): %w", flags, err)
	}
	return nil
}

// BuildRelease builds ./cmd/nodecreds of the checkout at repoRoot into out
// the way a release is built (the Dockerfile's flags: no cgo, no symbols),
// for tests whose measurements must be the released binary's (memory,
// timing) and for the upgrade tests' earlier releases; version, when not
// empty, is what `nodecreds version` says.
func BuildRelease(repoRoot, out, version string) error {
	ldflags := "-s -w"
	if version != "" {
		ldflags += " -X main.version=" + version
	}
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", ldflags, "-o", out, "./cmd/nodecreds")
	cmd.Dir = repoRoot
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("building nodecreds as released: %w", err)
	}
	return nil
}

// Buffer is a bytes.Buffer safe for a child process's output and the test
// reading it at once.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// WaitFor polls cond every period until it holds, ctx ends or within
// passes; then the error names what it waited for. Tests use it through
// Eventually; the demo, the benchmark and the soak, which run outside a
// test, call it directly.
func WaitFor(ctx context.Context, within, every time.Duration, what string, cond func() bool) error {
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s waiting for %s", within, what)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(every):
		}
	}
	return nil
}

// Eventually polls cond every 5 ms until it holds, and returns how long
// that took; at the deadline the test fails naming what it waited for. It
// is for waiting on another process.
func Eventually(t testing.TB, within time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	if err := WaitFor(context.Background(), within, 5*time.Millisecond, what, cond); err != nil {
		t.Fatal(err)
	}
	return time.Since(start)
}

// Start starts cmd with its output in the returned Buffer; at the end of
// the test the process is killed and, if the test failed, its output
// logged under name.
func Start(t testing.TB, name string, cmd *exec.Cmd) *Buffer {
	t.Helper()
	out := &Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("%s output:\n%s", name, out.String())
		}
	})
	return out
}
