package nodefile

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"slices"
	"strconv"

	"github.com/nodecreds/nodecreds/internal/hostfs"
	"github.com/nodecreds/nodecreds/internal/jsonwalk"
)

// maxStateSize bounds the state file. It records, per target, every entry
// nodecreds owns (twice while a rotation of all of them is in flight, and
// the fingerprint written before), the entries it displaced and its corrupt
// copies: for the 10,000 entries nodecreds applies, some 1.5 MB a target.
// The release of 2026-11 reads a state of up to 4 MiB only.
const maxStateSize = 8 << 20

// The formats of the state folder's files (state.json, hoststoml.json,
// rejected.json), by the rule of docs/design.md ("State compatibility
// across releases"): a release reads the previous minor release's state
// and its own, and writes one the previous release reads. stateVersion is
// the version written; a change the previous release cannot read first
// ships in a release that reads it (stateVersion still the old one), and
// oldestStateVersion rises only once the release before writes newer.
const (
	stateFileName      = "state.json"
	stateVersion       = 1
	oldestStateVersion = 1
)

// readsStateVersion reports whether this nodecreds reads a state folder's
// file of version v.
func readsStateVersion(v int) bool { return oldestStateVersion <= v && v <= stateVersion }

// versionRefusal explains a state folder's file of a version this
// nodecreds does not read: which versions it reads, and the way out that
// the compatibility rule leaves (one minor release at a time).
func versionRefusal(path string, v int) error {
	reads := fmt.Sprintf("version %d", stateVersion)
	if oldestStateVersion != stateVersion {
		reads = fmt.Sprintf("versions %d to %d", oldestStateVersion, stateVersion)
	}
	way := "a newer nodecreds wrote it: roll back one minor release at a time (each release reads the state of the release after it), letting each sync once, or run the release that wrote it"
	if v < oldestStateVersion {
		way = "an older nodecreds wrote it: upgrade one minor release at a time (each release reads the state of the release before it), letting each sync once"
	}
	return fmt.Errorf("%w: %s has version %d and this nodecreds reads %s; %s; or %s", ErrState, path, v, reads, way, stateAdvice)
}

// keyStrings maps registry keys to strings (entry digests, source names).
// It has its own JSON encoding: encoding/json sorts map keys and decodes
// map entries through reflection, which for the thousands of keys of a big
// file cost more than the rest of a state write.
type keyStrings map[string]string

func (f keyStrings) MarshalJSON() ([]byte, error) { return f.appendJSON(nil, nil), nil }

// appendJSON appends f; hint, when not nil, is a sorted key list that may
// hold f's keys, and is set to f's.
func (f keyStrings) appendJSON(b []byte, hint *[]string) []byte {
	var keys []string
	if hint != nil {
		keys = sortedWithHint(f, *hint)
		*hint = keys
	} else {
		keys = slices.Sorted(maps.Keys(f))
	}
	b = slices.Grow(b, len(f)*80+2)
	b = append(b, '{')
	for i, k := range keys {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, k)
		b = append(b, ':')
		b = appendJSONString(b, f[k])
	}
	return append(b, '}')
}

// UnmarshalJSON reads what MarshalJSON writes. encoding/json has checked
// that data is valid JSON before it calls this.
func (f *keyStrings) UnmarshalJSON(data []byte) error {
	if data[0] == 'n' { // null
		return nil
	}
	if data[0] != '{' {
		return errors.New("state map: not an object")
	}
	m := keyStrings{}
	var err error
	jsonwalk.EachMember(data, 0, func(key, value []byte) {
		if value[0] != '"' {
			err = errors.New("state map: a value is not a string")
			return
		}
		m[jsonwalk.Unquote(key)] = jsonwalk.Unquote(value)
	})
	*f = m
	return err
}

// appendJSON writes the marks grouped by time, each time once: one sync
// stamps every entry it rotates, thousands at once.
func (s staleMarks) appendJSON(b []byte) []byte {
	byTime := map[int64]keyStrings{}
	for k, m := range s {
		if byTime[m.at] == nil {
			byTime[m.at] = keyStrings{}
		}
		byTime[m.at][k] = m.fp
	}
	b = append(b, '{')
	for i, at := range slices.Sorted(maps.Keys(byTime)) {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, strconv.FormatInt(at, 10))
		b = append(b, ':')
		b = byTime[at].appendJSON(b, nil)
	}
	return append(b, '}')
}

// decodeStale reads what appendJSON writes.
func decodeStale(data []byte) (staleMarks, error) {
	if data[0] == 'n' {
		return nil, nil
	}
	if data[0] != '{' {
		return nil, errors.New("stale: not an object")
	}
	out := staleMarks{}
	var err error
	jsonwalk.EachMember(data, 0, func(key, value []byte) {
		at, perr := strconv.ParseInt(jsonwalk.Unquote(key), 10, 64)
		var fps keyStrings
		if perr == nil && value[0] != '{' {
			perr = errors.New("not an object")
		}
		if perr == nil {
			perr = fps.UnmarshalJSON(value)
		}
		if perr != nil {
			err = errors.New("stale: not a map of times to fingerprints")
			return
		}
		for k, fp := range fps {
			out[k] = staleMark{fp: fp, at: at}
		}
	})
	return out, err
}

// encodeState writes the state as json.Marshal would, without its
// reflection and the re-validation of every MarshalJSON result. hint, if
// not nil, carries sorted fingerprint keys from one map to the next: the
// maps of one state, and of the state saved before, mostly hold the same.
func encodeState(s *State, hint *[]string) ([]byte, error) {
	b := fmt.Appendf(nil, `{"version":%d,"targets":{`, s.Version)
	for i, k := range sortedKeys(s.Targets) {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, k)
		b = append(b, ':')
		t := s.Targets[k]
		if t == nil {
			b = append(b, "null"...)
			continue
		}
		var err error
		if b, err = appendTarget(b, t, hint); err != nil {
			return nil, err
		}
	}
	b = append(b, '}')
	if len(s.HostsTOML) > 0 {
		// Few files, each a handful of changes: encoding/json will do.
		h, err := json.Marshal(s.HostsTOML)
		if err != nil {
			return nil, err
		}
		b = append(b, `,"hostsToml":`...)
		b = append(b, h...)
	}
	return append(b, '}'), nil
}

// appendTarget appends one target's record as encodeState writes it.
func appendTarget(b []byte, t *TargetState, hint *[]string) ([]byte, error) {
	b = append(b, '{')
	sep := func(name string) {
		if b[len(b)-1] != '{' {
			b = append(b, ',')
		}
		b = append(b, name...)
	}
	if t.Created {
		sep(`"created":true`)
	}
	if len(t.Owned) > 0 {
		sep(`"owned":`)
		b = t.Owned.appendJSON(b, hint)
	}
	if len(t.Pending) > 0 {
		sep(`"pending":`)
		b = t.Pending.appendJSON(b, nil)
	}
	if len(t.From) > 0 {
		// One source gives most entries: it is written once, and only
		// the entries from another (or from none known, "") by key;
		// thousands of entries would otherwise repeat its name.
		all, rest := t.fromParts()
		sep(`"fromAll":`)
		b = appendJSONString(b, all)
		if len(rest) > 0 {
			sep(`"from":`)
			b = rest.appendJSON(b, nil)
		}
	}
	if len(t.Copies) > 0 {
		sep(`"copies":`)
		c, err := json.Marshal(t.Copies)
		if err != nil {
			return nil, err
		}
		b = append(b, c...)
	}
	if t.Writing != "" {
		sep(`"writing":`)
		b = appendJSONString(b, t.Writing)
	}
	if t.OnRead {
		sep(`"onRead":true`)
	}
	if len(t.Stale) > 0 {
		sep(`"stale":`)
		b = t.Stale.appendJSON(b)
	}
	if len(t.Displaced) > 0 {
		sep(`"displaced":`)
		// Few, and kept verbatim: encoding/json compacts each.
		d, err := json.Marshal(t.Displaced)
		if err != nil {
			return nil, err
		}
		b = append(b, d...)
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

// readOwnFile reads one of nodecreds' own files in the state folder d
// (what names it in errors), refusing a hard-linked one; a missing one is
// fs.ErrNotExist, unwrapped.
func readOwnFile(d *hostfs.Dir, name, what string) ([]byte, error) {
	data, info, err := d.ReadFile(name, maxStateSize)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	if err != nil {
		return nil, fmt.Errorf("%w: reading %s: %w", ErrState, d.Name(name), err)
	}
	if info.Nlink > 1 {
		return nil, fmt.Errorf("%w: %s has %d hard links; %s is nodecreds' own file: %s", ErrState, d.Name(name), info.Nlink, what, stateAdvice)
	}
	return data, nil
}

// loadState reads the state file in the state folder d; a missing one is an
// empty state. The state folder is nodecreds' own: a symlink, FIFO or
// hard-linked file at the state's name is refused, never followed. With a
// memo, a state file as last saved is not decoded again.
func loadState(d *hostfs.Dir, m *memory) (*State, error) {
	s := &State{Version: stateVersion, Targets: map[string]*TargetState{}}
	path := d.Name(stateFileName)
	data, err := readOwnFile(d, stateFileName, "the state")
	if errors.Is(err, fs.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return nil, err
	}
	if m != nil {
		if st := m.loadedState(data); st != nil {
			return st, nil
		}
	}
	if err := decodeState(data, s); err != nil {
		return nil, fmt.Errorf("%w: %s is not valid JSON (%v): %s", ErrState, path, jsonProblem(err), stateAdvice)
	}
	if !readsStateVersion(s.Version) {
		return nil, versionRefusal(path, s.Version)
	}
	if s.Targets == nil {
		s.Targets = map[string]*TargetState{}
	}
	return s, nil
}

// decodeState reads what encodeState writes (field names exactly as it
// writes them; others are ignored). The state of a big file holds
// thousands of fingerprints, which encoding/json would scan three times.
func decodeState(data []byte, s *State) error {
	if !json.Valid(data) {
		return json.Unmarshal(data, new(any)) // the syntax error, by offset
	}
	i := jsonwalk.SkipSpace(data, 0)
	if data[i] != '{' {
		return &json.UnmarshalTypeError{Value: "non-object", Field: ""}
	}
	var err firstErr
	jsonwalk.EachMember(data, i, func(key, value []byte) {
		switch jsonwalk.Unquote(key) {
		case "version":
			err.keep(json.Unmarshal(value, &s.Version))
		case "targets":
			if value[0] == 'n' {
				return
			}
			if value[0] != '{' {
				err.keep(&json.UnmarshalTypeError{Value: "non-object", Field: "targets"})
				return
			}
			jsonwalk.EachMember(value, 0, func(key, value []byte) {
				t := &TargetState{}
				if value[0] != 'n' {
					err.keep(decodeTarget(value, t))
				}
				s.Targets[jsonwalk.Unquote(key)] = t
			})
		case "hostsToml":
			if value[0] != 'n' {
				err.keep(json.Unmarshal(value, &s.HostsTOML))
			}
		}
	})
	return err.err
}

// UnmarshalJSON reads a target's record as decodeState does.
func (t *TargetState) UnmarshalJSON(data []byte) error {
	*t = TargetState{}
	if data[0] == 'n' { // null
		return nil
	}
	return decodeTarget(data, t)
}

func decodeTarget(data []byte, t *TargetState) error {
	if data[0] != '{' {
		return &json.UnmarshalTypeError{Value: "non-object", Field: "targets"}
	}
	var err firstErr
	var fromAll string
	defer func() {
		// Every owned or pending entry not named in "from" came from
		// "fromAll"; one named with "" from no source known.
		if fromAll != "" {
			for _, owned := range []keyStrings{t.Owned, t.Pending} {
				for key := range owned {
					if _, named := t.From[key]; !named {
						t.setFrom(key, fromAll)
					}
				}
			}
		}
		for key, src := range t.From {
			if src == "" {
				delete(t.From, key)
			}
		}
	}()
	jsonwalk.EachMember(data, 0, func(key, value []byte) {
		switch k := jsonwalk.Unquote(key); k {
		case "created":
			err.keep(json.Unmarshal(value, &t.Created))
		case "owned", "pending", "from":
			f := &t.Owned
			switch k {
			case "pending":
				f = &t.Pending
			case "from":
				f = &t.From
			}
			if e := f.UnmarshalJSON(value); e != nil {
				err.keep(&json.UnmarshalTypeError{Value: "non-string", Field: k})
			}
		case "fromAll":
			err.keep(json.Unmarshal(value, &fromAll))
		case "displaced":
			err.keep(json.Unmarshal(value, &t.Displaced))
		case "copies":
			err.keep(json.Unmarshal(value, &t.Copies))
		case "writing":
			err.keep(json.Unmarshal(value, &t.Writing))
		case "onRead":
			err.keep(json.Unmarshal(value, &t.OnRead))
		case "stale":
			stale, e := decodeStale(value)
			if e != nil {
				e = &json.UnmarshalTypeError{Value: "non-object", Field: k}
			}
			t.Stale = stale
			err.keep(e)
		}
	})
	return err.err
}

// firstErr keeps the first error it is given.
type firstErr struct{ err error }

func (f *firstErr) keep(e error) {
	if f.err == nil {
		f.err = e
	}
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
// syncs the folder so the rename survives a crash. A memo is told what was
// saved, or forgets when the save may not have happened.
func saveState(d *hostfs.Dir, s *State, m *memory) (err error) {
	if m != nil {
		m.forgetState()
	}
	for k, t := range s.Targets {
		if t.isZero() {
			delete(s.Targets, k)
		}
	}
	// What is written is this release's format, whatever version was
	// read: a state kept at the version it was read with would carry a
	// newer format under an older number, which the release before
	// would take for its own.
	s.Version = stateVersion
	if len(s.Targets) == 0 && len(s.HostsTOML) == 0 {
		if err := d.Remove(stateFileName); err != nil {
			return fmt.Errorf("removing state: %w", err)
		}
		return d.Sync()
	}
	var hint *[]string
	if m != nil {
		hint = &m.sortHint
	}
	data, err := encodeState(s, hint)
	if err != nil {
		return fmt.Errorf("encoding state: %w", err)
	}
	if len(data) > maxStateSize {
		return fmt.Errorf("%w: %s would be %d bytes, over the %d MiB limit (it records every entry of every target, with the entries displaced; fewer entries or targets); nothing written: %w",
			ErrState, d.Name(stateFileName), len(data), maxStateSize>>20, hostfs.ErrTooLarge)
	}
	data = append(data, '\n')
	if err := d.WriteFile(stateFileName, 0o600, func(f *os.File) error {
		_, err := f.Write(data)
		return err
	}); err != nil {
		return fmt.Errorf("writing state %s: %w", d.Name(stateFileName), err)
	}
	if m != nil {
		m.savedState(data, s)
	}
	return nil
}
