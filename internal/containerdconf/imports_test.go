package containerdconf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/nodecreds/nodecreds/internal/hostfs"
	"github.com/nodecreds/nodecreds/internal/testsupport"
)

// TestLoadBoundsImportFanOut: one size-limited file must not make the
// agent list or queue without end. A glob repeated in imports, or one
// that fans out over every folder of the node, is refused with
// ErrImport after a bounded amount of work.
func TestLoadBoundsImportFanOut(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, root string)
	}{
		{"one glob repeated", func(t *testing.T, root string) {
			for i := range 100 {
				testsupport.WriteFile(t, filepath.Join(root, fmt.Sprintf("etc/containerd/d/%03d.toml", i)), "version = 2\n", 0o600)
			}
			imports := strings.Repeat(`"/etc/containerd/d/*.toml",`, 5000)
			testsupport.WriteFile(t, filepath.Join(root, "etc/containerd/config.toml"), "version = 2\nimports = ["+imports+"]\n", 0o600)
		}},
		{"one path repeated, in files that import each other", func(t *testing.T, root string) {
			for i := range 200 {
				imports := strings.Repeat(fmt.Sprintf(`"%03d.toml",`, (i+1)%200), 2000)
				testsupport.WriteFile(t, filepath.Join(root, fmt.Sprintf("etc/containerd/%03d.toml", i)), "imports = ["+imports+`"config.toml"]`+"\n", 0o600)
			}
			testsupport.WriteFile(t, filepath.Join(root, "etc/containerd/config.toml"), `imports = ["000.toml"]`+"\n", 0o600)
		}},
		{"a glob over every folder", func(t *testing.T, root string) {
			for i := range 40 {
				for j := range 40 {
					if err := os.MkdirAll(filepath.Join(root, fmt.Sprintf("a%d/b%d", i, j)), 0o700); err != nil {
						t.Fatal(err)
					}
				}
			}
			testsupport.WriteFile(t, filepath.Join(root, "etc/containerd/config.toml"), `imports = ["/*/*/*/*.toml"]`+"\n", 0o600)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			tc.setup(t, root)
			r, err := hostfs.OpenRoot(root)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			_, err = Load(r, "/etc/containerd/config.toml")
			runtime.ReadMemStats(&after)
			if !errors.Is(err, ErrImport) {
				t.Errorf("Load = %v, want ErrImport (too many imports)", err)
			}
			// The file itself is read into memory (up to 1 MiB, decoded);
			// what follows from it must stay of that order.
			if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 48<<20 {
				t.Errorf("Load allocated %d MiB", alloc>>20)
			}
		})
	}
}

// TestLoadImports: the bounds leave ordinary configurations alone: a
// relative import, a glob, an import cycle and a path imported twice.
func TestLoadImports(t *testing.T) {
	root := t.TempDir()
	testsupport.WriteFile(t, filepath.Join(root, "etc/containerd/config.toml"),
		"version = 2\nimports = [\"conf.d/*.toml\", \"/etc/containerd/conf.d/b.toml\", \"config.toml\"]\n", 0o600)
	testsupport.WriteFile(t, filepath.Join(root, "etc/containerd/conf.d/a.toml"),
		"version = 2\nimports = [\"../config.toml\"]\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/x\"\n", 0o600)
	testsupport.WriteFile(t, filepath.Join(root, "etc/containerd/conf.d/b.toml"),
		"version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\"\n", 0o600)
	r, err := hostfs.OpenRoot(root)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	c, err := Load(r, "/etc/containerd/config.toml")
	if err != nil {
		t.Fatal(err)
	}
	want := "/etc/containerd/config.toml /etc/containerd/conf.d/a.toml /etc/containerd/conf.d/b.toml"
	if got := strings.Join(c.Files, " "); got != want {
		t.Errorf("files %s, want %s", got, want)
	}
	if strings.Join(c.ConfigPaths, ":") != "/etc/containerd/certs.d" {
		t.Errorf("config_path %v, want the last file's", c.ConfigPaths)
	}
}
