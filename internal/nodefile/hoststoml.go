package nodefile

import (
	"context"
	"maps"
	"slices"

	"github.com/nodecreds/nodecreds/internal/hostfs"
	"github.com/nodecreds/nodecreds/internal/hoststoml"
)

// HostsTOMLRecords is the part of the state that records what nodecreds
// changed in containerd's hosts.toml files, keyed by node path. It lives in
// the same state file as the targets' records, so one lock keeps the agent
// and `nodecreds cleanup` from interleaving on either.
type HostsTOMLRecords struct {
	st    *State
	dir   *hostfs.Dir
	memo  *memory
	dirty bool
}

// Paths lists the node paths of the files with a record, sorted.
func (r *HostsTOMLRecords) Paths() []string { return slices.Sorted(maps.Keys(r.st.HostsTOML)) }

// Get returns the record of the file at path.
func (r *HostsTOMLRecords) Get(path string) (hoststoml.Record, bool) {
	rec, ok := r.st.HostsTOML[path]
	return rec, ok
}

// Set changes path's record in memory; a record of nothing is dropped.
func (r *HostsTOMLRecords) Set(path string, rec hoststoml.Record) {
	if len(rec.Changes) == 0 {
		if _, ok := r.st.HostsTOML[path]; ok {
			delete(r.st.HostsTOML, path)
			r.dirty = true
		}
		return
	}
	if r.st.HostsTOML == nil {
		r.st.HostsTOML = map[string]hoststoml.Record{}
	}
	r.st.HostsTOML[path] = rec
	r.dirty = true
}

// Save writes the state if a record changed. A file's record must be saved
// before the file is written, so that a crash between the two still knows
// what was there.
func (r *HostsTOMLRecords) Save() error {
	if !r.dirty {
		return nil
	}
	if err := saveState(r.dir, r.st, r.memo); err != nil {
		return err
	}
	r.dirty = false
	return nil
}

// WithHostsTOML runs f with the host root and the hosts.toml records,
// holding the engine and the state lock; it saves what f left unsaved.
func (e *Engine) WithHostsTOML(ctx context.Context, f func(root *hostfs.Root, recs *HostsTOMLRecords) error) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	root, sd, done, err := e.open()
	if err != nil {
		return err
	}
	defer done()
	unlock, err := lock(ctx, sd)
	if err != nil {
		return err
	}
	defer unlock()
	st, err := loadState(sd, &e.memo)
	if err != nil {
		return err
	}
	recs := &HostsTOMLRecords{st: st, dir: sd, memo: &e.memo}
	ferr := f(root, recs)
	if err := recs.Save(); err != nil && ferr == nil {
		ferr = err
	}
	return ferr
}
