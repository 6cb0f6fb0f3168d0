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
	"maps"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nodecreds/nodecreds/internal/dockercfg"
	"github.com/nodecreds/nodecreds/internal/hostfs"
	"github.com/nodecreds/nodecreds/internal/jsonwalk"
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
	memo     memo            // guarded by mu
	swept    map[string]bool // folders (and prefixes) swept of a crash's leftovers; guarded by mu
}

// sweepOnce removes the files a crash left in d whose names start with
// prefix, the first time this engine works there: nodecreds removes its
// own temp files as it goes, so only a process before this one can have
// left any (and listing a folder on every write is not free).
func (e *Engine) sweepOnce(d *hostfs.Dir, prefix string) {
	key := d.Name(prefix)
	if e.swept[key] {
		return
	}
	sweepPrefix(d, prefix)
	if e.swept == nil {
		e.swept = map[string]bool{}
	}
	e.swept[key] = true
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
	// Left is the file nodecreds put at Path, when it wrote one, so that
	// the events of its own write can be told from someone else's.
	Left FileID
	Err  error
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
//
// More desired entries than a target may hold (MaxEntries) is refused for
// every target before anything is built or touched: several sources can
// add up to more than one may hold.
func (e *Engine) Apply(ctx context.Context, targets []string, desired dockercfg.Set, prune bool) ([]Result, error) {
	if len(desired) > MaxEntries {
		results := make([]Result, len(targets))
		for i, target := range targets {
			results[i] = Result{Target: target, Err: fmt.Errorf("%s: the sources hold %d entries, more than the %d nodecreds writes to one file; nothing written: %w", target, len(desired), MaxEntries, ErrTooManyEntries)}
		}
		return results, nil
	}
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
	e.mu.Lock()
	defer e.mu.Unlock()
	_, sd, done, err := e.open()
	if err != nil {
		return nil, err
	}
	defer done()
	st, err := loadState(sd, &e.memo)
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

// stateStore holds the state of one run and saves it into its folder.
// Records change in memory; a target's record is written before that
// target is touched (durable), and whatever else changed is written with it
// or at the end of the run (flush). One run over several targets thus
// records every intent in one save and every final record in one more.
type stateStore struct {
	dir   *hostfs.Dir
	st    *State
	memo  *memo
	saved map[string]*TargetState // each target's record as last written
	dirty bool
}

func newStateStore(dir *hostfs.Dir, st *State, m *memo) *stateStore {
	return &stateStore{dir: dir, st: st, memo: m, saved: maps.Clone(st.Targets)}
}

// set changes a target's record in memory.
func (s *stateStore) set(target string, ts TargetState) {
	if cur := s.st.Targets[target]; cur != nil && cur.equal(ts) || cur == nil && ts.isZero() {
		return
	}
	cp := ts
	s.st.Targets[target] = &cp
	s.dirty = true
}

// durable writes the state unless target's record is on disk as it is in
// memory.
func (s *stateStore) durable(target string) error {
	if s.saved[target] == s.st.Targets[target] {
		return nil
	}
	return s.flush()
}

// flush writes the state if anything in it changed.
func (s *stateStore) flush() error {
	if !s.dirty {
		return nil
	}
	if err := saveState(s.dir, s.st, s.memo); err != nil {
		return err
	}
	s.saved, s.dirty = maps.Clone(s.st.Targets), false
	return nil
}

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
	e.sweepOnce(sd, "."+stateFileName+".")
	st, err := loadState(sd, &e.memo)
	if err != nil {
		return nil, err
	}
	store := newStateStore(sd, st, &e.memo)
	if len(targets) == 0 {
		targets = sortedKeys(st.Targets)
	}
	want := e.memo.wanted(desired)
	results := make([]Result, len(targets))
	syncs := make([]*targetSync, len(targets))
	seen := map[string]string{} // host path → the target that resolved to it first
	for i, target := range targets {
		results[i].Target = target
		t, err := openTarget(root, target)
		if err != nil {
			results[i].Err = err
			continue
		}
		defer t.close()
		results[i].Path = t.path
		if first, dup := seen[t.path]; dup {
			// Two names for one file: syncing it under both would make
			// each displace the other's entries into the state.
			results[i].Warnings = []string{fmt.Sprintf("%s is the same file as target %s; synced once, under %s", target, first, first)}
			continue
		}
		seen[t.path] = target
		// Plan every target before writing any, so that one state save
		// records every intent.
		sy := &targetSync{e: e, root: root, t: t, rec: targetRecord{store: store, target: target}, desired: want, prune: prune}
		if err := sy.start(); err != nil {
			results[i] = sy.res
			results[i].Err = err
			continue
		}
		syncs[i] = sy
	}
	first := true
	for _, sy := range syncs {
		if sy != nil && !first {
			// Merged again when its turn comes: meanwhile its merged
			// document would only add to the one being written.
			sy.p.merged.doc = nil
		}
		first = first && sy == nil
	}
	for i, sy := range syncs {
		if sy != nil {
			r, err := sy.run(ctx)
			r.Err = err
			results[i] = r
			sy.release()
		}
	}
	if err := store.flush(); err != nil {
		// The files are written; their final records are not. The intents
		// on disk still recognise them, and the next sync records them.
		for i := range results {
			if syncs[i] != nil && results[i].Err == nil {
				results[i].Err = err
			}
		}
	}
	return results, nil
}

// targetSync merges into one target: plan (pure) what the file and the
// state become, then commit it, again on top of another writer's file when
// one raced us. The target's state record is written before the target is
// replaced (as an intent covering old and new) and after (final).
type targetSync struct {
	e       *Engine
	root    *hostfs.Root
	t       *openedTarget
	rec     targetRecord
	desired *wanted
	prune   bool

	res       Result
	old       TargetState // the record merged against
	base, cur fileRead    // see plan
	prev      *document   // the last base merged into, while racing
	p         targetPlan
}

// start reads the target and plans the first attempt; when it is to be
// written, its intent is set in memory, to be saved with every other
// target's before the first is touched.
func (s *targetSync) start() error {
	s.res = Result{Target: s.rec.target, Path: s.t.path}
	s.old = s.rec.current()
	cur, err := readTarget(s.t.dir, s.t.name)
	if err != nil {
		return err
	}
	cur.data = s.e.memo.same(s.t.path, cur.data)
	s.base, s.cur = cur, cur
	if err := s.plan(); err != nil {
		return err
	}
	if s.p.step == stepWrite || s.p.step == stepDrop {
		s.rec.set(s.p.intent)
	}
	return nil
}

// plan decides what the target becomes. base is what we merge into: cur,
// except after we lost a race, when cur is our own (stale) file and base is
// the other writer's.
func (s *targetSync) plan() error {
	parse := func(data []byte) (*document, error) { return s.e.memo.parse(s.t.path, data) }
	p, err := planTarget(s.base, s.cur, s.prev, s.desired, s.prune, s.old, parse)
	if err != nil {
		return fmt.Errorf("%s: %w", s.t.path, err)
	}
	s.p, s.prev = p, p.parsed
	s.res.Entries = len(p.merged.state.Owned)
	s.res.Released, s.res.Displaced, s.res.Restored = p.merged.released, p.merged.displaced, p.merged.restored
	return nil
}

// run commits the plan made by start, planning again after a race.
func (s *targetSync) run(ctx context.Context) (Result, error) {
	res := &s.res
	for attempt := range maxAttempts {
		if attempt > 0 {
			if err := pause(ctx, attempt, s.t.path); err != nil {
				return *res, err
			}
		}
		if attempt > 0 || s.p.step == stepWrite && s.p.merged.doc == nil {
			if err := s.plan(); err != nil {
				return *res, err
			}
		}
		p := s.p
		switch p.step {
		case stepLeave:
			res.Warnings = append(res.Warnings, fmt.Sprintf("%s: %v; left alone as nodecreds has nothing to write to it", s.t.path, p.corrupt))
			s.rec.set(p.merged.state)
			return *res, nil
		case stepKeep:
			s.rec.set(p.merged.state)
			return *res, nil
		case stepDrop:
			return *res, s.e.drop(s.t, s.cur, p, s.rec, res)
		}
		w, err := s.e.write(s.root, s.t, s.base, s.cur, p, s.rec, res)
		switch {
		case err != nil:
			return *res, err
		case w.lost:
			// A file appeared or changed before we could check-and-swap;
			// nothing of ours is in place.
			if s.cur, err = readTarget(s.t.dir, s.t.name); err != nil {
				return *res, err
			}
			s.base, s.prev = s.cur, nil
		case w.raced:
			// Someone replaced the file between our read and our swap. Ours
			// is in place now but built on stale content: merge again on top
			// of theirs, recognising both what was ours in their file and
			// our stale write, which is what is on disk now.
			s.base, s.cur = w.theirs, w.ours
			s.old = intent(ownedIn(p.parsed, s.old), s.old, p.merged.state)
		default:
			// What the next sync will read back, unless someone writes it.
			s.e.memo.remember(s.t.path, w.data, p.merged.doc)
			s.rec.set(p.merged.state)
			return *res, nil
		}
	}
	return *res, fmt.Errorf("%s: %w; gave up after %d attempts", s.t.path, ErrContended, maxAttempts)
}

// release drops what the sync held (the files read, the documents merged)
// once it is done, so that they do not add to the next target's.
func (s *targetSync) release() {
	s.p, s.prev, s.base, s.cur = targetPlan{}, nil, fileRead{}, fileRead{}
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

// targetRecord is one target's entry in the state.
type targetRecord struct {
	store  *stateStore
	target string
}

func (r targetRecord) current() TargetState {
	if ts := r.store.st.Targets[r.target]; ts != nil {
		return *ts
	}
	return TargetState{}
}

// set changes the record in memory; it is written with the next target
// touched or at the end of the run.
func (r targetRecord) set(ts TargetState) { r.store.set(r.target, ts) }

// commit sets the record and writes it before the target is touched.
func (r targetRecord) commit(ts TargetState) error {
	r.store.set(r.target, ts)
	return r.store.durable(r.target)
}

// drop removes a file nodecreds created once nothing is left in it.
func (e *Engine) drop(t *openedTarget, cur fileRead, p targetPlan, rec targetRecord, res *Result) error {
	if err := rec.commit(p.intent); err != nil {
		return err
	}
	if cur.exists {
		if err := remove(t.dir, t.name); err != nil {
			return err
		}
		res.Changed, res.Removed = true, true
	}
	rec.set(TargetState{})
	return nil
}

// written is what a write found at the target when it swapped ours in.
type written struct {
	lost   bool     // a file appeared or changed before the swap; ours is not in place
	raced  bool     // ours is in place, but replaced a file other than the one we read
	theirs fileRead // with raced: the file we replaced
	ours   fileRead // with raced: ours, now on disk
	data   []byte   // the file written
}

// write records the intent, sets a corrupt file aside, and swaps the new
// file in.
func (e *Engine) write(root *hostfs.Root, t *openedTarget, base, cur fileRead, p targetPlan, rec targetRecord, res *Result) (written, error) {
	// Encoded only now (the plan checked its size): a sync of several
	// targets holds one new file at a time.
	data, err := p.merged.doc.encode()
	if err != nil {
		return written{}, err
	}
	if err := rec.commit(p.intent); err != nil {
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
	e.sweepOnce(t.dir, tempPrefix(t.name))
	replaced, existed, id, err := replace(t.dir, t.name, data, cur)
	if errors.Is(err, errRaced) {
		return written{lost: true}, nil
	}
	if err != nil {
		return written{}, err
	}
	res.Changed, res.Left = true, id
	if existed == cur.exists && bytes.Equal(replaced, cur.data) {
		return written{data: data}, nil
	}
	w := written{
		raced:  true,
		theirs: fileRead{exists: existed, data: replaced, mode: cur.mode, uid: cur.uid, gid: cur.gid},
		ours:   fileRead{exists: true, data: data, mode: cur.mode, uid: cur.uid, gid: cur.gid},
		data:   data,
	}
	if !existed {
		w.ours.mode = 0o600
	}
	return w, nil
}

// planStep is what a plan does with the file.
type planStep int

const (
	stepWrite planStep = iota // replace the file with the merged document
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
}

// planTarget decides, without I/O, what a target becomes: base is the file
// to merge into, cur the file on disk (they differ only after a lost race,
// when prev is the base merged into before), old the target's state.
//
// parse is parseDocument, or one that remembers; what it returns is never
// modified.
func planTarget(base, cur fileRead, prev *document, desired *wanted, prune bool, old TargetState, parse func([]byte) (*document, error)) (targetPlan, error) {
	racing := base.exists != cur.exists || !bytes.Equal(base.data, cur.data)
	doc, perr := parse(base.data)
	if perr != nil && !errors.Is(perr, ErrCorrupt) {
		// Not corrupt but not to be taken apart (too many entries): the
		// file is left as it is, never set aside.
		return targetPlan{}, perr
	}
	if doc == nil {
		doc, _ = parseDocument(nil)
	}
	if racing && prev != nil {
		// While our stale file was in place the other writer may have read
		// it and written on top of it, dropping what it had added before.
		// Carry forward everything seen from it in this sync.
		doc = doc.clone()
		carry(prev, doc)
	}
	p := targetPlan{parsed: doc, corrupt: perr, merged: merge(doc, desired, prune, old)}
	if !base.exists && len(p.merged.doc.auths) > 0 {
		p.merged.state.Created = true
	}
	// The intent, recorded before the file is touched, covers what of
	// ours is in the file on disk right now: cur, which after a lost race is
	// our own stale write rather than base.
	setIntent := func() {
		onDisk := ownedIn(doc, old)
		if racing {
			if curDoc, err := parse(cur.data); err == nil {
				onDisk = ownedIn(curDoc, old)
			}
		}
		p.intent = intent(onDisk, old, p.merged.state)
	}
	switch {
	case perr != nil && len(p.merged.state.Owned) == 0 && len(p.merged.restored) == 0 && !racing:
		p.step = stepLeave
	case p.merged.state.Created && p.merged.doc.empty():
		p.step = stepDrop
		setIntent()
	case perr == nil && !racing && p.merged.doc.equal(doc):
		p.step = stepKeep
	default:
		// Refused here, before anything is recorded or touched, if it
		// cannot be written; encoded when it is written.
		if _, err := p.merged.doc.encodedSize(); err != nil {
			return p, err
		}
		p.step = stepWrite
		setIntent()
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
	fields := map[string]bool{}
	for k := range doc.top {
		fields[jsonwalk.Fold(k)] = true
	}
	for _, m := range doc.repeated {
		fields[jsonwalk.Fold(m.key)] = true
	}
	for k, v := range prev.top {
		if !fields[jsonwalk.Fold(k)] {
			doc.top[k] = v
		}
	}
	for _, m := range prev.repeated {
		if !fields[jsonwalk.Fold(m.key)] {
			doc.repeated = append(doc.repeated, m)
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
