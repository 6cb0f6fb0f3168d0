package nodefile

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"slices"

	"github.com/nodecreds/nodecreds/internal/hostfs"
	"github.com/nodecreds/nodecreds/internal/hoststoml"
)

// hostsTOMLFileName is the file, next to the state file, that records what
// nodecreds changed in containerd's hosts.toml files. It is a file of its
// own so that a nodecreds that predates it, which rewrites state.json
// with only the fields it knows, cannot drop these records (and with them
// the only way to take our credentials out of those files again).
const hostsTOMLFileName = "hoststoml.json"

// hostsTOMLFile is the content of hostsTOMLFileName.
type hostsTOMLFile struct {
	Version int                         `json:"version"`
	Files   map[string]hoststoml.Record `json:"files"`
	// Modes are the permission bits of a file someone else made, from
	// before nodecreds first wrote it (at 0600): put back with its
	// content. An older nodecreds drops them; the file then comes back
	// 0600, as it did before they were kept.
	Modes map[string]fs.FileMode `json:"modes,omitempty"`
}

// HostsTOMLRecords records what nodecreds changed in containerd's
// hosts.toml files, keyed by node path. It is kept under the state lock, so
// the agent and `nodecreds cleanup` do not interleave on it.
type HostsTOMLRecords struct {
	files map[string]hoststoml.Record
	modes map[string]fs.FileMode // kept only with a record
	dir   *hostfs.Dir
	dirty bool
}

// KeepMode keeps, with path's record, the mode its file had before
// nodecreds first wrote it; a mode kept already stays (it is the first).
func (r *HostsTOMLRecords) KeepMode(path string, mode fs.FileMode) {
	if _, ok := r.modes[path]; ok {
		return
	}
	if r.modes == nil {
		r.modes = map[string]fs.FileMode{}
	}
	r.modes[path] = mode & fs.ModePerm
	r.dirty = true
}

// Mode returns the mode kept for path's file.
func (r *HostsTOMLRecords) Mode(path string) (fs.FileMode, bool) {
	m, ok := r.modes[path]
	return m, ok
}

// Paths lists the node paths of the files with a record, sorted.
func (r *HostsTOMLRecords) Paths() []string { return slices.Sorted(maps.Keys(r.files)) }

// Get returns the record of the file at path.
func (r *HostsTOMLRecords) Get(path string) (hoststoml.Record, bool) {
	rec, ok := r.files[path]
	return rec, ok
}

// Set changes path's record in memory; a record of nothing is dropped.
func (r *HostsTOMLRecords) Set(path string, rec hoststoml.Record) {
	if len(rec.Changes) == 0 {
		_, had := r.files[path]
		_, moded := r.modes[path]
		if had || moded {
			delete(r.files, path)
			delete(r.modes, path)
			r.dirty = true
		}
		return
	}
	if old, ok := r.files[path]; ok && equalRecords(old, rec) {
		return
	}
	r.files[path] = rec
	r.dirty = true
}

func equalRecords(a, b hoststoml.Record) bool {
	return a.Created == b.Created && a.Pending == b.Pending && slices.Equal(a.Changes, b.Changes)
}

// Save writes the records if one changed, atomically and 0600 as the
// state file. A file's record must be saved before the file is written,
// so that a crash between the two still knows what was there.
func (r *HostsTOMLRecords) Save() error {
	if !r.dirty {
		return nil
	}
	if err := saveHostsTOML(r.dir, r.files, r.modes); err != nil {
		return err
	}
	r.dirty = false
	return nil
}

func saveHostsTOML(d *hostfs.Dir, files map[string]hoststoml.Record, modes map[string]fs.FileMode) error {
	if len(files) == 0 {
		if err := d.Remove(hostsTOMLFileName); err != nil {
			return fmt.Errorf("removing hosts.toml records: %w", err)
		}
		return d.Sync()
	}
	data, err := json.Marshal(hostsTOMLFile{Version: stateVersion, Files: files, Modes: modes})
	if err != nil {
		return fmt.Errorf("encoding hosts.toml records: %w", err)
	}
	data = append(data, '\n')
	if err := d.WriteFile(hostsTOMLFileName, 0o600, func(f *os.File) error {
		_, err := f.Write(data)
		return err
	}); err != nil {
		return fmt.Errorf("writing hosts.toml records %s: %w", d.Name(hostsTOMLFileName), err)
	}
	return nil
}

func loadHostsTOML(d *hostfs.Dir) (map[string]hoststoml.Record, error) {
	f, err := loadHostsTOMLFile(d)
	return f.Files, err
}

func loadHostsTOMLFile(d *hostfs.Dir) (hostsTOMLFile, error) {
	files := map[string]hoststoml.Record{}
	path := d.Name(hostsTOMLFileName)
	data, err := readOwnFile(d, hostsTOMLFileName, "the records file")
	if errors.Is(err, fs.ErrNotExist) {
		return hostsTOMLFile{Files: files}, nil
	}
	if err != nil {
		return hostsTOMLFile{}, err
	}
	var f hostsTOMLFile
	if err := json.Unmarshal(data, &f); err != nil {
		return hostsTOMLFile{}, fmt.Errorf("%w: %s is not valid JSON (%v): %s", ErrState, path, jsonProblem(err), stateAdvice)
	}
	if !readsStateVersion(f.Version) {
		return hostsTOMLFile{}, versionRefusal(path, f.Version)
	}
	if f.Files == nil {
		f.Files = files
	}
	for p := range f.Modes {
		if _, ok := f.Files[p]; !ok {
			delete(f.Modes, p) // kept only with a record
		}
	}
	return f, nil
}

// WithHostsTOML runs f with the host root and the hosts.toml records,
// holding the engine and the state lock; it saves what f left unsaved.
// Records an earlier build kept in state.json move to their own file
// first (written before they leave state.json).
func (e *Engine) WithHostsTOML(ctx context.Context, f func(root *hostfs.Root, recs *HostsTOMLRecords) error) error {
	return e.withStateDir(ctx, func(root *hostfs.Root, sd *hostfs.Dir) error {
		kept, err := loadHostsTOMLFile(sd)
		if err != nil {
			return err
		}
		recs := &HostsTOMLRecords{files: kept.Files, modes: kept.Modes, dir: sd}
		if err := e.migrateHostsTOML(sd, recs); err != nil {
			return err
		}
		ferr := f(root, recs)
		if err := recs.Save(); err != nil && ferr == nil {
			ferr = err
		}
		e.noHostsTOML = ferr == nil && len(recs.files) == 0
		return ferr
	})
}

// HostsTOMLIdle reports whether the last WithHostsTOML (this process is the
// node's one agent, nodelock) left no record: a runtime sync with no header
// to write has then nothing to restore either, and needs neither the lock
// nor a read. False until a first look.
func (e *Engine) HostsTOMLIdle() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.noHostsTOML
}

// migrateHostsTOML moves the records found in state.json into recs' file.
func (e *Engine) migrateHostsTOML(sd *hostfs.Dir, recs *HostsTOMLRecords) error {
	st, err := loadState(sd, &e.memo)
	if err != nil {
		return err
	}
	if len(st.HostsTOML) == 0 {
		return nil
	}
	for p, rec := range st.HostsTOML {
		if _, ok := recs.files[p]; !ok {
			recs.Set(p, rec)
		}
	}
	if err := recs.Save(); err != nil {
		return err
	}
	st.HostsTOML = nil
	return saveState(sd, st, &e.memo)
}

// ReadHostsTOMLRecords reads the hosts.toml records in the state folder
// stateDir (a node path) for a report (`nodecreds check`), without the
// state lock and without writing: a missing folder or file is no records.
func ReadHostsTOMLRecords(root *hostfs.Root, stateDir string) (map[string]hoststoml.Record, error) {
	d, err := root.OpenDir(stateDir, false, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]hoststoml.Record{}, nil
	}
	if err != nil {
		return nil, err
	}
	defer d.Close()
	return loadHostsTOML(d)
}
