package nodefile

import (
	"encoding/json"
	"maps"
	"slices"
	"time"

	"github.com/nodecreds/nodecreds/internal/dockercfg"
)

// mergeResult is what merge decided for one target.
type mergeResult struct {
	doc       *document
	state     TargetState
	released  []string // keys we owned that someone else changed; now theirs
	displaced []string // foreign keys moved into the state file
	restored  []string // displaced keys put back
	kept      []string // keys whose previous entry stayed (pruneRule.keep)
	fresh     []string // keys of held registries new to the file: written, or waiting with the rest of their source
}

// merge computes the new content of a target and its new ownership record.
// It is pure: no I/O, so every rule is table-tested.
//
// Rules (docs: "How it works"): we own exactly the keys we wrote; a foreign
// entry for a registry we provide is displaced into the state and restored
// when that registry leaves the sources; entries that left the sources go
// as the prune rule says; an owned entry whose value someone else changed
// is no longer ours.
func merge(cur *document, w *wanted, prune pruneRule, st TargetState) mergeResult {
	st.Stale = st.Stale.fresh(prune.now)
	m := &merger{doc: cur.cloneWithRoom(w.missingFrom(cur)), st: st, wanted: w, next: TargetState{
		Created:   st.Created,
		Owned:     make(map[string]string, len(w.items)),
		Copies:    maps.Clone(st.Copies),
		Displaced: maps.Clone(st.Displaced),
	}}
	if m.next.Displaced == nil {
		m.next.Displaced = map[string]json.RawMessage{}
	}
	m.holdRegistries(prune.keep)
	m.settleOwned(prune)
	m.writeDesired()
	m.restoreDisplaced()
	m.settleStale(prune)
	m.res.doc, m.res.state = m.doc, m.next
	return m.res
}

// staleWindow is how long nodecreds recognises an entry it wrote and then
// replaced (a rotation) or removed (pruned, respelled) when another writer
// saves it back: the docker CLI saves the file it loaded, with what was in
// it then, seconds after (docker login) or, in an editor, much later.
// Such an entry is nodecreds' own stale one, rewritten or removed again,
// never taken for another writer's. After the window it is: an entry
// someone deliberately puts back is theirs.
const staleWindow = 24 * time.Hour

// maxStale bounds the stale fingerprints one target's record keeps (the
// oldest go first): as many as the largest Secret holds entries.
const maxStale = 10_000

// settleStale records, for every entry nodecreds wrote that it has now
// replaced or removed, the fingerprint of what it wrote before, and keeps
// the ones still in the window; an entry released to another writer has
// none. Cleanup (now 0) records none.
func (m *merger) settleStale(prune pruneRule) {
	if prune.now == 0 {
		return
	}
	next := staleMarks{}
	for key, mark := range m.st.Stale {
		if !slices.Contains(m.res.released, key) {
			next[key] = mark
		}
	}
	replaced := func(key string) {
		if slices.Contains(m.res.released, key) || m.keptAsIs(key) {
			return
		}
		cur := m.next.Owned[key]
		// The version that was in the file, else the one last recorded
		// on disk, else the one that was being written.
		for _, fp := range []string{m.was[key], m.st.Owned[key], m.st.Pending[key]} {
			if fp != "" && fp != cur && fp != m.st.Stale[key].fp {
				next[key] = staleMark{fp: fp, at: prune.now}
				return
			}
		}
	}
	for key := range m.st.Owned {
		replaced(key)
	}
	for key := range m.st.Pending {
		replaced(key)
	}
	for key, fp := range m.next.Owned {
		if next[key].fp == fp {
			delete(next, key)
		}
	}
	m.next.Stale = next.bounded(maxStale)
}

// keptAsIs reports whether the owned entry key is in the file unchanged
// (kept although no source provides it).
func (m *merger) keptAsIs(key string) bool { return slices.Contains(m.kept, key) }

// pruneRule says which entries nodecreds wrote go once no source provides
// them.
type pruneRule struct {
	on bool
	// hold names sources whose content is unknown (invalid and never seen
	// valid): entries they may have written stay until they are known.
	hold map[string]bool
	// now (Unix seconds) stamps the fingerprints of entries nodecreds
	// replaces or removes (see staleWindow); 0 (cleanup) records none.
	now int64
	// keep is Desired.Keep: entries whose previous value stays where
	// nodecreds has one in the file (a rule of the same sync, carried
	// with this one).
	keep map[KeepID]bool
}

// removes reports whether the owned entry key, which no source provides
// now, goes.
func (p pruneRule) removes(st TargetState, key string) bool {
	if !p.on {
		return false
	}
	if len(p.hold) == 0 {
		return true
	}
	src, known := st.From[key]
	// An entry recorded without its source (by an older nodecreds) may
	// be a held source's.
	return known && !p.hold[src]
}

// wanted is the desired set as one reader's targets use it, prepared once
// per run: each key to write, with the entry as written and its
// fingerprint, and the registries they cover.
type wanted struct {
	byKey      map[string]*wantedItem
	registries map[string]bool // normalised
	items      []*wantedItem
}

type wantedItem struct {
	dockercfg.Item
	raw []byte // the entry as written: compact, keys sorted
	fp  string // entryDigest(raw)
}

// newWanted prepares desired (one item per key; should a key come twice,
// the first wins). known holds items prepared before by key (nil for
// none), whose encoding is reused when the item is the same.
func newWanted(desired dockercfg.Set, known map[string]*wantedItem) *wanted {
	w := &wanted{byKey: make(map[string]*wantedItem, len(desired)), registries: make(map[string]bool, len(desired)), items: make([]*wantedItem, 0, len(desired))}
	for _, it := range desired {
		if w.byKey[it.Key] != nil {
			continue
		}
		wi := known[it.Key]
		if wi == nil || wi.Item != it {
			raw, _ := it.Entry.MarshalJSON() // cannot fail: strings only
			wi = &wantedItem{Item: it, raw: raw, fp: entryDigest(raw)}
		}
		w.byKey[it.Key] = wi
		w.registries[dockercfg.Normalize(it.Key)] = true
		w.items = append(w.items, wi)
	}
	return w
}

// provides reports whether the desired set covers key's registry.
func (w *wanted) provides(key string) bool { return w.registries[dockercfg.Normalize(key)] }

// missingFrom counts the wanted keys doc lacks: how many entries a merge
// into it may add.
func (w *wanted) missingFrom(doc *document) int {
	n := 0
	for _, it := range w.items {
		if _, ok := doc.auths[it.Key]; !ok {
			n++
		}
	}
	return n
}

// merger holds one merge's working state.
type merger struct {
	doc    *document
	st     TargetState // the state before
	next   TargetState // the state after
	wanted *wanted
	kept   []string          // owned keys kept although no source provides them
	was    map[string]string // owned keys → the fingerprint the file's entry had
	res    mergeResult
	// held are the registries (normalised) whose new value waits
	// (pruneRule.keep); heldKeys our entries for them kept under a
	// spelling the sources no longer use, heldUnder their registries.
	held, heldKeys, heldUnder map[string]bool
	// whole are the sources held whole (KeepID with no registry); waiting
	// those of them with a previous entry of ours in the file, whose
	// entries new to the file wait too.
	whole, waiting map[string]bool
}

// holdRegistries notes the registries whose wanted value waits: keep names
// them by source and registry, so that however the sources spell the key
// now (https://r.io, r.io, Docker Hub's aliases), our previous entry for
// that registry is what stays.
func (m *merger) holdRegistries(keep map[KeepID]bool) {
	if len(keep) == 0 {
		return
	}
	for _, it := range m.wanted.items {
		n := dockercfg.Normalize(it.Key)
		whole := keep[KeepID{Source: it.Source}]
		if whole || keep[KeepID{Source: it.Source, Registry: n}] {
			if m.held == nil {
				m.held, m.heldKeys, m.heldUnder = map[string]bool{}, map[string]bool{}, map[string]bool{}
				m.whole, m.waiting = map[string]bool{}, map[string]bool{}
			}
			m.held[n] = true
			m.whole[it.Source] = m.whole[it.Source] || whole
		}
	}
}

// ours reports whether the file's entry for key is one we wrote: the
// current version, one being written, or one written before it and
// replaced or removed since (stale, saved back by another writer that had
// loaded it).
func (m *merger) ours(key string, raw []byte) bool {
	for _, fp := range []string{m.st.Owned[key], m.st.Pending[key], m.st.Stale[key].fp} {
		if m.doc.matches(key, raw, fp) {
			if m.was == nil {
				m.was = map[string]string{}
			}
			m.was[key] = fp
			return true
		}
	}
	return false
}

// settleOwned decides the entries we owned that are not rewritten as they
// are: someone else's now, respelled, kept, or pruned.
func (m *merger) settleOwned(prune pruneRule) {
	for key := range m.st.Owned {
		m.settle(key, prune)
	}
	for key := range m.st.Pending {
		if _, both := m.st.Owned[key]; !both {
			m.settle(key, prune)
		}
	}
	// An entry nodecreds removed before, saved back by another writer:
	// removed again (or, provided again, rewritten below).
	for key, mark := range m.st.Stale {
		_, owned := m.st.Owned[key]
		_, pending := m.st.Pending[key]
		raw, present := m.doc.auths[key]
		if owned || pending || !present || !m.doc.matches(key, raw, mark.fp) {
			continue
		}
		if m.wanted.byKey[key] == nil {
			delete(m.doc.auths, key)
		}
	}
	slices.Sort(m.res.released)
}

func (m *merger) settle(key string, prune pruneRule) {
	raw, present := m.doc.auths[key]
	if !present {
		return // gone from the file: nothing to own
	}
	provided := m.wanted.provides(key)
	switch {
	case !m.ours(key, raw):
		// Someone else changed it, so it is theirs now. If the sources
		// still provide the registry it is displaced below like any
		// foreign entry.
		if !provided {
			m.res.released = append(m.res.released, key)
		}
	case m.wanted.byKey[key] != nil:
		// Rewritten below.
	case provided && m.held[dockercfg.Normalize(key)]:
		// The sources spell the registry differently now, and its new
		// value waits: our entry stays as it is, under its old key.
		m.next.Owned[key] = m.was[key]
		m.next.setFrom(key, m.st.From[key])
		m.heldKeys[key], m.heldUnder[dockercfg.Normalize(key)] = true, true
		m.res.kept = append(m.res.kept, key)
	case provided:
		// The sources now spell the registry differently.
		delete(m.doc.auths, key)
	case !prune.removes(m.st, key):
		m.next.Owned[key] = fingerprint(raw)
		m.next.setFrom(key, m.st.From[key])
		m.kept = append(m.kept, key)
	default:
		delete(m.doc.auths, key)
	}
}

// writeDesired displaces foreign entries for the desired registries and
// writes ours, but for the registries held back (holdRegistries): there
// our previous entry, if the file has one under any spelling, stays.
func (m *merger) writeDesired() {
	// One pass over the file (files can hold thousands of keys) finds the
	// entries for the registries we write.
	for key, raw := range m.doc.auths {
		if !m.wanted.provides(key) {
			continue
		}
		if m.ours(key, raw) {
			if m.wanted.byKey[key] != nil || m.heldKeys[key] {
				continue // rewritten below, or held as it is
			}
		} else {
			m.next.Displaced[key] = raw
			m.res.displaced = append(m.res.displaced, key)
		}
		delete(m.doc.auths, key)
	}
	slices.Sort(m.res.displaced)
	m.findHeldEntries()
	for _, it := range m.wanted.items {
		raw, fp := it.raw, it.fp
		if m.held != nil && m.holdItem(it) {
			continue
		}
		if !m.doc.hasFingerprint(it.Key, fp) {
			// Unless the file holds this very value (then its bytes stay,
			// and an unchanged file compares equal without decoding).
			m.doc.auths[it.Key] = raw
			if m.doc.digests != nil {
				m.doc.digests[it.Key] = cachedDigest{raw: raw, digest: fp}
			}
		}
		m.next.Owned[it.Key] = fp
		m.next.setFrom(it.Key, it.Source)
	}
}

// findHeldEntries notes the sources held whole that have a previous
// entry of ours in the file, under a key they still use (after the pass
// above, a wanted key still in the file is ours) or one they no longer do
// (settle kept it). Before any item is decided, whatever the keys' order:
// such a source's entries new to the file wait with the rest of it.
func (m *merger) findHeldEntries() {
	if m.held == nil {
		return
	}
	for _, it := range m.wanted.items {
		if _, present := m.doc.auths[it.Key]; present && m.whole[it.Source] && !m.doc.hasFingerprint(it.Key, it.fp) {
			m.waiting[it.Source] = true
		}
	}
	for key := range m.heldKeys {
		if src := m.st.From[key]; m.whole[src] {
			m.waiting[src] = true
		}
	}
}

// holdItem decides a wanted item of a held registry: our previous entry
// under its key stays (and stays ours) until the new value may replace
// it, and so does one under another spelling (settle kept it), in place
// of this one; an entry new to the file waits too while the rest of its
// source, held whole, does; otherwise the new value is written (fresh)
// and it reports false.
func (m *merger) holdItem(it *wantedItem) bool {
	n := dockercfg.Normalize(it.Key)
	if !m.held[n] && !m.waiting[it.Source] {
		return false
	}
	_, present := m.doc.auths[it.Key]
	switch {
	case present && m.doc.hasFingerprint(it.Key, it.fp):
		return false // already the new value
	case present:
		// Ours: a foreign entry was displaced above.
		m.next.Owned[it.Key] = m.was[it.Key]
		m.next.setFrom(it.Key, it.Source)
		m.res.kept = append(m.res.kept, it.Key)
		return true
	case m.heldUnder[n]:
		return true // settle kept ours under another spelling
	case m.waiting[it.Source]:
		// New to the file (r.io/team beside r.io): written now, it would
		// put part of the new revision in force before the logins, and
		// as the more specific key the kubelet tries it first. Reported
		// fresh all the same: its login is one the source waits for.
		m.res.fresh = append(m.res.fresh, it.Key)
		return true
	}
	m.res.fresh = append(m.res.fresh, it.Key)
	return false
}

// restoreDisplaced puts back displaced entries whose registry no entry of
// ours covers any more, unless someone has written that key since (theirs
// is newer).
func (m *merger) restoreDisplaced() {
	if len(m.next.Displaced) == 0 {
		return
	}
	covered := map[string]bool{}
	for _, key := range m.kept {
		covered[dockercfg.Normalize(key)] = true
	}
	for _, key := range sortedKeys(m.next.Displaced) {
		n := dockercfg.Normalize(key)
		if m.wanted.registries[n] || covered[n] {
			continue
		}
		if _, taken := m.doc.auths[key]; !taken {
			m.doc.auths[key] = m.next.Displaced[key]
			m.res.restored = append(m.res.restored, key)
		}
		delete(m.next.Displaced, key)
	}
}

func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}
