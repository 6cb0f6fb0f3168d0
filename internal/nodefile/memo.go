package nodefile

import (
	"crypto/sha256"
	"maps"

	"github.com/nodecreds/nodecreds/internal/dockercfg"
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
	// items are the desired items of the last run, prepared, by key (a map
	// keyed by the whole item cost a hundred bytes more per entry).
	items map[string]*wantedItem
}

// wanted prepares desired, reusing what the last run prepared for the same
// items (a rotation changes one entry of thousands).
func (m *memo) wanted(desired dockercfg.Set) *wanted {
	w := newWanted(desired, m.items)
	m.items = make(map[string]*wantedItem, len(w.items))
	for _, it := range w.items {
		m.items[it.Key] = it
	}
	return w
}

type memoDoc struct {
	sum [sha256.Size]byte
	doc *document // never modified: merge and carry work on clones
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
	m.remember(path, data, doc)
	return doc, nil
}

// remember records that the target at path holds data, which parses to doc.
func (m *memo) remember(path string, data []byte, doc *document) {
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
	m.docs[path] = memoDoc{sum: sha256.Sum256(data), doc: doc}
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
