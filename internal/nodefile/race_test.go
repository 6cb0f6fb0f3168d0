package nodefile

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/nodecreds/nodecreds/internal/dockercfg"
	"github.com/nodecreds/nodecreds/internal/hostfs"
)

// writerEdit is one write of another writer: what it does to the file it read.
type writerEdit func(m map[string]any)

func login(keys ...string) writerEdit {
	return func(m map[string]any) {
		a, _ := m["auths"].(map[string]any)
		if a == nil {
			a = map[string]any{}
			m["auths"] = a
		}
		for _, k := range keys {
			a[k] = map[string]any{"auth": "dzpw"}
		}
	}
}

func logout(keys ...string) writerEdit {
	return func(m map[string]any) {
		a, _ := m["auths"].(map[string]any)
		for _, k := range keys {
			delete(a, k)
		}
	}
}

func setField(name string, value any) writerEdit {
	return func(m map[string]any) { m[name] = value }
}

func both(edits ...writerEdit) writerEdit {
	return func(m map[string]any) {
		for _, e := range edits {
			e(m)
		}
	}
}

// rewrite is `docker login` as the CLI does it: read the file at path as it
// is now, change it, write it (indented) to a temp file and rename that
// over path. It returns what it wrote.
func rewrite(path string, e writerEdit) (map[string]any, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("the writer read invalid JSON: %w", err)
	}
	e(m)
	return m, writeOver(path, m)
}

func writeOver(path string, m map[string]any) error {
	out, err := json.MarshalIndent(m, "", "\t")
	if err != nil {
		return err
	}
	tmp := path + ".login-tmp"
	if err := os.WriteFile(tmp, out, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// racer plays another writer at nodecreds' swaps: at the i-th swap it
// does edits[i] to the file at the target then (nodecreds' stale file,
// from the second swap on), or, with own, to the last file it wrote itself
// (a writer that read its own file just before nodecreds' swap).
func racer(t *testing.T, path string, own bool, edits ...writerEdit) func() {
	swaps := 0
	var last map[string]any
	return func() {
		if swaps >= len(edits) {
			return
		}
		e := edits[swaps]
		swaps++
		var err error
		if own && last != nil {
			e(last)
			err = writeOver(path, last)
		} else {
			last, err = rewrite(path, e)
		}
		if err != nil {
			t.Error(err)
		}
	}
}

// checkFile asserts that the target holds want and none of gone, ours
// (r.io) being the final one when ours.
func checkFile(t *testing.T, p string, want, gone []string, fields map[string]any, ours bool) {
	t.Helper()
	a := auths(t, p)
	for _, k := range want {
		if _, ok := a[k]; !ok {
			t.Errorf("the other writer's %s was lost: %v", k, keysOf(a))
		}
	}
	for _, k := range gone {
		if _, ok := a[k]; ok {
			t.Errorf("%s, which the other writer removed, is back", k)
		}
	}
	m := readJSON(t, p)
	for name, v := range fields {
		if got, _ := json.Marshal(m[name]); string(got) != string(mustJSON(t, v)) {
			t.Errorf("%s is %s, want %s", name, got, mustJSON(t, v))
		}
	}
	if ours && authOf(t, p, "r.io") != (dockercfg.Entry{Username: "u", Password: "final"}).Auth() {
		t.Errorf("ours is not the final one: %v", a["r.io"])
	}
}

func keysOf(m map[string]any) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

const raceStart = `{"auths":{"x.io":{"auth":"eDpw"}},"credsStore":"a"}`

// TestSuccessiveRaces: another writer renames its file over the target
// between nodecreds' read and its swap (T1), and then, while nodecreds'
// file built on the older read is in place, reads that file and writes on
// top of it (T2), and so on. What each of its files changed — added,
// removed (a logout), a field set — is in the target when the sync ends,
// and nothing it did not change goes: T1's entries, which T2 never had,
// stay, and an entry T2 removed stays removed.
func TestSuccessiveRaces(t *testing.T) {
	tests := []struct {
		name   string
		own    bool // each write on the writer's own last file, not on what is at the target
		edits  []writerEdit
		want   []string
		gone   []string
		fields map[string]any
	}{
		{"a login on our stale file", false, []writerEdit{login("a.io"), login("b.io")}, []string{"a.io", "b.io", "x.io"}, nil, nil},
		{"three races", false, []writerEdit{login("a.io"), login("b.io"), login("c.io")}, []string{"a.io", "b.io", "c.io", "x.io"}, nil, nil},
		{"a logout on our stale file", false, []writerEdit{login("a.io"), both(logout("x.io"), login("b.io"))}, []string{"a.io", "b.io"}, []string{"x.io"}, nil},
		{"a logout in the first race", false, []writerEdit{both(logout("x.io"), login("a.io")), login("b.io")}, []string{"a.io", "b.io"}, []string{"x.io"}, nil},
		{"a field changed, then a login on our stale file", false, []writerEdit{both(setField("credsStore", "b"), login("a.io")), login("b.io")}, []string{"a.io", "b.io", "x.io"}, nil, map[string]any{"credsStore": "b"}},
		{"a field added, then a login on our stale file", false, []writerEdit{setField("HttpHeaders", map[string]any{"X-Meta": "1"}), login("b.io")}, []string{"b.io", "x.io"}, nil, map[string]any{"HttpHeaders": map[string]any{"X-Meta": "1"}, "credsStore": "a"}},
		{"a field changed on our stale file", false, []writerEdit{login("a.io"), setField("credsStore", "c")}, []string{"a.io", "x.io"}, nil, map[string]any{"credsStore": "c"}},
		{"the writer rewrites its own file", true, []writerEdit{login("a.io"), login("b.io"), logout("x.io")}, []string{"a.io", "b.io"}, []string{"x.io"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, root := newEngine(t)
			p := filepath.Join(root, dockerFile)
			writeFile(t, p, raceStart)
			mustOK(t, apply(t, e, []string{dockerFile}, dockercfg.Set{item("r.io", "u", "p")}, true))
			e.hooks.beforeSwap = racer(t, p, tt.own, tt.edits...)
			mustOK(t, apply(t, e, []string{dockerFile}, dockercfg.Set{item("r.io", "u", "final")}, true))
			if hostfs.RenameFlagsOff && tt.own {
				// Without the exchange a file renamed between nodecreds'
				// check and its rename is not seen (docs/security.md):
				// here, every one the writer made of its own.
				return
			}
			checkFile(t, p, tt.want, tt.gone, tt.fields, true)
			if left := leftovers(t, filepath.Dir(p)); len(left) != 0 {
				t.Errorf("left behind: %v", left)
			}
		})
	}
}

func writeFile(t *testing.T, p, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestRaceAtTheEnd: a sync that must stop (its context ends, or the
// writer races more attempts than it may take) just after a swap put
// nodecreds' stale file in place does not leave that file there with the
// other writer's last file merged in memory only: the writer's entries are
// in the target when it returns, or, when it gives up, once the next sync
// ends.
func TestRaceAtTheEnd(t *testing.T) {
	t.Run("the context ends", func(t *testing.T) {
		e, root := newEngine(t)
		p := filepath.Join(root, dockerFile)
		writeFile(t, p, raceStart)
		mustOK(t, apply(t, e, []string{dockerFile}, dockercfg.Set{item("r.io", "u", "p")}, true))
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		want := []string{"x.io"}
		loginNoted := func(key string) writerEdit {
			return func(m map[string]any) { login(key)(m); want = append(want, key) }
		}
		race := racer(t, p, false, both(loginNoted("a.io"), setField("credsStore", "b")), loginNoted("b.io"))
		swaps := 0
		e.hooks.beforeSwap = func() {
			race()
			if swaps++; swaps == 1 {
				cancel()
			}
		}
		res, err := e.Apply(ctx, []string{dockerFile}, dockercfg.Set{item("r.io", "u", "final")}, true)
		if err != nil {
			t.Fatal(err)
		}
		if err := res[0].Err; err != nil {
			if !errors.Is(err, context.Canceled) || !hostfs.RenameFlagsOff {
				// With the exchange the stale file of ours the race left
				// in place is never left there.
				t.Fatal(err)
			}
			// Without it nothing of ours was put in place: the writer's
			// file is there, whole, and the next sync merges into it.
			checkFile(t, p, want, nil, map[string]any{"credsStore": "b"}, false)
			e.hooks.beforeSwap = nil
			mustOK(t, apply(t, e, []string{dockerFile}, dockercfg.Set{item("r.io", "u", "final")}, true))
		}
		checkFile(t, p, want, nil, map[string]any{"credsStore": "b"}, true)
	})
	for _, races := range []int{3, 5, 1000} {
		t.Run(fmt.Sprintf("%d races, 3 attempts", races), func(t *testing.T) {
			e, root := newEngine(t)
			p := filepath.Join(root, dockerFile)
			writeFile(t, p, raceStart)
			mustOK(t, apply(t, e, []string{dockerFile}, dockercfg.Set{item("r.io", "u", "p")}, true))
			e.hooks.attempts = 3
			var edits []writerEdit
			var want []string
			for i := range races {
				key := fmt.Sprintf("w%d.io", i)
				edits = append(edits, func(m map[string]any) {
					login(key)(m)
					want = append(want, key)
				})
			}
			e.hooks.beforeSwap = racer(t, p, false, edits...)
			res := apply(t, e, []string{dockerFile}, dockercfg.Set{item("r.io", "u", "final")}, true)
			if err := res[0].Err; err != nil {
				if !errors.Is(err, ErrContended) {
					t.Fatal(err)
				}
				if races < 1000 && !hostfs.RenameFlagsOff {
					t.Errorf("gave up after %d races: %v", races, err)
				}
				// The writer's last file is held: the next sync merges it.
				e.hooks.beforeSwap = nil
				mustOK(t, apply(t, e, []string{dockerFile}, dockercfg.Set{item("r.io", "u", "final")}, true))
			}
			if len(want) == 0 {
				t.Fatal("the writer never raced")
			}
			checkFile(t, p, want, nil, nil, true)
		})
	}
}

// TestWriterOnOurStaleFileAfterTheSync: the race the agent met under load.
// Another writer's file T1 is replaced by nodecreds' swap, whose file S,
// built on the older read, is in place while nodecreds merges again; the
// writer reads S then, and renames S + its next entry over the target only
// after the sync is done, which left the right file. The next sync finds
// that file: T1's entries, which it never had, are not lost, and what it
// did change is kept.
func TestWriterOnOurStaleFileAfterTheSync(t *testing.T) {
	tests := []struct {
		name   string
		later  writerEdit
		want   []string
		gone   []string
		fields map[string]any
	}{
		{"a login", login("b.io"), []string{"a.io", "b.io", "x.io"}, nil, map[string]any{"credsStore": "b"}},
		{"a logout", logout("x.io"), []string{"a.io"}, []string{"x.io"}, map[string]any{"credsStore": "b"}},
		{"a field", setField("credsStore", "c"), []string{"a.io", "x.io"}, nil, map[string]any{"credsStore": "c"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, root := newEngine(t)
			p := filepath.Join(root, dockerFile)
			writeFile(t, p, raceStart)
			mustOK(t, apply(t, e, []string{dockerFile}, dockercfg.Set{item("r.io", "u", "p")}, true))
			var read map[string]any
			swaps := 0
			e.hooks.beforeSwap = func() {
				switch swaps++; swaps {
				case 1:
					if _, err := rewrite(p, both(login("a.io"), setField("credsStore", "b"))); err != nil {
						t.Fatal(err)
					}
				case 2:
					read = readJSON(t, p) // nodecreds' stale file
				}
			}
			mustOK(t, apply(t, e, []string{dockerFile}, dockercfg.Set{item("r.io", "u", "final")}, true))
			if read == nil {
				if !hostfs.RenameFlagsOff {
					t.Fatal("no second swap")
				}
				return // without the exchange the race is seen before the rename: nothing stale is ever in place
			}
			tt.later(read)
			if err := writeOver(p, read); err != nil {
				t.Fatal(err)
			}
			e.hooks.beforeSwap = nil
			mustOK(t, apply(t, e, []string{dockerFile}, dockercfg.Set{item("r.io", "u", "final")}, true))
			checkFile(t, p, tt.want, tt.gone, tt.fields, true)
		})
	}
}
