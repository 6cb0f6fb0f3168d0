package nodefile

import (
	"maps"

	"github.com/nodecreds/nodecreds/internal/hostfs"
)

// stateStore holds the state of one run and saves it into its folder.
// Records change in memory; a target's record is written before that
// target is touched (durable), and whatever else changed is written with it
// or at the end of the run (flush). One run over several targets thus
// records every intent in one save and every final record in one more.
type stateStore struct {
	dir   *hostfs.Dir
	st    *State
	memo  *memory
	saved map[string]*TargetState // each target's record as last written
	dirty bool
}

func newStateStore(dir *hostfs.Dir, st *State, m *memory) *stateStore {
	return &stateStore{dir: dir, st: st, memo: m, saved: maps.Clone(st.Targets)}
}

// set changes a target's record in memory.
func (s *stateStore) set(target string, ts TargetState) {
	if cur := s.st.Targets[target]; cur != nil && cur.equal(ts) || cur == nil && ts.isZero() {
		return
	}
	cp := ts
	s.st.Targets[target] = &cp
	s.dirty = true
}

// durable writes the state unless target's record is on disk as it is in
// memory.
func (s *stateStore) durable(target string) error {
	if s.saved[target] == s.st.Targets[target] {
		return nil
	}
	return s.flush()
}

// flush writes the state if anything in it changed.
func (s *stateStore) flush() error {
	if !s.dirty {
		return nil
	}
	if err := saveState(s.dir, s.st, s.memo); err != nil {
		return err
	}
	s.saved, s.dirty = maps.Clone(s.st.Targets), false
	return nil
}

// targetRecord is one target's entry in the state.
type targetRecord struct {
	store  *stateStore
	target string
}

func (r targetRecord) current() TargetState {
	if ts := r.store.st.Targets[r.target]; ts != nil {
		return *ts
	}
	return TargetState{}
}

// set changes the record in memory; it is written with the next target
// touched or at the end of the run.
func (r targetRecord) set(ts TargetState) { r.store.set(r.target, ts) }

// commit sets the record and writes it before the target is touched.
func (r targetRecord) commit(ts TargetState) error {
	r.store.set(r.target, ts)
	return r.store.durable(r.target)
}
