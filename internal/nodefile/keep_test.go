package nodefile

import (
	"encoding/json"
	"errors"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nodecreds/nodecreds/internal/dockercfg"
	"github.com/nodecreds/nodecreds/internal/testsupport"
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

// TestKeepThroughTheEngine: on real files, an entry held back stays
// nodecreds' own (the record unchanged), in both readers' files and under
// its old spelling; a later sync without the hold replaces it; cleanup
// removes it and restores the entry it displaced; the rejections file
// round-trips and goes when empty.
// TestNewEntriesWaitWithTheirSource: a rotation that also adds entries
// (r.io/team beside r.io: another registry to the kubelet) writes none of
// them while its source is held whole for a login, whatever the keys'
// order: the file keeps the previous revision alone. Found by the real
// node's rollout test, which read the kubelet file half old, half new for
// the length of a login. A source with nothing in the file yet, and one
// held for one rejected registry only, are written as before.
func TestNewEntriesWaitWithTheirSource(t *testing.T) {
	old := entryJSON(t, "u", "old")
	src := func(it dockercfg.Item) dockercfg.Item { it.Source = "ns/a"; return it }
	desired := dockercfg.Set{src(item("https://r.io/z", "u", "new")), src(item("r.io", "u", "new")), src(item("r.io/team", "u", "new"))}
	whole := map[KeepID]bool{{Source: "ns/a"}: true}
	for _, tc := range []struct {
		name string
		cur  map[string]json.RawMessage
		keep map[KeepID]bool
		want map[string]string // key → the value's password
	}{
		{name: "held whole, previous under r.io", cur: map[string]json.RawMessage{"r.io": old}, keep: whole, want: map[string]string{"r.io": "old"}},
		{name: "held whole, previous under r.io/team", cur: map[string]json.RawMessage{"r.io/team": old}, keep: whole, want: map[string]string{"r.io/team": "old"}},
		{name: "held whole, previous under a spelling no longer used", cur: map[string]json.RawMessage{"https://r.io/team": old}, keep: whole, want: map[string]string{"https://r.io/team": "old"}},
		{name: "held whole, nothing of it in the file", cur: map[string]json.RawMessage{}, keep: whole, want: map[string]string{"r.io": "new", "r.io/team": "new", "https://r.io/z": "new"}},
		{name: "one registry rejected: the others go ahead", cur: map[string]json.RawMessage{"r.io": old}, keep: map[KeepID]bool{{Source: "ns/a", Registry: "r.io"}: true},
			want: map[string]string{"r.io": "old", "r.io/team": "new", "https://r.io/z": "new"}},
		{name: "released", cur: map[string]json.RawMessage{"r.io": old}, want: map[string]string{"r.io": "new", "r.io/team": "new", "https://r.io/z": "new"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cur := &document{top: map[string]json.RawMessage{}, auths: map[string]json.RawMessage{}}
			owned := map[string]string{}
			for k, v := range tc.cur {
				cur.auths[k], owned[k] = v, fingerprint(v)
			}
			m := merge(cur, newWanted(desired, nil), pruneRule{on: true, now: 1, keep: tc.keep}, TargetState{Owned: owned, From: map[string]string{"r.io": "ns/a", "r.io/team": "ns/a", "https://r.io/team": "ns/a"}})
			got := map[string]string{}
			for k, v := range m.doc.auths {
				for _, pw := range []string{"old", "new"} {
					if fingerprint(v) == fingerprint(entryJSON(t, "u", pw)) {
						got[k] = pw
					}
				}
			}
			if !maps.Equal(got, tc.want) {
				t.Errorf("the file holds %v, want %v", got, tc.want)
			}
		})
	}
}

func TestKeepThroughTheEngine(t *testing.T) {
	e, root := newEngine(t)
	ctx := t.Context()
	kubelet := filepath.Join(root, kubeletFile)
	testsupport.WriteFile(t, kubelet, `{"auths":{"r.io":{"auth":"`+testsupport.B64("admin:theirs")+`"}}}`, 0o600)
	targets := []string{kubeletFile, dockerFile}
	sync := func(key, pw string, keep bool) []Result {
		t.Helper()
		d := Desired{Sources: []dockercfg.NamedSet{{Name: "ns/a", Set: dockercfg.Set{{Key: key, Entry: dockercfg.Entry{Username: "u", Password: pw}}}}}, Prune: true}
		if keep {
			d.Keep = map[KeepID]bool{{Source: "ns/a", Registry: "r.io"}: true}
		}
		res, err := e.Sync(ctx, targets, d)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range res {
			if r.Err != nil {
				t.Fatal(r.Err)
			}
		}
		return res
	}
	sync("r.io", "pw-1", false)
	res := sync("https://r.io", "pw-2", true)
	for _, r := range res {
		if !slices.Equal(r.Kept, []string{"r.io"}) || r.Changed {
			t.Errorf("%s: kept %v, changed %v; want r.io kept, nothing written", r.Target, r.Kept, r.Changed)
		}
	}
	if got := authOf(t, kubelet, "r.io"); got != testsupport.B64("u:pw-1") {
		t.Fatalf("the held entry changed: %q", got)
	}
	sync("https://r.io", "pw-2", false)
	if authOf(t, kubelet, "r.io") != "" || authOf(t, kubelet, "https://r.io") != testsupport.B64("u:pw-2") {
		t.Fatal("without the hold the new spelling and value did not replace the old")
	}
	if _, err := e.Cleanup(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if authOf(t, kubelet, "https://r.io") != "" || authOf(t, kubelet, "r.io") != testsupport.B64("admin:theirs") {
		t.Fatal("cleanup did not remove ours and restore the displaced entry")
	}

	rs := []Rejection{{Host: "r.io", Digest: strings.Repeat("ab", 32), Status: 401, Reason: "UNAUTHORIZED"}}
	if err := e.SaveRejections(ctx, rs); err != nil {
		t.Fatal(err)
	}
	info, err := os.Stat(filepath.Join(root, stateDir, rejectionsFileName))
	if err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("rejections file: %v, mode %v", err, info)
	}
	got, err := e.LoadRejections(ctx)
	if err != nil || !slices.Equal(got, rs) {
		t.Fatalf("loaded %+v, %v; want %+v", got, err, rs)
	}
	if err := e.SaveRejections(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, stateDir, rejectionsFileName)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("an empty rejections file is kept: %v", err)
	}
}
