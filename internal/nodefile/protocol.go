package nodefile

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"slices"
	"time"

	"github.com/nodecreds/nodecreds/internal/dockercfg"
	"github.com/nodecreds/nodecreds/internal/hostfs"
	"golang.org/x/sys/unix"
)

// maxAttempts bounds how often one target is re-merged because another
// writer keeps changing it; the caller retries later (ErrContended). With the
// backoff below that is several seconds of a writer rewriting the file in a
// tight loop.
const maxAttempts = 200

// ErrContended means another writer kept replacing a target faster than we
// could merge; nothing of theirs was lost and the next sync tries again.
var ErrContended = errors.New("target keeps changing under us")

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

// swap is what replace found at the target when it put ours in place.
type swap struct {
	existed bool   // a file was at the name
	old     []byte // its content, as far as it could be read
	held    string // when it was not the file read: the name it is kept under
	left    FileID // ours, as now at the name
}

// replace puts data at name in d atomically, in place of prev (the file
// read, which may be none), and says what it replaced.
//
// It writes a temp file in the same folder, fsyncs it, then swaps it with
// the target using renameat2(RENAME_EXCHANGE), and fsyncs the folder. The
// exchange hands back the exact file we replaced, so if another writer (a
// `docker login` on the node) renamed its own file in after we read, the
// caller sees that and merges again instead of losing its change; a plain
// rename (as renameio does) cannot tell. That file is kept under a held
// name until then. A crash at any point leaves the old or the new file at
// name, both whole. Every step is relative to the folder handle d, by name,
// so nothing can be redirected outside the host root.
//
// Where the file system cannot exchange, prev is compared with what is
// there just before a plain rename: a writer renaming its file in between
// the two is not seen, and its change is lost. Where there was no file, the
// new one is created without replacing one that appeared meanwhile
// (RENAME_NOREPLACE, or link(2) where that is missing too): errRaced.
func replace(d *hostfs.Dir, name string, data []byte, prev fileRead) (swap, error) {
	if len(data) > hostfs.MaxFileSize {
		// Never write what nodecreds (and check, and the plugin) would
		// refuse to read back: a compact file near the limit grows when
		// re-indented.
		return swap{}, fmt.Errorf("%s would be %d bytes, over the %d MiB limit; nothing written (remove entries from the file or the sources): %w",
			d.Name(name), len(data), hostfs.MaxFileSize>>20, hostfs.ErrTooLarge)
	}
	mode := fs.FileMode(0o600)
	if prev.exists {
		// Keep an existing stricter mode; never loosen to more than 0600.
		mode = prev.mode & 0o600
	}
	f, tmp, err := d.CreateTemp(tempPrefix(name), mode)
	if err != nil {
		return swap{}, fmt.Errorf("creating temp file for %s: %w", d.Name(name), err)
	}
	placed := false
	defer func() {
		if !placed {
			_ = d.Remove(tmp)
		}
	}()
	var left FileID
	werr := func() error {
		if _, err := f.Write(data); err != nil {
			return err
		}
		if prev.exists && (prev.uid != os.Geteuid() || prev.gid != os.Getegid()) {
			if err := f.Chown(prev.uid, prev.gid); err != nil {
				if errors.Is(err, unix.EPERM) {
					return fmt.Errorf("%w (uid %d, gid %d): nodecreds keeps the owner of a file it replaces, which needs the CHOWN capability (the DaemonSet drops all capabilities); chown the file to root, or add CHOWN to the container's capabilities", ErrForeignOwner, prev.uid, prev.gid)
				}
				return err
			}
		}
		if err := f.Sync(); err != nil {
			return err
		}
		info, err := hostfs.Stat(f)
		left = hostfs.StampOf(data, info)
		return err
	}()
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		return swap{}, fmt.Errorf("writing %s: %w", d.Name(name), werr)
	}

	err = d.Exchange(tmp, name)
	switch {
	case err == nil:
		placed = true // tmp now holds the file replaced
		return settle(d, name, tmp, prev, data, left)
	case errors.Is(err, fs.ErrNotExist):
		// No target: create it, but not over one that appeared meanwhile.
		err = d.RenameNoReplace(tmp, name)
	case errors.Is(err, hostfs.ErrNoExchange) && !prev.exists:
		err = d.RenameNoReplace(tmp, name)
	case errors.Is(err, hostfs.ErrNoExchange):
		// Check, then rename: a writer renaming its file in between the
		// two is not seen (docs/security.md says so).
		cur, rerr := readTarget(d, name)
		if rerr != nil {
			return swap{}, rerr
		}
		if !cur.exists || !bytes.Equal(cur.data, prev.data) {
			return swap{}, errRaced
		}
		if err = d.Rename(tmp, name); err == nil {
			placed = true
			if err := d.Sync(); err != nil {
				return swap{}, err
			}
			return swap{existed: true, old: prev.data, left: left}, nil
		}
	}
	if errors.Is(err, fs.ErrExist) {
		return swap{}, errRaced
	}
	if err != nil {
		return swap{}, fmt.Errorf("replacing %s: %w", d.Name(name), err)
	}
	placed = true
	if err := d.Sync(); err != nil {
		return swap{}, err
	}
	return swap{left: left}, nil
}

// settle deals with what an exchange put at tmp: the file read, which is
// merged into ours and goes; or another writer's, which is held until it
// is merged too. When it cannot be held (a disk out of space, on which a
// rename to a new name can still need a block), the exchange is undone:
// their file goes back to the target, untouched, and ours, now at tmp,
// goes (errRaced: the next attempt reads theirs). Never is their file
// left under the temp name, which the next start would sweep.
func settle(d *hostfs.Dir, name, tmp string, prev fileRead, data []byte, left FileID) (swap, error) {
	old, _, err := d.ReadFile(tmp, hostfs.MaxFileSize)
	if err == nil && prev.exists && bytes.Equal(old, prev.data) {
		if err := d.Remove(tmp); err != nil {
			return swap{}, err
		}
		return swap{existed: true, old: old, left: left}, d.Sync()
	}
	held, herr := holdTemp(d, name, tmp)
	if herr == nil {
		return swap{existed: true, old: old, held: held, left: left}, d.Sync()
	}
	// Undo: exchange again (needs no space at all), and check that what
	// came back is ours, not a third writer's put at the name meanwhile.
	if xerr := d.Exchange(tmp, name); xerr == nil {
		back, _, rerr := d.ReadFile(tmp, hostfs.MaxFileSize)
		if rerr == nil && bytes.Equal(back, data) {
			if err := remove(d, tmp); err != nil {
				return swap{}, err
			}
			return swap{}, errRaced
		}
	}
	return swap{}, fmt.Errorf("%s: ours is in place, but the file another writer put there just before is left as %s (merge it into the target by hand: the next start removes it): %w", d.Name(name), d.Name(tmp), herr)
}

// holdTemp renames tmp, a temp file of ours that now holds another
// writer's file, to a new held name. A rename needs no new inode, so a
// file system out of inodes can still hold it.
func holdTemp(d *hostfs.Dir, name, tmp string) (string, error) {
	var buf [8]byte
	for range 100 {
		if _, err := io.ReadFull(rand.Reader, buf[:]); err != nil {
			return "", fmt.Errorf("random name: %w", err)
		}
		held := fmt.Sprintf("%s%x", heldPrefix(name), buf)
		err := d.RenameNoReplace(tmp, held)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		return held, err
	}
	return "", fmt.Errorf("holding %s: too many collisions", d.Name(tmp))
}

// errRaced means the target changed under us and must be read again.
var errRaced = errors.New("target changed while being written")
