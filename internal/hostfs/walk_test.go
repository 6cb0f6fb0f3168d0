package hostfs

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestWalkResolvesAsTheNode: a walk ends where the node's own resolution
// under the root (securejoin) ends, through absolute and relative links,
// "..", link chains, a dangling final link and missing folders; it names
// the links it followed and calls check with each name as what it is.
func TestWalkResolvesAsTheNode(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"var/lib/kubelet", "data/d1", "data/d2", "home/u"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write(t, filepath.Join(root, "data/d1/config.json"), "{}")
	links := map[string]string{
		"root":             "/home/u",       // a folder link, absolute
		"home/u/.docker":   "../../data/d1", // relative, climbing
		"data/up":          "../../../..",   // climbing above the root stops there
		"etc":              "/data/d2",
		"data/d2/cfg.json": "/data/d1/config.json", // a final link
		"data/d2/dangling": "/data/none/x.json",
		"data/loop":        "/data/loop",
	}
	for l, target := range links {
		if err := os.Symlink(target, filepath.Join(root, l)); err != nil {
			t.Fatal(err)
		}
	}
	r, err := OpenRoot(root)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	tests := []struct {
		node    string
		links   []string
		kinds   []LookupKind
		missing string
		err     bool
	}{
		{node: "/var/lib/kubelet/config.json", kinds: []LookupKind{Through, Through, Through, Final}},
		{node: "/root/.docker/config.json", links: []string{"root", "home/u/.docker"}, kinds: []LookupKind{Link, Through, Through, Link, Through, Through, Final}},
		{node: "/data/up/var/lib/kubelet/config.json", links: []string{"data/up"}, kinds: []LookupKind{Through, Link, Through, Through, Through, Final}},
		{node: "/etc/cfg.json", links: []string{"etc", "data/d2/cfg.json"}, kinds: []LookupKind{Link, Through, Through, Link, Through, Through, Final}},
		{node: "/etc/dangling", links: []string{"etc", "data/d2/dangling"}, kinds: []LookupKind{Link, Through, Through, Link, Through, Create}, missing: "none/x.json"},
		{node: "/new/a/config.json", kinds: []LookupKind{Create}, missing: "new/a/config.json"},
		{node: "/var/lib/../lib/kubelet/./config.json", kinds: []LookupKind{Through, Through, Through, Through, Final}},
		{node: "/data/loop/x", err: true},
		{node: "/", err: true},
		{node: "/var/..", err: true},
	}
	for _, tt := range tests {
		t.Run(tt.node, func(t *testing.T) {
			var kinds []LookupKind
			way, err := r.Walk(tt.node, false, 0, func(l Lookup) error {
				kinds = append(kinds, l.Kind)
				return nil
			})
			if tt.err {
				if err == nil {
					way.Close()
					t.Fatalf("walked to %s", way.Path)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer way.Close()
			want, err := r.Join(tt.node)
			if err != nil {
				t.Fatal(err)
			}
			if way.Path != want {
				t.Errorf("path %s, want %s (securejoin)", way.Path, want)
			}
			var wantLinks []string
			for _, l := range tt.links {
				wantLinks = append(wantLinks, filepath.Join(root, l))
			}
			if !slices.Equal(way.Links, wantLinks) {
				t.Errorf("links %v, want %v", way.Links, wantLinks)
			}
			if !slices.Equal(kinds, tt.kinds) {
				t.Errorf("lookups %v, want %v", kinds, tt.kinds)
			}
			if way.Missing != tt.missing || (way.Dir == nil) != (tt.missing != "") {
				t.Errorf("missing %q (dir %v), want %q", way.Missing, way.Dir != nil, tt.missing)
			}
			if way.Dir != nil && filepath.Join(way.Dir.path, way.Name) != want {
				t.Errorf("folder %s name %s, want %s", way.Dir.path, way.Name, want)
			}
		})
	}

	t.Run("create", func(t *testing.T) {
		way, err := r.Walk("/etc/dangling", true, 0o700, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer way.Close()
		if way.Dir == nil || way.Path != filepath.Join(root, "data/none/x.json") {
			t.Fatalf("created %+v", way)
		}
		if fi, err := os.Stat(filepath.Join(root, "data/none")); err != nil || fi.Mode().Perm() != 0o700 {
			t.Errorf("folder made: %v %v", fi, err)
		}
	})

	t.Run("check refuses", func(t *testing.T) {
		refusal := errors.New("no")
		_, err := r.Walk("/new/b/config.json", true, 0o700, func(l Lookup) error {
			if l.Kind == Create {
				return refusal
			}
			return nil
		})
		if !errors.Is(err, refusal) {
			t.Fatalf("err = %v", err)
		}
		if _, err := os.Stat(filepath.Join(root, "new")); !os.IsNotExist(err) {
			t.Errorf("a folder was made before the refusal: %v", err)
		}
	})
}

func TestOpenSubNeverFollowsALink(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"dir/real", "outside"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("/outside", filepath.Join(root, "dir/link")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "dir/file"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	r, err := OpenRoot(root)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	d, err := r.OpenDir("/dir", false, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for _, create := range []bool{false, true} {
		if _, err := d.OpenSub("link", create, 0o755); !errors.Is(err, ErrLink) {
			t.Fatalf("link (create %v): %v, want ErrLink", create, err)
		}
		if _, err := d.OpenSub("file", create, 0o755); err == nil {
			t.Fatalf("a file opened as a folder (create %v)", create)
		}
	}
	if _, err := d.OpenSub("missing", false, 0); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing: %v", err)
	}
	s, err := d.OpenSub("new", true, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if fi, err := os.Lstat(filepath.Join(root, "dir/new")); err != nil || !fi.IsDir() {
		t.Fatalf("created: %v %v", fi, err)
	}
	if _, err := os.Lstat(filepath.Join(root, "outside/new")); err == nil {
		t.Fatal("created through the link")
	}
}
