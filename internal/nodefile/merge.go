package nodefile

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/nodecreds/nodecreds/internal/dockercfg"
)

// ErrCorrupt means a target exists but is not a config.json the consumers
// can read; the kubelet would silently skip it.
var ErrCorrupt = errors.New("not a valid config.json")

// document is a parsed config.json that keeps every top-level field as the
// raw JSON it was, so nothing we do not own changes value.
type document struct {
	top   map[string]json.RawMessage
	auths map[string]json.RawMessage
	// digests caches entryDigest(compact(raw)) by key: one sync asks for
	// the same entries several times (settling ownership, then what is on
	// disk), and files can hold thousands. Values are never modified in
	// place, so an entry whose bytes are the very ones hashed is unchanged.
	digests map[string]cachedDigest
	// order is the entries' keys in the order of the file parsed: sorted
	// when nodecreds wrote it, which spares sorting thousands of keys again.
	order []string
}

type cachedDigest struct {
	raw    []byte
	digest string
}

// parseDocument reads a config.json. Empty (or white-space) content is an
// empty document: there is nothing in it to lose. Anything the kubelet would
// refuse to parse is ErrCorrupt. json.Valid checks the whole file once;
// the walk after it only finds where each value ends, and the document's
// values are slices of data rather than copies.
func parseDocument(data []byte) (*document, error) {
	d := &document{top: map[string]json.RawMessage{}, auths: map[string]json.RawMessage{}, digests: map[string]cachedDigest{}}
	if len(bytes.TrimSpace(data)) == 0 {
		return d, nil
	}
	if !json.Valid(data) {
		return nil, fmt.Errorf("%w: not valid JSON (%s)", ErrCorrupt, jsonProblem(json.Unmarshal(data, new(any))))
	}
	start := skipSpace(data, 0)
	if data[start] != '{' {
		return nil, fmt.Errorf("%w: not a JSON object", ErrCorrupt)
	}
	var err error
	eachMember(data, start, func(key, value []byte) {
		k := unquote(key)
		if k != "auths" {
			d.top[k] = value
			return
		}
		// The value itself is re-encoded from d.auths; top keeps only that
		// the key was there. A null "auths" leaves any earlier one, as
		// encoding/json does.
		d.top[k] = json.RawMessage("{}")
		switch value[0] {
		case 'n':
		case '{':
			auths := make(map[string]json.RawMessage, len(value)/64)
			order := make([]string, 0, len(value)/64)
			eachMember(value, 0, func(key, entry []byte) {
				k := unquote(key)
				auths[k] = entry
				order = append(order, k)
			})
			d.auths, d.order = auths, order
		default:
			err = fmt.Errorf("%w: \"auths\" is not an object of entries", ErrCorrupt)
		}
	})
	if err != nil {
		return nil, err
	}
	for k, v := range d.auths {
		// An object is all the consumers accept.
		if v[0] != '{' {
			return nil, fmt.Errorf("%w: entry %q is not an object", ErrCorrupt, dockercfg.SafeKey(k))
		}
	}
	return d, nil
}

// empty reports whether the document holds nothing at all, so a file that
// nodecreds created can go: an empty {"auths":{}} in the kubelet's folder
// would hide $HOME/.docker/config.json from it.
func (d *document) empty() bool {
	if len(d.auths) > 0 {
		return false
	}
	for k := range d.top {
		if k != "auths" {
			return false
		}
	}
	return true
}

// encode writes the document the way the docker CLI does (tab-indented,
// keys sorted), in one pass: each value is indented where it lands instead
// of marshalling the entries, then the whole, then indenting that.
func (d *document) encode() ([]byte, error) {
	keys := slices.Sorted(maps.Keys(d.top))
	if _, ok := d.top["auths"]; !ok && len(d.auths) > 0 {
		keys = append(keys, "auths")
		slices.Sort(keys)
	}
	size := 64
	for k, v := range d.auths {
		size += len(k) + len(v) + 4*bytes.Count(v, []byte(",")) + 16
	}
	buf := make([]byte, 0, size)
	buf = append(buf, '{')
	for i, k := range keys {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = append(buf, "\n\t"...)
		buf = appendKey(buf, k)
		if k != "auths" {
			buf = appendIndent(buf, bytes.TrimSpace(d.top[k]), "\t", "\t")
			continue
		}
		if len(d.auths) == 0 {
			buf = append(buf, "{}"...)
			continue
		}
		buf = append(buf, '{')
		// The file written is in this order: remembered for when it is
		// read back.
		d.order = d.sortedKeys()
		for j, ak := range d.order {
			if j > 0 {
				buf = append(buf, ',')
			}
			buf = append(buf, "\n\t\t"...)
			buf = appendKey(buf, ak)
			buf = appendIndent(buf, bytes.TrimSpace(d.auths[ak]), "\t\t", "\t")
		}
		buf = append(buf, "\n\t}"...)
	}
	if len(keys) > 0 {
		buf = append(buf, '\n')
	}
	return append(buf, "}\n"...), nil
}

// sortedKeys returns the entries' keys sorted, with the order of the file
// parsed as the hint.
func (d *document) sortedKeys() []string { return sortedWithHint(d.auths, d.order) }

// sortedWithHint returns m's keys sorted. When hint holds every key of m
// in ascending order (the keys of a file nodecreds wrote, the last state
// saved) they are taken from it, sparing the sort of thousands of keys.
func sortedWithHint[V any](m map[string]V, hint []string) []string {
	keys := make([]string, 0, len(m))
	for _, k := range hint {
		if _, ok := m[k]; !ok {
			continue
		}
		if n := len(keys); n > 0 && keys[n-1] >= k {
			break // not ascending (or a key twice): sort
		}
		keys = append(keys, k)
	}
	if len(keys) == len(m) {
		return keys
	}
	return slices.Sorted(maps.Keys(m))
}

// appendKey appends "key": as encoding/json quotes it.
func appendKey(buf []byte, k string) []byte {
	return append(appendJSONString(buf, k), ':', ' ')
}

// equal compares two documents by JSON value, so a file that only differs
// in formatting is not rewritten.
func (d *document) equal(o *document) bool {
	if len(d.auths) != len(o.auths) {
		return false
	}
	for k, v := range d.auths {
		w, ok := o.auths[k]
		if !ok || !sameJSON(v, w) {
			return false
		}
	}
	for k, v := range d.top {
		if k == "auths" {
			continue
		}
		w, ok := o.top[k]
		if !ok || !bytes.Equal(compact(v), compact(w)) {
			return false
		}
	}
	for k := range o.top {
		if _, ok := d.top[k]; !ok && k != "auths" {
			return false
		}
	}
	return true
}

func (d *document) clone() *document {
	return &document{top: maps.Clone(d.top), auths: maps.Clone(d.auths), digests: d.digests, order: d.order}
}

// sameJSON reports whether two raw values are the same JSON value. Most
// comparisons differ at most in white space, which compacting settles
// without decoding; only the rest pay for a canonical form.
func sameJSON(a, b json.RawMessage) bool {
	return bytes.Equal(a, b) || bytes.Equal(compact(a), compact(b)) || fingerprint(a) == fingerprint(b)
}

// hasFingerprint reports whether the entry key of the document has the
// fingerprint fp.
func (d *document) hasFingerprint(key, fp string) bool {
	if fp == "" {
		return false
	}
	raw, ok := d.auths[key]
	return ok && d.matches(key, raw, fp)
}

// matches reports whether raw, the entry key of the document, has the
// fingerprint fp. What nodecreds writes is compact with sorted keys, so
// hashing the compacted bytes settles the common case without decoding.
func (d *document) matches(key string, raw []byte, fp string) bool {
	if fp == "" {
		return false
	}
	if d.digests == nil {
		d.digests = map[string]cachedDigest{}
	}
	c, ok := d.digests[key]
	if !ok || !sameSlice(c.raw, raw) {
		c = cachedDigest{raw: raw, digest: entryDigest(compact(raw))}
		d.digests[key] = c
	}
	return c.digest == fp || fingerprint(raw) == fp
}

// sameSlice reports whether a and b are the same bytes in memory.
func sameSlice(a, b []byte) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

// entryDigest is 128 bits of SHA-256: plenty to tell our entries from others',
// and half the state file.
func entryDigest(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:16])
}

// fingerprint is a digest of an entry's JSON value (keys sorted), so that
// reformatting by another tool does not make our own entry look foreign.
// The state file keeps fingerprints, never the entries we wrote.
func fingerprint(raw json.RawMessage) string {
	var v any
	canon := []byte(raw)
	if err := json.Unmarshal(raw, &v); err == nil {
		if b, err := json.Marshal(v); err == nil {
			canon = b
		}
	}
	return entryDigest(canon)
}

// mergeResult is what merge decided for one target.
type mergeResult struct {
	doc       *document
	state     TargetState
	released  []string // keys we owned that someone else changed; now theirs
	displaced []string // foreign keys moved into the state file
	restored  []string // displaced keys put back
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
	m := &merger{doc: cur.clone(), st: st, wanted: w, next: TargetState{
		Created:   st.Created,
		Owned:     make(map[string]string, len(w.items)),
		Displaced: maps.Clone(st.Displaced),
	}}
	if m.next.Displaced == nil {
		m.next.Displaced = map[string]json.RawMessage{}
	}
	m.settleOwned(prune)
	m.writeDesired()
	m.restoreDisplaced()
	m.res.doc, m.res.state = m.doc, m.next
	return m.res
}

// pruneRule says which entries nodecreds wrote go once no source provides
// them.
type pruneRule struct {
	on bool
	// hold names sources whose content is unknown (invalid and never seen
	// valid): entries they may have written stay until they are known.
	hold map[string]bool
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
// the first wins). known holds items prepared before (nil for none), whose
// encoding is reused when the item is the same.
func newWanted(desired dockercfg.Set, known map[dockercfg.Item]*wantedItem) *wanted {
	w := &wanted{byKey: make(map[string]*wantedItem, len(desired)), registries: make(map[string]bool, len(desired)), items: make([]*wantedItem, 0, len(desired))}
	for _, it := range desired {
		if w.byKey[it.Key] != nil {
			continue
		}
		wi := known[it]
		if wi == nil {
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

// merger holds one merge's working state.
type merger struct {
	doc    *document
	st     TargetState // the state before
	next   TargetState // the state after
	wanted *wanted
	kept   []string // owned keys kept although no source provides them
	res    mergeResult
}

// ours reports whether the file's entry for key is one we wrote.
func (m *merger) ours(key string, raw []byte) bool {
	return m.doc.matches(key, raw, m.st.Owned[key]) || m.doc.matches(key, raw, m.st.Pending[key])
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
// writes ours.
func (m *merger) writeDesired() {
	// One pass over the file (files can hold thousands of keys) finds the
	// entries for the registries we write.
	for key, raw := range m.doc.auths {
		if !m.wanted.provides(key) {
			continue
		}
		if m.ours(key, raw) {
			if m.wanted.byKey[key] != nil {
				continue // rewritten below
			}
		} else {
			m.next.Displaced[key] = raw
			m.res.displaced = append(m.res.displaced, key)
		}
		delete(m.doc.auths, key)
	}
	slices.Sort(m.res.displaced)
	for _, it := range m.wanted.items {
		raw, fp := it.raw, it.fp
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
