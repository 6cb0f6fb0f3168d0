package nodefile

import (
	"bytes"
	"maps"

	"github.com/nodecreds/nodecreds/internal/dockercfg"
	"github.com/nodecreds/nodecreds/internal/nodefile/memo"
)

// memory is what the engine remembers from one sync to the next: the
// last content it read or wrote of each target and of the state file, with
// what it parsed from it (memo.Cache, by SHA-256), and what it prepared of
// the desired items. A running agent reads back, on its next sync, exactly
// what it wrote on the last one; for files of thousands of entries parsing
// and hashing them again is most of a sync.
type memory struct {
	docs  memo.Cache[memoDoc] // by target host path
	state memo.Cache[*State]  // under stateFileName
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
func (m *memory) wanted(r dockercfg.Reader, desired dockercfg.Set) *wanted {
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

// memoDoc is a target's content and the document parsed from it.
type memoDoc struct {
	data []byte    // the content; doc's values are slices of it
	doc  *document // never modified: merge and carry work on clones
}

// parse returns the document data holds for the target at path, as
// parseDocument does.
func (m *memory) parse(path string, data []byte) (*document, error) {
	if d, ok := m.docs.Get(path, data); ok {
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
func (m *memory) same(path string, data []byte) []byte {
	if d, ok := m.docs.Last(path); ok && bytes.Equal(d.data, data) {
		return d.data
	}
	return data
}

// remember records that the target at path holds data, which parses to doc.
// A merge's doc, whose values are slices of the file it merged into, is
// pointed at data instead (data is what encode made of it), so that the
// file read before can go: the remembered document holds the one copy of
// the file.
func (m *memory) remember(path string, data []byte, doc *document) {
	if !repoint(doc, data) {
		m.forget(path)
		return
	}
	m.keep(path, data, doc)
}

// keep records that the target at path holds data, which parses to doc,
// whose values are slices of data.
func (m *memory) keep(path string, data []byte, doc *document) {
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
	m.docs.Put(path, data, memoDoc{data: data, doc: doc})
}

func (m *memory) forget(path string) { m.docs.Forget(path) }

// loadedState returns a copy of the remembered state if data is the state
// file it was saved as.
func (m *memory) loadedState(data []byte) *State {
	st, ok := m.state.Get(stateFileName, data)
	if !ok {
		return nil
	}
	return st.clone()
}

// savedState records the state file's content and the state it encodes.
func (m *memory) savedState(data []byte, s *State) {
	m.state.Put(stateFileName, data, s.clone())
}

func (m *memory) forgetState() { m.state.Forget(stateFileName) }

// clone copies the state's table of targets; the records themselves are
// replaced, never modified, once in it.
func (s *State) clone() *State {
	return &State{Version: s.Version, Targets: maps.Clone(s.Targets), HostsTOML: maps.Clone(s.HostsTOML)}
}
