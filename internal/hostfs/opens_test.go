package hostfs

import (
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// tree is a host root with a folder d in it, and a folder outside the
// root holding a file, for links to point at.
type tree struct {
	root, dir, outside string
	r                  *Root
	d                  *Dir
}

func newTree(t *testing.T) *tree {
	t.Helper()
	base := t.TempDir()
	tr := &tree{root: filepath.Join(base, "root"), outside: filepath.Join(base, "outside")}
	tr.dir = filepath.Join(tr.root, "d")
	for _, d := range []string{tr.dir, tr.outside} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	write(t, filepath.Join(tr.outside, "secret"), "outside")
	write(t, filepath.Join(tr.dir, "file"), "inside")
	var err error
	if tr.r, err = OpenRoot(tr.root); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.r.Close() })
	if tr.d, err = tr.r.OpenDir("/d", false, 0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.d.Close() })
	return tr
}

// special puts a file of the given kind at name in the folder.
func (tr *tree) special(t *testing.T, kind, name string) {
	t.Helper()
	p := filepath.Join(tr.dir, name)
	var err error
	switch kind {
	case "link in":
		err = os.Symlink("file", p)
	case "link out":
		err = os.Symlink(filepath.Join(tr.outside, "secret"), p)
	case "link climbing":
		err = os.Symlink("../../outside/secret", p)
	case "dangling link out":
		err = os.Symlink(filepath.Join(tr.outside, "new"), p)
	case "fifo":
		err = unix.Mkfifo(p, 0o600)
	case "folder":
		err = os.Mkdir(p, 0o700)
	case "socket":
		var l net.Listener
		if l, err = net.Listen("unix", p); err == nil {
			t.Cleanup(func() { l.Close() })
		}
	default:
		t.Fatalf("unknown kind %q", kind)
	}
	if err != nil {
		t.Fatalf("making a %s at %s: %v", kind, p, err)
	}
}

// untouched fails the test if the outside folder holds anything but its
// one file, as it was.
func (tr *tree) untouched(t *testing.T) {
	t.Helper()
	names, err := os.ReadDir(tr.outside)
	if err != nil {
		t.Fatal(err)
	}
	if len(names) != 1 || names[0].Name() != "secret" {
		t.Errorf("outside the root now holds %v", names)
	}
	if data, err := os.ReadFile(filepath.Join(tr.outside, "secret")); err != nil || string(data) != "outside" {
		t.Errorf("the file outside the root holds %q (%v)", data, err)
	}
	if fi, err := os.Stat(filepath.Join(tr.outside, "secret")); err == nil && fi.Mode().Perm() != 0o600 {
		t.Errorf("the file outside the root is mode %v", fi.Mode())
	}
}

// TestOpensRefuseAllButRegularFiles: every open through a folder handle
// refuses, without blocking and without following it, a symlink (to a
// file in the root, outside it, climbing out of it, or dangling), a FIFO,
// a socket and a folder at the name; nothing outside the root is read,
// created or changed.
func TestOpensRefuseAllButRegularFiles(t *testing.T) {
	kinds := []string{"link in", "link out", "link climbing", "dangling link out", "fifo", "socket", "folder"}
	opens := []struct {
		name string
		open func(d *Dir, name string) error
		// notRegular: the error is ErrNotRegular (otherwise any error).
		notRegular func(kind string) bool
	}{
		{"Open", func(d *Dir, name string) error {
			f, _, err := d.Open(name)
			closeIf(f)
			return err
		}, func(string) bool { return true }},
		{"ReadFile", func(d *Dir, name string) error {
			_, _, err := d.ReadFile(name, MaxFileSize)
			return err
		}, func(string) bool { return true }},
		{"OpenLock", func(d *Dir, name string) error {
			f, err := d.OpenLock(name)
			closeIf(f)
			return err
		}, func(kind string) bool { return kind != "folder" }}, // a folder opened to write is EISDIR
	}
	for _, o := range opens {
		for _, kind := range kinds {
			t.Run(o.name+"/"+kind, func(t *testing.T) {
				tr := newTree(t)
				tr.special(t, kind, "x")
				err := o.open(tr.d, "x")
				switch {
				case err == nil:
					t.Fatalf("%s of a %s succeeded", o.name, kind)
				case o.notRegular(kind) && !errors.Is(err, ErrNotRegular):
					t.Errorf("err = %v, want ErrNotRegular", err)
				}
				tr.untouched(t)
				if kind == "dangling link out" {
					if _, err := os.Lstat(filepath.Join(tr.outside, "new")); !errors.Is(err, fs.ErrNotExist) {
						t.Errorf("a file was created through the link: %v", err)
					}
				}
			})
		}
	}
}

func closeIf(f *os.File) {
	if f != nil {
		f.Close()
	}
}

// TestOpenRegularByPath: OpenRegular follows links (it reads a mounted
// Secret's ..data link) but refuses, without blocking, a FIFO, a socket
// and a folder; a missing file is fs.ErrNotExist.
func TestOpenRegularByPath(t *testing.T) {
	tests := []struct {
		kind    string
		wantErr error // nil: opens
	}{
		{"link in", nil},
		{"fifo", ErrNotRegular},
		{"socket", ErrNotRegular},
		{"folder", ErrNotRegular},
		{"", fs.ErrNotExist},
	}
	for _, tt := range tests {
		t.Run(tt.kind, func(t *testing.T) {
			tr := newTree(t)
			if tt.kind != "" {
				tr.special(t, tt.kind, "x")
			}
			f, _, err := OpenRegular(filepath.Join(tr.dir, "x"))
			closeIf(f)
			if !errors.Is(err, tt.wantErr) || (err == nil) != (tt.wantErr == nil) {
				t.Errorf("err = %v, want %v", err, tt.wantErr)
			}
		})
	}
}

// TestNamesAreSingle: every folder method takes one name, never a path:
// "..", ".", "", and names with a slash are refused before anything is
// touched, so no call through a folder handle reaches another folder.
func TestNamesAreSingle(t *testing.T) {
	calls := map[string]func(d *Dir, name string) error{
		"Open": func(d *Dir, name string) error {
			f, _, err := d.Open(name)
			closeIf(f)
			return err
		},
		"OpenLock": func(d *Dir, name string) error {
			f, err := d.OpenLock(name)
			closeIf(f)
			return err
		},
		"CreateExcl": func(d *Dir, name string) error {
			f, err := d.CreateExcl(name, 0o600)
			closeIf(f)
			return err
		},
		"StatName":        func(d *Dir, name string) error { _, err := d.StatName(name); return err },
		"Remove":          func(d *Dir, name string) error { return d.Remove(name) },
		"Rename to":       func(d *Dir, name string) error { return d.Rename("file", name) },
		"Rename from":     func(d *Dir, name string) error { return d.Rename(name, "moved") },
		"Exchange":        func(d *Dir, name string) error { return d.Exchange("file", name) },
		"RenameNoReplace": func(d *Dir, name string) error { return d.RenameNoReplace("file", name) },
		"Link":            func(d *Dir, name string) error { return d.Link("file", name) },
		"WriteFile": func(d *Dir, name string) error {
			return d.WriteFile(name, 0o600, func(*os.File) error { return nil })
		},
	}
	for call, fn := range calls {
		for _, name := range []string{"", ".", "..", "../outside/secret", "../../outside/secret", "sub/x", "/etc/passwd"} {
			t.Run(call+"/"+name, func(t *testing.T) {
				tr := newTree(t)
				if err := fn(tr.d, name); err == nil || !strings.Contains(err.Error(), "is not a single file name") {
					t.Errorf("err = %v, want a refusal of the name", err)
				}
				if data, err := os.ReadFile(filepath.Join(tr.dir, "file")); err != nil || string(data) != "inside" {
					t.Errorf("the folder's file now holds %q (%v)", data, err)
				}
				tr.untouched(t)
			})
		}
		if fn(nil, "..") == nil { // refused before the handle is used
			t.Errorf("%s of .. on a nil folder succeeded", call)
		}
	}
	if tr := newTree(t); tr.d.Exists("..") || tr.d.Exists("d/file") {
		t.Error("Exists took a path")
	}
}

// TestPathsStayInRoot: node paths resolve as the node sees them, under
// the root: an absolute link names a path under the root, ".." stops at
// the root, and a folder created on the way is created there, never
// outside.
func TestPathsStayInRoot(t *testing.T) {
	tests := []struct {
		name string
		link string // target of the link /d/l, "" for none
		node string // the path opened
		want string // where the folder opened is, relative to the root
	}{
		{"climbing dots", "", "/../../../d", "d"},
		{"climbing dots, created", "", "/../../new/a", "new/a"},
		{"absolute link out", "OUTSIDE", "/d/l", "OUTSIDE"},
		{"absolute link out, created below", "OUTSIDE", "/d/l/sub", "OUTSIDE/sub"},
		{"relative link climbing out", "../../../../../../..", "/d/l/new", "new"},
		{"link to the root", "/", "/d/l/d", "d"},
	}
	opens := map[string]func(r *Root, node string) (*Dir, error){
		"OpenDir": func(r *Root, node string) (*Dir, error) { return r.OpenDir(node, true, 0o700) },
		"OpenDirChain": func(r *Root, node string) (*Dir, error) {
			d, _, err := r.OpenDirChain(node, true, 0o700)
			return d, err
		},
		"OpenParent": func(r *Root, node string) (*Dir, error) {
			d, _, err := r.OpenParent(node+"/file", true, 0o700)
			return d, err
		},
		"Walk": func(r *Root, node string) (*Dir, error) {
			way, err := r.Walk(node+"/file", true, 0o700, nil)
			if err != nil {
				return nil, err
			}
			return way.Dir, nil
		},
	}
	for open, fn := range opens {
		for _, tt := range tests {
			t.Run(open+"/"+tt.name, func(t *testing.T) {
				tr := newTree(t)
				link := strings.ReplaceAll(tt.link, "OUTSIDE", tr.outside)
				if link != "" {
					if err := os.Symlink(link, filepath.Join(tr.dir, "l")); err != nil {
						t.Fatal(err)
					}
				}
				d, err := fn(tr.r, tt.node)
				if err != nil {
					t.Fatal(err)
				}
				defer d.Close()
				// Write through the handle; it must land under the root.
				if err := d.WriteFile("probe", 0o600, func(f *os.File) error {
					_, err := f.WriteString("probe")
					return err
				}); err != nil {
					t.Fatal(err)
				}
				want := filepath.Join(tr.root, strings.ReplaceAll(tt.want, "OUTSIDE", tr.outside), "probe")
				if data, err := os.ReadFile(want); err != nil || string(data) != "probe" {
					t.Errorf("%s holds %q (%v), want the probe", want, data, err)
				}
				tr.untouched(t)
			})
		}
	}
}

// TestRenamesNeverFollowLinks: a rename over, an exchange with, a removal
// of and a link to a symlink's name act on the link itself; the file it
// points at, outside the root, is never touched.
func TestRenamesNeverFollowLinks(t *testing.T) {
	tests := []struct {
		name    string
		op      func(d *Dir) error
		wantErr error
		want    string // what "x" is afterwards: "link", "file" (the new one) or "" (gone)
	}{
		{"Rename over", func(d *Dir) error { return d.Rename("file", "x") }, nil, "file"},
		{"RenameNoReplace over", func(d *Dir) error { return d.RenameNoReplace("file", "x") }, fs.ErrExist, "link"},
		{"Link over", func(d *Dir) error { return d.Link("file", "x") }, fs.ErrExist, "link"},
		{"CreateExcl over", func(d *Dir) error {
			f, err := d.CreateExcl("x", 0o600)
			closeIf(f)
			return err
		}, fs.ErrExist, "link"},
		{"Remove", func(d *Dir) error { return d.Remove("x") }, nil, ""},
		{"WriteFile over", func(d *Dir) error {
			return d.WriteFile("x", 0o600, func(f *os.File) error {
				_, err := f.WriteString("inside")
				return err
			})
		}, nil, "file"},
	}
	if !RenameFlagsOff {
		tests = append(tests, struct {
			name    string
			op      func(d *Dir) error
			wantErr error
			want    string
		}{"Exchange with", func(d *Dir) error { return d.Exchange("file", "x") }, nil, "file"})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := newTree(t)
			tr.special(t, "link out", "x")
			err := tt.op(tr.d)
			if !errors.Is(err, tt.wantErr) || (err == nil) != (tt.wantErr == nil) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			fi, err := os.Lstat(filepath.Join(tr.dir, "x"))
			switch tt.want {
			case "":
				if !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("x is still there (%v)", err)
				}
			case "link":
				if err != nil || fi.Mode()&fs.ModeSymlink == 0 {
					t.Errorf("x is no longer the link (%v)", err)
				}
			case "file":
				data, rerr := os.ReadFile(filepath.Join(tr.dir, "x"))
				if err != nil || !fi.Mode().IsRegular() || string(data) != "inside" {
					t.Errorf("x is not the new file: %v %q (%v, %v)", fi, data, err, rerr)
				}
			}
			tr.untouched(t)
		})
	}
}

// TestStaged: the atomic-file helper. The staged file has exactly the
// mode asked (whatever the umask), and each way of placing it does what it
// says, with or without renameat2's flags (-tags noexchange): a failed
// placement or fill leaves no temp file, the old file intact, and the
// exchange hands back the file it replaced.
func TestStaged(t *testing.T) {
	type result struct {
		err    error // errors.Is
		target string
		temp   string // content left under the temp name ("" none)
	}
	tests := []struct {
		name   string
		exists bool
		place  func(s *Staged) error
		want   result
		wantNo result // in a -tags noexchange build, when it differs
	}{
		{"Replace an existing file", true, func(s *Staged) error { return s.Replace("t") }, result{target: "new"}, result{}},
		{"Replace a missing file", false, func(s *Staged) error { return s.Replace("t") }, result{target: "new"}, result{}},
		{"Create a missing file", false, func(s *Staged) error { return s.Create("t") }, result{target: "new"}, result{}},
		{"Create over an existing file", true, func(s *Staged) error { return s.Create("t") }, result{err: fs.ErrExist, target: "old"}, result{}},
		{"Exchange with an existing file", true, func(s *Staged) error { return s.Exchange("t") }, result{target: "new", temp: "old"},
			result{err: ErrNoExchange, target: "old"}},
		{"Exchange with a missing file", false, func(s *Staged) error { return s.Exchange("t") }, result{err: fs.ErrNotExist, target: ""},
			result{err: ErrNoExchange, target: ""}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, dir := openDir(t)
			if tt.exists {
				write(t, filepath.Join(dir, "t"), "old")
			}
			old := syscall.Umask(0o077)
			s, err := d.Stage(".t.", 0o640, func(f *os.File) error {
				_, err := f.WriteString("new")
				return err
			})
			syscall.Umask(old)
			if err != nil {
				t.Fatal(err)
			}
			if s.Info().Mode != 0o640 || s.Info().Size != 3 {
				t.Errorf("staged file: mode %v size %d, want 0640 and 3", s.Info().Mode, s.Info().Size)
			}
			want := tt.want
			if RenameFlagsOff && tt.wantNo != (result{}) {
				want = tt.wantNo
			}
			err = tt.place(s)
			if !errors.Is(err, want.err) || (err == nil) != (want.err == nil) {
				t.Fatalf("err = %v, want %v", err, want.err)
			}
			temp := s.Temp()
			s.Discard()
			if data, _ := os.ReadFile(filepath.Join(dir, "t")); string(data) != want.target {
				t.Errorf("target holds %q, want %q", data, want.target)
			}
			data, err := os.ReadFile(filepath.Join(dir, temp))
			if want.temp == "" && !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("temp file %s left: %q (%v)", temp, data, err)
			}
			if want.temp != "" && string(data) != want.temp {
				t.Errorf("temp name holds %q, want %q", data, want.temp)
			}
			if fi, err := os.Stat(filepath.Join(dir, "t")); err == nil && fi.Sys().(*syscall.Stat_t).Nlink != 1 {
				t.Errorf("target has %d names", fi.Sys().(*syscall.Stat_t).Nlink)
			}
		})
	}
}

// TestStageFailureLeavesNothing: a fill that fails leaves no temp file,
// and WriteFile then leaves the old file as it was.
func TestStageFailureLeavesNothing(t *testing.T) {
	d, dir := openDir(t)
	write(t, filepath.Join(dir, "t"), "old")
	boom := errors.New("boom")
	err := d.WriteFile("t", 0o600, func(f *os.File) error {
		if _, err := f.WriteString("half"); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v, want the fill's", err)
	}
	names, err := d.Names()
	if err != nil {
		t.Fatal(err)
	}
	if len(names) != 1 || names[0] != "t" {
		t.Errorf("folder holds %v, want t alone", names)
	}
	if data, _ := os.ReadFile(filepath.Join(dir, "t")); string(data) != "old" {
		t.Errorf("t holds %q", data)
	}
}
