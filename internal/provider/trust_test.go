package provider

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nodecreds/nodecreds/internal/testsupport"
)

// TestInstallRefusesFoldersOthersCanWrite: the kubelet runs the plugin as
// root, so whoever can write in its folder, or in a folder above it under
// the host root, can replace it. Such a folder — group- or world-writable,
// or owned by a user other than root — is refused with the fix named,
// and nothing is installed; a sticky world-writable folder above (/tmp's
// mode) is not a way in and is accepted.
func TestInstallRefusesFoldersOthersCanWrite(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root to give folders to another user (make test runs as root)")
	}
	src := filepath.Join(t.TempDir(), "nodecreds")
	testsupport.WriteFile(t, src, "binary", 0o755)
	const dir = "/opt/nodecreds/bin"
	mkdir := func(t *testing.T, root, p string, mode os.FileMode, uid int) {
		t.Helper()
		full := filepath.Join(root, p)
		if err := os.MkdirAll(full, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(full, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(full, uid, uid); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name    string
		prepare func(t *testing.T, root string)
		want    []string // in the error; none: installed
	}{
		{"plugin folder world-writable", func(t *testing.T, root string) { mkdir(t, root, dir, 0o777, 0) },
			[]string{"/opt/nodecreds/bin", "0777", "chmod go-w /opt/nodecreds/bin"}},
		{"plugin folder group-writable", func(t *testing.T, root string) { mkdir(t, root, dir, 0o775, 0) },
			[]string{"/opt/nodecreds/bin", "0775", "chmod go-w"}},
		{"plugin folder sticky and world-writable", func(t *testing.T, root string) { mkdir(t, root, dir, 0o777|os.ModeSticky, 0) },
			[]string{"/opt/nodecreds/bin", "chmod go-w"}},
		{"plugin folder owned by a user", func(t *testing.T, root string) { mkdir(t, root, dir, 0o755, 1000) },
			[]string{"/opt/nodecreds/bin", "uid 1000", "chown root /opt/nodecreds/bin"}},
		{"a folder above world-writable", func(t *testing.T, root string) { mkdir(t, root, "/opt", 0o777, 0) },
			[]string{"/opt", "0777", "chmod go-w /opt"}},
		{"a folder above owned by a user", func(t *testing.T, root string) { mkdir(t, root, "/opt/nodecreds", 0o755, 1000) },
			[]string{"/opt/nodecreds", "uid 1000", "chown root"}},
		{"the host root world-writable", func(t *testing.T, root string) { mkdir(t, root, "/", 0o777, 0) },
			[]string{"chmod go-w /"}},
		{"a link to a world-writable folder", func(t *testing.T, root string) {
			mkdir(t, root, "/srv/plugins", 0o777, 0)
			mkdir(t, root, "/opt", 0o755, 0)
			if err := os.Symlink("/srv/plugins", filepath.Join(root, "opt/nodecreds")); err != nil {
				t.Fatal(err)
			}
		}, []string{"/srv/plugins", "chmod go-w /srv/plugins"}},
		{"a sticky world-writable folder above", func(t *testing.T, root string) { mkdir(t, root, "/opt", 0o777|os.ModeSticky, 0) }, nil},
		{"a fresh node", nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			if tt.prepare != nil {
				tt.prepare(t, root)
			}
			_, err := install(src, root, dir, "nodecreds")
			installed := false
			_ = filepath.WalkDir(root, func(p string, d os.DirEntry, _ error) error {
				installed = installed || d != nil && d.Type().IsRegular() && d.Name() == "nodecreds"
				return nil
			})
			if tt.want == nil {
				if err != nil || !installed {
					t.Fatalf("install: %v (installed %v), want it installed", err, installed)
				}
				return
			}
			if err == nil {
				t.Fatal("installed into a folder others can write")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			if installed {
				t.Error("the plugin was installed all the same")
			}
		})
	}
}
