package nodefile

import (
	"cmp"
	"encoding/json"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/nodecreds/nodecreds/internal/hoststoml"
	"github.com/nodecreds/nodecreds/internal/jsonwalk"
)

// State is nodecreds' record, per target, of what it owns. It is the only
// thing that lets a restarted agent or `nodecreds cleanup` tell our entries
// from everyone else's, so it is written before the target it describes.
type State struct {
	Version int                     `json:"version"`
	Targets map[string]*TargetState `json:"targets"`
	// HostsTOML is where a build before hoststoml.json kept the hosts.toml
	// records; read only to move them there (WithHostsTOML), since an
	// older nodecreds rewriting state.json drops a field it does not know.
	HostsTOML map[string]hoststoml.Record `json:"hostsToml,omitempty"`
}

// TargetState is the ownership record of one target file.
type TargetState struct {
	// Created is set when the file did not exist before nodecreds wrote it,
	// so cleanup may remove it once nobody else's data is in it.
	Created bool `json:"created,omitempty"`
	// Owned maps each key we wrote to the fingerprint of what we wrote, so
	// an entry someone else changed since is recognised as theirs.
	Owned keyStrings `json:"owned,omitempty"`
	// Pending holds keyStrings of a write in flight (where they differ
	// from Owned). It is recorded before the target is replaced, so a crash
	// between the two leaves a state that still recognises whichever version
	// is on disk.
	Pending keyStrings `json:"pending,omitempty"`
	// From names the source each owned entry came from, so that when one
	// source is unknown (invalid and never seen valid) only its entries
	// are held back and every other source's leave as they should. An
	// entry without one (written by an older nodecreds, which ignores this
	// field and drops it when it saves) may be any source's.
	From keyStrings `json:"from,omitempty"`
	// Copies names the corrupt copies nodecreds made of this target (file
	// names in its folder) while it held nodecreds' entries, each with the
	// sources those entries came from: a copy cannot be read to take them
	// out, so it goes when one of those sources stops applying to the node
	// (a pool move, a deleted Secret) and on cleanup.
	Copies map[string][]string `json:"copies,omitempty"`
	// Displaced keeps foreign entries that a source overrides, verbatim, to
	// put back when the registry leaves the sources or on cleanup.
	Displaced map[string]json.RawMessage `json:"displaced,omitempty"`
	// Stale holds, for entries nodecreds replaced (a rotation) or removed
	// (pruned) within staleWindow, the fingerprint of what it wrote
	// before, so that another writer saving that back (the docker CLI
	// saving the file it loaded) is recognised as nodecreds' own stale
	// entry, not adopted as its.
	Stale staleMarks `json:"-"`
	// Writing is fileDigest of the file a write in flight puts at the
	// target, recorded with its intent, and after a race, separated by a
	// space, of nodecreds' own file already there: after a crash, a target
	// that is exactly one of them is nodecreds' own write, which replaced
	// what another writer's files held next to it hold, so their values
	// are the newer ones.
	Writing string `json:"writing,omitempty"`
	// OnRead is set with Writing when the file written was built on the
	// file read at the target alone (nothing else merged into it: no held
	// file, no other writer's file seen in the sync), so that a file
	// another writer renamed over that one, and that the write held, was
	// written on it or on an older file — never on a file of ours — and
	// what it lacks of it is its writer's doing (see heldOverOurs).
	OnRead bool `json:"onRead,omitempty"`
}

// staleMark is a fingerprint of an entry nodecreds wrote that is no longer
// current, and when (Unix seconds) it stopped being so.
type staleMark struct {
	fp string
	at int64
}

// staleMarks are stale fingerprints by key.
type staleMarks map[string]staleMark

// fresh returns the marks still in staleWindow at now (all, for now 0).
func (s staleMarks) fresh(now int64) staleMarks {
	if now == 0 || len(s) == 0 {
		return s
	}
	out := make(staleMarks, len(s))
	for k, m := range s {
		if now-m.at < int64(staleWindow/time.Second) {
			out[k] = m
		}
	}
	return out
}

// bounded returns the n newest marks (nil for none).
func (s staleMarks) bounded(n int) staleMarks {
	if len(s) == 0 {
		return nil
	}
	if len(s) <= n {
		return s
	}
	keys := slices.SortedFunc(maps.Keys(s), func(a, b string) int {
		return cmp.Or(cmp.Compare(s[b].at, s[a].at), strings.Compare(a, b))
	})
	for _, k := range keys[n:] {
		delete(s, k)
	}
	return s
}

// fromParts splits From for the state file: the source most entries came
// from, and the owned or pending keys whose source is another one, or
// unknown ("").
func (t TargetState) fromParts() (string, keyStrings) {
	count := map[string]int{}
	for _, src := range t.From {
		count[src]++
	}
	all := ""
	for src, n := range count {
		if n > count[all] || n == count[all] && src < all {
			all = src
		}
	}
	rest := keyStrings{}
	for _, owned := range []keyStrings{t.Owned, t.Pending} {
		for key := range owned {
			if src := t.From[key]; src != all {
				rest[key] = src
			}
		}
	}
	return all, rest
}

// setFrom records that the owned entry key came from source src (nothing
// for a source without a name).
func (t *TargetState) setFrom(key, src string) {
	if src == "" {
		return
	}
	if t.From == nil {
		t.From = keyStrings{}
	}
	t.From[key] = src
}

// absorb returns t with o, the record of another name of the same file
// (two targets found to be one file), folded in: every entry either
// recognises as nodecreds' stays recognised, and entries o displaced
// that are nodecreds' own (one name's write "displaced" by the other's, as
// a release that did not see they were one file did) are dropped, as the
// state keeps no credential nodecreds wrote.
func (t TargetState) absorb(o TargetState) TargetState {
	out := TargetState{
		Created:   t.Created || o.Created,
		Owned:     maps.Clone(t.Owned),
		Pending:   maps.Clone(t.Pending),
		From:      maps.Clone(t.From),
		Copies:    maps.Clone(t.Copies),
		Displaced: maps.Clone(t.Displaced),
		Stale:     maps.Clone(t.Stale),
	}
	if out.Owned == nil {
		out.Owned = keyStrings{}
	}
	if out.Pending == nil {
		out.Pending = keyStrings{}
	}
	for _, fps := range []keyStrings{o.Owned, o.Pending} {
		for k, fp := range fps {
			switch {
			case out.Owned[k] == "":
				out.Owned[k] = fp
			case out.Owned[k] != fp && out.Pending[k] == "":
				out.Pending[k] = fp
			}
		}
	}
	for k, src := range o.From {
		if _, ok := out.From[k]; !ok {
			out.setFrom(k, src)
		}
	}
	for k, m := range o.Stale {
		if out.Stale == nil {
			out.Stale = staleMarks{}
		}
		if _, ok := out.Stale[k]; !ok {
			out.Stale[k] = m
		}
	}
	for name, srcs := range o.Copies {
		if out.Copies == nil {
			out.Copies = map[string][]string{}
		}
		if _, ok := out.Copies[name]; !ok {
			out.Copies[name] = srcs
		}
	}
	out.absorbDisplaced(o)
	return out
}

// absorbDisplaced adds the entries o displaced to t's, and drops every
// displaced entry that either record recognises as nodecreds' own.
func (t *TargetState) absorbDisplaced(o TargetState) {
	ours := func(k string, raw json.RawMessage) bool {
		for _, fp := range []string{t.Owned[k], t.Pending[k], t.Stale[k].fp, o.Owned[k], o.Pending[k]} {
			if fp != "" && (entryDigest(jsonwalk.Compact(raw)) == fp || fingerprint(raw) == fp) {
				return true
			}
		}
		return false
	}
	for k, raw := range o.Displaced {
		if _, ok := t.Displaced[k]; ok {
			continue
		}
		if t.Displaced == nil {
			t.Displaced = map[string]json.RawMessage{}
		}
		t.Displaced[k] = raw
	}
	for k, raw := range t.Displaced {
		if ours(k, raw) {
			delete(t.Displaced, k)
		}
	}
}

func (t TargetState) isZero() bool {
	return !t.Created && len(t.Owned) == 0 && len(t.Pending) == 0 && len(t.Displaced) == 0 && len(t.Copies) == 0 && len(t.Stale) == 0
}

func (t TargetState) equal(o TargetState) bool {
	if t.Created != o.Created || t.Writing != o.Writing || t.OnRead != o.OnRead || !maps.Equal(t.Owned, o.Owned) || !maps.Equal(t.Pending, o.Pending) || !maps.Equal(t.From, o.From) || len(t.Displaced) != len(o.Displaced) ||
		!maps.EqualFunc(t.Copies, o.Copies, slices.Equal) || !maps.Equal(t.Stale, o.Stale) {
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
//
// intent takes onDisk over (callers build it for the purpose).
func intent(onDisk map[string]string, old, next TargetState) TargetState {
	out := TargetState{
		Created:   old.Created || next.Created,
		Owned:     onDisk,
		Pending:   map[string]string{},
		From:      maps.Clone(old.From),
		Copies:    maps.Clone(old.Copies),
		Displaced: maps.Clone(old.Displaced),
	}
	for name, srcs := range next.Copies {
		if out.Copies == nil {
			out.Copies = map[string][]string{}
		}
		out.Copies[name] = srcs
	}
	for k, src := range next.From {
		out.setFrom(k, src)
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
	// An entry recognised by either fingerprint is ours: a pending one the
	// same as the one on disk says nothing more, and a rotation of one
	// entry of thousands then records (and holds) one pending fingerprint,
	// not all.
	for k, fp := range next.Owned {
		if out.Owned[k] != fp {
			out.Pending[k] = fp
		}
	}
	// The stale marks of before, but for the entries being rewritten:
	// what they had on disk is in Owned, and after the write their one
	// mark is that (next.Stale), so the state of a rotation of thousands
	// holds two fingerprints per entry at most, as it did without marks.
	for k, m := range old.Stale {
		if _, rewritten := out.Pending[k]; !rewritten {
			if out.Stale == nil {
				out.Stale = staleMarks{}
			}
			out.Stale[k] = m
		}
	}
	return out
}

// ownedIn returns the entries of doc that st recognises as ours, with the
// fingerprint that matched.
func ownedIn(doc *document, st TargetState) map[string]string {
	out := make(map[string]string, len(st.Owned))
	for key, fp := range st.Owned {
		if doc.hasFingerprint(key, fp) {
			out[key] = fp
		}
	}
	for key, fp := range st.Pending {
		if _, found := out[key]; !found && doc.hasFingerprint(key, fp) {
			out[key] = fp
		}
	}
	return out
}
