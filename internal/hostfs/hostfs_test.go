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

// TestPseudoFileSystemsRefused: a "regular" file of a kernel pseudo file
// system (procfs, sysfs, ...), whose reads may wait for ever (tracefs'
// trace_pipe), is refused before it is read, through a folder handle and
// by path alike.
func TestPseudoFileSystemsRefused(t *testing.T) {
	tests := []struct{ root, dir, name string }{
		{"/proc", "/self", "status"},
		{"/proc", "/", "uptime"},
		{"/sys", "/kernel", "uevent_seqnum"},
	}
	for _, tt := range tests {
		t.Run(filepath.Join(tt.root, tt.dir, tt.name), func(t *testing.T) {
			r, err := OpenRoot(tt.root)
			if err != nil {
				t.Fatalf("%v (the test needs %s mounted)", err, tt.root)
			}
			defer r.Close()
			d, err := r.OpenDir(tt.dir, false, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			if _, _, err := d.ReadFile(tt.name, MaxFileSize); !errors.Is(err, ErrNotRegular) {
				t.Errorf("read through a folder handle: err = %v, want ErrNotRegular", err)
			}
			if f, _, err := OpenRegular(filepath.Join(tt.root, tt.dir, tt.name)); !errors.Is(err, ErrNotRegular) {
				if f != nil {
					f.Close()
				}
				t.Errorf("opened by path: err = %v, want ErrNotRegular", err)
			}
		})
	}
	// A file of an ordinary file system still opens.
	d, dir := openDir(t)
	write(t, filepath.Join(dir, "f"), "x")
	if _, _, err := d.ReadFile("f", MaxFileSize); err != nil {
		t.Fatal(err)
	}
}

// TestWriteSymlink: a link replaces whatever is at the name (file, link,
// dangling link) in one rename, stores its target as given, leaves no
// temp name, and Readlink tells a link from a file and from nothing.
func TestWriteSymlink(t *testing.T) {
	for _, tt := range []struct {
		name    string
		prepare func(t *testing.T, dir string)
	}{
		{name: "nothing there"},
		{name: "a file", prepare: func(t *testing.T, dir string) {
			if err := os.WriteFile(filepath.Join(dir, "l"), []byte("x"), 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "a link elsewhere", prepare: func(t *testing.T, dir string) {
			if err := os.Symlink("/etc/passwd", filepath.Join(dir, "l")); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			host := t.TempDir()
			if tt.prepare != nil {
				tt.prepare(t, host)
			}
			r, err := OpenRoot(host)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			d, err := r.OpenDir("/", false, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			if err := d.WriteSymlink("l", "target"); err != nil {
				t.Fatal(err)
			}
			if got, err := d.Readlink("l"); err != nil || got != "target" {
				t.Errorf("Readlink = %q, %v", got, err)
			}
			if entries, _ := os.ReadDir(host); len(entries) != 1 {
				t.Errorf("folder holds %v, want the link only", entries)
			}
			if err := os.WriteFile(filepath.Join(host, "f"), nil, 0o600); err != nil {
				t.Fatal(err)
			}
			if _, err := d.Readlink("f"); !errors.Is(err, ErrNotLink) {
				t.Errorf("Readlink of a file: %v, want ErrNotLink", err)
			}
			if _, err := d.Readlink("none"); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("Readlink of nothing: %v, want fs.ErrNotExist", err)
			}
		})
	}
}
