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
	"strings"

	"github.com/nodecreds/nodecreds/internal/dockercfg"
	"github.com/nodecreds/nodecreds/internal/hostfs"
	"github.com/nodecreds/nodecreds/internal/jsonwalk"
)

// ErrCorrupt means a target exists but is not a config.json the consumers
// can read; the kubelet would silently skip it.
var ErrCorrupt = errors.New("not a valid config.json")

// ErrTooManyEntries means a file holds more entries and fields than
// nodecreds takes apart (MaxEntries), or a merge would write more: the file
// is left as it is and the target reported, so no file on the node can push
// the agent past its memory limit.
var ErrTooManyEntries = errors.New("too many entries")

// MaxEntries is the most entries and top-level fields nodecreds reads from,
// or writes to, one target: five times the 10,000 registries of the largest
// file measured in use here. A 4 MiB file of tiny entries holds some
// 440,000, which would take the agent far past its memory limit; with two
// files at this size and the largest Secret dockercfg accepts, a sync stays
// inside it with room (docs/benchmarks.md, "Memory: the largest inputs").
const MaxEntries = 50_000

// document is a parsed config.json that keeps every top-level field as the
// raw JSON it was, so nothing we do not own changes value. It holds what
// the kubelet and the docker CLI (both encoding/json, into a struct) read
// from the file: every member whose key names the auths field, in any case
// ("auths", "Auths"), merged in order, later keys winning and a null
// starting afresh.
type document struct {
	// top holds the top-level fields other than auths, each written once
	// in the file, by key; "auths" is in it (as {}) when the file had the
	// field, so that an empty one is kept.
	top map[string]json.RawMessage
	// repeated holds, in the file's order, the top-level members that a
	// consumer reads into one field together with another member: a key
	// written twice, or two spellings of one field ("credsStore" and
	// "CredsStore"). The docker CLI merges such objects and lets the later
	// value win otherwise, so they are kept, and written back, together and
	// in that order. top does not hold them.
	repeated []member
	// refused is what in the file read the kubelet refuses (readable.go).
	refused refusals
	auths   map[string]json.RawMessage
	// digests caches entryDigest(jsonwalk.Compact(raw)) by key: one sync asks for
	// the same entries several times (settling ownership, then what is on
	// disk), and files can hold thousands. Values are never modified in
	// place, so an entry whose bytes are the very ones hashed is unchanged.
	digests map[string]cachedDigest
	// order is the entries' keys in the order of the file parsed: sorted
	// when nodecreds wrote it, which spares sorting thousands of keys again.
	order []string
	// size is what encodedSize counted (0: not counted yet); a document is
	// not changed once it is encoded.
	size int
}

// member is one top-level member of a file, as written.
type member struct {
	key   string
	value json.RawMessage
}

type cachedDigest struct {
	raw    []byte
	digest string
}

// parseDocument reads a config.json as the kubelet and the docker CLI read
// it (see document). Empty (or white-space) content and a bare null are an
// empty document: both consumers read them as no credentials. Anything
// neither consumer reads is ErrCorrupt; content after the first JSON value,
// which the docker CLI ignores and the kubelet refuses, is ErrCorrupt too,
// but the document the docker CLI read is returned with it, so that what it
// saw is carried into the file written. More than MaxEntries entries and
// fields is ErrTooManyEntries, counted before anything is built. json.Valid
// checks the whole file once; the walk after it only finds where each value
// ends, and the document's values are slices of data rather than copies.
func parseDocument(data []byte) (*document, error) {
	d := &document{top: map[string]json.RawMessage{}, auths: map[string]json.RawMessage{}, digests: map[string]cachedDigest{}}
	start := jsonwalk.SkipSpace(data, 0)
	if start == len(data) {
		return d, nil
	}
	var tail error
	if !json.Valid(data) {
		end, ok := firstValue(data, start)
		if !ok {
			return nil, fmt.Errorf("%w: not valid JSON (%s)", ErrCorrupt, jsonProblem(json.Unmarshal(data, &struct{}{})))
		}
		tail = fmt.Errorf("%w: %d bytes after the JSON value, which the kubelet refuses (the docker CLI reads the value and ignores them)", ErrCorrupt, len(data)-end)
		data = data[:end]
	}
	switch data[start] {
	case '{':
	case 'n':
		return d, tail
	default:
		return nil, fmt.Errorf("%w: not a JSON object", ErrCorrupt)
	}
	n := countEntries(data, start)
	if n > MaxEntries {
		return nil, fmt.Errorf("holds %d entries and fields, more than the %d nodecreds reads from one file; left as it is (remove entries from it): %w", n, MaxEntries, ErrTooManyEntries)
	}
	var (
		err     error
		members []member
	)
	jsonwalk.EachMember(data, start, func(key, value []byte) {
		if err != nil {
			return
		}
		if !jsonwalk.Names(key, "auths") {
			m := member{key: jsonwalk.Unquote(key), value: value}
			if jsonwalk.Names(key, "HttpHeaders") && headersRefusal(value) {
				d.refused.headers = m.key
			}
			members = append(members, m)
			return
		}
		err = d.addAuths(value, n)
	})
	if err != nil {
		return nil, err
	}
	d.setTop(members)
	return d, tail
}

// addAuths reads the value of one member naming the auths field into d,
// as encoding/json decodes it into the map field: merged with what came
// before, later keys winning, a null starting afresh. n bounds the entries
// of the whole file.
func (d *document) addAuths(value []byte, n int) error {
	// The value itself is re-encoded from d.auths; top keeps only that
	// the field was there.
	d.top["auths"] = json.RawMessage("{}")
	switch value[0] {
	case 'n':
		// encoding/json sets the map to nil: what came before is gone.
		d.auths, d.order = map[string]json.RawMessage{}, nil
		return nil
	case '{':
	default:
		return fmt.Errorf("%w: \"auths\" is not an object of entries", ErrCorrupt)
	}
	if d.order == nil {
		d.auths, d.order = make(map[string]json.RawMessage, n), make([]string, 0, n)
	}
	var err error
	jsonwalk.EachMember(value, 0, func(key, entry []byte) {
		k := jsonwalk.Unquote(key)
		// An object is what both consumers decode an entry from (null is
		// an empty one); anything else fails the whole file for both,
		// even when a later entry of that key replaces it.
		if entry[0] != '{' && entry[0] != 'n' && err == nil {
			err = fmt.Errorf("%w: entry %q is not an object", ErrCorrupt, dockercfg.SafeKey(k))
		}
		if _, dup := d.auths[k]; !dup {
			d.order = append(d.order, k)
		}
		d.auths[k] = entry
		if err == nil {
			d.refused.note(k, entry)
		}
	})
	return err
}

// firstValue returns where the JSON value starting at data[start] ends, if
// it is an object or null that is valid on its own: what the docker CLI's
// json.Decoder reads from a file, whatever follows.
func firstValue(data []byte, start int) (int, bool) {
	switch data[start] {
	case '{':
		end := jsonwalk.ValueEnd(data, start)
		return end, json.Valid(data[start:end])
	case 'n':
		end := start + len("null")
		return end, bytes.HasPrefix(data[start:], []byte("null"))
	}
	return 0, false
}

// countEntries counts the top-level members of the object at data[start]
// and the entries of every auths object among them, duplicates included,
// without building anything.
func countEntries(data []byte, start int) int {
	n := 0
	jsonwalk.EachMember(data, start, func(key, value []byte) {
		n++
		if value[0] == '{' && jsonwalk.Names(key, "auths") {
			n += jsonwalk.CountMembers(value, 0)
		}
	})
	return n
}

// setTop files the top-level members other than auths: into top, or, when
// a consumer reads one field from several of them, into repeated.
func (d *document) setTop(members []member) {
	var fields map[string]int
	if len(members) > 1 {
		fields = make(map[string]int, len(members))
		for _, m := range members {
			fields[jsonwalk.Fold(m.key)]++
		}
	}
	for _, m := range members {
		if fields[jsonwalk.Fold(m.key)] > 1 {
			d.repeated = append(d.repeated, m)
			continue
		}
		d.top[m.key] = m.value
	}
}

// empty reports whether the document holds nothing at all, so a file that
// nodecreds created can go: an empty {"auths":{}} in the kubelet's folder
// would hide $HOME/.docker/config.json from it.
func (d *document) empty() bool {
	if len(d.auths) > 0 || len(d.repeated) > 0 {
		return false
	}
	for k := range d.top {
		if k != "auths" {
			return false
		}
	}
	return true
}

// field is one top-level field as encode writes it: its members (one, or
// the repeated ones of one field in file order) under the key it sorts by.
type field struct {
	key     string
	members []member
}

// fields returns the top-level fields other than auths, sorted by key; the
// repeated members of one field sort by the smallest of their keys.
func (d *document) fields() []field {
	out := make([]field, 0, len(d.top))
	for k, v := range d.top {
		if k != "auths" {
			out = append(out, field{key: k, members: []member{{key: k, value: v}}})
		}
	}
	groups := map[string]int{} // folded key → index in out
	for _, m := range d.repeated {
		f := jsonwalk.Fold(m.key)
		i, ok := groups[f]
		if !ok {
			i = len(out)
			groups[f] = i
			out = append(out, field{key: m.key})
		}
		out[i].key = min(out[i].key, m.key)
		out[i].members = append(out[i].members, m)
	}
	slices.SortFunc(out, func(a, b field) int { return strings.Compare(a.key, b.key) })
	return out
}

// encode writes the document the way the docker CLI does (tab-indented,
// keys sorted), in one pass: each value is indented where it lands instead
// of marshalling the entries, then the whole, then indenting that. Its size
// is counted first, so the file is built in one allocation of exactly its
// size, and a document that would be more than hostfs.MaxFileSize (deeply
// nested values grow by a tab per level on every line: 20 KB of brackets
// indent to some 100 MB), or hold more than MaxEntries entries and fields,
// is refused without being built.
func (d *document) encode() ([]byte, error) {
	size, err := d.encodedSize()
	if err != nil {
		return nil, err
	}
	return d.appendEncoded(make([]byte, 0, size), nil), nil
}

// encodedDigest is fileDigest of what encode writes, hashed as it is
// encoded: a few KiB at a time rather than the whole file in memory.
func (d *document) encodedDigest() (string, error) {
	if _, err := d.encodedSize(); err != nil {
		return "", err
	}
	h := sha256.New()
	flush := func(b []byte) []byte {
		h.Write(b)
		return b[:0]
	}
	flush(d.appendEncoded(make([]byte, 0, 64<<10), flush))
	return hex.EncodeToString(h.Sum(nil)[:16]), nil
}

// fileDigest is 128 bits of the SHA-256 of a whole file: it tells the file
// nodecreds wrote from any other (State.Writing).
func fileDigest(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:16])
}

// appendEncoded appends the document as encode writes it to buf; with
// flush, buf is handed to it (and replaced by what it returns) whenever it
// holds 32 KiB or more.
func (d *document) appendEncoded(buf []byte, flush func([]byte) []byte) []byte {
	spill := func() {
		if flush != nil && len(buf) >= 32<<10 {
			buf = flush(buf)
		}
	}
	fields := d.fields()
	_, hasAuths := d.top["auths"]
	hasAuths = hasAuths || len(d.auths) > 0
	buf = append(buf, '{')
	first := true
	sep := func() {
		if !first {
			buf = append(buf, ',')
		}
		first = false
		buf = append(buf, "\n\t"...)
	}
	writeAuths := func() {
		sep()
		buf = appendKey(buf, "auths")
		if len(d.auths) == 0 {
			buf = append(buf, "{}"...)
			return
		}
		buf = append(buf, '{')
		for j, ak := range d.order {
			spill()
			if j > 0 {
				buf = append(buf, ',')
			}
			buf = append(buf, "\n\t\t"...)
			buf = appendKey(buf, ak)
			buf = jsonwalk.AppendIndent(buf, bytes.TrimSpace(d.auths[ak]), "\t\t", "\t", hostfs.MaxFileSize)
		}
		buf = append(buf, "\n\t}"...)
	}
	for _, f := range fields {
		if hasAuths && f.key > "auths" {
			writeAuths()
			hasAuths = false
		}
		for _, m := range f.members {
			spill()
			sep()
			buf = appendKey(buf, m.key)
			buf = jsonwalk.AppendIndent(buf, bytes.TrimSpace(m.value), "\t", "\t", hostfs.MaxFileSize)
		}
	}
	if hasAuths {
		writeAuths()
	}
	if !first {
		buf = append(buf, '\n')
	}
	return append(buf, "}\n"...)
}

// encodedSize is the size of the file encode writes, counted without
// building it; a document over hostfs.MaxFileSize, or over MaxEntries
// entries and fields, is an error. It sets d.order, the order encode writes
// the entries in.
func (d *document) encodedSize() (int, error) {
	if d.size > 0 {
		return d.size, nil
	}
	if n := len(d.auths) + len(d.top) + len(d.repeated); n > MaxEntries {
		return 0, fmt.Errorf("would hold %d entries and fields, more than the %d nodecreds writes to one file; nothing written (remove entries from the file or the sources): %w", n, MaxEntries, ErrTooManyEntries)
	}
	// The file written is in this order: remembered for when it is read
	// back.
	if len(d.auths) > 0 {
		d.order = d.sortedKeys()
	}
	size, members := len("{}\n"), 0
	member := func(key string, value int) {
		if members > 0 {
			size++ // ,
		}
		members++
		size += len("\n\t") + quotedLen(key) + len(": ") + value
	}
	for _, f := range d.fields() {
		for _, m := range f.members {
			member(m.key, jsonwalk.IndentSize(bytes.TrimSpace(m.value), len("\t"), len("\t"), hostfs.MaxFileSize))
		}
	}
	if _, ok := d.top["auths"]; ok || len(d.auths) > 0 {
		value := len("{}")
		if len(d.auths) > 0 {
			value = len("{\n\t}") + len(d.order) - 1 // the commas
			for _, k := range d.order {
				value += len("\n\t\t") + quotedLen(k) + len(": ") + jsonwalk.IndentSize(bytes.TrimSpace(d.auths[k]), len("\t\t"), len("\t"), hostfs.MaxFileSize)
			}
		}
		member("auths", value)
	}
	if members > 0 {
		size++ // the newline before the closing brace
	}
	if size > hostfs.MaxFileSize {
		return 0, fmt.Errorf("would be %d bytes once indented, over the %d MiB limit; nothing written (remove entries from the file or the sources): %w",
			size, hostfs.MaxFileSize>>20, hostfs.ErrTooLarge)
	}
	d.size = size
	return size, nil
}

// quotedLen is len(appendJSONString(nil, s)).
func quotedLen(s string) int {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return len(appendJSONString(nil, s))
		}
	}
	return len(s) + 2
}

// sortedKeys returns the entries' keys sorted, with the order of the file
// parsed as the hint.
func (d *document) sortedKeys() []string { return sortedWithHint(d.auths, d.order) }

// sortedWithHint returns m's keys sorted. When hint holds every key of m
// in ascending order (the keys of a file nodecreds wrote, the last state
// saved) they are taken from it, sparing the sort of thousands of keys.
func sortedWithHint[V any](m map[string]V, hint []string) []string {
	if len(hint) == len(m) && sortedKeysOf(m, hint) {
		return hint // never modified: shared
	}
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
	keys = keys[:0]
	if cap(keys) < len(m) {
		keys = make([]string, 0, len(m))
	}
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// sortedKeysOf reports whether keys, ascending, are all keys of m.
func sortedKeysOf[V any](m map[string]V, keys []string) bool {
	for i, k := range keys {
		if _, ok := m[k]; !ok || i > 0 && keys[i-1] >= k {
			return false
		}
	}
	return true
}

// appendKey appends "key": as encoding/json quotes it.
func appendKey(buf []byte, k string) []byte {
	return append(appendJSONString(buf, k), ':', ' ')
}

// equal compares two documents by JSON value, so a file that only differs
// in formatting is not rewritten.
func (d *document) equal(o *document) bool {
	if len(d.auths) != len(o.auths) || len(d.repeated) != len(o.repeated) {
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
		if !ok || !bytes.Equal(jsonwalk.Compact(v), jsonwalk.Compact(w)) {
			return false
		}
	}
	for k := range o.top {
		if _, ok := d.top[k]; !ok && k != "auths" {
			return false
		}
	}
	if len(d.repeated) > 0 {
		a, b := d.fields(), o.fields()
		if len(a) != len(b) {
			return false
		}
		for i := range a {
			if len(a[i].members) != len(b[i].members) {
				return false
			}
			for j, m := range a[i].members {
				n := b[i].members[j]
				if m.key != n.key || !bytes.Equal(jsonwalk.Compact(m.value), jsonwalk.Compact(n.value)) {
					return false
				}
			}
		}
	}
	return true
}

func (d *document) clone() *document { return d.cloneWithRoom(0) }

// cloneWithRoom is clone with room for extra more entries: a map that
// grows past its size holds its old and new tables at once, which for a
// merge adding thousands of entries to thousands was a third of a sync's
// peak memory.
func (d *document) cloneWithRoom(extra int) *document {
	auths := make(map[string]json.RawMessage, len(d.auths)+extra)
	maps.Copy(auths, d.auths)
	return &document{top: maps.Clone(d.top), repeated: slices.Clip(d.repeated), auths: auths, digests: d.digests, order: d.order}
}

// sameJSON reports whether two raw values are the same JSON value. Most
// comparisons differ at most in white space, which compacting settles
// without decoding; only the rest pay for a canonical form.
func sameJSON(a, b json.RawMessage) bool {
	return bytes.Equal(a, b) || bytes.Equal(jsonwalk.Compact(a), jsonwalk.Compact(b)) || fingerprint(a) == fingerprint(b)
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
		c = cachedDigest{raw: raw, digest: entryDigest(jsonwalk.Compact(raw))}
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

// maxCanonical is the largest entry fingerprint decodes to its canonical
// form.
const maxCanonical = 64 << 10

// fingerprint is a digest of an entry's JSON value (keys sorted), so that
// reformatting by another tool does not make our own entry look foreign.
// The state file keeps fingerprints, never the entries we wrote.
//
// A value over maxCanonical is hashed as compacted instead: nodecreds never
// writes one that large in another form, and decoding a foreign one into
// map[string]any (a 4 MiB file of nested brackets) would cost some ten
// times its size.
func fingerprint(raw json.RawMessage) string {
	if len(raw) > maxCanonical {
		return entryDigest(jsonwalk.Compact(raw))
	}
	var v any
	canon := []byte(raw)
	if err := json.Unmarshal(raw, &v); err == nil {
		if b, err := json.Marshal(v); err == nil {
			canon = b
		}
	}
	return entryDigest(canon)
}

// repoint makes every value of doc a slice of data, the file encode made
// of doc (members in the order encode writes them), so that doc no longer
// holds on to the files it was merged from. Keys already in doc's maps are
// assigned again, so nothing is allocated. It reports false, and changes
// nothing, when data is not doc's encoding.
func repoint(doc *document, data []byte) bool {
	if !walkEncoding(doc, data, false) {
		return false
	}
	doc.repeated = slices.Clone(doc.repeated) // a clone's is its original's
	return walkEncoding(doc, data, true)
}

// walkEncoding walks data as encode wrote doc, checking that each member is
// where doc has it and, with set, pointing doc's value at it.
func walkEncoding(doc *document, data []byte, set bool) bool {
	start := jsonwalk.SkipSpace(data, 0)
	if start == len(data) {
		return doc.empty()
	}
	if data[start] != '{' {
		return false
	}
	fields := doc.fields()
	f, j := 0, 0 // the field, and its member, the next top-level member is
	ok := true
	jsonwalk.EachMember(data, start, func(key, value []byte) {
		if !ok {
			return
		}
		if string(key) == `"auths"` {
			ok = walkAuths(doc, value, set)
			return
		}
		for f < len(fields) && j == len(fields[f].members) {
			f, j = f+1, 0
		}
		if f == len(fields) || !sameKey(key, fields[f].members[j].key) {
			ok = false
			return
		}
		m := fields[f].members[j]
		j++
		if !set {
			return
		}
		if v, single := doc.top[m.key]; single && sameSlice(v, m.value) {
			doc.top[m.key] = value
		} else {
			doc.repointRepeated(m, value)
		}
	})
	return ok
}

// walkAuths checks that auths holds doc's entries in doc.order and, with
// set, points them at it.
func walkAuths(doc *document, auths []byte, set bool) bool {
	i, ok := 0, true
	jsonwalk.EachMember(auths, 0, func(key, value []byte) {
		if !ok || i >= len(doc.order) || !sameKey(key, doc.order[i]) {
			ok = false
			return
		}
		k := doc.order[i]
		i++
		if !set {
			return
		}
		if c, cached := doc.digests[k]; cached && sameSlice(c.raw, doc.auths[k]) {
			// The digest is of the compact form, which indenting keeps.
			doc.digests[k] = cachedDigest{raw: value, digest: c.digest}
		}
		doc.auths[k] = value
	})
	return ok && i == len(doc.auths)
}

func (d *document) repointRepeated(m member, value []byte) {
	for i := range d.repeated {
		if d.repeated[i].key == m.key && sameSlice(d.repeated[i].value, m.value) {
			d.repeated[i].value = value
			return
		}
	}
}

// sameKey reports whether the quoted key q is k.
func sameKey(q []byte, k string) bool {
	if len(q) == len(k)+2 && string(q[1:len(q)-1]) == k {
		return true
	}
	return jsonwalk.Unquote(q) == k
}
