// Package nodefile merges registry credentials into a node's config.json
// files: ownership tracked in a state file, atomic replacement, corrupt files
// set aside, symlinks followed without leaving the host root, and other
// writers' changes never lost.
package nodefile

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
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
	memo     memo                // guarded by mu
	swept    map[string]bool     // folders (and prefixes) swept of a crash's leftovers; guarded by mu
	held     map[string][]string // target host path → names of files held next to it, not yet merged; guarded by mu
	hooks    hooks               // tests only
}

// hooks let a test act in the windows where another writer could: each is
// called, when set, at the instant it names.
type hooks struct {
	beforeSwap   func() // a write has read the file and is about to swap its own in
	beforeRemove func() // a drop has read the file and is about to take it off its name
	whileAway    func() // a drop has taken the file off its name and not yet decided
	afterHold    func() // a write swapped ours in and holds the other writer's file it replaced
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
	found := sweepPrefix(d, prefix, held)
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
}

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
	rule := pruneRule{on: d.Prune, now: e.now().Unix()}
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

func (e *Engine) run(ctx context.Context, targets []string, sources []dockercfg.NamedSet, prune pruneRule) ([]Result, error) {
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
	e.sweepOnce(sd, "."+stateFileName+".", "")
	st, err := loadState(sd, &e.memo)
	if err != nil {
		return nil, err
	}
	store := newStateStore(sd, st, &e.memo)
	if len(targets) == 0 {
		targets = sortedKeys(st.Targets)
	}
	// The sources that apply to the node now, known or held.
	applies := maps.Clone(prune.hold)
	if applies == nil {
		applies = map[string]bool{}
	}
	for _, ns := range sources {
		applies[ns.Name] = true
	}
	// What each reader's files get, prepared once for all its targets, and
	// once for both readers when they get the same (no Docker Hub key, no
	// two spellings of one registry: most sources).
	wants := map[dockercfg.Reader]*wanted{}
	views := map[dockercfg.Reader]dockercfg.Set{}
	want := func(target string) *wanted {
		r := dockercfg.ReaderOf(target)
		if w := wants[r]; w != nil {
			return w
		}
		view, _ := dockercfg.View(r, sources...)
		for other, w := range wants {
			if slices.Equal(views[other], view) {
				wants[r] = w
				return w
			}
		}
		wants[r], views[r] = e.memo.wanted(r, view), view
		return wants[r]
	}
	results := make([]Result, len(targets))
	syncs := make([]*targetSync, len(targets))
	opened := make([]*openedTarget, len(targets))
	sameAs := make([]int, len(targets)) // index of the target synced for this one's file
	seen := map[string]int{}            // file id → the first target that is that file
	for i, target := range targets {
		results[i].Target, sameAs[i] = target, i
		t, err := openTarget(root, target)
		if err != nil {
			results[i].Err = err
			continue
		}
		defer t.close()
		results[i].Path = t.path
		first, dup := seen[t.id]
		if !dup {
			seen[t.id], opened[i] = i, t
			continue
		}
		// Two names for one file (a link, a bind mount): syncing it under
		// both would make each displace the other's entries into the
		// state. What the state recorded under this name is recorded
		// under the first from now on.
		sameAs[i] = first
		results[i].Warnings = []string{fmt.Sprintf("%s is the same file as target %s; synced once, under %s", target, targets[first], targets[first])}
		if ts := st.Targets[target]; ts != nil {
			merged := targetRecord{store: store, target: targets[first]}.current().absorb(*ts)
			store.set(targets[first], merged)
			store.set(target, TargetState{})
		}
	}
	for i, t := range opened {
		if t == nil {
			continue
		}
		if t.dir != nil {
			e.sweepTarget(t)
		}
		// Plan every target before writing any, so that one state save
		// records every intent.
		sy := &targetSync{e: e, root: root, t: t, rec: targetRecord{store: store, target: targets[i]}, desired: want(targets[i]), prune: prune, applies: applies}
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
			sy.forget()
		}
	}
	for i, first := range sameAs {
		if first != i && results[first].Err == nil {
			// The file as that sync left it, so that its own events are
			// not taken for drift under this name either.
			results[i].Left = results[first].Left
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
	prune   pruneRule

	res       Result
	old       TargetState // the record merged against
	base, cur fileRead    // see plan
	prev      *document   // the last base merged into, while racing
	held      heldSet     // other writers' files taken off the target, to merge in
	// newer is the union of the held files that are newer than the
	// target (see loadHeld), nil for none.
	newer *document
	// ours is fileDigest of the target when it is a file nodecreds wrote
	// and meant to replace (a write that raced, or one a crash left).
	ours    string
	aside   map[[32]byte]string
	copies  map[string][]string // copies made in this sync → sources (State.Copies)
	applies map[string]bool     // names of the sources that apply to the node now
	p       targetPlan
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
	s.loadHeld(cur)
	if err := s.plan(); err != nil {
		return err
	}
	if s.p.step == stepWrite || s.p.step == stepDrop {
		s.rec.set(s.p.intent)
	}
	return nil
}

// setAside keeps a copy of a corrupt file next to the target, once per
// content in a sync. A copy that may hold nodecreds' entries (copySources)
// holds their credentials, and cannot be read to take them out: its name
// is recorded in the state, on disk, before the copy is created, so that
// no crash and no later error leaves a copy the state does not know (a
// record whose file never appeared is dropped by settleCopies).
func (s *targetSync) setAside(data []byte, why error) (string, error) {
	sum := sha256.Sum256(data)
	if p, ok := s.aside[sum]; ok {
		return p, nil
	}
	d, srcs, now := s.t.dir, s.copySources(), s.e.now()
	for skip := 0; ; skip++ {
		name, err := copyName(d, s.t.name, now, skip)
		if err != nil {
			return "", err
		}
		if len(srcs) > 0 {
			if err := s.recordCopy(name, srcs); err != nil {
				return "", err
			}
		}
		err = createCopy(d, s.t.name, name, data)
		if err != nil && len(srcs) > 0 {
			// Never a record of a name another file holds: it would be
			// removed as a copy of ours.
			if uerr := s.recordCopy(name, nil); uerr != nil {
				return "", errors.Join(err, uerr)
			}
		}
		if errors.Is(err, fs.ErrExist) && skip < 100 {
			continue // taken meanwhile
		}
		if err != nil {
			return "", err
		}
		p := d.Name(name)
		if s.aside == nil {
			s.aside = map[[32]byte]string{}
		}
		s.aside[sum] = p
		s.warn("%s: %v; a copy is kept as %s", s.t.path, why, p)
		s.res.SetAside = p
		return p, nil
	}
}

// recordCopy records (srcs not nil) or forgets the copy name, with the
// sources whose entries it may hold, in the target's record on disk and in
// the record the sync merges against.
func (s *targetSync) recordCopy(name string, srcs []string) error {
	set := func(copies map[string][]string) map[string][]string {
		copies = maps.Clone(copies) // shared with the record as saved
		if srcs == nil {
			delete(copies, name)
			return copies
		}
		if copies == nil {
			copies = map[string][]string{}
		}
		copies[name] = srcs
		return copies
	}
	s.copies = set(s.copies)
	s.old.Copies = set(s.old.Copies)
	cur := s.rec.current()
	cur.Copies = set(cur.Copies)
	return s.rec.commit(cur)
}

// warn adds a warning to the result, once however often a race makes the
// sync try again.
func (s *targetSync) warn(format string, args ...any) {
	if w := fmt.Sprintf(format, args...); !slices.Contains(s.res.Warnings, w) {
		s.res.Warnings = append(s.res.Warnings, w)
	}
}

// plan decides what the target becomes. base is what we merge into: cur,
// except after we lost a race, when cur is our own (stale) file and base is
// the other writer's. Held files are carried into it.
func (s *targetSync) plan() error {
	parse := func(data []byte) (*document, error) { return s.e.memo.parse(s.t.path, data) }
	carried := s.prev
	if s.held.doc != nil {
		carried = s.held.doc
		if s.prev != nil {
			carried, _ = parseDocument(nil)
			carry(s.prev, carried)
			carry(s.held.doc, carried)
		}
	}
	p, err := planTarget(s.base, s.cur, carried, s.newer, s.desired, s.prune, s.old, parse)
	if err != nil && s.held.doc != nil && (errors.Is(err, hostfs.ErrTooLarge) || errors.Is(err, ErrTooManyEntries)) {
		// The held files would take the target over a limit: it is
		// synced without them, and they stay where they are.
		s.warn("%s: %s, held next to it, cannot be merged into it within the limits (%v); left as they are", s.t.path, strings.Join(s.held.names, ", "), err)
		s.held.leave()
		s.newer = nil
		p, err = planTarget(s.base, s.cur, s.prev, nil, s.desired, s.prune, s.old, parse)
	}
	if err == nil && p.step == stepWrite {
		// Recorded with the intent: what a crash can leave at the target,
		// the file written now or, after a race, ours already there.
		p.intent.Writing, err = p.merged.doc.encodedDigest()
		if s.ours != "" {
			p.intent.Writing += " " + s.ours
		}
	}
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
		var (
			w   written
			err error
		)
		switch p.step {
		case stepLeave:
			s.warn("%s: %v; left alone as nodecreds has nothing to write to it", s.t.path, p.corrupt)
			s.rec.set(p.merged.state)
			return s.done(s.cur.stamp())
		case stepKeep:
			w, err = s.keep(p)
		case stepDrop:
			w, err = s.drop(p)
		default:
			w, err = s.write(p)
		}
		switch {
		case err != nil:
			return *res, err
		case w.lost:
			// A file appeared or changed before we could check-and-swap;
			// nothing of ours is in place.
			if s.cur, err = readTarget(s.t.dir, s.t.name); err != nil {
				return *res, err
			}
			s.base, s.prev, s.newer, s.ours = s.cur, nil, nil, ""
		case w.raced:
			// Someone replaced the file between our read and our swap. Ours
			// is in place now but built on stale content: merge again on top
			// of theirs, recognising both what was ours in their file and
			// our stale write, which is what is on disk now.
			s.base, s.cur, s.newer, s.ours = w.theirs, w.ours, nil, fileDigest(w.ours.data)
			s.old = intent(ownedIn(p.parsed, s.old), s.old, p.merged.state)
		default:
			switch {
			case p.unreadable != "":
				// Read afresh next time, to find what the kubelet refuses.
				s.e.memo.forget(s.t.path)
			case p.step == stepWrite:
				// What the next sync will read back, unless someone writes it.
				s.e.memo.remember(s.t.path, w.data, p.merged.doc)
			}
			s.rec.set(p.merged.state)
			if p.step == stepDrop {
				s.rec.set(TargetState{Copies: p.merged.state.Copies, Stale: p.merged.state.Stale})
			}
			return s.done(w.left)
		}
	}
	return *res, fmt.Errorf("%s: %w; gave up after %d attempts", s.t.path, ErrContended, maxAttempts)
}

// done ends a sync of the target that left left there: the held files,
// merged now, go.
func (s *targetSync) done(left FileID) (Result, error) {
	if err := s.release(s.held.names); err != nil {
		return s.res, err
	}
	s.settleCopies()
	s.res.Left = &left
	if why := s.p.unreadable; why != "" {
		// In sync as far as nodecreds goes, but its entries are of no
		// use: the kubelet (and the docker CLI) read nothing of the file.
		return s.res, fmt.Errorf("%s: %s, so the kubelet reads none of this file, nodecreds' entries included; fix or remove it: %w", s.t.path, why, ErrUnreadable)
	}
	return s.res, nil
}

// ErrUnreadable means a target holds something of another writer's that
// the kubelet refuses, so it reads none of the file.
var ErrUnreadable = errors.New("the kubelet cannot read the file")

// copySources names the sources whose entries a copy of the target made
// now may hold: those its record says nodecreds' entries came from (an
// entry recorded without one, by an older nodecreds, may be any current
// source's); none when nodecreds owns nothing there.
func (s *targetSync) copySources() []string {
	var out []string
	add := func(src string) {
		if !slices.Contains(out, src) {
			out = append(out, src)
		}
	}
	for _, owned := range []keyStrings{s.old.Owned, s.old.Pending} {
		for key := range owned {
			if src, ok := s.old.From[key]; ok {
				add(src)
				continue
			}
			for name := range s.applies {
				add(name)
			}
		}
	}
	slices.Sort(out)
	return out
}

// settleCopies records the copies made in this sync, forgets copies that
// are gone (bounded away, or removed by hand), and, with prune, removes
// every copy holding entries of a source that no longer applies to the
// node: a copy cannot be read to take those out, and a node that left a
// pool must not keep its credentials in any file.
func (s *targetSync) settleCopies() {
	cur := s.rec.current()
	if len(cur.Copies) == 0 && len(s.copies) == 0 {
		return
	}
	copies := maps.Clone(cur.Copies)
	if copies == nil {
		copies = map[string][]string{}
	}
	maps.Copy(copies, s.copies)
	for _, name := range sortedKeys(copies) {
		if s.t.dir == nil || !s.t.dir.Exists(name) {
			delete(copies, name)
			continue
		}
		gone := slices.IndexFunc(copies[name], func(src string) bool { return !s.applies[src] })
		if !s.prune.on || gone < 0 {
			continue
		}
		if err := s.t.dir.Remove(name); err != nil {
			s.warn("%s: %v", s.t.path, err)
			continue
		}
		s.warn("removed %s, the copy of a corrupt %s, as it held credentials from %s, which no longer applies to this node", s.t.dir.Name(name), s.t.path, copies[name][gone])
		delete(copies, name)
	}
	cur.Copies = copies
	s.rec.set(cur)
}

// forget drops what the sync held (the files read, the documents merged)
// once it is done, so that they do not add to the next target's.
func (s *targetSync) forget() {
	s.p, s.prev, s.base, s.cur, s.held, s.newer = targetPlan{}, nil, fileRead{}, fileRead{}, heldSet{}, nil
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
	// id names the file the target is, whatever path leads to it: two
	// targets with one id are one file (a link, a bind mount).
	id string
}

// openTarget opens the target's folder once, in the root, through folders
// only root can change (trustedWay); every step after is relative to it.
// A missing folder is created only when something is written.
func openTarget(root *hostfs.Root, target string) (*openedTarget, error) {
	if !filepath.IsAbs(target) {
		return nil, fmt.Errorf("target %q is not an absolute path", target)
	}
	way, err := root.Walk(target, false, 0, trustedWay)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", target, err)
	}
	return &openedTarget{path: way.Path, dir: way.Dir, name: way.Name, id: fileID(way)}, nil
}

// fileID names the file a walk reached by what it is, not by path: an
// existing file by its device and inode, a missing one by those of the
// deepest folder on its way that exists and the names below it.
func fileID(way *hostfs.Way) string {
	if way.Dir == nil {
		return fmt.Sprintf("in %d:%d %s", way.Folder.Dev, way.Folder.Ino, way.Missing)
	}
	if info, err := way.Dir.StatName(way.Name); err == nil {
		return fmt.Sprintf("file %d:%d", info.Dev, info.Ino)
	}
	return fmt.Sprintf("in %d:%d %s", way.Folder.Dev, way.Folder.Ino, way.Name)
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

// drop removes a file nodecreds created once nothing is left in it, and
// only the file it read: the file is first taken off its name (an atomic
// rename), then compared with what was read. Another writer's file
// renamed over the target in the meantime is put back and merged again;
// if yet another appeared at the name while it was off it, the taken one
// is held and merged into that one.
func (s *targetSync) drop(p targetPlan) (written, error) {
	if err := s.rec.commit(p.intent); err != nil {
		return written{}, err
	}
	if !s.cur.exists {
		return written{}, nil
	}
	d := s.t.dir
	call(s.e.hooks.beforeRemove)
	taken, err := take(d, s.t.name)
	if errors.Is(err, fs.ErrNotExist) {
		// Someone removed it first: there is nothing left to lose.
		return written{}, nil
	}
	if err != nil {
		return written{}, fmt.Errorf("removing %s: %w", s.t.path, err)
	}
	call(s.e.hooks.whileAway)
	data, _, rerr := d.ReadFile(taken, hostfs.MaxFileSize)
	if rerr == nil && bytes.Equal(data, s.cur.data) {
		if err := remove(d, taken); err != nil {
			return written{}, err
		}
		s.res.Changed, s.res.Removed = true, true
		return written{}, nil
	}
	err = d.RenameNoReplace(taken, s.t.name)
	if err == nil {
		return written{lost: true}, d.Sync()
	}
	s.hold(taken)
	if errors.Is(err, fs.ErrExist) {
		return written{lost: true}, nil
	}
	return written{}, fmt.Errorf("%s: putting back another writer's file, kept as %s: %w", s.t.path, d.Name(taken), err)
}

// keep leaves the content as it is, and makes sure that a file holding
// nodecreds' credentials is readable by its owner alone.
func (s *targetSync) keep(p targetPlan) (written, error) {
	left := s.cur.stamp()
	if !s.cur.exists || len(p.merged.state.Owned) == 0 {
		return written{left: left}, nil
	}
	s.warnOwner(s.cur)
	if !loosened(s.cur.mode) {
		return written{left: left}, nil
	}
	mode, err := tighten(s.t.dir, s.t.name, s.cur)
	if errors.Is(err, errRaced) {
		return written{lost: true}, nil
	}
	if err != nil {
		return written{}, err
	}
	s.warn("%s was mode %04o, readable by group or others although it holds credentials; set to %04o", s.t.path, s.cur.mode, mode)
	s.res.Changed = true
	left.Mode = mode // exactly: a chmod clears setuid, setgid and sticky too
	return written{left: left}, nil
}

// warnOwner reports a file holding nodecreds' credentials that another
// user owns: that user can read them, and the agent cannot give the file
// back to root without a capability it does not have.
func (s *targetSync) warnOwner(f fileRead) {
	if f.exists && f.uid != os.Geteuid() {
		s.warn("%s is owned by uid %d (gid %d), not by the agent's uid %d: that user can read the credentials nodecreds keeps in it; chown the file to root", s.t.path, f.uid, f.gid, os.Geteuid())
	}
}

// written is what a step found at the target.
type written struct {
	lost   bool     // a file appeared or changed before the swap; ours is not in place
	raced  bool     // ours is in place, but replaced a file other than the one we read
	theirs fileRead // with raced: the file we replaced
	ours   fileRead // with raced: ours, now on disk
	left   FileID   // otherwise: what is at the target now
	data   []byte   // with a write: the file written
}

// write records the intent, sets a corrupt file aside, and swaps the new
// file in.
func (s *targetSync) write(p targetPlan) (written, error) {
	t, base, cur := s.t, s.base, s.cur
	// Encoded only now (the plan checked its size): a sync of several
	// targets holds one new file at a time.
	data, err := p.merged.doc.encode()
	if err != nil {
		return written{}, err
	}
	if err := s.rec.commit(p.intent); err != nil {
		return written{}, err
	}
	if t.dir == nil {
		way, err := s.root.Walk(s.res.Target, true, 0o700, trustedWay)
		if err != nil {
			return written{}, fmt.Errorf("%s: %w", s.res.Target, err)
		}
		t.dir, t.name = way.Dir, way.Name
		s.e.sweepTarget(t)
	}
	if p.corrupt != nil && base.exists {
		if _, err := s.setAside(base.data, fmt.Errorf("%w; replaced", p.corrupt)); err != nil {
			return written{}, err
		}
	}
	if cur.exists && len(p.merged.state.Owned) > 0 {
		s.warnOwner(cur)
		if loosened(cur.mode) {
			s.warn("%s was mode %04o, readable by group or others although it holds credentials; written %04o", t.path, cur.mode, cur.mode&0o600)
		}
	}
	call(s.e.hooks.beforeSwap)
	merged := slices.Clone(s.held.names) // what the plan carried into data
	sw, err := replace(t.dir, t.name, data, cur)
	if errors.Is(err, errRaced) {
		return written{lost: true}, nil
	}
	if err == nil || sw.held != "" {
		// Ours is in place, with what the held files hold: they go, so
		// that every held file left is newer than nodecreds' last write
		// (loadHeld counts on it).
		s.release(merged)
	}
	if sw.held != "" {
		// Kept until what the next attempt writes holds it too.
		s.hold(sw.held)
		call(s.e.hooks.afterHold)
	}
	if err != nil {
		return written{}, err
	}
	s.res.Changed = true
	if sw.held == "" && sw.existed == cur.exists {
		return written{left: sw.left, data: data}, nil
	}
	w := written{
		raced:  true,
		theirs: fileRead{exists: sw.existed, data: sw.old},
		ours:   fileRead{exists: true, data: data, mode: cur.mode, uid: cur.uid, gid: cur.gid},
		data:   data,
	}
	if !cur.exists {
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
	// unreadable says what in the file, another writer's, the kubelet
	// refuses, so that it reads none of it ("" when it reads it).
	unreadable string
}

// planTarget decides, without I/O, what a target becomes: base is the file
// to merge into, cur the file on disk (they differ only after a lost race,
// when prev is the base merged into before), old the target's state.
//
// parse is parseDocument, or one that remembers; what it returns is never
// modified.
func planTarget(base, cur fileRead, prev, newer *document, desired *wanted, prune pruneRule, old TargetState, parse func([]byte) (*document, error)) (targetPlan, error) {
	racing := base.exists != cur.exists || !bytes.Equal(base.data, cur.data)
	orig, perr := parse(base.data)
	if perr != nil && !errors.Is(perr, ErrCorrupt) {
		// Not corrupt but not to be taken apart (too many entries): the
		// file is left as it is, never set aside.
		return targetPlan{}, perr
	}
	if orig == nil {
		orig, _ = parseDocument(nil)
	}
	doc := orig
	if newer != nil {
		// Newer than base for every key both hold (held files a write of
		// ours replaced, and base is that write): their values win, base
		// fills in what they lack.
		doc = newer.clone()
		carry(orig, doc)
	}
	if prev != nil {
		// While our stale file was in place the other writer may have read
		// it and written on top of it, dropping what it had added before;
		// or its file was taken off the target and is held. Carry forward
		// everything seen from it in this sync.
		if doc == orig {
			doc = doc.clone()
		}
		carry(prev, doc)
	}
	p := targetPlan{parsed: doc, corrupt: perr, merged: merge(doc, desired, prune, old)}
	p.unreadable = orig.still(p.merged.doc)
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
		if prev != nil {
			// Ours in a held file, which a crash leaves to the next
			// process to merge, must be recognised there too.
			for k, fp := range ownedIn(prev, old) {
				if _, ok := onDisk[k]; !ok {
					onDisk[k] = fp
				}
			}
		}
		p.intent = intent(onDisk, old, p.merged.state)
	}
	switch {
	case perr != nil && len(p.merged.state.Owned) == 0 && len(p.merged.restored) == 0 && !racing && prev == nil:
		p.step = stepLeave
	case p.merged.state.Created && p.merged.doc.empty():
		p.step = stepDrop
		setIntent()
	case perr == nil && !racing && p.merged.doc.equal(orig) && !(orig.refused.any && p.unreadable == ""):
		// (A file that reads as this document but that the kubelet
		// refuses as it is — an entry it cannot decode, replaced by a
		// later one of its key — is written anew, which it can read.)
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

// sweepPrefix removes files a crash left in d named prefix and the 16 hex
// digits hostfs.CreateTemp adds, except those named so after held (when
// not empty), whose names it returns. A name that merely starts alike (an
// admin's ".config.json.nodecreds-backup") is not nodecreds' and is left.
func sweepPrefix(d *hostfs.Dir, prefix, held string) []string {
	names, err := d.Names()
	if err != nil {
		return nil
	}
	var found []string
	for _, n := range names {
		switch {
		case held != "" && isTempName(n, held):
			found = append(found, n)
		case isTempName(n, prefix):
			_ = d.Remove(n)
		}
	}
	return found
}

// isTempName reports whether n is prefix and the 16 lowercase hex digits
// hostfs.CreateTemp adds: the names nodecreds' temp and held files have
// had from the start.
func isTempName(n, prefix string) bool {
	rest, ok := strings.CutPrefix(n, prefix)
	if !ok || len(rest) != 16 {
		return false
	}
	for _, c := range rest {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
