package nodefile

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"slices"

	"github.com/nodecreds/nodecreds/internal/hostfs"
)

const (
	stateFileName = "state.json"
	stateVersion  = 1
)

// State is nodecreds' record, per target, of what it owns. It is the only
// thing that lets a restarted agent or `nodecreds cleanup` tell our entries
// from everyone else's, so it is written before the target it describes.
type State struct {
	Version int                     `json:"version"`
	Targets map[string]*TargetState `json:"targets"`
}

// TargetState is the ownership record of one target file.
type TargetState struct {
	// Created is set when the file did not exist before nodecreds wrote it,
	// so cleanup may remove it once nobody else's data is in it.
	Created bool `json:"created,omitempty"`
	// Owned maps each key we wrote to the fingerprint of what we wrote, so
	// an entry someone else changed since is recognised as theirs.
	Owned fingerprints `json:"owned,omitempty"`
	// Pending holds fingerprints of a write in flight. It is recorded before
	// the target is replaced, so a crash between the two leaves a state that
	// still recognises whichever version is on disk.
	Pending fingerprints `json:"pending,omitempty"`
	// Displaced keeps foreign entries that a source overrides, verbatim, to
	// put back when the registry leaves the sources or on cleanup.
	Displaced map[string]json.RawMessage `json:"displaced,omitempty"`
}

// fingerprints maps keys to entry digests. It marshals itself:
// encoding/json sorts map keys through reflection, which for the thousands
// of keys of a big file cost more than the rest of the state write.
type fingerprints map[string]string

func (f fingerprints) MarshalJSON() ([]byte, error) {
	b := make([]byte, 0, len(f)*80+2)
	b = append(b, '{')
	for i, k := range slices.Sorted(maps.Keys(f)) {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, k)
		b = append(b, ':')
		b = appendJSONString(b, f[k])
	}
	return append(b, '}'), nil
}

// appendJSONString appends s quoted as encoding/json quotes it: plain
// ASCII as is, anything else through encoding/json itself.
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s) // a string cannot fail
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

func (t TargetState) isZero() bool {
	return !t.Created && len(t.Owned) == 0 && len(t.Pending) == 0 && len(t.Displaced) == 0
}

func (t TargetState) equal(o TargetState) bool {
	if t.Created != o.Created || !maps.Equal(t.Owned, o.Owned) || !maps.Equal(t.Pending, o.Pending) || len(t.Displaced) != len(o.Displaced) {
		return false
	}
	for k, v := range t.Displaced {
		w, ok := o.Displaced[k]
		if !ok || !sameJSON(v, w) {
			return false
		}
	}
	return true
}

// intent is the state to record before a write. onDisk is our entries in
// the file as it is now (key → the fingerprint that matched); next is the
// state after the write. Whichever of the two files a crash leaves on disk,
// every entry of ours in it is recognised, and nothing displaced is
// forgotten.
func intent(onDisk map[string]string, old, next TargetState) TargetState {
	out := TargetState{
		Created:   old.Created || next.Created,
		Owned:     maps.Clone(onDisk),
		Pending:   maps.Clone(next.Owned),
		Displaced: maps.Clone(old.Displaced),
	}
	if out.Owned == nil {
		out.Owned = map[string]string{}
	}
	if out.Displaced == nil {
		out.Displaced = map[string]json.RawMessage{}
	}
	for k, v := range next.Displaced {
		out.Displaced[k] = v
	}
	return out
}

// ownedIn returns the entries of doc that st recognises as ours, with the
// fingerprint that matched.
func ownedIn(doc *document, st TargetState) map[string]string {
	out := map[string]string{}
	for key := range doc.auths {
		switch {
		case doc.hasFingerprint(key, st.Owned[key]):
			out[key] = st.Owned[key]
		case doc.hasFingerprint(key, st.Pending[key]):
			out[key] = st.Pending[key]
		}
	}
	return out
}

// loadState reads the state file in the state folder d; a missing one is an
// empty state. The state folder is nodecreds' own: a symlink, FIFO or
// hard-linked file at the state's name is refused, never followed.
func loadState(d *hostfs.Dir) (*State, error) {
	s := &State{Version: stateVersion, Targets: map[string]*TargetState{}}
	path := d.Name(stateFileName)
	data, info, err := d.ReadFile(stateFileName, hostfs.MaxFileSize)
	if errors.Is(err, fs.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%w: reading %s: %w", ErrState, path, err)
	}
	if info.Nlink > 1 {
		return nil, fmt.Errorf("%w: %s has %d hard links; the state is nodecreds' own file: %s", ErrState, path, info.Nlink, stateAdvice)
	}
	if err := json.Unmarshal(data, s); err != nil {
		return nil, fmt.Errorf("%w: %s is not valid JSON (%v): %s", ErrState, path, jsonProblem(err), stateAdvice)
	}
	if s.Version != stateVersion {
		return nil, fmt.Errorf("%w: %s has version %d, this nodecreds reads version %d: run the nodecreds version that wrote it, or %s", ErrState, path, s.Version, stateVersion, stateAdvice)
	}
	if s.Targets == nil {
		s.Targets = map[string]*TargetState{}
	}
	return s, nil
}

// ErrState means nodecreds' state file cannot be used; nothing is written
// until it is fixed, as without it our entries cannot be told from others'.
var ErrState = errors.New("unusable nodecreds state")

const stateAdvice = "move it away to start afresh (entries nodecreds wrote before will then be treated as foreign, and displaced entries it kept will not be restored)"

// jsonProblem describes a JSON error by position only: the state holds
// displaced credentials, which must not reach a log.
func jsonProblem(err error) string {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Sprintf("syntax error at byte %d", se.Offset)
	}
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Sprintf("field %q has the wrong type", te.Field)
	}
	return "cannot decode"
}

// saveState writes the state atomically, 0600, in the state folder d, and
// syncs the folder so the rename survives a crash.
func saveState(d *hostfs.Dir, s *State) error {
	for k, t := range s.Targets {
		if t.isZero() {
			delete(s.Targets, k)
		}
	}
	if len(s.Targets) == 0 {
		if err := d.Remove(stateFileName); err != nil {
			return fmt.Errorf("removing state: %w", err)
		}
		return d.Sync()
	}
	data, err := json.Marshal(s)
	if err != nil {
		return fmt.Errorf("encoding state: %w", err)
	}
	if len(data) > hostfs.MaxFileSize {
		return fmt.Errorf("%w: %s would be %d bytes, over the %d MiB limit (too many displaced entries); nothing written: %w",
			ErrState, d.Name(stateFileName), len(data), hostfs.MaxFileSize>>20, hostfs.ErrTooLarge)
	}
	f, tmp, err := d.CreateTemp("."+stateFileName+".", 0o600)
	if err != nil {
		return fmt.Errorf("writing state: %w", err)
	}
	defer func() { _ = d.Remove(tmp) }()
	_, werr := f.Write(append(data, '\n'))
	if werr == nil {
		werr = f.Sync()
	}
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		return fmt.Errorf("writing state %s: %w", d.Name(stateFileName), werr)
	}
	if err := d.Rename(tmp, stateFileName); err != nil {
		return fmt.Errorf("writing state: %w", err)
	}
	return d.Sync()
}
