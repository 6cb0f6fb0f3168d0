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
	_, sd, done, err := e.open()
	if err != nil {
		return nil, err
	}
	defer done()
	st, err := loadState(sd)
	if err != nil {
		return nil, err
	}
	return sortedKeys(st.Targets), nil
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

// stateStore saves the state into its folder.
type stateStore struct {
	dir *hostfs.Dir
	st  *State
}

func (s stateStore) save() error { return saveState(s.dir, s.st) }

func (e *Engine) run(ctx context.Context, targets []string, desired dockercfg.Set, prune bool) ([]Result, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	root, sd, done, err := e.open()
	if err != nil {
		return nil, err
	}
	defer done()
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
	for _, target := range targets {
		t, err := openTarget(root, target)
		if err != nil {
			results = append(results, Result{Target: target, Err: err})
			continue
		}
		if first, dup := seen[t.path]; dup {
			// Two names for one file: syncing it under both would make
			// each displace the other's entries into the state.
			results = append(results, Result{Target: target, Path: t.path, Warnings: []string{fmt.Sprintf("%s is the same file as target %s; synced once, under %s", target, first, first)}})
			t.close()
			continue
		}
		seen[t.path] = target
		r, err := e.syncTarget(ctx, root, target, t, desired, prune, store)
		t.close()
		r.Err = err
		results = append(results, r)
	}
	return results, nil
}

// syncTarget merges into one target: plan (pure) what the file and the
// state become, then commit it, again on top of another writer's file when
// one raced us. The state is saved before the target is replaced (as an
// intent covering old and new) and after (final).
func (e *Engine) syncTarget(ctx context.Context, root *hostfs.Root, target string, t *openedTarget, desired dockercfg.Set, prune bool, store stateStore) (Result, error) {
	res := Result{Target: target, Path: t.path}
	rec := targetRecord{store: store, target: target}
	old := rec.current()

	cur, err := readTarget(t.dir, t.name)
	if err != nil {
		return res, err
	}
	// base is what we merge into. It is cur, except after we lost a race:
	// then cur is our own (stale) file and base is the other writer's.
	base := cur
	var prev *document // the last base merged into, while racing
	for attempt := range maxAttempts {
		if err := pause(ctx, attempt, t.path); err != nil {
			return res, err
		}
		p, err := planTarget(base, cur, prev, desired, prune, old)
		if err != nil {
			return res, fmt.Errorf("%s: %w", t.path, err)
		}
		prev = p.parsed
		res.Entries = len(p.merged.state.Owned)
		res.Released, res.Displaced, res.Restored = p.merged.released, p.merged.displaced, p.merged.restored
		switch p.step {
		case stepLeave:
			res.Warnings = append(res.Warnings, fmt.Sprintf("%s: %v; left alone as nodecreds has nothing to write to it", t.path, p.corrupt))
			return res, rec.save(p.merged.state)
		case stepKeep:
			return res, rec.save(p.merged.state)
		case stepDrop:
			return res, e.drop(t, cur, p, rec, &res)
		}
		w, err := e.write(root, t, base, cur, p, rec, &res)
		switch {
		case err != nil:
			return res, err
		case w.lost:
			// A file appeared or changed before we could check-and-swap;
			// nothing of ours is in place.
			if cur, err = readTarget(t.dir, t.name); err != nil {
				return res, err
			}
			base, prev = cur, nil
		case w.raced:
			// Someone replaced the file between our read and our swap. Ours
			// is in place now but built on stale content: merge again on top
			// of theirs, recognising both what was ours in their file and
			// our stale write, which is what is on disk now.
			base, cur = w.theirs, w.ours
			old = intent(ownedIn(p.parsed, old), old, p.merged.state)
		default:
			return res, rec.save(p.merged.state)
		}
	}
	return res, fmt.Errorf("%s: %w; gave up after %d attempts", t.path, ErrContended, maxAttempts)
}

// pause lets a writer in a loop finish its burst before attempt (none
// before the first), unless ctx ends first.
func pause(ctx context.Context, attempt int, path string) error {
	if attempt == 0 {
		return nil
	}
	select {
	case <-ctx.Done():
		return fmt.Errorf("%s: stopped while another writer kept changing it: %w", path, ctx.Err())
	case <-time.After(time.Duration(min(attempt, 20)) * time.Millisecond):
		return nil
	}
}

// openedTarget is a target's folder, opened in the root (nil while it does
// not exist), and its name in it.
type openedTarget struct {
	path string // host path, for messages
	dir  *hostfs.Dir
	name string
}

// openTarget opens the target's folder once, in the root; every step after
// is relative to it. A missing folder is created only when something is
// written.
func openTarget(root *hostfs.Root, target string) (*openedTarget, error) {
	if !filepath.IsAbs(target) {
		return nil, fmt.Errorf("target %q is not an absolute path", target)
	}
	path, err := root.Join(target)
	if err != nil {
		return nil, err
	}
	dir, name, err := root.OpenParent(target, false, 0)
	if errors.Is(err, fs.ErrNotExist) {
		dir, err = nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &openedTarget{path: path, dir: dir, name: name}, nil
}

func (t *openedTarget) close() {
	if t.dir != nil {
		t.dir.Close()
	}
}

// targetRecord is one target's entry in the state, saved when it changes.
type targetRecord struct {
	store  stateStore
	target string
}

func (r targetRecord) current() TargetState {
	if ts := r.store.st.Targets[r.target]; ts != nil {
		return *ts
	}
	return TargetState{}
}

func (r targetRecord) save(ts TargetState) error {
	if prev := r.store.st.Targets[r.target]; prev != nil && prev.equal(ts) {
		return nil
	}
	cp := ts
	r.store.st.Targets[r.target] = &cp
	return r.store.save()
}

// drop removes a file nodecreds created once nothing is left in it.
func (e *Engine) drop(t *openedTarget, cur fileRead, p targetPlan, rec targetRecord, res *Result) error {
	if err := rec.save(p.intent); err != nil {
		return err
	}
	if cur.exists {
		if err := remove(t.dir, t.name); err != nil {
			return err
		}
		res.Changed, res.Removed = true, true
	}
	return rec.save(TargetState{})
}

// written is what a write found at the target when it swapped ours in.
type written struct {
	lost   bool     // a file appeared or changed before the swap; ours is not in place
	raced  bool     // ours is in place, but replaced a file other than the one we read
	theirs fileRead // with raced: the file we replaced
	ours   fileRead // with raced: ours, now on disk
}

// write records the intent, sets a corrupt file aside, and swaps the new
// file in.
func (e *Engine) write(root *hostfs.Root, t *openedTarget, base, cur fileRead, p targetPlan, rec targetRecord, res *Result) (written, error) {
	if err := rec.save(p.intent); err != nil {
		return written{}, err
	}
	if t.dir == nil {
		d, name, err := root.OpenParent(res.Target, true, 0o700)
		if err != nil {
			return written{}, err
		}
		t.dir, t.name = d, name
	}
	if p.corrupt != nil && base.exists {
		res.Warnings = append(res.Warnings, fmt.Sprintf("%s: %v; replaced", t.path, p.corrupt))
		copyPath, err := setAside(t.dir, t.name, base.data, e.now())
		if err != nil {
			return written{}, err
		}
		res.SetAside = copyPath
	}
	replaced, existed, err := replace(t.dir, t.name, p.data, cur)
	if errors.Is(err, errRaced) {
		return written{lost: true}, nil
	}
	if err != nil {
		return written{}, err
	}
	res.Changed = true
	if existed == cur.exists && bytes.Equal(replaced, cur.data) {
		return written{}, nil
	}
	w := written{
		raced:  true,
		theirs: fileRead{exists: existed, data: replaced, mode: cur.mode, uid: cur.uid, gid: cur.gid},
		ours:   fileRead{exists: true, data: p.data, mode: cur.mode, uid: cur.uid, gid: cur.gid},
	}
	if !existed {
		w.ours.mode = 0o600
	}
	return w, nil
}

// planStep is what a plan does with the file.
type planStep int

const (
	stepWrite planStep = iota // replace the file with data
	stepKeep                  // the file is as it should be; record the state
	stepLeave                 // a corrupt file with nothing of ours for it: leave it
	stepDrop                  // a file nodecreds created, now empty: remove it
)

// targetPlan is what one target becomes.
type targetPlan struct {
	step    planStep
	parsed  *document // base as parsed (empty when corrupt)
	corrupt error     // why base does not parse
	merged  mergeResult
	intent  TargetState // recorded before the file is touched
	data    []byte      // the new file, with stepWrite
}

// planTarget decides, without I/O, what a target becomes: base is the file
// to merge into, cur the file on disk (they differ only after a lost race,
// when prev is the base merged into before), old the target's state.
func planTarget(base, cur fileRead, prev *document, desired dockercfg.Set, prune bool, old TargetState) (targetPlan, error) {
	racing := base.exists != cur.exists || !bytes.Equal(base.data, cur.data)
	doc, perr := parseDocument(base.data)
	if perr != nil {
		doc, _ = parseDocument(nil)
	}
	if racing && prev != nil {
		// While our stale file was in place the other writer may have read
		// it and written on top of it, dropping what it had added before.
		// Carry forward everything seen from it in this sync.
		carry(prev, doc)
	}
	p := targetPlan{parsed: doc, corrupt: perr, merged: merge(doc, desired, prune, old)}
	if !base.exists && len(p.merged.doc.auths) > 0 {
		p.merged.state.Created = true
	}
	// What of ours is in the file on disk right now: cur, which after a
	// lost race is our own stale write rather than base.
	onDisk := ownedIn(doc, old)
	if racing {
		if curDoc, err := parseDocument(cur.data); err == nil {
			onDisk = ownedIn(curDoc, old)
		}
	}
	p.intent = intent(onDisk, old, p.merged.state)
	switch {
	case perr != nil && len(p.merged.state.Owned) == 0 && len(p.merged.restored) == 0 && !racing:
		p.step = stepLeave
	case p.merged.state.Created && p.merged.doc.empty():
		p.step = stepDrop
	case perr == nil && !racing && p.merged.doc.equal(doc):
		p.step = stepKeep
	default:
		data, err := p.merged.doc.encode()
		if err != nil {
			return p, err
		}
		p.step, p.data = stepWrite, data
	}
	return p, nil
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
