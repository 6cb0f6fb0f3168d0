package nodefile

import (
	"bytes"
	"crypto/sha256"
	"maps"
	"slices"

	"github.com/nodecreds/nodecreds/internal/dockercfg"
	"github.com/nodecreds/nodecreds/internal/jsonwalk"
)

// memo remembers the last content the engine read or wrote of each target
// and of the state file, with what it parsed from it. A running agent reads
// back, on its next sync, exactly what it wrote on the last one; for files
// of thousands of entries parsing and hashing them again is most of a
// sync. Content is recognised by its SHA-256, never by time stamps or
// inode, so a file anyone else changed, even by a byte, is parsed afresh.
type memo struct {
	docs  map[string]memoDoc // by target host path
	state memoState
	// sortHint is the sorted keys of the last fingerprints saved.
	sortHint []string
	// items are the desired items of the last run, prepared, by reader and
	// key (a map keyed by the whole item cost a hundred bytes more per
	// entry).
	items map[dockercfg.Reader]map[string]*wantedItem
}

// wanted prepares desired, what the files of reader r get, reusing what
// the last run prepared for the same items (a rotation changes one entry of
// thousands).
func (m *memo) wanted(r dockercfg.Reader, desired dockercfg.Set) *wanted {
	if m.items == nil {
		m.items = map[dockercfg.Reader]map[string]*wantedItem{}
	}
	w := newWanted(desired, m.items[r])
	items := make(map[string]*wantedItem, len(w.items))
	for _, it := range w.items {
		items[it.Key] = it
	}
	m.items[r] = items
	return w
}

type memoDoc struct {
	sum  [sha256.Size]byte
	data []byte    // the content; doc's values are slices of it
	doc  *document // never modified: merge and carry work on clones
}

type memoState struct {
	sum [sha256.Size]byte
	st  *State // nil when nothing is remembered
}

// parse returns the document data holds for the target at path, as
// parseDocument does.
func (m *memo) parse(path string, data []byte) (*document, error) {
	sum := sha256.Sum256(data)
	if d, ok := m.docs[path]; ok && d.sum == sum {
		return d.doc, nil
	}
	doc, err := parseDocument(data)
	if err != nil {
		m.forget(path)
		return doc, err // a corrupt file may come with what the docker CLI read of it
	}
	m.keep(path, data, doc)
	return doc, nil
}

// same returns the remembered content of the target at path when data is
// byte for byte that content, and data otherwise: a sync that reads back
// what it wrote then holds one copy of the file, not two (a file can be
// 4 MiB).
func (m *memo) same(path string, data []byte) []byte {
	if d, ok := m.docs[path]; ok && bytes.Equal(d.data, data) {
		return d.data
	}
	return data
}

// remember records that the target at path holds data, which parses to doc.
// A merge's doc, whose values are slices of the file it merged into, is
// pointed at data instead (data is what encode made of it), so that the
// file read before can go: the remembered document holds the one copy of
// the file.
func (m *memo) remember(path string, data []byte, doc *document) {
	if !repoint(doc, data) {
		m.forget(path)
		return
	}
	m.keep(path, data, doc)
}

// keep records that the target at path holds data, which parses to doc,
// whose values are slices of data.
func (m *memo) keep(path string, data []byte, doc *document) {
	if m.docs == nil {
		m.docs = map[string]memoDoc{}
	}
	if len(doc.digests) > 2*len(doc.auths)+64 {
		// Digests of keys long gone: keep the ones still in use.
		kept := make(map[string]cachedDigest, len(doc.auths))
		for k, raw := range doc.auths {
			if c, ok := doc.digests[k]; ok && sameSlice(c.raw, raw) {
				kept[k] = c
			}
		}
		doc.digests = kept
	}
	m.docs[path] = memoDoc{sum: sha256.Sum256(data), data: data, doc: doc}
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

func (m *memo) forget(path string) { delete(m.docs, path) }

// loadedState returns a copy of the remembered state if data is the state
// file it was saved as.
func (m *memo) loadedState(data []byte) *State {
	if m.state.st == nil || m.state.sum != sha256.Sum256(data) {
		return nil
	}
	return m.state.st.clone()
}

// savedState records the state file's content and the state it encodes.
func (m *memo) savedState(data []byte, s *State) {
	m.state = memoState{sum: sha256.Sum256(data), st: s.clone()}
}

func (m *memo) forgetState() { m.state = memoState{} }

// clone copies the state's table of targets; the records themselves are
// replaced, never modified, once in it.
func (s *State) clone() *State {
	return &State{Version: s.Version, Targets: maps.Clone(s.Targets)}
}
