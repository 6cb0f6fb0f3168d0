package nodefile

import (
	"bytes"
	"slices"
	"time"

	"github.com/nodecreds/nodecreds/internal/jsonwalk"
)

// threeWay merges next, a file another writer put at the target, into
// known, what nodecreds knows of that writer's files now (step 7): next
// was written on one of candidates (the files it can have been read from:
// a stale file of ours that was in place for a while, the file nodecreds
// left or read, that writer's previous files), and only what it changed
// relative to that one is taken. Per auths key and per top-level field,
// next's value (an absence too: a logout) is taken where it differs from
// the ancestor; anywhere else known's value stays, as next merely lacks
// what was added after the file its writer read. The result is a new
// document; none is modified.
//
// The ancestor is the candidate next differs from in the fewest entries
// and fields (diff3's merge base): a `docker login` or `logout` changes
// one entry, and a few fields at most, of what it read, while the
// candidates differ from one another by whole races' worth of entries.
// Where several are as close, only what next changed relative to each of
// them is taken: a value one of them explains is never taken for a change,
// so nothing is lost to a writer that did not see it, at the price that a
// change back to what one candidate held (a logout of an entry an older
// file lacked) is not seen.
func threeWay(known *document, candidates []*document, next *document) *document {
	return applyChanges(known, closest(candidates, next), next)
}

// closest returns the candidates that differ least from next (see
// threeWay).
func closest(candidates []*document, next *document) []*document {
	var out []*document
	best := -1
	for _, c := range candidates {
		n := differences(c, next)
		switch {
		case best < 0 || n < best:
			out, best = []*document{c}, n
		case n == best:
			out = append(out, c)
		}
	}
	return out
}

// differences counts the auths keys and top-level fields (by folded name)
// a and b do not hold alike.
func differences(a, b *document) int {
	n := 0
	for k, v := range a.auths {
		if w, ok := b.auths[k]; !ok || !sameJSON(v, w) {
			n++
		}
	}
	for k := range b.auths {
		if _, ok := a.auths[k]; !ok {
			n++
		}
	}
	fa, fb := fieldGroups(a), fieldGroups(b)
	for name, ms := range fa {
		if !sameMembers(ms, fb[name]) {
			n++
		}
	}
	for name := range fb {
		if _, ok := fa[name]; !ok {
			n++
		}
	}
	return n
}

// applyChanges is known with what next changed relative to every one of
// ancestors (its value, or its absence, differing from each) applied.
func applyChanges(known *document, ancestors []*document, next *document) *document {
	out := known.clone()
	changed := func(key string) bool {
		v, ok := next.auths[key]
		for _, a := range ancestors {
			av, aok := a.auths[key]
			if aok == ok && (!ok || sameJSON(av, v)) {
				return false
			}
		}
		return true
	}
	apply := func(key string) {
		if v, ok := next.auths[key]; ok {
			out.auths[key] = v
		} else {
			delete(out.auths, key)
		}
	}
	for key := range next.auths {
		if changed(key) {
			apply(key)
		}
	}
	for _, a := range ancestors {
		for key := range a.auths {
			if _, ok := next.auths[key]; !ok && changed(key) {
				apply(key)
			}
		}
	}
	threeWayFields(out, ancestors, next)
	return out
}

// threeWayFields is threeWay for the top-level fields other than auths,
// each the members a consumer reads into it (all spellings of its name).
func threeWayFields(out *document, ancestors []*document, next *document) {
	theirs := fieldGroups(next)
	names := map[string]bool{}
	for name := range theirs {
		names[name] = true
	}
	groups := make([]map[string][]member, len(ancestors))
	for i, a := range ancestors {
		groups[i] = fieldGroups(a)
		for name := range groups[i] {
			names[name] = true
		}
	}
	for name := range names {
		same := slices.ContainsFunc(groups, func(g map[string][]member) bool { return sameMembers(g[name], theirs[name]) })
		if same {
			continue
		}
		for k := range out.top {
			if k != "auths" && jsonwalk.Fold(k) == name {
				delete(out.top, k)
			}
		}
		out.repeated = slices.DeleteFunc(slices.Clone(out.repeated), func(m member) bool { return jsonwalk.Fold(m.key) == name })
		ms := theirs[name]
		if len(ms) == 1 {
			out.top[ms[0].key] = ms[0].value
			continue
		}
		out.repeated = append(out.repeated, ms...)
	}
}

// fieldGroups returns doc's top-level members other than auths by folded
// name, in file order.
func fieldGroups(doc *document) map[string][]member {
	out := map[string][]member{}
	for k, v := range doc.top {
		if k != "auths" {
			out[jsonwalk.Fold(k)] = append(out[jsonwalk.Fold(k)], member{key: k, value: v})
		}
	}
	for _, m := range doc.repeated {
		out[jsonwalk.Fold(m.key)] = append(out[jsonwalk.Fold(m.key)], m)
	}
	return out
}

// sameMembers reports whether two fields are the same members, in order.
func sameMembers(a, b []member) bool {
	return slices.EqualFunc(a, b, func(x, y member) bool { return x.key == y.key && sameJSON(x.value, y.value) })
}

// seen merges next, another writer's file found at the target (exists
// false: none) after the plan that merged into s.prev, into what this sync
// knows of that writer's files (step 7): base becomes their content so
// far, which the next plan merges into. next is compared with every file
// it can have been written on (threeWay): the file this sync read, that
// writer's files seen before in it (the last maxAncestors), and every
// stale file of ours the engine remembers for the target (exposure), from
// this sync or an earlier one. A file that does not parse is base as it
// is (set aside by the plan), what was known carried into it.
func (s *targetSync) seen(next fileRead) {
	doc, err := parseDocument(next.data)
	if !next.exists {
		doc, err = parseDocument(nil)
	}
	if s.ancestors == nil {
		s.ancestors = []*document{parsedOrEmpty(s.cur.data)}
	}
	s.chain, s.base = true, next
	if err != nil {
		s.addAncestor(parsedOrEmpty(nil))
		return
	}
	merged := threeWay(s.prev, append(slices.Clone(s.ancestors), s.e.exposedDocs(s.t.path)...), doc)
	s.addAncestor(doc)
	data, err := merged.encode()
	if err != nil {
		// Over a limit: the plan says so, on their file as it is.
		return
	}
	s.prev = merged
	s.base = fileRead{exists: next.exists || !merged.empty(), data: data, mode: next.mode, uid: next.uid, gid: next.gid, info: next.info}
}

// maxAncestors bounds the other writers' files (and the file read) one
// sync keeps to compare the next with: each may be 4 MiB.
const maxAncestors = 4

// addAncestor adds a file the other writer's next one can have been
// written on, dropping the oldest beyond maxAncestors.
func (s *targetSync) addAncestor(doc *document) {
	s.ancestors = append(s.ancestors, doc)
	if n := len(s.ancestors) - maxAncestors; n > 0 {
		s.ancestors = slices.Delete(s.ancestors, 0, n)
	}
}

// parsedOrEmpty is data parsed, or an empty document when it does not
// parse.
func parsedOrEmpty(data []byte) *document {
	if doc, err := parseDocument(data); err == nil {
		return doc
	}
	doc, _ := parseDocument(nil)
	return doc
}

// exposureWindow is how long the engine remembers a stale file of ours
// that was in place at a target while a race was merged again: a writer
// that read it (`docker login` saves, within a second or so, what it read)
// may rename what it made of it at any time in that window, into the same
// sync or any later one.
const exposureWindow = time.Minute

// Bounds on what is remembered of one target's stale files: the newest
// maxExposed, and no more than maxExposedBytes of them in all (a file may
// be 4 MiB). A file dropped for either is no longer taken for what a
// writer read.
const (
	maxExposed      = 8
	maxExposedBytes = 16 << 20
)

// exposure is what the engine remembers of a target at which stale files
// of ours were in place within exposureWindow: those files (oldest first)
// and, while it is known, the file the last sync left. It goes when the
// last stale file ages out; no sync that exposes nothing erases it.
type exposure struct {
	stale []exposedFile
	// left is the content the last sync left at the target; leftKnown is
	// false when that sync did not end with a file it knows (an error,
	// a file removed or left corrupt).
	left      []byte
	leftKnown bool
}

// exposedFile is one stale file of ours that was in place: its content,
// parsed only while a sync compares files with it (see forgetParsed).
type exposedFile struct {
	data []byte
	doc  *document
	at   time.Time
}

// exposure returns what is remembered of path within exposureWindow,
// dropping what aged out (nil for nothing).
func (e *Engine) exposure(path string) *exposure {
	x := e.exposed[path]
	if x == nil {
		return nil
	}
	now := e.now()
	x.stale = slices.DeleteFunc(x.stale, func(f exposedFile) bool { return now.Sub(f.at) > exposureWindow })
	if len(x.stale) == 0 {
		delete(e.exposed, path)
		return nil
	}
	return x
}

// ageExposures drops, at every sync, what aged out of every target's
// memory, so that stale files of a target no longer synced are not kept
// past exposureWindow.
func (e *Engine) ageExposures() {
	for path := range e.exposed {
		e.exposure(path)
	}
}

// expose remembers data, a stale file of ours now in place at path, within
// the bounds.
func (e *Engine) expose(path string, data []byte) {
	if e.exposed == nil {
		e.exposed = map[string]*exposure{}
	}
	x := e.exposure(path)
	if x == nil {
		x = &exposure{}
		e.exposed[path] = x
	}
	x.leftKnown = false // until the sync ends with a file it knows
	x.stale = append(x.stale, exposedFile{data: data, at: e.now()})
	size := 0
	for i := len(x.stale) - 1; i >= 0; i-- {
		size += len(x.stale[i].data)
		if len(x.stale)-i > maxExposed || size > maxExposedBytes {
			x.stale = slices.Delete(x.stale, 0, i+1)
			break
		}
	}
}

// exposedDocs returns the stale files remembered for path, parsed (kept
// parsed until forgetParsed).
func (e *Engine) exposedDocs(path string) []*document {
	x := e.exposure(path)
	if x == nil {
		return nil
	}
	out := make([]*document, len(x.stale))
	for i := range x.stale {
		if x.stale[i].doc == nil {
			x.stale[i].doc = parsedOrEmpty(x.stale[i].data)
		}
		out[i] = x.stale[i].doc
	}
	return out
}

// forgetParsed drops the parsed stale files of path, and, unless the sync
// ended with a file it knows (noteLeft) or never touched the target (the
// file the last sync left is still the one to compare with), the file left.
func (e *Engine) forgetParsed(path string, finished bool) {
	x := e.exposed[path]
	if x == nil {
		return
	}
	for i := range x.stale {
		x.stale[i].doc = nil
	}
	if !finished {
		x.leftKnown, x.left = false, nil
	}
}

// noteLeft remembers, for a target with stale files remembered, the file
// this sync leaves there (written, or kept as read), for afterExposure.
func (s *targetSync) noteLeft(p targetPlan, w written) {
	x := s.e.exposure(s.t.path)
	if x == nil {
		return
	}
	s.finished = true
	switch {
	case p.step == stepWrite:
		x.left, x.leftKnown = w.data, true
	case p.step == stepKeep && s.cur.exists:
		x.left, x.leftKnown = s.cur.data, true
	default:
		// No file, or a corrupt one: a file found there later is taken
		// as it is.
		x.left, x.leftKnown = nil, false
	}
}

// afterExposure takes a file found at the target where the last sync left
// another, while stale files of ours it or an earlier sync had in place
// are remembered, as written on the closest of them or of the file left
// (threeWay): another writer may have read a stale file while it was in
// place and renamed what it made of it only after that sync ended. What
// it changed relative to that file is taken, onto the file left; what it
// lacks because that file did, stays.
func (s *targetSync) afterExposure() {
	x := s.e.exposure(s.t.path)
	if x == nil || !x.leftKnown || !s.cur.exists || bytes.Equal(s.cur.data, x.left) {
		return // nothing remembered, or what was left is still there
	}
	doc, err := parseDocument(s.cur.data)
	if err != nil {
		return
	}
	left := parsedOrEmpty(x.left)
	merged := threeWay(left, append([]*document{left}, s.e.exposedDocs(s.t.path)...), doc)
	if data, err := merged.encode(); err == nil {
		s.base = fileRead{exists: true, data: data, mode: s.cur.mode, uid: s.cur.uid, gid: s.cur.gid, info: s.cur.info}
	}
}
