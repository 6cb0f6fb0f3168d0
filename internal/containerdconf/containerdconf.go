// Package containerdconf reads what of containerd's configuration decides
// whether it uses the hosts.toml headers nodecreds writes, and its sandbox
// image — from files on a read-only view of the node, never the CRI socket
// (whose client is root on the node).
//
// # Which containerd this follows
//
// Read from containerd's own code, github.com/containerd/containerd v1.6.20
// (services/server/config, pkg/cri) and github.com/containerd/containerd/v2
// v2.4.2 (cmd/containerd/server/config, plugins/cri/images, internal/cri):
//
//   - Imports: each file's `imports` are resolved relative to the importing
//     file's folder, a path holding `*` is a glob (filepath.Glob: no match is
//     no file), the files are read breadth first from the main file, each
//     path once. A missing import stops containerd from starting, so it is
//     an error here too (naming it: the mount must include it).
//   - Merge: containerd 2.x merges every file into one (mergo, override):
//     tables key by key, a later file's value wins. containerd 1.x replaces
//     a plugin's whole table with the later file's; for the keys read here
//     that differs only when two files both set the CRI plugin's table.
//   - Versions: a version 1 file (or none) names the CRI plugin "cri", a
//     version 2 file "io.containerd.grpc.v1.cri"; containerd 2.x migrates
//     both into "io.containerd.cri.v1.images" (sandbox_image becomes
//     pinned_images.sandbox; registry, max_concurrent_downloads and
//     image_pull_with_sync_fs move; containerd.disable_snapshot_annotations
//     and discard_unpacked_layers move), the table a version 3 file uses.
//   - config_path is split with filepath.SplitList. containerd 2.x sets
//     "/etc/containerd/certs.d:/etc/docker/certs.d" when it is empty and no
//     registry.mirrors are set (plugins/cri/images/plugin.go); 1.x reads no
//     hosts.toml without it.
//   - Since 2.1 the CRI pulls go through the transfer service unless
//     use_local_image_pull = true or CheckLocalImagePullConfigs falls back
//     (LocalPull); that path hands the whole config_path to
//     registry.WithHostDir as one folder (containerd #12808).
package containerdconf

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/pelletier/go-toml/v2"

	"github.com/nodecreds/nodecreds/internal/hostfs"
)

// Plugin table names, as containerd spells them.
const (
	criV1Plugin  = "cri"
	criV2Plugin  = "io.containerd.grpc.v1.cri"
	imagesPlugin = "io.containerd.cri.v1.images"
)

// DefaultConfigPath2 is the config_path containerd 2.x uses on Linux when
// none is set and no registry.mirrors are.
const DefaultConfigPath2 = "/etc/containerd/certs.d:/etc/docker/certs.d"

// maxConfigSize bounds each file read; containerd's own configuration is a
// few KiB.
const maxConfigSize = 1 << 20

// maxFiles bounds the imports followed.
const maxFiles = 256

// maxImportEntries bounds the import entries and glob matches of one Load,
// over all its files, and maxGlobFolders the folders its globs list: one
// file of 1 MiB holds tens of thousands of entries, each a glob that can
// match hundreds of files or fan out over every folder of the node, and
// containerd's own configurations hold a handful.
const (
	maxImportEntries = 1024
	maxGlobFolders   = 256
)

// budget is what is left of a Load's bounds.
type budget struct{ entries, folders int }

func (b *budget) entry(parent string) error {
	if b.entries--; b.entries < 0 {
		return fmt.Errorf("%w: more than %d imports (entries and the files their globs match) from %s and its imports", ErrImport, maxImportEntries, ShowPath(parent))
	}
	return nil
}

// ErrImport means an import could not be read.
var ErrImport = errors.New("containerd configuration import")

// Config is what Load found.
type Config struct {
	// Path is the main file's node path, as given to Load.
	Path string
	// Files are the node paths read, the main file first, then imports in
	// containerd's order. Empty when the main file does not exist (then
	// containerd runs with its defaults, and so does every field here).
	Files []string
	// Version is the main file's `version` (0 when unset or no file).
	Version int
	// ConfigPaths is the CRI registry config_path split as containerd splits
	// it (filepath.SplitList); nil when unset.
	ConfigPaths   []string
	ConfigPathSet bool
	// LegacyRegistry: registry.mirrors, configs or auths are set (the
	// inline registry configuration containerd deprecated).
	LegacyRegistry bool
	// LocalPull: use_local_image_pull = true, or an option for which
	// containerd's CheckLocalImagePullConfigs falls back to it.
	LocalPull        bool
	LocalPullBecause string
	// SandboxImage: version 2 plugins."io.containerd.grpc.v1.cri".sandbox_image,
	// version 3 plugins."io.containerd.cri.v1.images".pinned_images.sandbox;
	// "" is containerd's default (DefaultSandboxImage).
	SandboxImage string
}

// Load reads containerd's configuration at the node path path (say
// /etc/containerd/config.toml) under root, with its imports, and merges it
// as containerd 2.x does. Every file is opened through hostfs: links are
// followed as the node sees them and never out of root.
func Load(root *hostfs.Root, path string) (Config, error) {
	type pendingFile struct{ path, from string }
	var (
		c       = Config{Path: path}
		merged  = map[string]any{}
		loaded  = map[string]bool{}
		queued  = map[string]bool{path: true}
		pending = []pendingFile{{path: path}}
		left    = &budget{entries: maxImportEntries, folders: maxGlobFolders}
	)
	for len(pending) > 0 {
		p := pending[0]
		pending = pending[1:]
		if loaded[p.path] {
			continue
		}
		if len(loaded) >= maxFiles {
			return Config{}, fmt.Errorf("%w: more than %d files imported from %s", ErrImport, maxFiles, path)
		}
		doc, err := readTOML(root, p.path)
		switch {
		case errors.Is(err, fs.ErrNotExist) && p.from == "":
			return c, nil // containerd starts with its defaults
		case errors.Is(err, fs.ErrNotExist):
			return Config{}, fmt.Errorf("%w %s (imported by %s) is missing here: containerd will not start without it; if it exists on the node, mount it: %w", ErrImport, ShowPath(p.path), ShowPath(p.from), err)
		case err != nil:
			return Config{}, err
		}
		version := versionOf(doc)
		if p.from == "" {
			c.Version = version
		}
		deepMerge(merged, imagesTable(doc, version))
		imports, err := resolveImports(root, p.path, doc, left)
		if err != nil {
			return Config{}, err
		}
		loaded[p.path] = true
		c.Files = append(c.Files, p.path)
		for _, i := range imports {
			if !queued[i] { // each path once, as containerd reads it
				queued[i] = true
				pending = append(pending, pendingFile{path: i, from: p.path})
			}
		}
	}
	c.fill(merged)
	return c, nil
}

// readTOML decodes the file at the node path p. A missing file (or
// folder on the way) is fs.ErrNotExist. Errors name the position only:
// a legacy registry.auths table holds passwords; and p itself (an
// import's value) only when it is a plain path (ShowPath).
func readTOML(root *hostfs.Root, p string) (map[string]any, error) {
	way, err := root.Walk(p, false, 0, nil)
	if err != nil {
		return nil, hideIn(p, fmt.Errorf("resolving %s: %w", p, err))
	}
	defer way.Close()
	if way.Dir == nil {
		return nil, fmt.Errorf("%s: %w", ShowPath(p), fs.ErrNotExist)
	}
	data, _, err := way.Dir.ReadFile(way.Name, maxConfigSize)
	if err != nil {
		return nil, hideIn(p, fmt.Errorf("reading %s: %w", p, err))
	}
	doc := map[string]any{}
	if err := toml.Unmarshal(data, &doc); err != nil {
		var derr *toml.DecodeError
		if errors.As(err, &derr) {
			row, col := derr.Position()
			return nil, fmt.Errorf("%s is not valid TOML (line %d, column %d); containerd does not start with it", ShowPath(p), row, col)
		}
		return nil, fmt.Errorf("%s is not valid TOML; containerd does not start with it", ShowPath(p))
	}
	return doc, nil
}

// plainPath is a path shown as it is: letters, digits and . _ + - / and
// the glob's *, at most 256 bytes. The values of containerd's files are
// shown only when of this shape, so no password pasted into a path, line
// break or screenful of text reaches a log, the Node or an Event.
var plainPath = regexp.MustCompile(`^[A-Za-z0-9._+*/-]{1,256}$`)

// ShowPath is p, a path read from containerd's files (an import, a
// config_path folder), for a message: p when it is a plain path, a
// placeholder otherwise.
func ShowPath(p string) string {
	if plainPath.MatchString(p) {
		return p
	}
	return "(a path not shown: it holds more than letters, digits and . _ + - / *)"
}

// hideIn is err, about the file at p, with p and whatever err says of it
// left out unless p is a plain path; what err is (errors.Is) stays.
func hideIn(p string, err error) error {
	if plainPath.MatchString(p) {
		return err
	}
	for _, known := range []error{fs.ErrNotExist, hostfs.ErrTooLarge, hostfs.ErrNotRegular, hostfs.ErrWalk, hostfs.ErrLink} {
		if errors.Is(err, known) {
			return fmt.Errorf("%s: %w", ShowPath(p), known)
		}
	}
	return fmt.Errorf("%s cannot be read", ShowPath(p))
}

func versionOf(doc map[string]any) int {
	if v, ok := doc["version"].(int64); ok {
		return int(v)
	}
	return 0
}

// resolveImports is containerd 2.x's resolveImports on node paths: each
// cleaned, a relative one joined to the importing file's folder, one with
// `*` globbed (in root).
func resolveImports(root *hostfs.Root, parent string, doc map[string]any, left *budget) ([]string, error) {
	raw, ok := doc["imports"]
	if !ok {
		return nil, nil
	}
	list, ok := raw.([]any)
	if !ok {
		return nil, fmt.Errorf("%w: imports in %s is not a list of paths", ErrImport, ShowPath(parent))
	}
	var out []string
	for _, it := range list {
		p, ok := it.(string)
		if !ok {
			return nil, fmt.Errorf("%w: imports in %s is not a list of paths", ErrImport, ShowPath(parent))
		}
		if err := left.entry(parent); err != nil {
			return nil, err
		}
		p = filepath.Clean(p)
		if !filepath.IsAbs(p) {
			p = filepath.Join(filepath.Dir(parent), p)
		}
		if !strings.Contains(p, "*") {
			out = append(out, p)
			continue
		}
		matches, err := glob(root, p, left)
		if err != nil {
			return nil, fmt.Errorf("%w: import %s in %s: %w", ErrImport, ShowPath(p), ShowPath(parent), err)
		}
		for range matches {
			if err := left.entry(parent); err != nil {
				return nil, err
			}
		}
		out = append(out, matches...)
	}
	return out, nil
}

// imagesTable is a file's CRI image configuration in version 3's shape,
// migrated as containerd 2.x migrates a version 1 or 2 file.
func imagesTable(doc map[string]any, version int) map[string]any {
	plugins, _ := doc["plugins"].(map[string]any)
	out := map[string]any{}
	if images, ok := plugins[imagesPlugin].(map[string]any); ok {
		deepMerge(out, images)
	}
	if version >= 3 {
		return out
	}
	cri, ok := plugins[criV2Plugin].(map[string]any)
	if version <= 1 {
		if short, found := plugins[criV1Plugin].(map[string]any); found {
			cri, ok = short, true
		}
	}
	if !ok {
		return out
	}
	if s, found := cri["sandbox_image"]; found {
		pinned, _ := out["pinned_images"].(map[string]any)
		if pinned == nil {
			pinned = map[string]any{}
		}
		pinned["sandbox"] = s
		out["pinned_images"] = pinned
	}
	for _, k := range []string{"registry", "max_concurrent_downloads", "image_pull_with_sync_fs"} {
		if v, found := cri[k]; found {
			out[k] = v
		}
	}
	if ctrd, found := cri["containerd"].(map[string]any); found {
		for _, k := range []string{"disable_snapshot_annotations", "discard_unpacked_layers"} {
			if v, has := ctrd[k]; has {
				out[k] = v
			}
		}
	}
	return out
}

// deepMerge merges src into dst as containerd 2.x's mergeConfig does for
// plugin tables: tables key by key, any other value of src replacing dst's.
func deepMerge(dst, src map[string]any) {
	for k, v := range src {
		if sm, ok := v.(map[string]any); ok {
			dm, isMap := dst[k].(map[string]any)
			if !isMap {
				dm = map[string]any{}
				dst[k] = dm
			}
			deepMerge(dm, sm)
			continue
		}
		dst[k] = v
	}
}

// fill sets c's fields from the merged image table.
func (c *Config) fill(images map[string]any) {
	reg, _ := images["registry"].(map[string]any)
	if p, ok := reg["config_path"].(string); ok && p != "" {
		c.ConfigPathSet = true
		c.ConfigPaths = filepath.SplitList(p)
	}
	for _, k := range []string{"mirrors", "configs", "auths"} {
		if m, ok := reg[k].(map[string]any); ok && len(m) > 0 {
			c.LegacyRegistry = true
		}
	}
	if pinned, ok := images["pinned_images"].(map[string]any); ok {
		c.SandboxImage, _ = pinned["sandbox"].(string)
	}
	c.LocalPullBecause = localPullBecause(images, reg)
	c.LocalPull = c.LocalPullBecause != ""
}

// localPullBecause names the option that makes containerd ≥ 2.1 pull CRI
// images without the transfer service: use_local_image_pull, or the first
// CheckLocalImagePullConfigs falls back for (Linux defaults:
// disable_snapshot_annotations true, max_concurrent_downloads 3).
func localPullBecause(images, reg map[string]any) string {
	if images["use_local_image_pull"] == true {
		return "use_local_image_pull = true"
	}
	if images["disable_snapshot_annotations"] == false {
		return "disable_snapshot_annotations = false"
	}
	if images["discard_unpacked_layers"] == true {
		return "discard_unpacked_layers = true"
	}
	for _, k := range []string{"mirrors", "configs", "auths"} {
		if m, ok := reg[k].(map[string]any); ok && len(m) > 0 {
			return "registry." + k + " is set"
		}
	}
	if n, ok := images["max_concurrent_downloads"].(int64); ok && n != 3 {
		return fmt.Sprintf("max_concurrent_downloads = %d", n)
	}
	if images["image_pull_with_sync_fs"] == true {
		return "image_pull_with_sync_fs = true"
	}
	return ""
}

// glob is filepath.Glob on a node path holding a pattern, under root: folders are listed
// through hostfs, and a folder that cannot be opened matches nothing (as
// Glob ignores I/O errors).
func glob(root *hostfs.Root, pattern string, left *budget) ([]string, error) {
	if _, err := filepath.Match(pattern, ""); err != nil {
		return nil, err
	}
	dir, file := filepath.Split(pattern)
	dir = strings.TrimSuffix(dir, "/")
	if dir == "" {
		dir = "/"
	}
	dirs := []string{dir}
	if hasMeta(dir) {
		var err error
		if dirs, err = glob(root, dir, left); err != nil {
			return nil, err
		}
	}
	var out []string
	for _, d := range dirs {
		if left.folders--; left.folders < 0 {
			return nil, fmt.Errorf("it lists more than %d folders", maxGlobFolders)
		}
		out = append(out, globIn(root, d, file)...)
		if len(out) > maxImportEntries {
			return nil, fmt.Errorf("it matches more than %d paths", maxImportEntries)
		}
	}
	return out, nil
}

func globIn(root *hostfs.Root, dir, pattern string) []string {
	d, err := root.OpenDir(dir, false, 0)
	if err != nil {
		return nil
	}
	defer d.Close()
	names, err := d.Names()
	if err != nil {
		return nil
	}
	slices.Sort(names)
	var out []string
	for _, n := range names {
		if ok, _ := filepath.Match(pattern, n); ok {
			out = append(out, filepath.Join(dir, n))
		}
	}
	return out
}

func hasMeta(p string) bool { return strings.ContainsAny(p, `*?[\`) }
