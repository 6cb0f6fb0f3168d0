package containerdconf

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nodecreds/nodecreds/internal/hostfs"
)

// writeTree writes files (node path → content) under dir; content
// "->target" makes a symlink.
func writeTree(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for p, content := range files {
		full := filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if target, ok := strings.CutPrefix(content, "->"); ok {
			if err := os.Symlink(target, full); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

const mainPath = "/etc/containerd/config.toml"

func TestLoad(t *testing.T) {
	outside := t.TempDir()
	writeTree(t, outside, map[string]string{"evil.toml": "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\nconfig_path = \"/evil\"\n"})
	tests := []struct {
		name       string
		files      map[string]string
		want       Config
		wantErr    string
		notInError string
	}{{
		name: "version 2",
		files: map[string]string{mainPath: `version = 2
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "reg.test/pause:3.9"
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "/etc/containerd/certs.d"
`},
		want: Config{Version: 2, Files: []string{mainPath}, ConfigPaths: []string{"/etc/containerd/certs.d"}, ConfigPathSet: true, SandboxImage: "reg.test/pause:3.9"},
	}, {
		name: "version 3",
		files: map[string]string{mainPath: `version = 3
[plugins."io.containerd.cri.v1.images"]
  use_local_image_pull = true
[plugins."io.containerd.cri.v1.images".pinned_images]
  sandbox = "reg.test/pause:3.10"
[plugins."io.containerd.cri.v1.images".registry]
  config_path = "/a:/b"
`},
		want: Config{Version: 3, Files: []string{mainPath}, ConfigPaths: []string{"/a", "/b"}, ConfigPathSet: true, LocalPull: true, LocalPullBecause: "use_local_image_pull = true", SandboxImage: "reg.test/pause:3.10"},
	}, {
		name:  "version 1: the plugin is cri",
		files: map[string]string{mainPath: "[plugins.cri]\nsandbox_image = \"p\"\n[plugins.cri.registry]\nconfig_path = \"/c\"\n"},
		want:  Config{Files: []string{mainPath}, ConfigPaths: []string{"/c"}, ConfigPathSet: true, SandboxImage: "p"},
	}, {
		name:  "version 3 ignores the version 2 table",
		files: map[string]string{mainPath: "version = 3\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\nconfig_path = \"/c\"\n"},
		want:  Config{Version: 3, Files: []string{mainPath}},
	}, {
		name:  "an empty config_path is unset",
		files: map[string]string{mainPath: "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\nconfig_path = \"\"\n"},
		want:  Config{Version: 2, Files: []string{mainPath}},
	}, {
		name: "imports: relative, globs in order, later file wins per key, each file once",
		files: map[string]string{
			mainPath:                           "version = 2\nimports = [\"conf.d/*.toml\", \"extra.toml\", \"/etc/containerd/conf.d/10-a.toml\"]\n[plugins.\"io.containerd.grpc.v1.cri\"]\nsandbox_image = \"main\"\n",
			"/etc/containerd/conf.d/10-a.toml": "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\nconfig_path = \"/a\"\n",
			"/etc/containerd/conf.d/20-b.toml": "version = 3\nimports = [\"../config.toml\"]\n[plugins.\"io.containerd.cri.v1.images\".registry]\nconfig_path = \"/b\"\n",
			"/etc/containerd/conf.d/30-c.conf": "not toml at all [",
			"/etc/containerd/extra.toml":       "version = 3\n[plugins.\"io.containerd.cri.v1.images\"]\nmax_concurrent_downloads = 5\n",
		},
		want: Config{Version: 2, Files: []string{mainPath, "/etc/containerd/conf.d/10-a.toml", "/etc/containerd/conf.d/20-b.toml", "/etc/containerd/extra.toml"},
			ConfigPaths: []string{"/b"}, ConfigPathSet: true, SandboxImage: "main", LocalPull: true, LocalPullBecause: "max_concurrent_downloads = 5"},
	}, {
		name:  "a glob matching nothing is no file",
		files: map[string]string{mainPath: "imports = [\"/etc/containerd/none.d/*.toml\"]\n"},
		want:  Config{Files: []string{mainPath}},
	}, {
		name:  "no main file: containerd's defaults",
		files: map[string]string{"/etc/containerd/other": "x"},
		want:  Config{},
	}, {
		name: "legacy mirrors fall back to the local pull",
		files: map[string]string{mainPath: `version = 2
[plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]
  endpoint = ["https://mirror.test"]
`},
		want: Config{Version: 2, Files: []string{mainPath}, LegacyRegistry: true, LocalPull: true, LocalPullBecause: "registry.mirrors is set"},
	}, {
		name:  "disable_snapshot_annotations = false (version 2's containerd table) falls back",
		files: map[string]string{mainPath: "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\ndisable_snapshot_annotations = false\n"},
		want:  Config{Version: 2, Files: []string{mainPath}, LocalPull: true, LocalPullBecause: "disable_snapshot_annotations = false"},
	}, {
		name:  "the defaults do not fall back",
		files: map[string]string{mainPath: "version = 3\n[plugins.\"io.containerd.cri.v1.images\"]\ndisable_snapshot_annotations = true\nmax_concurrent_downloads = 3\n"},
		want:  Config{Version: 3, Files: []string{mainPath}},
	}, {
		name:       "a missing import is an error naming it",
		files:      map[string]string{mainPath: "imports = [\"/etc/containerd/gone.toml\"]\n"},
		wantErr:    "/etc/containerd/gone.toml (imported by /etc/containerd/config.toml) is missing here",
		notInError: "evil",
	}, {
		name:  "a main file linked out of the root is read as the node sees it: missing",
		files: map[string]string{mainPath: "->" + filepath.Join(outside, "evil.toml")},
		want:  Config{},
	}, {
		name: "an import linked out of the root is not read",
		files: map[string]string{
			mainPath:                  "imports = [\"up.toml\"]\n",
			"/etc/containerd/up.toml": "->../../../../../../../../.." + filepath.Join(outside, "evil.toml"),
		},
		wantErr: "up.toml (imported by /etc/containerd/config.toml) is missing here",
	}, {
		name:       "invalid TOML: the position, never the content",
		files:      map[string]string{mainPath: "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry.auths.\"r.test\"]\npassword = \"hunter2\" oops\n"},
		wantErr:    "is not valid TOML (line 3",
		notInError: "hunter2",
	}, {
		name:    "too large",
		files:   map[string]string{mainPath: "# " + strings.Repeat("x", maxConfigSize) + "\n"},
		wantErr: "too large",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			writeTree(t, dir, tt.files)
			root, err := hostfs.OpenRoot(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer root.Close()
			got, err := Load(root, mainPath)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Load error = %v, want one containing %q", err, tt.wantErr)
				}
				if tt.notInError != "" && strings.Contains(err.Error(), tt.notInError) {
					t.Fatalf("error %q holds %q", err, tt.notInError)
				}
				return
			}
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			tt.want.Path = mainPath
			if !equalConfig(got, tt.want) {
				t.Fatalf("Load =\n%+v\nwant\n%+v", got, tt.want)
			}
		})
	}
}

func equalConfig(a, b Config) bool {
	return a.Path == b.Path && a.Version == b.Version && a.ConfigPathSet == b.ConfigPathSet &&
		a.LegacyRegistry == b.LegacyRegistry && a.LocalPull == b.LocalPull && a.LocalPullBecause == b.LocalPullBecause &&
		a.SandboxImage == b.SandboxImage && slices.Equal(a.Files, b.Files) && slices.Equal(a.ConfigPaths, b.ConfigPaths)
}

func TestLoadMissingImportIsErrImport(t *testing.T) {
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{mainPath: "imports = [\"x.toml\"]\n"})
	root, err := hostfs.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	if _, err := Load(root, mainPath); !errors.Is(err, ErrImport) {
		t.Fatalf("Load error = %v, want ErrImport", err)
	}
}

func TestRuntimeVersion(t *testing.T) {
	tests := []struct {
		in      string
		runtime string
		v       Version
		ok      bool
	}{
		{"containerd://1.6.20", "containerd", Version{1, 6, 20}, true},
		{"containerd://v2.2.1", "containerd", Version{2, 2, 1}, true},
		{"containerd://1.6.20~ds1", "containerd", Version{1, 6, 20}, true},
		{"containerd://1.7.23-k3s2", "containerd", Version{1, 7, 23}, true},
		{"containerd://2.1.0-rc.1", "containerd", Version{2, 1, 0}, true},
		{"containerd://2.1", "containerd", Version{2, 1, 0}, true},
		{"cri-o://1.31.0", "cri-o", Version{1, 31, 0}, true},
		{"containerd://Unknown", "containerd", Version{}, false},
		{"containerd://2", "containerd", Version{}, false},
		{"containerd://", "containerd", Version{}, false},
		{"docker", "", Version{}, false},
		{"", "", Version{}, false},
	}
	for _, tt := range tests {
		r, v, ok := RuntimeVersion(tt.in)
		if r != tt.runtime || v != tt.v || ok != tt.ok {
			t.Errorf("RuntimeVersion(%q) = %q, %v, %v; want %q, %v, %v", tt.in, r, v, ok, tt.runtime, tt.v, tt.ok)
		}
	}
}
