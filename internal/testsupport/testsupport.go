// Package testsupport holds the small helpers every test package of this
// repository (both modules) needs, written once.
package testsupport

import (
	"encoding/base64"
	"net"
	"os"
	"path/filepath"
	"testing"
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
