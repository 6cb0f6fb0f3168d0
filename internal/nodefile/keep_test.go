package nodefile

import (
	"encoding/json"
	"slices"
	"testing"

	"github.com/nodecreds/nodecreds/internal/dockercfg"
)

// TestMergeKeep: an entry held back for a login keeps nodecreds' previous
// value where the file has it, and only there; a foreign entry is never
// what is kept (it is displaced as always), and the record stays that of
// the value in the file, so a later sync replaces it.
func TestMergeKeep(t *testing.T) {
	old := entryJSON(t, "u", "old")
	foreign := json.RawMessage(`{"auth":"Zm9yZWlnbjpwdw==","email":"x@y"}`)
	held := map[KeepID]bool{{Source: "ns/a", Registry: "r.io"}: true}
	src := func(it dockercfg.Item, name string) dockercfg.Item { it.Source = name; return it }
	tests := []struct {
		name     string
		cur      map[string]json.RawMessage
		owned    map[string]string
		desired  dockercfg.Set
		keep     map[KeepID]bool
		want     json.RawMessage
		wantKept []string
		wantDisp bool
		// at is the key the value is under, when not the desired one (a
		// previous spelling kept): then the desired key is absent.
		at        string
		wantFresh bool
	}{
		{name: "ours stays while held", cur: map[string]json.RawMessage{"r.io": old}, owned: map[string]string{"r.io": fingerprint(old)},
			desired: dockercfg.Set{src(item("r.io", "u", "new"), "ns/a")}, keep: held, want: old, wantKept: []string{"r.io"}},
		{name: "another spelling of the registry is held too", cur: map[string]json.RawMessage{"https://r.io": old}, owned: map[string]string{"https://r.io": fingerprint(old)},
			desired: dockercfg.Set{src(item("https://r.io", "u", "new"), "ns/a")}, keep: held, want: old, wantKept: []string{"https://r.io"}},
		{name: "not held: replaced", cur: map[string]json.RawMessage{"r.io": old}, owned: map[string]string{"r.io": fingerprint(old)},
			desired: dockercfg.Set{src(item("r.io", "u", "new"), "ns/a")}, want: entryJSON(t, "u", "new")},
		{name: "held for another source: replaced", cur: map[string]json.RawMessage{"r.io": old}, owned: map[string]string{"r.io": fingerprint(old)},
			desired: dockercfg.Set{src(item("r.io", "u", "new"), "ns/b")}, keep: held, want: entryJSON(t, "u", "new")},
		{name: "nothing of ours: the new one is written", desired: dockercfg.Set{src(item("r.io", "u", "new"), "ns/a")}, keep: held, want: entryJSON(t, "u", "new"), wantFresh: true},
		{name: "respelled without the scheme: ours stays under its old key", cur: map[string]json.RawMessage{"https://r.io": old}, owned: map[string]string{"https://r.io": fingerprint(old)},
			desired: dockercfg.Set{src(item("r.io", "u", "new"), "ns/a")}, keep: held, want: old, at: "https://r.io", wantKept: []string{"https://r.io"}},
		{name: "respelled with a scheme and a slash: ours stays under its old key", cur: map[string]json.RawMessage{"r.io": old}, owned: map[string]string{"r.io": fingerprint(old)},
			desired: dockercfg.Set{src(item("https://r.io/", "u", "new"), "ns/a")}, keep: held, want: old, at: "r.io", wantKept: []string{"r.io"}},
		{name: "Docker Hub's alias: ours stays under its old key", cur: map[string]json.RawMessage{"https://index.docker.io/v1/": old}, owned: map[string]string{"https://index.docker.io/v1/": fingerprint(old)},
			desired: dockercfg.Set{src(item("docker.io", "u", "new"), "ns/a")}, keep: map[KeepID]bool{{Source: "ns/a", Registry: "docker.io"}: true}, want: old, at: "https://index.docker.io/v1/", wantKept: []string{"https://index.docker.io/v1/"}},
		{name: "respelled, not held: the new spelling replaces the old", cur: map[string]json.RawMessage{"https://r.io": old}, owned: map[string]string{"https://r.io": fingerprint(old)},
			desired: dockercfg.Set{src(item("r.io", "u", "new"), "ns/a")}, want: entryJSON(t, "u", "new")},
		{name: "a foreign entry is displaced, not kept", cur: map[string]json.RawMessage{"r.io": foreign},
			desired: dockercfg.Set{src(item("r.io", "u", "new"), "ns/a")}, keep: held, want: entryJSON(t, "u", "new"), wantDisp: true, wantFresh: true},
		{name: "already the new value: nothing to keep", cur: map[string]json.RawMessage{"r.io": entryJSON(t, "u", "new")}, owned: map[string]string{"r.io": fingerprint(entryJSON(t, "u", "new"))},
			desired: dockercfg.Set{src(item("r.io", "u", "new"), "ns/a")}, keep: held, want: entryJSON(t, "u", "new")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cur := &document{top: map[string]json.RawMessage{}, auths: map[string]json.RawMessage{}}
			for k, v := range tt.cur {
				cur.auths[k] = v
			}
			m := merge(cur, newWanted(tt.desired, nil), pruneRule{on: true, now: 1, keep: tt.keep}, TargetState{Owned: tt.owned})
			key := tt.desired[0].Key
			if tt.at != "" {
				if _, ok := m.doc.auths[key]; ok {
					t.Errorf("the new spelling %q was written while the old one is held", key)
				}
				key = tt.at
			}
			if got := m.doc.auths[key]; fingerprint(got) != fingerprint(tt.want) {
				t.Errorf("auths[%q] = %s, want %s", key, got, tt.want)
			}
			if len(m.doc.auths) != 1 {
				t.Errorf("the file holds %v, want one entry", sortedKeys(m.doc.auths))
			}
			if (len(m.fresh) > 0) != tt.wantFresh {
				t.Errorf("fresh = %v, want %v", m.fresh, tt.wantFresh)
			}
			if m.state.Owned[key] != fingerprint(m.doc.auths[key]) {
				t.Errorf("the record of %q is not the value in the file", key)
			}
			if !slices.Equal(m.kept, tt.wantKept) {
				t.Errorf("kept = %v, want %v", m.kept, tt.wantKept)
			}
			if _, disp := m.state.Displaced[key]; disp != tt.wantDisp {
				t.Errorf("displaced = %v, want %v", disp, tt.wantDisp)
			}
			if _, stale := m.state.Stale[key]; stale && tt.wantKept != nil {
				t.Errorf("a kept entry is marked stale")
			}
		})
	}
}
