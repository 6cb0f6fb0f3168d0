package nodefile

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/nodecreds/nodecreds/internal/hostfs"
	"golang.org/x/sys/unix"
)

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
	ours string
	// chain is set once another writer's file was seen after the first
	// read (a race, or a file that changed before the swap): base is then
	// what that writer's files hold, merged by threeWay, and prev is it
	// parsed; held files are in it already.
	chain bool
	// ancestors are the files the other writer's next file can have been
	// written on besides the stale files the engine remembers (see seen);
	// exposing is set while a stale file of ours is at the target.
	ancestors []*document
	exposing  bool
	// finished is set once the sync ended with a file it knows (noteLeft).
	finished bool
	// touched is set once the sync changed or took off the target: a sync
	// that fails before that leaves the file the last one left.
	touched bool
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
	s.heldOverOurs()
	s.afterExposure()
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
// the other writer's. Held files are carried into it.
func (s *targetSync) plan() error {
	parse := func(data []byte) (*document, error) { return s.e.memo.parse(s.t.path, data) }
	carried, newer := s.prev, s.newer
	if s.chain {
		// Not the target's content: nothing to remember.
		parse, newer = parseDocument, nil
	} else if s.held.doc != nil {
		carried = s.held.doc
		if s.prev != nil {
			carried, _ = parseDocument(nil)
			carry(s.prev, carried)
			carry(s.held.doc, carried)
		}
	}
	p, err := planTarget(s.base, s.cur, carried, newer, s.desired, s.prune, s.old, parse)
	if err != nil && !s.chain && s.held.doc != nil && (errors.Is(err, hostfs.ErrTooLarge) || errors.Is(err, ErrTooManyEntries)) {
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
		// Not while stale files of ours are remembered: a held file may
		// then have been written on one of them, not on the file read.
		p.intent.OnRead = s.ours == "" && !s.chain && s.held.doc == nil && s.newer == nil && s.e.exposure(s.t.path) == nil &&
			s.base.exists == s.cur.exists && bytes.Equal(s.base.data, s.cur.data)
	}
	if err == nil && s.chain && s.held.doc != nil && p.intent.Owned != nil {
		// Ours in the held files, which a crash leaves to the next
		// process to merge, recognised there too.
		for k, fp := range ownedIn(s.held.doc, s.old) {
			if _, ok := p.intent.Owned[k]; !ok {
				p.intent.Owned[k] = fp
			}
		}
	}
	if err != nil {
		return fmt.Errorf("%s: %w", s.t.path, err)
	}
	s.p, s.prev = p, p.parsed
	s.res.Entries = len(p.merged.state.Owned)
	s.res.Released, s.res.Displaced, s.res.Restored = p.merged.released, p.merged.displaced, p.merged.restored
	s.res.Kept, s.res.Fresh = p.merged.kept, p.merged.fresh
	return nil
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
	s.ancestors, s.exposing = nil, false
	s.e.forgetParsed(s.t.path, s.finished || !s.touched)
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

// ErrNotRegular means a target resolves to something that is not a file.
var ErrNotRegular = hostfs.ErrNotRegular

// ErrForeignOwner means a target belongs to another user and the agent may
// not give the new file that owner.
var ErrForeignOwner = errors.New("target is owned by another user")

// FileID is what nodecreds left at a target: the file's content, mode and
// owner (Exists false for no file). It says nothing of time stamps or
// inode, which another writer can restore or keep.
type FileID = hostfs.Stamp

// fileRead is a target as read: its bytes and the metadata we keep.
type fileRead struct {
	exists bool
	data   []byte
	mode   fs.FileMode // permission bits
	uid    int
	gid    int
	info   hostfs.Info
}

// stamp is the FileID of the file as read.
func (f fileRead) stamp() FileID {
	if !f.exists {
		return FileID{}
	}
	return hostfs.StampOf(f.data, f.info)
}

// readTarget reads the target name in d; a missing folder (d nil) or file
// is an empty fileRead. Anything but a regular file with one link is
// refused: a FIFO would block us, and replacing a hard-linked file would
// leave the old credentials under its other names.
func readTarget(d *hostfs.Dir, name string) (fileRead, error) {
	if d == nil {
		return fileRead{}, nil
	}
	data, info, err := d.ReadFile(name, hostfs.MaxFileSize)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fileRead{}, nil
	case errors.Is(err, unix.EACCES):
		return fileRead{}, fmt.Errorf("%w; the agent runs as root without capabilities, so it can read only files root may read: chown the file to root (0600), or remove it", err)
	case err != nil:
		return fileRead{}, err
	}
	if info.Nlink > 1 {
		return fileRead{}, fmt.Errorf("%s: %w (%d names); nodecreds replaces files by rename, which would leave the old content under the other names: keep one name and use a symlink for the others", d.Name(name), hostfs.ErrHardLinked, info.Nlink)
	}
	return fileRead{exists: true, data: data, mode: info.Mode.Perm(), uid: info.UID, gid: info.GID, info: info}, nil
}
