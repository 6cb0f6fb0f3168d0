package provider

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	securejoin "github.com/cyphar/filepath-securejoin"
	"golang.org/x/sys/unix"

	"github.com/nodecreds/nodecreds/internal/hostfs/hostfstest"
	"github.com/nodecreds/nodecreds/internal/testsupport"
)

func TestInstall(t *testing.T) {
	src := filepath.Join(t.TempDir(), "nodecreds")
	if err := os.WriteFile(src, []byte("binary v2"), 0o755); err != nil {
		t.Fatal(err)
	}
	const dir = "/opt/nodecreds/bin"
	tests := []struct {
		name        string
		prepare     func(t *testing.T, root string)
		wantChanged bool
		wantErr     string
	}{
		{name: "fresh node: folder and binary created", wantChanged: true},
		{name: "older binary replaced", wantChanged: true, prepare: func(t *testing.T, root string) {
			testsupport.WriteFile(t, filepath.Join(root, dir, "nodecreds"), "binary v1", 0o755)
		}},
		{name: "same binary left alone, made executable", wantChanged: false, prepare: func(t *testing.T, root string) {
			testsupport.WriteFile(t, filepath.Join(root, dir, "nodecreds"), "binary v2", 0o600)
		}},
		{name: "absolute symlink stays under the host root", wantChanged: true, prepare: func(t *testing.T, root string) {
			if err := os.MkdirAll(filepath.Join(root, "opt"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.MkdirAll(filepath.Join(root, "srv/plugins"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink("/srv/plugins", filepath.Join(root, "opt/nodecreds")); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "a file where the folder should be", wantErr: "/opt/nodecreds/bin", prepare: func(t *testing.T, root string) {
			testsupport.WriteFile(t, filepath.Join(root, "opt/nodecreds/bin"), "not a folder", 0o644)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			if tt.prepare != nil {
				tt.prepare(t, root)
			}
			got, err := install(src, root, dir, "nodecreds")
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err %v, want one naming %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Path != "/opt/nodecreds/bin/nodecreds" || got.Changed != tt.wantChanged {
				t.Errorf("Installed %+v, want changed=%v", got, tt.wantChanged)
			}
			// Where the node sees the folder, symlinks taken under root.
			host, err := securejoin.SecureJoin(root, dir)
			if err != nil || !strings.HasPrefix(host, root+"/") {
				t.Fatalf("plugin folder resolves to %s (%v)", host, err)
			}
			fi, err := os.Stat(filepath.Join(host, "nodecreds"))
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != 0o755 {
				t.Errorf("mode %v, want 0755", fi.Mode().Perm())
			}
			if b, _ := os.ReadFile(filepath.Join(host, "nodecreds")); !bytes.Equal(b, []byte("binary v2")) {
				t.Errorf("content %q", b)
			}
			entries, _ := os.ReadDir(host)
			if len(entries) != 1 {
				t.Errorf("left behind in the plugin folder: %v", entries)
			}
		})
	}
}

// An identical binary is not rewritten: a kubelet exec and the agent's
// restart never race on the file.
func TestInstallIdenticalKeepsFile(t *testing.T) {
	src := filepath.Join(t.TempDir(), "nodecreds")
	testsupport.WriteFile(t, src, "same", 0o755)
	root := t.TempDir()
	if _, err := install(src, root, "/bin-dir", "nodecreds"); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(root, "bin-dir/nodecreds")
	old := time.Now().Add(-time.Hour)
	if err := os.Chtimes(dst, old, old); err != nil {
		t.Fatal(err)
	}
	before, _ := os.Stat(dst)
	res, err := install(src, root, "/bin-dir", "nodecreds")
	if err != nil || res.Changed {
		t.Fatalf("second install: %+v %v", res, err)
	}
	after, _ := os.Stat(dst)
	if !os.SameFile(before, after) || !after.ModTime().Equal(before.ModTime()) {
		t.Error("the identical binary was rewritten")
	}
}

// The plugin folder swapped for a link to an outside folder while installs
// run: nothing may land outside the host root.
func TestInstallNeverEscapesRoot(t *testing.T) {
	parent := t.TempDir()
	root := filepath.Join(parent, "root")
	outside := filepath.Join(parent, "outside")
	bin := filepath.Join(root, "opt/nodecreds/bin")
	for _, d := range []string{outside, bin} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	srcs := []string{filepath.Join(parent, "v1"), filepath.Join(parent, "v2")}
	testsupport.WriteFile(t, srcs[0], "binary v1", 0o755)
	testsupport.WriteFile(t, srcs[1], "binary v2", 0o755)
	s := hostfstest.SwapWithLink(t, []string{bin}, []string{outside})
	deadline := time.Now().Add(2 * time.Second)
	runs := 0
	for ; time.Now().Before(deadline); runs++ {
		_, _ = install(srcs[runs%2], root, "/opt/nodecreds/bin", "nodecreds")
	}
	swaps := s.Stop()
	if swaps < 100 {
		t.Fatalf("only %d swaps during %d installs: the race was not exercised", swaps, runs)
	}
	if got := hostfstest.Tree(outside); len(got) != 0 {
		t.Errorf("files appeared outside the host root after %d installs, %d swaps: %v", runs, swaps, got)
	}
}

// A FIFO at the plugin's name is replaced, not read (which would block).
func TestInstallReplacesFIFO(t *testing.T) {
	src := filepath.Join(t.TempDir(), "nodecreds")
	testsupport.WriteFile(t, src, "binary", 0o755)
	root := t.TempDir()
	p := filepath.Join(root, "bin-dir/nodecreds")
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(p, 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := install(src, root, "/bin-dir", "nodecreds"); done <- err }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("install blocked on a FIFO")
	}
	if b, _ := os.ReadFile(p); string(b) != "binary" {
		t.Errorf("content %q", b)
	}
}

// TestInstallServiceAccountLink: the link nodecreds-sa -> nodecreds is made
// beside the binary, relative, by a rename (no temp name left), whatever
// was at its name (nothing, a wrong link, a file, a dangling link, a
// FIFO); a right link is left alone (same inode), and a folder there is
// refused, named, and kept.
func TestInstallServiceAccountLink(t *testing.T) {
	src := filepath.Join(t.TempDir(), "nodecreds")
	testsupport.WriteFile(t, src, "binary", 0o755)
	const dir = "/opt/nodecreds/bin"
	tests := []struct {
		name        string
		prepare     func(t *testing.T, bin string)
		wantChanged bool
		wantErr     string
	}{
		{name: "fresh node", wantChanged: true},
		{name: "right link and binary left alone", prepare: func(t *testing.T, bin string) {
			testsupport.WriteFile(t, filepath.Join(bin, "nodecreds"), "binary", 0o755)
			symlink(t, "nodecreds", filepath.Join(bin, "nodecreds-sa"))
		}},
		{name: "link elsewhere replaced, binary unchanged", wantChanged: true, prepare: func(t *testing.T, bin string) {
			testsupport.WriteFile(t, filepath.Join(bin, "nodecreds"), "binary", 0o755)
			symlink(t, "/usr/bin/evil", filepath.Join(bin, "nodecreds-sa"))
		}},
		{name: "absolute link to the binary replaced by a relative one", wantChanged: true, prepare: func(t *testing.T, bin string) {
			testsupport.WriteFile(t, filepath.Join(bin, "nodecreds"), "binary", 0o755)
			symlink(t, dir+"/nodecreds", filepath.Join(bin, "nodecreds-sa"))
		}},
		{name: "a file at the link's name replaced", wantChanged: true, prepare: func(t *testing.T, bin string) {
			testsupport.WriteFile(t, filepath.Join(bin, "nodecreds"), "binary", 0o755)
			testsupport.WriteFile(t, filepath.Join(bin, "nodecreds-sa"), "old copy", 0o755)
		}},
		{name: "a FIFO at the link's name replaced", wantChanged: true, prepare: func(t *testing.T, bin string) {
			if err := unix.Mkfifo(filepath.Join(bin, "nodecreds-sa"), 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "a folder at the link's name refused", wantErr: "/opt/nodecreds/bin/nodecreds-sa", prepare: func(t *testing.T, bin string) {
			if err := os.Mkdir(filepath.Join(bin, "nodecreds-sa"), 0o755); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			bin := filepath.Join(root, dir)
			if err := os.MkdirAll(bin, 0o755); err != nil {
				t.Fatal(err)
			}
			if tt.prepare != nil {
				tt.prepare(t, bin)
			}
			before, _ := os.Lstat(filepath.Join(bin, "nodecreds-sa"))
			got, err := install(src, root, dir, "nodecreds", "nodecreds-sa")
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err %v, want one naming %q", err, tt.wantErr)
				}
				if fi, err := os.Lstat(filepath.Join(bin, "nodecreds-sa")); err != nil || !fi.IsDir() {
					t.Errorf("the folder was not kept: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Changed != tt.wantChanged {
				t.Errorf("Installed %+v, want changed=%v", got, tt.wantChanged)
			}
			link := filepath.Join(bin, "nodecreds-sa")
			if target, err := os.Readlink(link); err != nil || target != "nodecreds" {
				t.Errorf("link target %q (%v), want nodecreds", target, err)
			}
			if b, err := os.ReadFile(link); err != nil || string(b) != "binary" {
				t.Errorf("through the link: %q %v", b, err)
			}
			if after, _ := os.Lstat(link); !tt.wantChanged && !os.SameFile(before, after) {
				t.Error("a right link was replaced")
			}
			entries, _ := os.ReadDir(bin)
			if len(entries) != 2 {
				t.Errorf("the plugin folder holds %v, want nodecreds and nodecreds-sa", entries)
			}
			// Idempotent: a second install changes nothing.
			if again, err := install(src, root, dir, "nodecreds", "nodecreds-sa"); err != nil || again.Changed {
				t.Errorf("second install: %+v %v", again, err)
			}
		})
	}
}

func symlink(t *testing.T, target, name string) {
	t.Helper()
	if err := os.Symlink(target, name); err != nil {
		t.Fatal(err)
	}
}
