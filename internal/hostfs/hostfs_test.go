package hostfs

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func openDir(t *testing.T) (*Dir, string) {
	t.Helper()
	root := t.TempDir()
	r, err := OpenRoot(root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	d, err := r.OpenDir("/d", true, 0o700)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d, filepath.Join(root, "d")
}

// TestRenameNoReplace: whether the file system has RENAME_NOREPLACE or
// not (-tags noexchange), a rename never replaces what is at the new name,
// and otherwise leaves the file under the new name only.
func TestRenameNoReplace(t *testing.T) {
	tests := []struct {
		name    string
		exists  bool
		wantErr error
	}{
		{"free name", false, nil},
		{"taken name", true, fs.ErrExist},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, dir := openDir(t)
			write(t, filepath.Join(dir, "a"), "new")
			if tt.exists {
				write(t, filepath.Join(dir, "b"), "theirs")
			}
			err := d.RenameNoReplace("a", "b")
			if !errors.Is(err, tt.wantErr) || (err != nil) != (tt.wantErr != nil) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			want := map[string]string{"a": "", "b": "new"}
			if tt.exists {
				want = map[string]string{"a": "new", "b": "theirs"}
			}
			for name, content := range want {
				data, err := os.ReadFile(filepath.Join(dir, name))
				switch {
				case content == "" && !errors.Is(err, fs.ErrNotExist):
					t.Errorf("%s still there: %v", name, err)
				case content != "" && string(data) != content:
					t.Errorf("%s holds %q (%v), want %q", name, data, err, content)
				}
			}
			if fi, err := os.Stat(filepath.Join(dir, "b")); err == nil && fi.Sys().(*syscall.Stat_t).Nlink != 1 {
				t.Errorf("b has %d names", fi.Sys().(*syscall.Stat_t).Nlink)
			}
		})
	}
}

// TestExchangeFlags: the exchange works, or, in a -tags noexchange build,
// says ErrNoExchange and changes nothing.
func TestExchangeFlags(t *testing.T) {
	d, dir := openDir(t)
	write(t, filepath.Join(dir, "a"), "A")
	write(t, filepath.Join(dir, "b"), "B")
	err := d.Exchange("a", "b")
	want := map[string]string{"a": "B", "b": "A"}
	if RenameFlagsOff {
		if !errors.Is(err, ErrNoExchange) {
			t.Fatalf("err = %v, want ErrNoExchange", err)
		}
		want = map[string]string{"a": "A", "b": "B"}
	} else if err != nil {
		t.Fatal(err)
	}
	for name, content := range want {
		if data, _ := os.ReadFile(filepath.Join(dir, name)); string(data) != content {
			t.Errorf("%s holds %q, want %q", name, data, content)
		}
	}
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}
