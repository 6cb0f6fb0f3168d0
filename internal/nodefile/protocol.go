package nodefile

// The write protocol: how Sync and Cleanup change a node's files so that
// no crash, no other writer and no second nodecreds process loses
// anything. The code in this file follows these steps, in this order.
//
//  1. Lock (Engine.run). An flock on the state folder's lock file: the
//     agent and `nodecreds cleanup` never interleave their reads and
//     writes of the state or of a target.
//  2. Read and plan every target (batch.start). Each is read through its
//     folder's handle, opened in the host root through folders only root
//     can change; a link at its name, a FIFO and a hard-linked file are
//     refused. The merge is pure. A target to change gets an intent: a
//     state record that recognises nodecreds' entries both in the file
//     there now and in the file to be written.
//  3. Save the intents (targetSync.write: targetRecord.commit), once for
//     every target, before the first is touched. A crash from here to step
//     9 leaves a state that recognises whichever file is on disk: no entry
//     of ours is then taken for another writer's, and nothing displaced is
//     forgotten.
//  4. Stage the new file (replace: hostfs.Stage): a temp file in the
//     target's folder, written, given the old file's owner and a mode no
//     looser than 0600, fsynced. A crash leaves the old file whole, and a
//     temp file the next start sweeps.
//  5. Exchange it with the target (RENAME_EXCHANGE): readers see the old
//     file or the new one, never part of either, and the exchange hands
//     back the very file it replaced.
//  6. Compare what was replaced with what was read (settle). Another
//     writer (a `docker login` on the node) that renamed its file in
//     between steps 2 and 5 is seen, and its file is held under a held
//     name, which no sweep removes, until it is merged.
//  7. On a race, merge again on top of theirs (targetSync.run). Ours is in
//     place but stale, and the other writer may read it and write on top
//     of it: what it did is then relative to our stale file, not to its
//     own last file. So the engine remembers, per target, every stale file
//     of ours that was in place (expose: the newest maxExposed within
//     maxExposedBytes, each for exposureWindow, however many syncs run
//     meanwhile), and every file of theirs seen in the sync (replaced by a
//     swap, or found before one) is merged three ways (seen, threeWay)
//     into what the earlier ones held: its ancestor is the file it differs
//     from least among those it can have been written on — the remembered
//     stale files, the file the sync read, that writer's previous files in
//     the sync (the last maxAncestors) — and per entry and per top-level
//     field its value, or its absence (a logout), where it differs from
//     that ancestor (from each, when several are as close); the value
//     known so far elsewhere. The next attempt merges into that. While our
//     stale file is in place the loop does not stop: not at its attempt
//     limit (it goes on to twice that), not when ctx ends; only an error,
//     or a writer racing every one of those attempts, leaves it there,
//     their last file held (docs/security.md says what the next sync then
//     keeps). A writer that read a stale file may rename what it made of it
//     after the sync ended: while stale files are remembered, a sync that
//     finds a file other than the one the last sync left merges it three
//     ways onto that one (afterExposure), the file left being a candidate
//     too. After a kill between a swap that held their file and the end of
//     the write, the held file is the truth where the write was built on
//     the file read alone (heldOverOurs, State.OnRead).
//  8. fsync the folder (settle; hostfs.Staged.Create and Replace in the
//     fallbacks), so that the rename survives a crash.
//  9. Save the final records (batch.flush), after every target: the state
//     stops recognising the files that were replaced.
//
// Where the file system cannot exchange (and in every -tags noexchange
// build), steps 5 and 6 become: no file at the target → create it without
// replacing one that appeared meanwhile (RENAME_NOREPLACE, or link(2) where
// that is missing too), a file that appeared being a race (step 7); a file
// → compare it with what was read, then rename over it. A writer renaming
// its file in between those two is not seen (docs/security.md says so).
//
// Removing a file nodecreds created that is now empty (targetSync.drop)
// follows the same order: the intent first, then the file is taken off its
// name by an atomic rename and compared with what was read before it is
// removed; another writer's is put back, and merged again.

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nodecreds/nodecreds/internal/dockercfg"
	"github.com/nodecreds/nodecreds/internal/hostfs"
)

// maxAttempts bounds how often one target is re-merged because another
// writer keeps changing it; the caller retries later (ErrContended). With the
// backoff of pause that is several seconds of a writer rewriting the file
// in a tight loop.
const maxAttempts = 200

// ErrContended means another writer kept replacing a target faster than we
// could merge; nothing of theirs was lost and the next sync tries again.
var ErrContended = errors.New("target keeps changing under us")

// errRaced means the target changed under us and must be read again.
var errRaced = errors.New("target changed while being written")

// run syncs targets (every target in the state when none are given) to
// sources, taking the steps above.
func (e *Engine) run(ctx context.Context, targets []string, sources []dockercfg.NamedSet, prune pruneRule) ([]Result, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.ageExposures()
	root, sd, done, err := e.open()
	if err != nil {
		return nil, err
	}
	defer done()
	// 1. Lock.
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
	if len(targets) == 0 {
		targets = sortedKeys(st.Targets)
	}
	b := newBatch(e, root, newStateStore(sd, st, &e.memo), targets)
	defer b.close()
	b.start(sources, prune) // 2
	b.commit(ctx)           // 3 to 8, target by target
	b.flush()               // 9
	return b.results, nil
}

// start reads and plans every target (step 2) before any is written, so
// that one state save records every intent: each is set in memory here.
func (b *batch) start(sources []dockercfg.NamedSet, prune pruneRule) {
	views := newReaderViews(&b.e.memo, sources)
	applies := appliesNow(sources, prune)
	for i, t := range b.opened {
		if t == nil {
			continue
		}
		if t.dir != nil {
			b.e.sweepTarget(t)
		}
		sy := &targetSync{e: b.e, root: b.root, t: t, rec: targetRecord{store: b.store, target: b.targets[i]}, desired: views.of(b.targets[i]), prune: prune, applies: applies}
		if err := sy.start(); err != nil {
			b.results[i] = sy.res
			b.results[i].Err = err
			continue
		}
		b.syncs[i] = sy
	}
	first := true
	for _, sy := range b.syncs {
		if sy != nil && !first {
			// Merged again when its turn comes: meanwhile its merged
			// document would only add to the one being written.
			sy.p.merged.doc = nil
		}
		first = first && sy == nil
	}
}

// commit takes steps 3 to 8 for each target in turn.
func (b *batch) commit(ctx context.Context) {
	for i, sy := range b.syncs {
		if sy != nil {
			r, err := sy.run(ctx)
			r.Err = err
			b.results[i] = r
			sy.forget()
		}
	}
	for i, first := range b.sameAs {
		if first != i && b.results[first].Err == nil {
			// The file as that sync left it, so that its own events are
			// not taken for drift under this name either.
			b.results[i].Left = b.results[first].Left
		}
	}
}

// run commits the plan made by start, planning again after a race (step
// 7). The target's record is saved before the target is touched (step 3);
// its final record is set in memory, for step 9.
func (s *targetSync) run(ctx context.Context) (Result, error) {
	limit := s.e.attempts()
	for attempt := 0; ; attempt++ {
		// While our stale file is in place (after a race) the loop goes
		// on, without waiting, past its end and past ctx: returning then
		// would leave it there, with what the other writer's files hold
		// merged in memory only (step 7).
		exposed := s.exposing
		if attempt >= limit && (!exposed || attempt >= 2*limit) {
			return s.res, fmt.Errorf("%s: %w; gave up after %d attempts", s.t.path, ErrContended, attempt)
		}
		if err := pause(ctx, attempt, s.t.path); err != nil && !exposed {
			return s.res, err
		}
		if attempt > 0 || s.p.step == stepWrite && s.p.merged.doc == nil {
			if err := s.plan(); err != nil {
				return s.res, err
			}
		}
		p := s.p
		if p.step == stepLeave {
			s.warn("%s: %v; left alone as nodecreds has nothing to write to it", s.t.path, p.corrupt)
			s.rec.set(p.merged.state)
			return s.done(s.cur.stamp())
		}
		w, err := s.step(p)
		switch {
		case err != nil:
			return s.res, err
		case w.lost:
			if err := s.reread(); err != nil {
				return s.res, err
			}
		case w.raced:
			s.mergeOnTheirs(p, w)
		default:
			return s.finish(p, w)
		}
	}
}

// attempts is how often one target is tried (maxAttempts but in tests).
func (e *Engine) attempts() int {
	if e.hooks.attempts > 0 {
		return e.hooks.attempts
	}
	return maxAttempts
}

// step does what the plan says with the file.
func (s *targetSync) step(p targetPlan) (written, error) {
	switch p.step {
	case stepKeep:
		return s.keep(p)
	case stepDrop:
		return s.drop(p)
	}
	return s.write(p)
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

// write saves the intent (step 3), makes the folder or sets a corrupt file
// aside as needed, and puts the new file in place (steps 4 to 6 and 8).
func (s *targetSync) write(p targetPlan) (written, error) {
	// Encoded only now (the plan checked its size): a sync of several
	// targets holds one new file at a time.
	data, err := p.merged.doc.encode()
	if err != nil {
		return written{}, err
	}
	if err := s.rec.commit(p.intent); err != nil {
		return written{}, err
	}
	if err := s.prepare(p); err != nil {
		return written{}, err
	}
	call(s.e.hooks.beforeSwap)
	merged := slices.Clone(s.held.names) // what the plan carried into data
	sw, err := replace(s.t.dir, s.t.name, data, s.cur)
	s.touched = s.touched || !sw.untouched
	if errors.Is(err, errRaced) {
		return written{lost: true}, nil
	}
	if err == nil || sw.held != "" {
		// Ours is in place, with what the held files hold: they go, so
		// that every held file left is newer than nodecreds' last write
		// (loadHeld counts on it). One that cannot be removed stays
		// held and is merged again by the next sync: nothing is lost.
		if err := s.release(merged); err != nil {
			s.warn("%v; it stays held and is merged again at the next sync", err)
		}
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
	return s.placed(sw, data), nil
}

// prepare makes the target's folder when it is missing (0700), sets a
// corrupt file aside, and warns of a file others can read.
func (s *targetSync) prepare(p targetPlan) error {
	t, base, cur := s.t, s.base, s.cur
	if t.dir == nil {
		way, err := s.root.Walk(s.res.Target, true, 0o700, trustedWay)
		if err != nil {
			return fmt.Errorf("%s: %w", s.res.Target, err)
		}
		t.dir, t.name = way.Dir, way.Name
		s.e.sweepTarget(t)
	}
	if p.corrupt != nil && base.exists {
		if _, err := s.setAside(base.data, fmt.Errorf("%w; replaced", p.corrupt)); err != nil {
			return err
		}
	}
	if cur.exists && len(p.merged.state.Owned) > 0 {
		s.warnOwner(cur)
		if loosened(cur.mode) {
			s.warn("%s was mode %04o, readable by group or others although it holds credentials; written %04o", t.path, cur.mode, cur.mode&0o600)
		}
	}
	return nil
}

// placed is what a write found once its file is in place: the file it
// read (done), or another writer's (raced: merge again on top of it).
func (s *targetSync) placed(sw swap, data []byte) written {
	cur := s.cur
	if sw.held == "" && sw.existed == cur.exists {
		return written{left: sw.left, data: data}
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
	return w
}

// swap is what replace found at the target when it put ours in place.
type swap struct {
	existed bool   // a file was at the name
	old     []byte // its content, as far as it could be read
	held    string // when it was not the file read: the name it is kept under
	left    FileID // ours, as now at the name
	// untouched: the write failed before anything was placed at the name
	untouched bool
}

// replace puts data at name in d atomically, in place of prev (the file
// read, which may be none), and says what it replaced: steps 4 to 6 and 8,
// or their fallbacks. A failed write leaves the old file and no temp file.
func replace(d *hostfs.Dir, name string, data []byte, prev fileRead) (swap, error) {
	if len(data) > hostfs.MaxFileSize {
		// Never write what nodecreds (and check, and the plugin) would
		// refuse to read back: a compact file near the limit grows when
		// re-indented.
		return swap{untouched: true}, fmt.Errorf("%s would be %d bytes, over the %d MiB limit; nothing written (remove entries from the file or the sources): %w",
			d.Name(name), len(data), hostfs.MaxFileSize>>20, hostfs.ErrTooLarge)
	}
	// 4. Stage the new file.
	staged, err := d.Stage(tempPrefix(name), newMode(prev), func(f *os.File) error { return fill(f, data, prev) })
	if err != nil {
		return swap{untouched: true}, fmt.Errorf("writing %s: %w", d.Name(name), err)
	}
	defer staged.Discard()
	left := hostfs.StampOf(data, staged.Info())
	// 5. Exchange it with the target.
	err = staged.Exchange(name)
	switch {
	case err == nil:
		return settle(d, name, staged.Temp(), prev, data, left) // 6 and 8
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, hostfs.ErrNoExchange) && !prev.exists:
		// No target: create it, but not over one that appeared meanwhile.
		if err := staged.Create(name); err != nil {
			return swap{}, placeErr(d, name, err)
		}
		return swap{left: left}, nil
	case errors.Is(err, hostfs.ErrNoExchange):
		return checkAndRename(d, name, staged, prev, left)
	}
	return swap{}, placeErr(d, name, err)
}

// newMode is the mode of a file written in place of prev: 0600, or the
// existing mode where it is stricter (never looser than 0600).
func newMode(prev fileRead) fs.FileMode {
	if prev.exists {
		return prev.mode & 0o600
	}
	return 0o600
}

// fill writes data to the staged file f and gives it prev's owner.
func fill(f *os.File, data []byte, prev fileRead) error {
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
	return nil
}

// checkAndRename is steps 5 and 6 where the file system cannot exchange:
// prev is compared with what is at name just before a plain rename over
// it (and step 8). A writer renaming its file in between the two is not
// seen (docs/security.md says so).
func checkAndRename(d *hostfs.Dir, name string, staged *hostfs.Staged, prev fileRead, left FileID) (swap, error) {
	cur, err := readTarget(d, name)
	if err != nil {
		return swap{}, err
	}
	if !cur.exists || !bytes.Equal(cur.data, prev.data) {
		return swap{}, errRaced
	}
	if err := staged.Replace(name); err != nil {
		return swap{}, placeErr(d, name, err)
	}
	return swap{existed: true, old: prev.data, left: left}, nil
}

// placeErr is errRaced when a file appeared at name meanwhile, and err
// with context otherwise.
func placeErr(d *hostfs.Dir, name string, err error) error {
	if errors.Is(err, fs.ErrExist) {
		return errRaced
	}
	return fmt.Errorf("replacing %s: %w", d.Name(name), err)
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

// reread reads the target again after a file appeared or changed before
// ours could be put in place: nothing of ours is there. What the file
// changed is merged into what this sync knows of the other writer's files.
func (s *targetSync) reread() error {
	cur, err := readTarget(s.t.dir, s.t.name)
	if err != nil {
		return err
	}
	s.seen(cur)
	s.cur, s.newer, s.ours, s.exposing = cur, nil, "", false
	return nil
}

// mergeOnTheirs plans the next attempt after someone replaced the file
// between our read and our swap (step 7). Ours is in place now but built
// on stale content: merge again on top of theirs, recognising both what
// was ours in their file and our stale write, which is what is on disk
// now. Their next file may be written on that stale file: it is one of
// the files theirs is compared with (threeWay).
func (s *targetSync) mergeOnTheirs(p targetPlan, w written) {
	s.seen(w.theirs)
	s.e.expose(s.t.path, w.ours.data)
	s.exposing = true
	s.cur, s.newer, s.ours = w.ours, nil, fileDigest(w.ours.data)
	s.old = intent(ownedIn(p.parsed, s.old), s.old, p.merged.state)
}

// finish sets the target's final record in memory, for step 9, once the
// file is as planned.
func (s *targetSync) finish(p targetPlan, w written) (Result, error) {
	switch {
	case p.unreadable != "":
		// Read afresh next time, to find what the kubelet refuses.
		s.e.memo.forget(s.t.path)
	case p.step == stepWrite:
		// What the next sync will read back, unless someone writes it.
		s.e.memo.remember(s.t.path, w.data, p.merged.doc)
	}
	s.noteLeft(p, w)
	s.rec.set(p.merged.state)
	if p.step == stepDrop {
		s.rec.set(TargetState{Copies: p.merged.state.Copies, Stale: p.merged.state.Stale})
	}
	return s.done(w.left)
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

// flush saves every target's final record (step 9).
func (b *batch) flush() {
	if err := b.store.flush(); err != nil {
		// The files are written; their final records are not. The intents
		// on disk still recognise them, and the next sync records them.
		for i := range b.results {
			if b.syncs[i] != nil && b.results[i].Err == nil {
				b.results[i].Err = err
			}
		}
	}
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
	s.touched = true
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
		// Theirs, merged; the file at the name now was written while the
		// name was empty, as far as we know, or on theirs.
		if rerr == nil {
			s.seen(fileRead{exists: true, data: data})
			s.addAncestor(parsedOrEmpty(nil))
		}
		return written{lost: true}, nil
	}
	return written{}, fmt.Errorf("%s: putting back another writer's file, kept as %s: %w", s.t.path, d.Name(taken), err)
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
