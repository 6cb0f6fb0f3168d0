// Package nodefile merges registry credentials into a node's config.json
// files: ownership tracked in a state file, atomic replacement, corrupt files
// set aside, symlinks followed without leaving the host root, and other
// writers' changes never lost.
//
// protocol.go holds the write protocol, its steps numbered with what each
// protects against; merge.go the merge rules; document.go the file format
// as the consumers read it; state.go and statefile.go the ownership record
// and its file; files.go the helpers of the target's folder (temp, held
// and corrupt-copy names, the lock, the crash sweep).
package nodefile

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/nodecreds/nodecreds/internal/dockercfg"
	"github.com/nodecreds/nodecreds/internal/hostfs"
)

// Options configures an Engine.
type Options struct {
	// HostRoot is where the node's file system is mounted ("/" on the node).
	HostRoot string
	// StateDir is the node path of nodecreds' state folder.
	StateDir string
	// Now is the clock for set-aside names and for the time stamps of
	// stale fingerprints (see staleWindow); time.Now when nil.
	Now func() time.Time
}

// Engine applies desired credentials to target files. It is safe for
// concurrent use; calls are serialised, and across processes a lock file in
// the state folder keeps `nodecreds cleanup` and the agent from interleaving.
type Engine struct {
	root     string
	stateDir string
	now      func() time.Time
	mu       sync.Mutex
	memo     memory               // guarded by mu
	swept    map[string]bool      // folders (and prefixes) swept of a crash's leftovers; guarded by mu
	held     map[string][]string  // target host path → names of files held next to it, not yet merged; guarded by mu
	exposed  map[string]*exposure // target host path → the stale files of ours races left in place within exposureWindow; guarded by mu
	// noHostsTOML: the last WithHostsTOML left no record; guarded by mu.
	noHostsTOML bool
	hooks       hooks // tests only
}

// hooks let a test act in the windows where another writer could: each is
// called, when set, at the instant it names.
type hooks struct {
	beforeSwap   func() // a write has read the file and is about to swap its own in
	beforeRemove func() // a drop has read the file and is about to take it off its name
	whileAway    func() // a drop has taken the file off its name and not yet decided
	afterHold    func() // a write swapped ours in and holds the other writer's file it replaced
	attempts     int    // in place of maxAttempts, when set
}

func call(f func()) {
	if f != nil {
		f()
	}
}

// sweepOnce removes the files a crash left in d whose names start with
// prefix, the first time this engine works there: nodecreds removes its
// own temp files as it goes, so only a process before this one can have
// left any (and listing a folder on every write is not free). Held files
// (heldPrefix) are not removed: it returns their names, to be merged.
func (e *Engine) sweepOnce(d *hostfs.Dir, prefix, held string) []string {
	key := d.Name(prefix)
	if e.swept[key] {
		return nil
	}
	found := d.SweepTemps(prefix, held)
	if e.swept == nil {
		e.swept = map[string]bool{}
	}
	e.swept[key] = true
	return found
}

// sweepTarget sweeps the target's folder of a crash's leftovers the first
// time, and notes the files held there.
func (e *Engine) sweepTarget(t *openedTarget) {
	for _, n := range e.sweepOnce(t.dir, tempPrefix(t.name), heldPrefix(t.name)) {
		if sameFile(t.dir, n, t.name) {
			// Put back by a link-and-unlink that a crash interrupted: the
			// target under a second name, which would make it look
			// hard-linked.
			_ = t.dir.Remove(n)
			continue
		}
		e.noteHeld(t.path, n)
	}
}

func (e *Engine) noteHeld(path, name string) {
	if e.held == nil {
		e.held = map[string][]string{}
	}
	if !slices.Contains(e.held[path], name) {
		e.held[path] = append(e.held[path], name)
	}
}

func (e *Engine) forgetHeld(path, name string) {
	e.held[path] = slices.DeleteFunc(e.held[path], func(n string) bool { return n == name })
	if len(e.held[path]) == 0 {
		delete(e.held, path)
	}
}

// New returns an Engine.
func New(opts Options) *Engine {
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	root := opts.HostRoot
	if root == "" {
		root = "/"
	}
	return &Engine{root: root, stateDir: opts.StateDir, now: now}
}

// Result is the outcome for one target.
type Result struct {
	Target    string   // node path as configured
	Path      string   // host path after resolving symlinks
	Changed   bool     // the file was written or removed
	Removed   bool     // the file was removed (cleanup, or nothing left in a file we created)
	Entries   int      // entries nodecreds owns in the file
	SetAside  string   // host path of a corrupt file's copy, if one was made
	Released  []string // keys we owned that someone else changed; now theirs
	Displaced []string // foreign keys moved into the state file
	Restored  []string // displaced keys put back
	Kept      []string // keys whose previous entry stayed in place of a held registry's new one (Desired.Keep)
	Fresh     []string // keys of held registries new to the file: written, or waiting with the rest of their source held whole
	Warnings  []string // things an operator should know that are not errors
	// Left is what the sync left at Path (content, mode, owner; Exists
	// false for no file), nil when the target was not synced, so that the
	// events of nodecreds' own write can be told from anyone else's, and
	// any later change from none.
	Left *FileID
	Err  error
}

// Resolve returns the host path of a node path, as the engine writes it
// now. It is a name for watches and messages; writes never go through it.
func (e *Engine) Resolve(nodePath string) (string, error) {
	path, _, err := e.Route(nodePath)
	return path, err
}

// Route is Resolve, and it also names the host paths of the symlinks
// followed on the way: re-pointing one re-points the target.
func (e *Engine) Route(nodePath string) (string, []string, error) {
	root, err := hostfs.OpenRoot(e.root)
	if err != nil {
		return "", nil, err
	}
	defer root.Close()
	way, err := root.Walk(nodePath, false, 0, nil)
	if err != nil {
		return "", nil, err
	}
	way.Close()
	return way.Path, way.Links, nil
}

// Desired is what the targets are to hold.
type Desired struct {
	// Sources in precedence order. Each target gets dockercfg.View of them
	// for its reader (dockercfg.ReaderOf its node path).
	Sources []dockercfg.NamedSet
	// Prune removes entries nodecreds wrote that no source provides now.
	Prune bool
	// Hold names sources whose content is unknown (invalid and never seen
	// valid): with Prune, the entries they wrote stay (and entries recorded
	// without a source, which may be theirs); every other source's go.
	Hold []string
	// Keep names entries whose new value waits for a login (or was
	// refused by its registry): where a target holds nodecreds' own
	// previous entry for the key, that entry stays as it is; where it
	// holds none, the new one is written.
	Keep map[KeepID]bool
}

// KeepID names a source's entry for a registry (dockercfg.Normalize of
// its key); with no Registry, every entry of the source: a rotation
// waiting for its logins then reaches the files whole, never part old,
// part new.
type KeepID struct{ Source, Registry string }

// Sync brings every target in line with d. Targets are independent: one
// failing does not stop the others. The error is about the state file or
// lock, without which nothing can be done safely.
//
// ctx bounds the wait for the state lock and the retries around another
// writer: a stopping agent returns promptly, leaving every file as it was
// or as one whole write left it.
//
// More desired entries, all sources together, than one Secret may hold
// (dockercfg.MaxEntries) is refused for every target before anything is
// built or touched: several sources each under the limit can add up to
// more than an agent holds within its memory limit, and than its state
// file records.
func (e *Engine) Sync(ctx context.Context, targets []string, d Desired) ([]Result, error) {
	if n := desiredEntries(d.Sources); n > dockercfg.MaxEntries {
		results := make([]Result, len(targets))
		for i, target := range targets {
			results[i] = Result{Target: target, Err: fmt.Errorf("%s: the sources hold %d entries together, more than the %d nodecreds applies (its memory limit and state file are sized for them); nothing written, the files stay as they are: %w", target, n, dockercfg.MaxEntries, ErrTooManyEntries)}
		}
		return results, nil
	}
	rule := pruneRule{on: d.Prune, now: e.now().Unix(), keep: d.Keep}
	if len(d.Hold) > 0 {
		rule.hold = make(map[string]bool, len(d.Hold))
		for _, name := range d.Hold {
			rule.hold[name] = true
		}
	}
	return e.run(ctx, targets, d.Sources, rule)
}

// desiredEntries counts the entries of sources, an upper bound of what
// any target gets (View keeps at most every key of each).
func desiredEntries(sources []dockercfg.NamedSet) int {
	n := 0
	for _, ns := range sources {
		n += len(ns.Set)
	}
	return n
}

// Apply is Sync with one source, desired, whose entries are recorded
// without a source name.
func (e *Engine) Apply(ctx context.Context, targets []string, desired dockercfg.Set, prune bool) ([]Result, error) {
	return e.Sync(ctx, targets, Desired{Sources: []dockercfg.NamedSet{{Set: desired}}, Prune: prune})
}

// Cleanup removes every entry nodecreds owns from targets (all targets in
// the state when none are given), restores what it displaced, and deletes
// files it created that are now empty.
func (e *Engine) Cleanup(ctx context.Context, targets []string) ([]Result, error) {
	return e.run(ctx, targets, nil, pruneRule{on: true})
}

// open opens the host root and the state folder in it; done closes both.
func (e *Engine) open() (*hostfs.Root, *hostfs.Dir, func(), error) {
	root, err := hostfs.OpenRoot(e.root)
	if err != nil {
		return nil, nil, nil, err
	}
	sd, err := e.openStateDir(root)
	if err != nil {
		root.Close()
		return nil, nil, nil, err
	}
	return root, sd, func() { sd.Close(); root.Close() }, nil
}

// openStateDir opens (creating it 0700 if needed) the state folder. It
// holds displaced credentials, so a looser mode, such as the 0755 of a
// hostPath DirectoryOrCreate, is tightened to 0700.
func (e *Engine) openStateDir(root *hostfs.Root) (*hostfs.Dir, error) {
	d, err := root.OpenDir(e.stateDir, true, 0o700)
	if err != nil {
		return nil, fmt.Errorf("%w: state folder: %w", ErrState, err)
	}
	info, err := d.Stat()
	if err == nil && info.Mode&0o077 != 0 {
		err = d.Chmod(0o700)
	}
	if err != nil {
		d.Close()
		return nil, fmt.Errorf("%w: state folder: %w", ErrState, err)
	}
	return d, nil
}

const (
	stepWrite planStep = iota // replace the file with the merged document
	stepKeep                  // the file is as it should be; record the state
	stepLeave                 // a corrupt file with nothing of ours for it: leave it
	stepDrop                  // a file nodecreds created, now empty: remove it
)
