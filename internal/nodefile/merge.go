package nodefile

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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
	// digests caches entryDigest(compact(raw)) by raw value: one sync asks
	// for the same entries several times (settling ownership, then what is
	// on disk), and files can hold thousands.
	digests map[string]string
}

// parseDocument reads a config.json. Empty (or white-space) content is an
// empty document: there is nothing in it to lose. Anything the kubelet would
// refuse to parse is ErrCorrupt. The top level is read token by token and
// "auths" decoded straight into its map, so a file of thousands of entries
// is scanned twice (to find each value's end, then to copy it) rather than
// five times by nested Unmarshal calls.
func parseDocument(data []byte) (*document, error) {
	d := &document{top: map[string]json.RawMessage{}, auths: map[string]json.RawMessage{}, digests: map[string]string{}}
	if len(bytes.TrimSpace(data)) == 0 {
		return d, nil
	}
	notObject := fmt.Errorf("%w: not a JSON object", ErrCorrupt)
	dec := json.NewDecoder(bytes.NewReader(data))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, notObject
	}
	for dec.More() {
		tok, err := dec.Token()
		key, isKey := tok.(string)
		if err != nil || !isKey {
			return nil, notObject
		}
		if key != "auths" {
			var raw json.RawMessage
			if err := dec.Decode(&raw); err != nil {
				return nil, notObject
			}
			d.top[key] = raw
			continue
		}
		var auths map[string]json.RawMessage
		if err := dec.Decode(&auths); err != nil {
			return nil, fmt.Errorf("%w: \"auths\" is not an object of entries", ErrCorrupt)
		}
		// The value itself is re-encoded from d.auths; top keeps only that
		// the key was there.
		d.top[key] = json.RawMessage("{}")
		if auths != nil {
			d.auths = auths
		}
	}
	if tok, err := dec.Token(); err != nil || tok != json.Delim('}') {
		return nil, notObject
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, notObject // something after the object
	}
	for k, v := range d.auths {
		// Already valid JSON; an object is all the consumers accept.
		if t := bytes.TrimSpace(v); len(t) == 0 || t[0] != '{' {
			return nil, fmt.Errorf("%w: entry %q is not an object", ErrCorrupt, k)
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
	for _, v := range d.auths {
		size += len(v) * 2
	}
	buf := bytes.NewBuffer(make([]byte, 0, size))
	buf.WriteString("{")
	for i, k := range keys {
		if i > 0 {
			buf.WriteByte(',')
		}
		buf.WriteString("\n\t")
		writeKey(buf, k)
		if k != "auths" {
			if err := json.Indent(buf, d.top[k], "\t", "\t"); err != nil {
				return nil, fmt.Errorf("encoding config.json: field %q: %w", k, err)
			}
			continue
		}
		if len(d.auths) == 0 {
			buf.WriteString("{}")
			continue
		}
		buf.WriteString("{")
		for j, ak := range slices.Sorted(maps.Keys(d.auths)) {
			if j > 0 {
				buf.WriteByte(',')
			}
			buf.WriteString("\n\t\t")
			writeKey(buf, ak)
			if err := json.Indent(buf, bytes.TrimSpace(d.auths[ak]), "\t\t", "\t"); err != nil {
				return nil, fmt.Errorf("encoding config.json: entry %q: %w", ak, err)
			}
		}
		buf.WriteString("\n\t}")
	}
	if len(keys) > 0 {
		buf.WriteString("\n")
	}
	buf.WriteString("}\n")
	return buf.Bytes(), nil
}

// writeKey writes "key": as encoding/json quotes it.
func writeKey(buf *bytes.Buffer, k string) {
	q, _ := json.Marshal(k) // a string cannot fail
	buf.Write(q)
	buf.WriteString(": ")
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
	return &document{top: maps.Clone(d.top), auths: maps.Clone(d.auths), digests: d.digests}
}

func compact(raw json.RawMessage) []byte {
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err != nil {
		return raw
	}
	return buf.Bytes()
}

// sameJSON reports whether two raw values are the same JSON value. Most
// comparisons differ at most in white space, which compacting settles
// without decoding; only the rest pay for a canonical form.
func sameJSON(a, b json.RawMessage) bool {
	return bytes.Equal(a, b) || bytes.Equal(compact(a), compact(b)) || fingerprint(a) == fingerprint(b)
}

// hasFingerprint reports whether the entry key of the document has the
// fingerprint fp. What nodecreds writes is compact with sorted keys, so
// hashing the compacted bytes settles the common case without decoding.
func (d *document) hasFingerprint(key, fp string) bool {
	raw, ok := d.auths[key]
	if fp == "" || !ok {
		return false
	}
	if d.digests == nil {
		d.digests = map[string]string{}
	}
	digest, ok := d.digests[string(raw)]
	if !ok {
		digest = entryDigest(compact(raw))
		d.digests[string(raw)] = digest
	}
	return digest == fp || fingerprint(raw) == fp
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
// Rules (README, "How it works": Merge): we own exactly the keys we wrote; a foreign entry for
// a registry we provide is displaced into the state and restored when that
// registry leaves the sources; with prune, entries that left the sources go;
// an owned entry whose value someone else changed is no longer ours.
func merge(cur *document, desired dockercfg.Set, prune bool, st TargetState) mergeResult {
	m := &merger{doc: cur.clone(), st: st, wanted: map[string]dockercfg.Item{}, next: TargetState{
		Created:   st.Created,
		Owned:     map[string]string{},
		Displaced: maps.Clone(st.Displaced),
	}}
	if m.next.Displaced == nil {
		m.next.Displaced = map[string]json.RawMessage{}
	}
	for _, it := range desired {
		m.wanted[dockercfg.Normalize(it.Key)] = it
	}
	m.settleOwned(prune)
	m.writeDesired(desired)
	m.restoreDisplaced()
	m.res.doc, m.res.state = m.doc, m.next
	return m.res
}

// merger holds one merge's working state.
type merger struct {
	doc    *document
	st     TargetState               // the state before
	next   TargetState               // the state after
	wanted map[string]dockercfg.Item // normalised registry → desired item
	res    mergeResult
}

// ours reports whether the file's entry for key is one we wrote.
func (m *merger) ours(key string) bool {
	return m.doc.hasFingerprint(key, m.st.Owned[key]) || m.doc.hasFingerprint(key, m.st.Pending[key])
}

// settleOwned decides the entries we owned that are not rewritten as they
// are: someone else's now, respelled, kept without prune, or pruned.
func (m *merger) settleOwned(prune bool) {
	for _, key := range sortedKeys(unionKeys(m.st.Owned, m.st.Pending)) {
		if _, present := m.doc.auths[key]; !present {
			continue // gone from the file: nothing to own
		}
		it, provided := m.wanted[dockercfg.Normalize(key)]
		switch {
		case !m.ours(key):
			// Someone else changed it, so it is theirs now. If the sources
			// still provide the registry it is displaced below like any
			// foreign entry.
			if !provided {
				m.res.released = append(m.res.released, key)
			}
		case provided && it.Key == key:
			// Rewritten below.
		case provided:
			// The source now spells the registry differently.
			delete(m.doc.auths, key)
		case !prune:
			m.next.Owned[key] = fingerprint(m.doc.auths[key])
		default:
			delete(m.doc.auths, key)
		}
	}
}

// writeDesired displaces foreign entries for the desired registries and
// writes ours.
func (m *merger) writeDesired(desired dockercfg.Set) {
	// Index the file's keys by registry once: files can hold thousands.
	byRegistry := map[string][]string{}
	for _, key := range sortedKeys(m.doc.auths) {
		n := dockercfg.Normalize(key)
		byRegistry[n] = append(byRegistry[n], key)
	}
	for _, it := range desired {
		for _, key := range byRegistry[dockercfg.Normalize(it.Key)] {
			if _, present := m.doc.auths[key]; !present {
				continue // removed above (a respelled key of ours)
			}
			if !m.ours(key) {
				m.next.Displaced[key] = m.doc.auths[key]
				m.res.displaced = append(m.res.displaced, key)
			}
			delete(m.doc.auths, key)
		}
		raw, _ := it.Entry.MarshalJSON() // cannot fail: strings only
		m.doc.auths[it.Key] = raw
		m.next.Owned[it.Key] = entryDigest(raw) // already compact with sorted keys
	}
}

// restoreDisplaced puts back displaced entries whose registry no entry of
// ours covers any more, unless someone has written that key since (theirs
// is newer).
func (m *merger) restoreDisplaced() {
	covered := map[string]bool{}
	for key := range m.next.Owned {
		covered[dockercfg.Normalize(key)] = true
	}
	for _, key := range sortedKeys(m.next.Displaced) {
		if covered[dockercfg.Normalize(key)] {
			continue
		}
		if _, taken := m.doc.auths[key]; !taken {
			m.doc.auths[key] = m.next.Displaced[key]
			m.res.restored = append(m.res.restored, key)
		}
		delete(m.next.Displaced, key)
	}
}

func unionKeys(ms ...map[string]string) map[string]bool {
	out := map[string]bool{}
	for _, m := range ms {
		for k := range m {
			out[k] = true
		}
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}
