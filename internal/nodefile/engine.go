// Package nodefile merges registry credentials into a node's config.json
// files: ownership tracked in a state file, atomic replacement, corrupt files
// set aside, symlinks followed without leaving the host root, and other
// writers' changes never lost.
package nodefile

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nodecreds/nodecreds/internal/dockercfg"
	"github.com/nodecreds/nodecreds/internal/hostfs"
)

// maxAttempts bounds how often one target is re-merged because another
// writer keeps changing it; the caller retries later (ErrContended). With the
// backoff below that is several seconds of a writer rewriting the file in a
// tight loop.
const maxAttempts = 200

// ErrContended means another writer kept replacing a target faster than we
// could merge; nothing of theirs was lost and the next sync tries again.
var ErrContended = errors.New("target keeps changing under us")

// Options configures an Engine.
type Options struct {
	// HostRoot is where the node's file system is mounted ("/" on the node).
	HostRoot string
	// StateDir is the node path of nodecreds' state folder.
	StateDir string
	// Now is the clock for set-aside names; time.Now when nil.
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
	Warnings  []string // things an operator should know that are not errors
	Err       error
}

// Resolve returns the host path of a node path, as the engine writes it
// now. It is a name for watches and messages; writes never go through it.
func (e *Engine) Resolve(nodePath string) (string, error) {
	root, err := hostfs.OpenRoot(e.root)
	if err != nil {
		return "", err
	}
	defer root.Close()
	return root.Join(nodePath)
}

// Apply brings every target in line with desired. Targets are independent:
// one failing does not stop the others. The error is about the state file
// or lock, without which nothing can be done safely.
//
// ctx bounds the wait for the state lock and the retries around another
// writer: a stopping agent returns promptly, leaving every file as it was
// or as one whole write left it.
func (e *Engine) Apply(ctx context.Context, targets []string, desired dockercfg.Set, prune bool) ([]Result, error) {
	return e.run(ctx, targets, desired, prune)
}

// Cleanup removes every entry nodecreds owns from targets (all targets in
// the state when none are given), restores what it displaced, and deletes
// files it created that are now empty.
func (e *Engine) Cleanup(ctx context.Context, targets []string) ([]Result, error) {
	return e.run(ctx, targets, nil, true)
}

// Owned lists the node paths the state file records.
func (e *Engine) Owned() ([]string, error) {
	root, err := hostfs.OpenRoot(e.root)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	sd, err := e.openStateDir(root)
	if err != nil {
		return nil, err
	}
	defer sd.Close()
	st, err := loadState(sd)
	if err != nil {
		return nil, err
	}
	return sortedKeys(st.Targets), nil
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

// stateStore saves the state into its folder.
type stateStore struct {
	dir *hostfs.Dir
	st  *State
}

func (s stateStore) save() error { return saveState(s.dir, s.st) }

func (e *Engine) run(ctx context.Context, targets []string, desired dockercfg.Set, prune bool) ([]Result, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	root, err := hostfs.OpenRoot(e.root)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	sd, err := e.openStateDir(root)
	if err != nil {
		return nil, err
	}
	defer sd.Close()
	unlock, err := lock(ctx, sd)
	if err != nil {
		return nil, err
	}
	defer unlock()
	sweepPrefix(sd, "."+stateFileName+".")
	st, err := loadState(sd)
	if err != nil {
		return nil, err
	}
	store := stateStore{dir: sd, st: st}
	if len(targets) == 0 {
		targets = sortedKeys(st.Targets)
	}
	results := make([]Result, 0, len(targets))
	seen := map[string]string{} // host path → the target that resolved to it first
	for _, t := range targets {
		if p, err := root.Join(t); err == nil && filepath.IsAbs(t) {
			if first, dup := seen[p]; dup {
				// Two names for one file: syncing it under both would make
				// each displace the other's entries into the state.
				results = append(results, Result{Target: t, Path: p, Warnings: []string{fmt.Sprintf("%s is the same file as target %s; synced once, under %s", t, first, first)}})
				continue
			}
			seen[p] = t
		}
		r, err := e.syncTarget(ctx, root, t, desired, prune, store)
		r.Err = err
		results = append(results, r)
	}
	return results, nil
}

// syncTarget merges into one target. The state is saved before the target
// is replaced (as an intent covering old and new) and after (final).
func (e *Engine) syncTarget(ctx context.Context, root *hostfs.Root, target string, desired dockercfg.Set, prune bool, store stateStore) (Result, error) {
	res := Result{Target: target}
	if !filepath.IsAbs(target) {
		return res, fmt.Errorf("target %q is not an absolute path", target)
	}
	path, err := root.Join(target)
	if err != nil {
		return res, err
	}
	res.Path = path
	// The folder is opened once, in the root; every step below is relative
	// to it. A missing folder is created only when something is written.
	dir, name, err := root.OpenParent(target, false, 0)
	if errors.Is(err, fs.ErrNotExist) {
		dir, err = nil, nil
	}
	if err != nil {
		return res, err
	}
	defer func() {
		if dir != nil {
			dir.Close()
		}
	}()
	st := store.st
	old := TargetState{}
	if ts := st.Targets[target]; ts != nil {
		old = *ts
	}
	commit := func(ts TargetState) error {
		if prevTS := st.Targets[target]; prevTS != nil && prevTS.equal(ts) {
			return nil
		}
		cp := ts
		st.Targets[target] = &cp
		return store.save()
	}

	cur, err := readTarget(dir, name)
	if err != nil {
		return res, err
	}
	// base is what we merge into. It is cur, except after we lost a race:
	// then cur is our own (stale) file and base is the other writer's.
	base := cur
	var prev *document // the last base merged into, while racing
	for attempt := range maxAttempts {
		if attempt > 0 {
			// Let a writer in a loop finish its burst.
			select {
			case <-ctx.Done():
				return res, fmt.Errorf("%s: stopped while another writer kept changing it: %w", path, ctx.Err())
			case <-time.After(time.Duration(min(attempt, 20)) * time.Millisecond):
			}
		}
		racing := base.exists != cur.exists || !bytes.Equal(base.data, cur.data)
		doc, perr := parseDocument(base.data)
		corrupt := perr != nil
		if corrupt {
			doc, _ = parseDocument(nil)
		}
		if racing && prev != nil {
			// While our stale file was in place the other writer may have
			// read it and written on top of it, dropping what it had added
			// before. Carry forward everything seen from it in this sync.
			carry(prev, doc)
		}
		prev = doc
		m := merge(doc, desired, prune, old)
		if !base.exists && len(m.doc.auths) > 0 {
			m.state.Created = true
		}
		res.Entries = len(m.state.Owned)
		res.Released, res.Displaced, res.Restored = m.released, m.displaced, m.restored
		drop := m.state.Created && m.doc.empty()
		// What of ours is in the file on disk right now: cur, which after a
		// lost race is our own stale write rather than base.
		onDisk := ownedIn(doc, old)
		if racing {
			if curDoc, err := parseDocument(cur.data); err == nil {
				onDisk = ownedIn(curDoc, old)
			}
		}

		switch {
		case corrupt && len(m.state.Owned) == 0 && len(m.restored) == 0 && !racing:
			// Nothing of ours goes in: a broken file that is not ours is
			// left as it is, not replaced by an empty one.
			res.Warnings = append(res.Warnings, fmt.Sprintf("%s: %v; left alone as nodecreds has nothing to write to it", path, perr))
			return res, commit(m.state)
		case drop:
			if err := commit(intent(onDisk, old, m.state)); err != nil {
				return res, err
			}
			if cur.exists {
				if err := remove(dir, name); err != nil {
					return res, err
				}
				res.Changed, res.Removed = true, true
			}
			return res, commit(TargetState{})
		case !corrupt && !racing && m.doc.equal(doc):
			return res, commit(m.state)
		}

		if err := commit(intent(onDisk, old, m.state)); err != nil {
			return res, err
		}
		if corrupt && base.exists {
			res.Warnings = append(res.Warnings, fmt.Sprintf("%s: %v; replaced", path, perr))
			if res.SetAside, err = setAside(dir, name, base.data, e.now()); err != nil {
				return res, err
			}
		}
		data, err := m.doc.encode()
		if err != nil {
			return res, err
		}
		if dir == nil {
			if dir, name, err = root.OpenParent(target, true, 0o700); err != nil {
				return res, err
			}
		}
		replaced, existed, err := replace(dir, name, data, cur)
		if errors.Is(err, errRaced) {
			// A file appeared or changed before we could check-and-swap;
			// nothing of ours is in place.
			if cur, err = readTarget(dir, name); err != nil {
				return res, err
			}
			base, prev = cur, nil
			continue
		}
		if err != nil {
			return res, err
		}
		res.Changed = true
		if existed != cur.exists || !bytes.Equal(replaced, cur.data) {
			// Someone replaced the file between our read and our swap. Ours
			// is in place now but built on stale content: merge again on top
			// of theirs so their change is kept.
			base = snapshot{exists: existed, data: replaced, mode: cur.mode, uid: cur.uid, gid: cur.gid}
			cur = snapshot{exists: true, data: data, mode: cur.mode, uid: cur.uid, gid: cur.gid}
			if !base.exists {
				cur.mode = 0o600
			}
			// Merge again recognising both what was ours in their file and
			// our stale write, which is what is on disk now.
			old = intent(ownedIn(doc, old), old, m.state)
			continue
		}
		return res, commit(m.state)
	}
	return res, fmt.Errorf("%s: %w; gave up after %d attempts", path, ErrContended, maxAttempts)
}

// carry copies into doc every auths entry and top-level field of prev that
// doc lacks. It may bring back something the other writer deleted during the
// race; losing something it added would be worse.
func carry(prev, doc *document) {
	for k, v := range prev.auths {
		if _, ok := doc.auths[k]; !ok {
			doc.auths[k] = v
		}
	}
	for k, v := range prev.top {
		if _, ok := doc.top[k]; !ok && k != "auths" {
			doc.top[k] = v
		}
	}
}

// lockPoll is how often a held state lock is tried again.
const lockPoll = 20 * time.Millisecond

// lock takes an exclusive flock on the state folder's lock file, waiting
// for it until ctx ends (another nodecreds, such as `cleanup`, may hold
// it). The lock file is opened without following links and only if it is a
// regular file.
func lock(ctx context.Context, d *hostfs.Dir) (func(), error) {
	f, err := d.OpenLock("lock")
	if err != nil {
		return nil, fmt.Errorf("%w: lock: %w", ErrState, err)
	}
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { _ = unix.Flock(int(f.Fd()), unix.LOCK_UN); f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("%w: locking %s: %w", ErrState, f.Name(), err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("waiting for the state lock %s (held by another nodecreds process, such as cleanup): %w", f.Name(), ctx.Err())
		case <-time.After(lockPoll):
		}
	}
}

// sweepPrefix removes files a crash left in d whose names start with prefix.
func sweepPrefix(d *hostfs.Dir, prefix string) {
	names, err := d.Names()
	if err != nil {
		return
	}
	for _, n := range names {
		if strings.HasPrefix(n, prefix) {
			_ = d.Remove(n)
		}
	}
}
