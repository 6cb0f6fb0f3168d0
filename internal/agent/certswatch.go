package agent

import (
	"os"
	"path/filepath"
	"slices"

	"github.com/fsnotify/fsnotify"

	"github.com/nodecreds/nodecreds/internal/filewatch"
	"github.com/nodecreds/nodecreds/internal/hostfs"
	"github.com/nodecreds/nodecreds/internal/hoststoml"
)

// maxHostWatches bounds the host folders watched by inotify: its watches
// are a per-user limit (fs.inotify.max_user_watches) shared with every
// root process on the node, and the host folders are as many as the
// registries of the annotated Secrets. Drift in the others is corrected at
// the resync; a host folder made or removed is seen in any case (the
// certs folder itself is watched).
const maxHostWatches = 256

// certsWatch watches containerd's certs folder and its host folders, so
// that a hosts.toml someone else changed (a header removed or edited, a
// mirror section added, a file replaced by a tool) is brought back in line
// at once, as the kubelet files are, rather than at the next resync.
type certsWatch struct {
	w    *filewatch.Watch
	dir  string // host path of the certs folder
	dirs map[string]bool
	// left is what the last sync left in each hosts.toml, so that the
	// events of nodecreds' own writes are not taken for drift.
	left   map[string]hostfs.Stamp
	stamps *filewatch.Stamps
	last   string // polling: the fingerprint at the last tick
}

func newCertsWatch(w *filewatch.Watch, dir string) *certsWatch {
	c := &certsWatch{w: w, dir: filepath.Clean(dir), dirs: map[string]bool{}, left: map[string]hostfs.Stamp{}, stamps: filewatch.NewStamps()}
	c.refresh()
	return c
}

// refresh (re)adds the watches — host folders come and go — and records
// what every hosts.toml holds now: called after each sync. A change made in
// the instant between the sync's write and this record is taken for the
// sync's own and waits for the resync (--resync, 5 m by default).
func (c *certsWatch) refresh() {
	watching := map[string]bool{}
	for _, d := range c.w.WatchList() {
		watching[d] = true
	}
	hostDirs := c.hostDirs()
	dirs := map[string]bool{}
	for i, dir := range append([]string{c.dir}, hostDirs...) {
		switch {
		case i > maxHostWatches:
			dirs[dir] = false // known, not watched
		case watching[dir]:
			dirs[dir] = true
		default:
			dirs[dir] = c.w.Add(dir) == nil
		}
	}
	// A host folder gone, or beyond the bound, is no longer watched.
	for dir := range watching {
		if !dirs[dir] && (dir == c.dir || filepath.Dir(dir) == c.dir) {
			c.w.Remove(dir)
		}
	}
	c.dirs = dirs
	files := filesIn(hostDirs)
	c.left = map[string]hostfs.Stamp{}
	for _, p := range files {
		c.left[p] = c.stamps.Of(p)
	}
	c.last = filewatch.Fingerprint(files)
}

// hostDirs are the folders in the certs folder (one per host; links are
// not followed: the writer refuses them too).
func (c *certsWatch) hostDirs() []string {
	entries, err := os.ReadDir(c.dir)
	if err != nil {
		return nil
	}
	var dirs []string
	for _, e := range entries {
		if e.IsDir() {
			dirs = append(dirs, filepath.Join(c.dir, e.Name()))
		}
	}
	return dirs
}

// filesIn are the hosts.toml paths of host folders dirs.
func filesIn(dirs []string) []string {
	files := make([]string, 0, len(dirs))
	for _, d := range dirs {
		files = append(files, filepath.Join(d, hoststoml.FileName))
	}
	return files
}

// relevant reports whether an event may have changed what containerd
// reads: a hosts.toml that no longer holds what the last sync left, a
// host folder that appeared or went, or the certs folder itself moved.
func (c *certsWatch) relevant(ev fsnotify.Event) bool {
	dir, name := filepath.Split(ev.Name)
	dir = filepath.Clean(dir)
	switch {
	case ev.Name == c.dir:
		return ev.Op&(fsnotify.Remove|fsnotify.Rename) != 0
	case dir == c.dir:
		// A host folder made, removed or renamed; files directly in the
		// certs folder mean nothing to containerd.
		if ev.Op&(fsnotify.Create|fsnotify.Remove|fsnotify.Rename) == 0 {
			return false
		}
		_, known := c.dirs[ev.Name]
		fi, err := os.Lstat(ev.Name)
		return known || err == nil && fi.IsDir()
	case name == hoststoml.FileName && filepath.Dir(dir) == c.dir:
		return c.stamps.Of(ev.Name) != c.left[ev.Name]
	}
	return false
}

// polledDrift (polling only) reports whether a hosts.toml or the set of
// host folders changed since the last sync or tick.
func (c *certsWatch) polledDrift() bool {
	if c.w.Polling() == "" {
		return false
	}
	files := filesIn(c.hostDirs())
	now := filewatch.Fingerprint(files)
	if now == c.last {
		return false
	}
	c.last = now
	if len(files) != len(c.left) {
		return true
	}
	return slices.ContainsFunc(files, func(p string) bool {
		prev, ok := c.left[p]
		return !ok || c.stamps.Of(p) != prev
	})
}
