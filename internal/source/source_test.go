package source

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/nodecreds/nodecreds/internal/dockercfg"
	"github.com/nodecreds/nodecreds/internal/testsupport"
)

var good = []byte(`{"auths":{"r.test":{"auth":"` + testsupport.B64("u:p") + `"}}}`)

func write(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestReadDir(t *testing.T) {
	tests := []struct {
		name    string
		setup   func(t *testing.T, dir string)
		wantErr error
		keys    int
	}{
		{"plain file", func(t *testing.T, d string) { write(t, filepath.Join(d, ".dockerconfigjson"), good) }, nil, 1},
		{"legacy key", func(t *testing.T, d string) {
			write(t, filepath.Join(d, ".dockercfg"), []byte(`{"r.test":{"auth":"`+testsupport.B64("u:p")+`"}}`))
		}, nil, 1},
		{"kubelet ..data layout", func(t *testing.T, d string) {
			write(t, filepath.Join(d, "..2026_01_01", ".dockerconfigjson"), good)
			if err := os.Symlink("..2026_01_01", filepath.Join(d, "..data")); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink("..data/.dockerconfigjson", filepath.Join(d, ".dockerconfigjson")); err != nil {
				t.Fatal(err)
			}
		}, nil, 1},
		{"no credentials key", func(t *testing.T, d string) { write(t, filepath.Join(d, "password"), []byte("x")) }, dockercfg.ErrInvalid, 0},
		{"missing folder", func(t *testing.T, d string) { os.RemoveAll(d) }, ErrNotFound, 0},
		{"oversized", func(t *testing.T, d string) {
			write(t, filepath.Join(d, ".dockerconfigjson"), []byte(`{"auths":{"r.test":{"auth":"`+strings.Repeat("A", dockercfg.MaxSize)+`"}}}`))
		}, dockercfg.ErrInvalid, 0},
		{"invalid", func(t *testing.T, d string) { write(t, filepath.Join(d, ".dockerconfigjson"), []byte("{")) }, dockercfg.ErrInvalid, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "secret")
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			tt.setup(t, dir)
			s := readDir(dir)
			if tt.wantErr != nil {
				if !errors.Is(s.Err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", s.Err, tt.wantErr)
				}
				if !strings.Contains(s.Err.Error(), dir) {
					t.Errorf("error %q does not name the folder", s.Err)
				}
				return
			}
			if s.Err != nil || len(s.Set) != tt.keys {
				t.Fatalf("snapshot = %+v", s)
			}
			if s.Revision == "" {
				t.Errorf("no revision")
			}
		})
	}
}

func TestDirNotifiesOnDataSwap(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "secret")
	write(t, filepath.Join(dir, "..a", ".dockerconfigjson"), good)
	if err := os.Symlink("..a", filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	d := NewDir([]string{dir}, logrus.NewEntry(logrus.New()))
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	// The first notification says the folder is watched.
	select {
	case <-d.Changed():
	case <-time.After(5 * time.Second):
		t.Fatal("no notification when the watch started")
	}
	write(t, filepath.Join(dir, "..b", ".dockerconfigjson"), good)
	if err := os.Symlink("..b", filepath.Join(dir, "..data_tmp")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.Changed():
	case <-time.After(5 * time.Second):
		t.Fatal("no notification for the ..data swap")
	}
	if rev := d.Snapshots()[0].Revision; rev != "..b" {
		t.Errorf("revision = %q, want ..b", rev)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestFromSecret(t *testing.T) {
	tests := []struct {
		name    string
		typ     corev1.SecretType
		data    map[string][]byte
		wantErr error
		reason  string
	}{
		{"dockerconfigjson", corev1.SecretTypeDockerConfigJson, map[string][]byte{".dockerconfigjson": good}, nil, ""},
		{"dockercfg", corev1.SecretTypeDockercfg, map[string][]byte{".dockercfg": []byte(`{"r.test":{"username":"u","password":"p"}}`)}, nil, ""},
		{"opaque", corev1.SecretTypeOpaque, map[string][]byte{".dockerconfigjson": good}, ErrUnsupportedType, "UnsupportedType"},
		{"wrong key for type", corev1.SecretTypeDockercfg, map[string][]byte{".dockerconfigjson": good}, dockercfg.ErrInvalid, "Invalid"},
		{"oversized", corev1.SecretTypeDockerConfigJson, map[string][]byte{".dockerconfigjson": make([]byte, dockercfg.MaxSize+1)}, dockercfg.ErrInvalid, "Invalid"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "s", UID: "u1", ResourceVersion: "7"}, Type: tt.typ, Data: tt.data}
			s := FromSecret(sec)
			if !errors.Is(s.Err, tt.wantErr) && !(tt.wantErr == nil && s.Err == nil) {
				t.Fatalf("err = %v, want %v", s.Err, tt.wantErr)
			}
			if s.Reason() != tt.reason {
				t.Errorf("reason = %q, want %q", s.Reason(), tt.reason)
			}
			if s.Name != "ns/s" || s.Revision != "u1/7" {
				t.Errorf("name %q revision %q", s.Name, s.Revision)
			}
			if s.Err != nil && !strings.Contains(s.Err.Error(), "ns/s") {
				t.Errorf("error %q does not name the Secret", s.Err)
			}
		})
	}
}

// TestSecretsScopedInformers checks precedence and the missing-Secret
// snapshot through client-go's fake clientset (a narrow unit test; the real
// API server path is in test/).
func TestSecretsScopedInformers(t *testing.T) {
	client := fake.NewClientset(
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "b", UID: "ub", ResourceVersion: "1"}, Type: corev1.SecretTypeDockerConfigJson, Data: map[string][]byte{".dockerconfigjson": good}},
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "a", UID: "ua", ResourceVersion: "2"}, Type: corev1.SecretTypeDockerConfigJson, Data: map[string][]byte{".dockerconfigjson": good}},
	)
	s := NewSecrets(client, "ns", []string{"b", "missing", "a"}, "", logrus.NewEntry(logrus.New()))
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go func() { _ = s.Run(ctx) }()
	select {
	case <-s.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("caches did not sync")
	}
	snaps := s.Snapshots()
	if len(snaps) != 3 || snaps[0].Name != "ns/b" || snaps[2].Name != "ns/a" {
		t.Fatalf("snapshots not in --secret order: %+v", snaps)
	}
	if !errors.Is(snaps[1].Err, ErrNotFound) {
		t.Errorf("missing Secret: %v", snaps[1].Err)
	}
	if Revision(snaps) == Revision(snaps[:2]) {
		t.Errorf("revision does not depend on every source")
	}
}

// A FIFO where a Secret key should be is refused at once, naming it.
func TestReadDirRefusesFIFO(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, dockercfg.KeyConfigJSON)
	if err := unix.Mkfifo(p, 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan Snapshot, 1)
	go func() { done <- readDir(dir) }()
	select {
	case s := <-done:
		if s.Err == nil || !strings.Contains(s.Err.Error(), p) || !strings.Contains(s.Err.Error(), "FIFO") {
			t.Errorf("want an error naming %s as a FIFO, got %v", p, s.Err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("reading the folder blocked on a FIFO")
	}
}
