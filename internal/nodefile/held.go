package nodefile

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strings"

	"github.com/nodecreds/nodecreds/internal/hostfs"
)

// heldSet is what other writers' files held next to a target (see
// heldPrefix) hold, merged into one document as each is read, so that
// however many there are, and however large, no more than one of them
// and the union so far are in memory at once, the union within the limits
// of one file.
type heldSet struct {
	doc   *document // nil until a file is merged; its values are its own copies
	names []string  // the files merged into doc, to remove once it is in the target
}

// leave drops what was merged: the files stay on disk, unmerged.
func (h *heldSet) leave() { *h = heldSet{} }

// maxHeld bounds the files held next to one target. A writer racing every
// attempt until the sync gives up would otherwise leave one per attempt.
const maxHeld = 2

// loadHeld merges the files held next to the target, newest first (by
// change time: the rename that held it), so that for a key several hold
// the newest value wins, and then consolidates them.
//
// They are older than the target, which wins over them, except after a
// crash in the middle of a write: when the target is exactly the file
// nodecreds was writing (State.Writing), the files that write replaced
// and held (changed at or after the target: the exchange, then the hold)
// are newer than it for every key, as they are in the sync that held them
// (see run): their union is kept apart as s.newer. Files held before that
// write (left over a limit) and any file written at the target since
// are not: no value newer than another is replaced by it.
func (s *targetSync) loadHeld(target fileRead) {
	names := slices.Clone(s.e.held[s.t.path])
	ctime := make(map[string]int64, len(names))
	for _, n := range names {
		if info, err := s.t.dir.StatName(n); err == nil {
			ctime[n] = info.Ctime
		}
	}
	slices.SortStableFunc(names, func(a, b string) int { return cmp.Compare(ctime[b], ctime[a]) })
	ours := target.exists && slices.Contains(strings.Fields(s.old.Writing), fileDigest(target.data))
	if ours {
		s.ours = fileDigest(target.data)
	}
	for i, n := range names {
		s.load(n, false)
		if ours && ctime[n] >= target.info.Ctime && (i+1 == len(names) || ctime[names[i+1]] < target.info.Ctime) {
			s.newer = s.held.doc // the newer ones are first
		}
	}
	if s.newer == nil {
		// Not when newer and older files are held: one file of both
		// would pass for newer after another crash.
		s.consolidate()
	}
}

// hold notes a file taken off the target under name (the newest of all)
// and merges it.
func (s *targetSync) hold(name string) {
	s.e.noteHeld(s.t.path, name)
	s.load(name, true)
	s.consolidate()
}

// load reads a held file and merges it into the held set, its values
// winning over those merged before when it is newer. One that is gone was
// merged by another nodecreds process; one that is not a readable regular
// file is left where it is, with a warning; one that does not parse is set
// aside like a corrupt target; one that would take the union past the
// limits of one file (MaxEntries, hostfs.MaxFileSize) stays where it is,
// with a warning, and is tried again on the next sync. Only a file whose
// content is merged (or kept as a copy) is ever removed.
func (s *targetSync) load(name string, newer bool) {
	d := s.t.dir
	data, info, err := d.ReadFile(name, hostfs.MaxFileSize)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		s.e.forgetHeld(s.t.path, name)
		return
	case err != nil:
		s.warn("%s: another writer's file taken off %s cannot be merged (%v); left as it is", d.Name(name), s.t.path, err)
		s.e.forgetHeld(s.t.path, name)
		return
	case info.Nlink > 1 && sameFile(d, name, s.t.name):
		// The target itself under a second name: a link-and-unlink (file
		// systems without renameat2) put it back but did not finish.
		if remove(d, name) == nil {
			s.e.forgetHeld(s.t.path, name)
		}
		return
	case info.Nlink > 1:
		// As for a target: its other names would keep what we merged.
		s.warn("%s: another writer's file taken off %s has %d names; left as it is", d.Name(name), s.t.path, info.Nlink)
		s.e.forgetHeld(s.t.path, name)
		return
	}
	doc, err := parseDocument(data)
	switch {
	case errors.Is(err, ErrTooManyEntries):
		s.warn("%s: another writer's file taken off %s cannot be merged (%v); left as it is", d.Name(name), s.t.path, err)
		return
	case err != nil:
		if _, aerr := s.setAside(data, err); aerr != nil {
			s.warn("%s: %v", d.Name(name), aerr)
		} else if remove(d, name) == nil {
			s.e.forgetHeld(s.t.path, name)
		}
		return
	}
	// The union keeps copies of this file's values, not slices of it, so
	// that its bytes go with this call.
	doc = ownValues(doc)
	union := doc
	switch {
	case s.held.doc == nil:
	case newer:
		union = doc.clone()
		carry(s.held.doc, union)
	default:
		union = s.held.doc.clone()
		carry(doc, union)
	}
	if _, err := union.encodedSize(); err != nil {
		s.warn("%s: another writer's file taken off %s cannot be merged with the other held files within the limits of one file (%v); left as it is", d.Name(name), s.t.path, err)
		return
	}
	s.held.doc = union
	s.held.names = append(s.held.names, name)
}

// ownValues returns doc with a copy of each value, none a slice of the
// bytes it was parsed from.
func ownValues(doc *document) *document {
	out := &document{top: make(map[string]json.RawMessage, len(doc.top)), auths: make(map[string]json.RawMessage, len(doc.auths)), digests: map[string]cachedDigest{}}
	for k, v := range doc.auths {
		out.auths[k] = bytes.Clone(v)
	}
	for k, v := range doc.top {
		out.top[k] = bytes.Clone(v)
	}
	for _, m := range doc.repeated {
		out.repeated = append(out.repeated, member{key: m.key, value: bytes.Clone(m.value)})
	}
	return out
}

// consolidate writes the held set, when it merges more than maxHeld files,
// as one new held file (fsync) before the others go. A crash in between
// leaves both, merged alike later.
func (s *targetSync) consolidate() {
	if len(s.held.names) <= maxHeld {
		return
	}
	d := s.t.dir
	data, err := s.held.doc.encode()
	if err != nil {
		return
	}
	staged, err := d.Stage(heldPrefix(s.t.name), 0o600, func(f *os.File) error {
		_, err := f.Write(data)
		return err
	})
	if err != nil {
		return
	}
	if err := staged.Keep(); err != nil {
		staged.Discard()
		return
	}
	name := staged.Temp()
	s.e.noteHeld(s.t.path, name)
	kept := []string{name}
	for _, n := range s.held.names {
		if d.Remove(n) == nil {
			s.e.forgetHeld(s.t.path, n)
		} else {
			kept = append(kept, n)
		}
	}
	s.held.names = kept
	_ = d.Sync()
}

// release removes the held files names once their content is in the
// target; the held set keeps what they held, for the merges still to come
// in this sync.
func (s *targetSync) release(names []string) error {
	if len(names) == 0 {
		return nil
	}
	names = slices.Clone(names)
	for _, n := range names {
		if err := s.t.dir.Remove(n); err != nil {
			return fmt.Errorf("removing %s, merged into %s: %w", s.t.dir.Name(n), s.t.path, err)
		}
		s.e.forgetHeld(s.t.path, n)
		s.held.names = slices.DeleteFunc(s.held.names, func(h string) bool { return h == n })
	}
	return s.t.dir.Sync()
}

// heldOverOurs deals with a crash (a kill) between a write's swap and its
// end, when that write was built on the file read alone (State.OnRead) and
// held the file another writer had renamed over that one: the target is
// nodecreds' own file, built on what the other writer read (or on a file
// newer than what it read), and the held file is that writer's newer file.
// Its content, but for nodecreds' own entries, is then the truth: an entry
// or top-level field it lacks was removed by its writer (a logout), and
// is not filled in from the target as loadHeld's union would. Entries the
// state says are nodecreds' own (owned or pending) that it lacks are kept
// from the target, for the merge to decide.
//
// A write that merged anything else (held files, another writer's files
// seen in a race, a file found after an exposure) is not on the file read
// alone: the held file's writer never saw what was merged, so what it
// lacks is no removal, and the union stays. So does a target that is not
// nodecreds' write: its writer came after the held file was taken off the
// target, and never read it.
func (s *targetSync) heldOverOurs() {
	if s.newer == nil || s.ours == "" || !s.old.OnRead {
		return
	}
	doc := s.newer.clone()
	for k, v := range parsedOrEmpty(s.cur.data).auths {
		_, owned := s.old.Owned[k]
		_, pending := s.old.Pending[k]
		if _, ok := doc.auths[k]; !ok && (owned || pending) {
			doc.auths[k] = v
		}
	}
	data, err := doc.encode()
	if err != nil {
		return // over a limit: the union, as planned
	}
	s.base = fileRead{exists: true, data: data, mode: s.cur.mode, uid: s.cur.uid, gid: s.cur.gid, info: s.cur.info}
	s.newer = nil
}
