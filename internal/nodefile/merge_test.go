package nodefile

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/nodecreds/nodecreds/internal/dockercfg"
	"github.com/nodecreds/nodecreds/internal/testsupport"
)

func entryJSON(t *testing.T, user, pass string) json.RawMessage {
	t.Helper()
	raw, err := json.Marshal(dockercfg.Entry{Username: user, Password: pass})
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func item(key, user, pass string) dockercfg.Item {
	return dockercfg.Item{Key: key, Entry: dockercfg.Entry{Username: user, Password: pass}}
}

func docOf(t *testing.T, s string) *document {
	t.Helper()
	d, err := parseDocument([]byte(s))
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestMerge(t *testing.T) {
	foreign := json.RawMessage(`{"auth":"Zm9yZWlnbjpwdw==","email":"x@y"}`)
	ours := entryJSON(t, "u", "old")
	oursFP := fingerprint(ours)

	tests := []struct {
		name      string
		cur       map[string]json.RawMessage
		state     TargetState
		desired   dockercfg.Set
		prune     bool
		wantAuths map[string]json.RawMessage
		wantOwned []string
		wantDisp  []string // keys in the new Displaced
		released  []string
		restored  []string
	}{
		{
			name:      "adds to an empty file",
			desired:   dockercfg.Set{item("r.io", "u", "p")},
			prune:     true,
			wantAuths: map[string]json.RawMessage{"r.io": entryJSON(t, "u", "p")},
			wantOwned: []string{"r.io"},
		},
		{
			name:      "keeps foreign entries for other registries",
			cur:       map[string]json.RawMessage{"other.io": foreign},
			desired:   dockercfg.Set{item("r.io", "u", "p")},
			prune:     true,
			wantAuths: map[string]json.RawMessage{"other.io": foreign, "r.io": entryJSON(t, "u", "p")},
			wantOwned: []string{"r.io"},
		},
		{
			// The kubelet matches hosts case-sensitively: R.TEST is another
			// registry, and a working r.test entry must stay.
			name:      "a key differing only in case does not displace",
			cur:       map[string]json.RawMessage{"r.test": foreign},
			desired:   dockercfg.Set{item("R.TEST/", "u", "p")},
			prune:     true,
			wantAuths: map[string]json.RawMessage{"r.test": foreign, "R.TEST/": entryJSON(t, "u", "p")},
			wantOwned: []string{"R.TEST/"},
		},
		{
			name:      "displaces a foreign entry for the same registry under another spelling",
			cur:       map[string]json.RawMessage{"https://index.docker.io/v1/": foreign},
			desired:   dockercfg.Set{item("docker.io", "u", "p")},
			prune:     true,
			wantAuths: map[string]json.RawMessage{"docker.io": entryJSON(t, "u", "p")},
			wantOwned: []string{"docker.io"},
			wantDisp:  []string{"https://index.docker.io/v1/"},
		},
		{
			name:      "rotates an entry it owns",
			cur:       map[string]json.RawMessage{"r.io": ours},
			state:     TargetState{Owned: map[string]string{"r.io": oursFP}},
			desired:   dockercfg.Set{item("r.io", "u", "new")},
			prune:     true,
			wantAuths: map[string]json.RawMessage{"r.io": entryJSON(t, "u", "new")},
			wantOwned: []string{"r.io"},
		},
		{
			name:      "prunes an entry that left the sources and restores what it displaced",
			cur:       map[string]json.RawMessage{"r.io": ours, "keep.io": foreign},
			state:     TargetState{Owned: map[string]string{"r.io": oursFP}, Displaced: map[string]json.RawMessage{"https://r.io": foreign}},
			prune:     true,
			wantAuths: map[string]json.RawMessage{"keep.io": foreign, "https://r.io": foreign},
			restored:  []string{"https://r.io"},
		},
		{
			name:      "without prune an entry that left the sources stays ours",
			cur:       map[string]json.RawMessage{"r.io": ours},
			state:     TargetState{Owned: map[string]string{"r.io": oursFP}, Displaced: map[string]json.RawMessage{"https://r.io/": foreign}},
			prune:     false,
			wantAuths: map[string]json.RawMessage{"r.io": ours},
			wantOwned: []string{"r.io"},
			wantDisp:  []string{"https://r.io/"},
		},
		{
			name:      "an entry of ours that someone changed is released, not pruned",
			cur:       map[string]json.RawMessage{"r.io": foreign},
			state:     TargetState{Owned: map[string]string{"r.io": oursFP}},
			prune:     true,
			wantAuths: map[string]json.RawMessage{"r.io": foreign},
			released:  []string{"r.io"},
		},
		{
			name:      "an entry of ours that someone changed while still provided is displaced and corrected",
			cur:       map[string]json.RawMessage{"r.io": foreign},
			state:     TargetState{Owned: map[string]string{"r.io": oursFP}},
			desired:   dockercfg.Set{item("r.io", "u", "old")},
			prune:     true,
			wantAuths: map[string]json.RawMessage{"r.io": ours},
			wantOwned: []string{"r.io"},
			wantDisp:  []string{"r.io"},
		},
		{
			name:      "a respelled source key replaces our old key even without prune",
			cur:       map[string]json.RawMessage{"docker.io": ours},
			state:     TargetState{Owned: map[string]string{"docker.io": oursFP}},
			desired:   dockercfg.Set{item("https://index.docker.io/v1/", "u", "p")},
			prune:     false,
			wantAuths: map[string]json.RawMessage{"https://index.docker.io/v1/": entryJSON(t, "u", "p")},
			wantOwned: []string{"https://index.docker.io/v1/"},
		},
		{
			name:      "a pending fingerprint from an interrupted write still counts as ours",
			cur:       map[string]json.RawMessage{"r.io": entryJSON(t, "u", "new")},
			state:     TargetState{Owned: map[string]string{"r.io": oursFP}, Pending: map[string]string{"r.io": fingerprint(entryJSON(t, "u", "new"))}},
			prune:     true,
			wantAuths: map[string]json.RawMessage{},
		},
		{
			name:      "a restore does not overwrite a key someone wrote since",
			cur:       map[string]json.RawMessage{"https://r.io": json.RawMessage(`{"auth":"bmV3ZXI6cA=="}`)},
			state:     TargetState{Displaced: map[string]json.RawMessage{"https://r.io": foreign}},
			prune:     true,
			wantAuths: map[string]json.RawMessage{"https://r.io": json.RawMessage(`{"auth":"bmV3ZXI6cA=="}`)},
		},
		{
			name:      "a reformatted entry of ours is still ours",
			cur:       map[string]json.RawMessage{"r.io": json.RawMessage("{\n  \"auth\" : " + string(mustJSON(t, dockercfg.Entry{Username: "u", Password: "old"}.Auth())) + "\n}")},
			state:     TargetState{Owned: map[string]string{"r.io": oursFP}},
			prune:     true,
			wantAuths: map[string]json.RawMessage{},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cur := &document{top: map[string]json.RawMessage{}, auths: map[string]json.RawMessage{}}
			for k, v := range tt.cur {
				cur.auths[k] = v
			}
			m := merge(cur, newWanted(tt.desired, nil), pruneRule{on: tt.prune}, tt.state)
			if len(m.doc.auths) != len(tt.wantAuths) {
				t.Errorf("auths keys = %v, want %v", sortedKeys(m.doc.auths), sortedKeys(tt.wantAuths))
			}
			for k, v := range tt.wantAuths {
				if got, ok := m.doc.auths[k]; !ok || fingerprint(got) != fingerprint(v) {
					t.Errorf("auths[%q] = %s, want %s", k, got, v)
				}
			}
			if got := sortedKeys(m.state.Owned); !slices.Equal(got, sortedOrEmpty(tt.wantOwned)) {
				t.Errorf("owned = %v, want %v", got, tt.wantOwned)
			}
			for k := range m.state.Owned {
				if m.state.Owned[k] != fingerprint(m.doc.auths[k]) {
					t.Errorf("owned fingerprint of %q does not match the file", k)
				}
			}
			if got := sortedKeys(m.state.Displaced); !slices.Equal(got, sortedOrEmpty(tt.wantDisp)) {
				t.Errorf("displaced = %v, want %v", got, tt.wantDisp)
			}
			for _, k := range tt.wantDisp {
				if tt.cur[k] != nil && fingerprint(m.state.Displaced[k]) != fingerprint(tt.cur[k]) {
					t.Errorf("displaced[%q] is not the entry that was on disk", k)
				}
			}
			if !slices.Equal(m.released, tt.released) {
				t.Errorf("released = %v, want %v", m.released, tt.released)
			}
			if !slices.Equal(m.restored, tt.restored) {
				t.Errorf("restored = %v, want %v", m.restored, tt.restored)
			}
		})
	}
}

func sortedOrEmpty(s []string) []string {
	out := slices.Clone(s)
	slices.Sort(out)
	if out == nil {
		out = []string{}
	}
	return out
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseDocument(t *testing.T) {
	tests := []struct {
		name    string
		data    string
		corrupt bool
	}{
		{"empty", "", false},
		{"white space", "\n", false},
		{"no auths", `{"credsStore":"desktop"}`, false},
		{"null auths", `{"auths":null}`, false},
		{"normal", `{"auths":{"r.io":{"auth":"dTpw"}},"x":[1,2]}`, false},
		{"not json", `{"auths":`, true},
		{"array", `[]`, true},
		{"null", `null`, false}, // both consumers read no credentials from it
		{"auths string", `{"auths":"x"}`, true},
		{"entry not object", `{"auths":{"r.io":1}}`, true},
		{"trailing garbage", `{"auths":{}}x`, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseDocument([]byte(tt.data))
			if (err != nil) != tt.corrupt {
				t.Errorf("parseDocument(%q) error = %v, want corrupt=%v", tt.data, err, tt.corrupt)
			}
		})
	}
}

func TestEncodeKeepsForeignValues(t *testing.T) {
	in := `{"auths":{"r.io":{"auth":"dTpw","x":12345678901234567890123}},"credsStore":"desktop","credHelpers":{"gcr.io":"gcloud"},"HttpHeaders":{"User-Agent":"x"},"unknownKey":{"nested":[1.50,"a",null]},"big":1e400}`
	d := docOf(t, in)
	out, err := d.encode()
	if err != nil {
		t.Fatal(err)
	}
	again := docOf(t, string(out))
	if !again.equal(d) {
		t.Fatalf("round trip changed the document:\n%s", out)
	}
	for _, want := range []string{"12345678901234567890123", "1e400", "1.50"} {
		if !bytes.Contains(out, []byte(want)) {
			t.Errorf("encoded document lost the literal %s:\n%s", want, out)
		}
	}
}

// TestIntentRecognisesEitherFile: a crash right after the intent is saved
// leaves the old file, right after the replace the new one; the intent must
// recognise our entries in both, even when the previous run had itself
// crashed and left a pending write for the same key.
func TestIntentRecognisesEitherFile(t *testing.T) {
	a, b, c := entryJSON(t, "u", "a"), entryJSON(t, "u", "b"), entryJSON(t, "u", "c")
	// A run that wrote b was killed before its final state: intent {a, b}.
	old := TargetState{Owned: map[string]string{"r.test": fingerprint(a)}, Pending: map[string]string{"r.test": fingerprint(b)}}
	onDiskB := &document{top: map[string]json.RawMessage{}, auths: map[string]json.RawMessage{"r.test": b}}
	m := merge(onDiskB, newWanted(dockercfg.Set{item("r.test", "u", "c")}, nil), pruneRule{on: true}, old)
	it := intent(ownedIn(onDiskB, old), old, m.state)
	for name, raw := range map[string]json.RawMessage{"the old file (b)": b, "the new file (c)": c} {
		disk := &document{top: map[string]json.RawMessage{}, auths: map[string]json.RawMessage{"r.test": raw}}
		after := merge(disk, newWanted(nil, nil), pruneRule{on: true}, it)
		if _, still := after.doc.auths["r.test"]; still || len(after.state.Displaced) != 0 || len(after.released) != 0 {
			t.Errorf("after a crash leaving %s, our entry is not recognised: auths %v displaced %v released %v",
				name, sortedKeys(after.doc.auths), sortedKeys(after.state.Displaced), after.released)
		}
	}
}

// TestPlanTarget: the pure decision of what a target becomes, before any
// file is touched.
func TestPlanTarget(t *testing.T) {
	ours := item("r.io", "u", "p")
	raw, _ := ours.Entry.MarshalJSON()
	written := []byte(`{"auths":{"r.io":` + string(raw) + `}}`)
	owned := TargetState{Created: true, Owned: map[string]string{"r.io": entryDigest(raw)}}
	file := func(s string) fileRead { return fileRead{exists: true, data: []byte(s), mode: 0o600} }
	tests := []struct {
		name      string
		base, cur fileRead
		desired   dockercfg.Set
		old       TargetState
		want      planStep
		created   bool
	}{
		{"no file, something to write", fileRead{}, fileRead{}, dockercfg.Set{ours}, TargetState{}, stepWrite, true},
		{"already as it should be", file(string(written)), file(string(written)), dockercfg.Set{ours}, owned, stepKeep, true},
		{"same value, other formatting", file(`{ "auths": {"r.io": ` + string(raw) + ` } }`), file(`{ "auths": {"r.io": ` + string(raw) + ` } }`), dockercfg.Set{ours}, owned, stepKeep, true},
		{"corrupt, nothing of ours for it", file("{broken"), file("{broken"), nil, TargetState{}, stepLeave, false},
		{"corrupt, ours to write", file("{broken"), file("{broken"), dockercfg.Set{ours}, TargetState{}, stepWrite, false},
		{"created by us, now empty", file(string(written)), file(string(written)), nil, owned, stepDrop, true},
		{"lost a race: merge on theirs", file(`{"auths":{"x.io":{"auth":"eDp5"}}}`), file(string(written)), dockercfg.Set{ours}, owned, stepWrite, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := planTarget(tt.base, tt.cur, nil, nil, newWanted(tt.desired, nil), pruneRule{on: true}, tt.old, parseDocument)
			if err != nil {
				t.Fatal(err)
			}
			if p.step != tt.want || p.merged.state.Created != tt.created {
				t.Errorf("step %d created %v, want %d %v", p.step, p.merged.state.Created, tt.want, tt.created)
			}
			if p.step == stepWrite {
				data, err := p.merged.doc.encode()
				if err != nil {
					t.Fatal(err)
				}
				if _, err := parseDocument(data); err != nil {
					t.Errorf("planned content does not parse: %v", err)
				}
				for k, fp := range p.merged.state.Owned {
					if p.intent.Owned[k] != fp && p.intent.Pending[k] != fp {
						t.Errorf("intent %+v does not cover the write %+v", p.intent, p.merged.state)
					}
				}
			}
		})
	}
}

// TestEncodeIsDockerCLIFormat: the one-pass encoder writes byte for byte
// what json.MarshalIndent(…, "", "\t") — the docker CLI's format — writes
// for the same raw values (keys sorted, values as they were, tab-indented,
// newline at the end).
func TestEncodeIsDockerCLIFormat(t *testing.T) {
	for _, in := range []string{
		`{}`,
		`{"auths":{}}`,
		`{"auths":null,"credsStore":"desktop"}`,
		`{"auths":{"b.io":{"auth":"dTpw"},"a.io":{"username":"u","password":"p","identitytoken":"","x":{"y":[1, 2,{"z":null}]}}},"HttpHeaders":{"User-Agent":"x"},"proxies":{"default":{"httpProxy":"h"}},"credHelpers":{},"z":[],"n":1.5e3}`,
		"{\n\t\"auths\": {\n\t\t\"r.io\": {\n\t\t\t\"auth\": \"dTpw\"\n\t\t}\n\t}\n}\n",
	} {
		d, err := parseDocument([]byte(in))
		if err != nil {
			t.Fatal(err)
		}
		got, err := d.encode()
		if err != nil {
			t.Fatal(err)
		}
		top := maps.Clone(d.top)
		if _, ok := top["auths"]; ok {
			top["auths"], _ = json.Marshal(d.auths)
		}
		want, _ := json.MarshalIndent(top, "", "\t")
		want = append(want, '\n')
		if string(got) != string(want) {
			t.Errorf("encode(%s) =\n%s\nwant\n%s", in, got, want)
		}
	}
}

// TestStateEncodingLikeEncodingJSON: the state file's hand-written
// encoding is byte for byte encoding/json's (sorted keys, same quoting,
// fields left out when empty), and reads back to the same state.
func TestStateEncodingLikeEncodingJSON(t *testing.T) {
	f := keyStrings{"b.io": "00ff", "a.io:5000/x": "11", `we"ird\<key>&` + "\x01é\u2028": "22", "": "33"}
	st := &State{Version: stateVersion, Targets: map[string]*TargetState{
		"/var/lib/kubelet/config.json": {Created: true, Owned: f, Pending: keyStrings{"c.io": "44"}, From: keyStrings{"b.io": "ns/first", "": "ns/<second>"}, Copies: map[string][]string{"config.json.corrupt-20261130T120000Z": {"ns/first", "/mnt/<x>"}}, Displaced: map[string]json.RawMessage{"d.io": json.RawMessage(`{ "auth" : "<&>" }`)},
			Writing: "0123abcd", Stale: staleMarks{"s1.io": {fp: "55", at: 1795000000}, "s2.io": {fp: "66", at: 1795000000}, "<s3>": {fp: "77", at: 1795000060}}},
		"/root/.docker/config.json": {Owned: keyStrings{"x": "y"}},
		"/only/displaced":           {Displaced: map[string]json.RawMessage{"e.io": json.RawMessage(`{}`)}},
		"/empty":                    {},
		"/nil":                      nil,
	}}
	type plain struct {
		Created   bool                         `json:"created,omitempty"`
		Owned     map[string]string            `json:"owned,omitempty"`
		Pending   map[string]string            `json:"pending,omitempty"`
		FromAll   string                       `json:"fromAll,omitempty"`
		From      map[string]string            `json:"from,omitempty"`
		Copies    map[string][]string          `json:"copies,omitempty"`
		Writing   string                       `json:"writing,omitempty"`
		Stale     map[string]map[string]string `json:"stale,omitempty"`
		Displaced map[string]json.RawMessage   `json:"displaced,omitempty"`
	}
	ref := map[string]*plain{}
	for k, t := range st.Targets {
		if t != nil {
			all, rest := t.fromParts()
			if len(rest) == 0 {
				rest = nil
			}
			var stale map[string]map[string]string
			for key, m := range t.Stale {
				if stale == nil {
					stale = map[string]map[string]string{}
				}
				at := strconv.FormatInt(m.at, 10)
				if stale[at] == nil {
					stale[at] = map[string]string{}
				}
				stale[at][key] = m.fp
			}
			ref[k] = &plain{t.Created, t.Owned, t.Pending, all, rest, t.Copies, t.Writing, stale, t.Displaced}
		} else {
			ref[k] = nil
		}
	}
	want, _ := json.Marshal(struct {
		Version int               `json:"version"`
		Targets map[string]*plain `json:"targets"`
	}{st.Version, ref})
	got, err := encodeState(st, nil)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(want) {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	var back State
	if err := json.Unmarshal(got, &back); err != nil {
		t.Fatal(err)
	}
	for k, t0 := range st.Targets {
		if t0 == nil {
			continue
		}
		if b := back.Targets[k]; b == nil || !b.equal(*t0) {
			t.Errorf("target %s read back as %+v, want %+v", k, b, t0)
		}
	}
	var bad State
	if err := json.Unmarshal([]byte(`{"version":1,"targets":{"/x":{"owned":{"a":1}}}}`), &bad); err == nil {
		t.Error("a fingerprint that is not a string was accepted")
	}
	for _, s := range []string{`{"s":{"x":"y"}}`, `{"1":"y"}`, `{"1":{"a":1}}`, `[]`} {
		if err := json.Unmarshal([]byte(`{"version":1,"targets":{"/x":{"stale":`+s+`}}}`), &bad); err == nil {
			t.Errorf("stale marks %s were accepted", s)
		}
	}
	// The release before the stale marks reads the same state, ignoring
	// them: it decodes the fields it knows (as these plain ones) alone.
	var release struct {
		Targets map[string]*struct {
			Owned     map[string]string          `json:"owned"`
			Pending   map[string]string          `json:"pending"`
			Displaced map[string]json.RawMessage `json:"displaced"`
			Copies    map[string][]string        `json:"copies"`
		} `json:"targets"`
	}
	if err := json.Unmarshal(got, &release); err != nil {
		t.Fatal(err)
	}
	if r := release.Targets["/var/lib/kubelet/config.json"]; len(r.Owned) != 4 || len(r.Pending) != 1 || len(r.Displaced) != 1 || len(r.Copies) != 1 {
		t.Errorf("the fields the release knows read as %+v", r)
	}
}

// TestPruneHoldsOnlyUnknownSources: when one source is unknown (invalid
// and never seen valid), only the entries it may have written stay; the
// entries of every other source that no longer provides them leave.
func TestPruneHoldsOnlyUnknownSources(t *testing.T) {
	ours := func(u string) json.RawMessage { return entryJSON(t, u, "pw") }
	cur := &document{top: map[string]json.RawMessage{"auths": json.RawMessage("{}")}, auths: map[string]json.RawMessage{
		"a.test": ours("a"), "b.test": ours("b"), "legacy.test": ours("l"), "kept.test": ours("k"),
	}}
	st := TargetState{
		Owned: keyStrings{"a.test": fingerprint(ours("a")), "b.test": fingerprint(ours("b")), "legacy.test": fingerprint(ours("l")), "kept.test": fingerprint(ours("k"))},
		From:  keyStrings{"a.test": "ns/pool-a", "b.test": "ns/broken", "kept.test": "ns/live"},
	}
	kept := dockercfg.Item{Key: "kept.test", Entry: dockercfg.Entry{Username: "k", Password: "pw"}, Source: "ns/live"}
	tests := []struct {
		name string
		rule pruneRule
		want []string
	}{
		{"every source known: all that left go", pruneRule{on: true}, []string{"kept.test"}},
		// a.test's source is known and no longer provides it: it goes;
		// b.test's source is the broken one: it stays; legacy.test was
		// recorded without a source, so it may be the broken one's.
		{"one source unknown", pruneRule{on: true, hold: map[string]bool{"ns/broken": true}}, []string{"b.test", "kept.test", "legacy.test"}},
		{"prune off", pruneRule{}, []string{"a.test", "b.test", "kept.test", "legacy.test"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := merge(cur, newWanted(dockercfg.Set{kept}, nil), tt.rule, st)
			if got := slices.Sorted(maps.Keys(m.doc.auths)); !slices.Equal(got, tt.want) {
				t.Errorf("entries %v, want %v", got, tt.want)
			}
			if got := slices.Sorted(maps.Keys(m.state.Owned)); !slices.Equal(got, tt.want) {
				t.Errorf("owned %v, want %v", got, tt.want)
			}
			// Sources stay recorded for what is still ours.
			for key, src := range st.From {
				if _, owned := m.state.Owned[key]; owned && m.state.From[key] != src {
					t.Errorf("%s recorded as from %q, want %q", key, m.state.From[key], src)
				}
			}
		})
	}
}

// TestKubeletViewKeepsEverySpelling: the kubelet's file gets every key of
// a source as spelled (it tries each, as with the Secret as an
// imagePullSecret); the docker CLI's gets one per registry, Docker Hub
// under its own key. A foreign entry for a registry of ours is displaced
// from both.
func TestKubeletViewKeepsEverySpelling(t *testing.T) {
	e, root := newEngine(t)
	testsupport.WriteFile(t, filepath.Join(root, kubeletFile), `{"auths":{"https://index.docker.io/v1/":{"auth":"Zjpw"},"other.io":{"auth":"bzpw"}}}`, 0o600)
	src := dockercfg.NamedSet{Name: "ns/creds", Set: dockercfg.Set{item("docker.io", "hub", "p"), item("https://r.io/", "s", "p"), item("r.io", "b", "p"), item("registry-1.docker.io", "r1", "p")}}
	res, err := e.Sync(t.Context(), []string{kubeletFile, dockerFile}, Desired{Sources: []dockercfg.NamedSet{src}, Prune: true})
	if err != nil {
		t.Fatal(err)
	}
	mustOK(t, res)
	users := func(path string) map[string]string {
		out := map[string]string{}
		for k, raw := range docOf(t, string(testsupport.ReadFile(t, filepath.Join(root, path)))).auths {
			var w struct{ Auth string }
			_ = json.Unmarshal(raw, &w)
			u, _, _ := dockercfg.DecodeAuth(w.Auth)
			out[k] = u
		}
		return out
	}
	if got, want := users(kubeletFile), map[string]string{"docker.io": "hub", "https://r.io/": "s", "r.io": "b", "registry-1.docker.io": "r1", "other.io": "o"}; !maps.Equal(got, want) {
		t.Errorf("kubelet file %v, want %v", got, want)
	}
	if got, want := users(dockerFile), map[string]string{dockercfg.DockerHubKey: "hub", "r.io": "b", "registry-1.docker.io": "r1"}; !maps.Equal(got, want) {
		t.Errorf("docker file %v, want %v", got, want)
	}
	if !slices.Equal(res[0].Displaced, []string{"https://index.docker.io/v1/"}) {
		t.Errorf("displaced %v", res[0].Displaced)
	}
	st := readState(t, root)
	if got := st.Targets[kubeletFile].From["https://r.io/"]; got != "ns/creds" {
		t.Errorf("state records https://r.io/ as from %q", got)
	}
}

// TestEncodedDigestIsTheFileWritten: the digest recorded with a write's
// intent, hashed as the document is encoded in pieces, is that of the file
// written, for small and multi-chunk documents alike.
func TestEncodedDigestIsTheFileWritten(t *testing.T) {
	for _, n := range []int{0, 1, 3000} {
		var b strings.Builder
		b.WriteString(`{"credsStore":"x","auths":{`)
		for i := range n {
			if i > 0 {
				b.WriteString(",")
			}
			fmt.Fprintf(&b, `"r%05d.test":{"auth":"dTpw","x":[1,{"y":2}]}`, i)
		}
		b.WriteString(`},"zz":{"deep":[[["a"]]]}}`)
		d := docOf(t, b.String())
		data, err := d.encode()
		if err != nil {
			t.Fatal(err)
		}
		got, err := d.encodedDigest()
		if err != nil {
			t.Fatal(err)
		}
		if got != fileDigest(data) {
			t.Errorf("%d entries: digest %s, want %s", n, got, fileDigest(data))
		}
	}
}
