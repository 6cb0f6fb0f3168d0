package nodefile

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nodecreds/nodecreds/internal/dockercfg"
	"github.com/nodecreds/nodecreds/internal/testsupport"
)

// TestStaleEntrySavedBackIsNodecredsOwn: the docker CLI saves the file it
// loaded, with the entries nodecreds had written then. An entry nodecreds
// has since rotated or pruned, saved back that way within staleWindow, is
// nodecreds' own stale entry: rewritten or removed again, never displaced
// into the state (to be "restored" by cleanup) nor adopted as another
// writer's; the writer's own entry is kept. After the window it is that
// writer's (documented).
func TestStaleEntrySavedBackIsNodecredsOwn(t *testing.T) {
	const oldPass, newPass = "stale-canary-old", "stale-canary-new"
	a := dockercfg.NamedSet{Name: "ns/a", Set: dockercfg.Set{item("a.test", "alice", oldPass)}}
	b := dockercfg.NamedSet{Name: "ns/b", Set: dockercfg.Set{item("b.test", "bob", "pw")}}
	rotated := dockercfg.NamedSet{Name: "ns/a", Set: dockercfg.Set{item("a.test", "alice", newPass)}}
	tests := []struct {
		name   string
		before []dockercfg.NamedSet // synced when the writer loads the file
		after  []dockercfg.NamedSet // synced before it saves it back
		wait   time.Duration        // between that and the save
		then   string               // "sync" (with after) or "cleanup"
		want   string               // a.test's password after, "" for none
		kept   bool                 // a.test stays after cleanup (the writer's)
	}{
		{name: "rotated", before: []dockercfg.NamedSet{a, b}, after: []dockercfg.NamedSet{rotated, b}, then: "sync", want: newPass},
		{name: "rotated, then cleanup", before: []dockercfg.NamedSet{a, b}, after: []dockercfg.NamedSet{rotated, b}, then: "cleanup"},
		{name: "pruned", before: []dockercfg.NamedSet{a, b}, after: []dockercfg.NamedSet{b}, then: "sync"},
		{name: "pruned, then cleanup", before: []dockercfg.NamedSet{a, b}, after: []dockercfg.NamedSet{b}, then: "cleanup"},
		{name: "rotated, then pruned", before: []dockercfg.NamedSet{a, b}, after: []dockercfg.NamedSet{rotated, b}, then: "prune"},
		{name: "the last source gone, the file nodecreds made removed", before: []dockercfg.NamedSet{a}, after: nil, then: "sync"},
		{name: "pruned, saved back after the window", before: []dockercfg.NamedSet{a, b}, after: []dockercfg.NamedSet{b}, wait: staleWindow + time.Hour, then: "sync", want: oldPass, kept: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			now := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
			root := t.TempDir()
			e := New(Options{HostRoot: root, StateDir: stateDir, Now: func() time.Time { return now }})
			p := filepath.Join(root, kubeletFile)
			sync := func(sources []dockercfg.NamedSet) {
				t.Helper()
				res, err := e.Sync(t.Context(), []string{kubeletFile}, Desired{Sources: sources, Prune: true})
				if err != nil {
					t.Fatal(err)
				}
				mustOK(t, res)
				if len(res[0].Displaced) > 0 || len(res[0].Released) > 0 {
					t.Fatalf("nodecreds' own entries taken for another writer's: displaced %v, released %v", res[0].Displaced, res[0].Released)
				}
			}
			sync(tt.before)
			loaded := readJSON(t, p) // the docker CLI loads the file
			now = now.Add(time.Minute)
			sync(tt.after)
			now = now.Add(time.Minute)
			if tt.wait > 0 {
				now = now.Add(tt.wait)
				sync(tt.after) // a resync in between
			}
			// ... and saves what it loaded, with its own entry, by rename.
			loaded["auths"].(map[string]any)["mine.test"] = map[string]any{"auth": testsupport.B64("me:mine")}
			data, err := json.Marshal(loaded)
			if err != nil {
				t.Fatal(err)
			}
			renameOver(t, p, string(data), 0o600)
			now = now.Add(time.Minute)
			switch tt.then {
			case "sync":
				sync(tt.after)
			case "prune":
				sync([]dockercfg.NamedSet{b})
			case "cleanup":
				res, err := e.Cleanup(t.Context(), nil)
				if err != nil {
					t.Fatal(err)
				}
				mustOK(t, res)
			}
			got := auths(t, p)
			if _, ok := got["mine.test"]; !ok {
				t.Errorf("the writer's own entry was lost: %v", got)
			}
			wantAuth := ""
			if tt.want != "" {
				wantAuth = testsupport.B64("alice:" + tt.want)
			}
			if gotAuth := authOf(t, p, "a.test"); gotAuth != wantAuth {
				t.Errorf("a.test holds %q, want %q", gotAuth, wantAuth)
			}
			if state := string(stateBytes(t, root)); strings.Contains(state, testsupport.B64("alice:"+oldPass)) {
				t.Errorf("the state holds the old password: %s", state)
			}
			// Whatever comes next, cleanup never puts the old one back.
			res, err := e.Cleanup(t.Context(), nil)
			if err != nil {
				t.Fatal(err)
			}
			mustOK(t, res)
			if gotAuth := authOf(t, p, "a.test"); tt.kept != (gotAuth != "") || gotAuth != "" && gotAuth != testsupport.B64("alice:"+oldPass) {
				t.Errorf("after cleanup a.test holds %q, want it kept: %v", gotAuth, tt.kept)
			}
			if _, ok := auths(t, p)["mine.test"]; !ok {
				t.Errorf("cleanup lost the writer's own entry")
			}
			if state := string(stateBytes(t, root)); strings.Contains(state, "owned") || strings.Contains(state, "stale") {
				t.Errorf("cleanup left a record of entries: %s", state)
			}
			if _, err := os.Stat(p); err != nil {
				t.Fatal(err)
			}
		})
	}
}
