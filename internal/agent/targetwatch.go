package agent

import (
	"maps"
	"path/filepath"
	"slices"

	"github.com/fsnotify/fsnotify"

	"github.com/nodecreds/nodecreds/internal/filewatch"
	"github.com/nodecreds/nodecreds/internal/nodefile"
)

// targetWatch watches the folders of the targets (as given and as resolved
// through symlinks), and the folders holding each link on the way and the
// target's folder as given, and says which events concern a target.
type targetWatch struct {
	w       *filewatch.Watch
	files   Files
	targets []string
	root    string
	names   map[string][]string // host path that matters → the targets it stands for
	// ways are the host paths whose change re-points a target (a link on
	// the way, the target's folder as given) → the targets.
	ways   map[string][]string
	dirs   map[string]bool
	left   map[string]leftFile // target → what the last sync left where it resolved
	stamps *filewatch.Stamps
}

// leftFile is what a sync left at a target: the host path it resolved to
// and the file there (content, mode, owner), or none.
type leftFile struct {
	path string
	id   nodefile.FileID
}

func newTargetWatch(w *filewatch.Watch, files Files, targets []string, root string) *targetWatch {
	t := &targetWatch{w: w, files: files, targets: targets, root: root, names: map[string][]string{}, ways: map[string][]string{}, dirs: map[string]bool{}, left: map[string]leftFile{}, stamps: filewatch.NewStamps()}
	t.refresh()
	return t
}

// refresh (re)adds watches, as folders may appear with the first write and
// links may be re-pointed: `ln -sfn /data/d2 /root/.docker` is an event in
// /root, the folder of a link on the way (and of the target's folder as
// given), which is watched too, as is every folder above the target's
// folder as given.
func (t *targetWatch) refresh() {
	t.ways = map[string][]string{}
	for _, tgt := range t.targets {
		given := filepath.Join(t.root, tgt)
		paths := []string{given}
		// The target's folder as given and every folder above it, up to
		// the root: replacing any by a link re-points the target.
		var ways []string
		for dir := filepath.Dir(given); dir != filepath.Clean(t.root) && dir != filepath.Dir(dir); dir = filepath.Dir(dir) {
			ways = append(ways, dir)
		}
		if p, links, err := t.files.Route(tgt); err == nil {
			paths = append(paths, p)
			ways = append(ways, links...)
		}
		var dirs []string
		for _, p := range paths {
			if !slices.Contains(t.names[p], tgt) {
				t.names[p] = append(t.names[p], tgt)
			}
			dirs = append(dirs, filepath.Dir(p))
		}
		for _, w := range ways {
			if !slices.Contains(t.ways[w], tgt) {
				t.ways[w] = append(t.ways[w], tgt)
			}
			dirs = append(dirs, filepath.Dir(w))
		}
		for _, dir := range dirs {
			if t.dirs[dir] {
				continue
			}
			if err := t.w.Add(dir); err == nil {
				t.dirs[dir] = true
			}
		}
	}
	for dir := range t.dirs {
		if !t.w.Watching(dir) {
			delete(t.dirs, dir) // removed with its folder; re-added next time
		}
	}
}

// settled (polling only) reports whether a target drifted from what the
// last sync left there, or, for a target with nothing recorded, whether
// the metadata of its paths changed since the last call.
func (t *targetWatch) polledDrift() bool {
	if t.w.Polling() == "" {
		return false
	}
	moved := t.w.Changed(slices.Sorted(maps.Keys(t.names)))
	for _, tgt := range t.targets {
		if _, known := t.left[tgt]; known && t.drifted(tgt) || !known && moved {
			return true
		}
	}
	return false
}

// wrote records what a sync left at each target, so that the events of
// its own writes are not taken for drift (they would cost a second full
// sync after every change) and any other change is.
func (t *targetWatch) wrote(results []nodefile.Result) {
	byPath := map[string]*nodefile.FileID{} // for a target synced under another's name
	for _, r := range results {
		if r.Err == nil && r.Left != nil {
			byPath[r.Path] = r.Left
		}
	}
	for _, r := range results {
		switch {
		case r.Err != nil:
			delete(t.left, r.Target)
		case byPath[r.Path] != nil:
			t.left[r.Target] = leftFile{path: r.Path, id: *byPath[r.Path]}
		}
	}
}

// drifted reports whether the target resolves elsewhere than at the last
// sync, or the file there differs from what that sync left — content, mode
// or owner — whatever its time stamps or inode say. A target with nothing
// recorded has drifted.
func (t *targetWatch) drifted(tgt string) bool {
	l, ok := t.left[tgt]
	if !ok {
		return true
	}
	p, _, err := t.files.Route(tgt)
	return err != nil || p != l.path || t.stamps.Of(p) != l.id
}

func (t *targetWatch) relevant(ev fsnotify.Event) bool {
	if tgts := t.ways[ev.Name]; len(tgts) > 0 {
		// A link on the way, or the target's folder, changed: the target
		// may lead elsewhere now, to be watched too.
		t.refresh()
		for _, tgt := range tgts {
			if t.drifted(tgt) {
				return true
			}
		}
	}
	for _, tgt := range t.names[ev.Name] {
		if t.drifted(tgt) {
			return true
		}
	}
	// A watched folder itself removed or renamed (its watch is gone).
	return t.dirs[ev.Name] && ev.Op&(fsnotify.Remove|fsnotify.Rename) != 0
}
