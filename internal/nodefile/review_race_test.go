package nodefile

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/nodecreds/nodecreds/internal/dockercfg"
	"github.com/nodecreds/nodecreds/internal/hostfs"
)

// Adversarial review (branch review-race): interleavings the race tests do
// not cover. Each test states the interleaving and what is lost.

// TestReviewExposureForgottenByTheNextSync: sync 1 races (writer A renames
// W1 = C0 + a.io just before the swap; nodecreds' stale file S, built on
// C0, is in place while it merges again) and a second docker login, B,
// reads S. Sync 1 ends with the right file L. Within the minute, another
// sync runs (the agent's drift watch or a Secret event): the file is L, it
// has nothing to write (or rotates its own entry), and it forgets the
// exposure. B then renames S + b.io. The sync after takes B's file as
// written on L: a.io, which B never saw, is lost.
func TestReviewExposureForgottenByTheNextSync(t *testing.T) {
	tests := []struct {
		name   string
		second dockercfg.Set // what the sync in between applies
	}{
		{"a sync with nothing to write", dockercfg.Set{item("r.io", "u", "final")}},
		{"a rotation of ours", dockercfg.Set{item("r.io", "u", "final2")}},
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
					if _, err := rewrite(p, login("a.io")); err != nil {
						t.Fatal(err)
					}
				case 2:
					read = readJSON(t, p) // B reads nodecreds' stale file
				}
			}
			mustOK(t, apply(t, e, []string{dockerFile}, dockercfg.Set{item("r.io", "u", "final")}, true))
			if read == nil {
				if !hostfs.RenameFlagsOff {
					t.Fatal("no second swap")
				}
				return
			}
			e.hooks.beforeSwap = nil
			checkFile(t, p, []string{"a.io", "x.io"}, nil, nil, true)
			// The sync in between, a second later.
			mustOK(t, apply(t, e, []string{dockerFile}, tt.second, true))
			// B renames what it made of the stale file.
			login("b.io")(read)
			if err := writeOver(p, read); err != nil {
				t.Fatal(err)
			}
			mustOK(t, apply(t, e, []string{dockerFile}, tt.second, true))
			checkFile(t, p, []string{"a.io", "b.io", "x.io"}, nil, nil, false)
		})
	}
}

// TestReviewWriterOnAnEarlierStaleFile: two other writers. A renames W1 =
// C0 + a.io before swap 1 (nodecreds' stale S0, built on C0, goes in place);
// B reads S0; A renames W2 = W1 + b.io (its own last file) before swap 2
// (stale S1 in place); B renames S0 + c.io before swap 3 (in the sync), or
// after the sync ends (within the minute). B's file is compared only with
// the last of A's files and the last stale file (S1), both of which hold
// a.io: its lack of a.io is taken for a logout, and a.io — which B never
// saw, only because nodecreds' S0 was in place when B read — is lost.
// Without nodecreds B would have read W1 and kept a.io.
func TestReviewWriterOnAnEarlierStaleFile(t *testing.T) {
	for _, afterSync := range []bool{false, true} {
		name := "in the sync"
		if afterSync {
			name = "after the sync"
		}
		t.Run(name, func(t *testing.T) {
			e, root := newEngine(t)
			p := filepath.Join(root, dockerFile)
			writeFile(t, p, raceStart)
			mustOK(t, apply(t, e, []string{dockerFile}, dockercfg.Set{item("r.io", "u", "p")}, true))
			var w1, bRead map[string]any
			swaps := 0
			e.hooks.beforeSwap = func() {
				var err error
				switch swaps++; swaps {
				case 1:
					w1, err = rewrite(p, login("a.io")) // A
				case 2:
					bRead = readJSON(t, p) // B reads S0
					login("b.io")(w1)      // A, on its own last file
					err = writeOver(p, w1)
				case 3:
					if !afterSync {
						login("c.io")(bRead) // B
						err = writeOver(p, bRead)
					}
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			mustOK(t, apply(t, e, []string{dockerFile}, dockercfg.Set{item("r.io", "u", "final")}, true))
			if hostfs.RenameFlagsOff {
				return
			}
			if swaps < 3 {
				t.Fatalf("only %d swaps", swaps)
			}
			e.hooks.beforeSwap = nil
			if afterSync {
				login("c.io")(bRead)
				if err := writeOver(p, bRead); err != nil {
					t.Fatal(err)
				}
				mustOK(t, apply(t, e, []string{dockerFile}, dockercfg.Set{item("r.io", "u", "final")}, true))
			}
			checkFile(t, p, []string{"a.io", "c.io", "x.io"}, nil, nil, true)
		})
	}
}

// TestReviewLogoutInAHeldFileAfterAKill: docker logout renames W1 = C0 -
// x.io (or C0 without a field) over the target between nodecreds' read and
// its swap; the swap puts nodecreds' file (built on C0, with x.io) in place
// and holds W1; nodecreds is killed right after the hold (the window runs
// through the next plan, the intent's fsync and the staging's fsync, not
// microseconds). The next start finds its own file at the target and the
// held file newer, and merges them the union way: the target fills in what
// the held file lacks, so the logout (the removed field) is undone. In the
// same sync without the kill, threeWay keeps it.
func TestReviewLogoutInAHeldFileAfterAKill(t *testing.T) {
	const start = `{"auths":{"x.io":{"auth":"eDpw"},"mine.test":{"auth":"bWU6UDE="}},"credsStore":"a"}`
	tests := []struct {
		name   string
		edit   writerEdit
		gone   []string
		absent string // a top-level field that must stay removed
	}{
		{"a logout", logout("x.io"), []string{"x.io"}, ""},
		{"a field removed", func(m map[string]any) { delete(m, "credsStore") }, nil, "credsStore"},
	}
	for _, tt := range tests {
		for _, killed := range []bool{false, true} {
			name := tt.name + ", not killed"
			if killed {
				name = tt.name + ", killed after the hold"
			}
			t.Run(name, func(t *testing.T) {
				e, root := newEngine(t)
				p := filepath.Join(root, kubeletFile)
				writeFile(t, p, start)
				mustOK(t, apply(t, e, []string{kubeletFile}, dockercfg.Set{item("r.io", "u", "p")}, true))
				crashed := t.TempDir()
				kill := once(func() {
					if err := os.CopyFS(crashed, os.DirFS(root)); err != nil {
						t.Fatal(err)
					}
				})
				e.hooks.beforeSwap = once(func() {
					if _, err := rewrite(p, tt.edit); err != nil {
						t.Fatal(err)
					}
				})
				if killed {
					e.hooks.afterHold = kill
				}
				mustOK(t, apply(t, e, []string{kubeletFile}, dockercfg.Set{item("r.io", "u", "final")}, true))
				if hostfs.RenameFlagsOff {
					return
				}
				cp := p
				if killed {
					cp = filepath.Join(crashed, kubeletFile)
					held := leftovers(t, filepath.Dir(cp))
					if len(held) == 0 {
						t.Fatal("the disk at the kill holds no held file")
					}
					// Change times in the original's order: the swap, then the hold.
					for _, f := range append([]string{cp}, filepath.Join(filepath.Dir(cp), held[0])) {
						if err := os.Chmod(f, 0o600); err != nil {
							t.Fatal(err)
						}
					}
					after := New(Options{HostRoot: crashed, StateDir: stateDir})
					mustOK(t, apply(t, after, []string{kubeletFile}, dockercfg.Set{item("r.io", "u", "final")}, true))
				}
				checkFile(t, cp, []string{"mine.test"}, tt.gone, nil, true)
				if tt.absent != "" {
					if v, ok := readJSON(t, cp)[tt.absent]; ok {
						t.Errorf("%s, which the other writer removed, is back: %v", tt.absent, v)
					}
				}
			})
		}
	}
}

// TestReviewHeldProbes: interleavings tried that held (kept as probes).
func TestReviewHeldProbes(t *testing.T) {
	t.Run("a drop racing two logins", func(t *testing.T) {
		e, root := newEngine(t)
		p := filepath.Join(root, dockerFile)
		mustOK(t, apply(t, e, []string{dockerFile}, dockercfg.Set{item("r.io", "u", "p")}, true))
		e.hooks.beforeRemove = once(func() {
			if _, err := rewrite(p, login("a.io")); err != nil {
				t.Fatal(err)
			}
		})
		e.hooks.whileAway = once(func() {
			if err := writeOver(p, map[string]any{"auths": map[string]any{"b.io": map[string]any{"auth": "dzpw"}}}); err != nil {
				t.Fatal(err)
			}
		})
		mustOK(t, apply(t, e, []string{dockerFile}, dockercfg.Set{}, true))
		if hostfs.RenameFlagsOff {
			return
		}
		checkFile(t, p, []string{"a.io", "b.io"}, []string{"r.io"}, nil, false)
		if left := leftovers(t, filepath.Dir(p)); len(left) != 0 {
			t.Errorf("left behind: %v", left)
		}
	})
	t.Run("a logout, then the stale file's very bytes", func(t *testing.T) {
		e, root := newEngine(t)
		p := filepath.Join(root, dockerFile)
		writeFile(t, p, raceStart)
		mustOK(t, apply(t, e, []string{dockerFile}, dockercfg.Set{item("r.io", "u", "p")}, true))
		swaps := 0
		e.hooks.beforeSwap = func() {
			switch swaps++; swaps {
			case 1:
				if _, err := rewrite(p, both(logout("x.io"), login("a.io"))); err != nil {
					t.Fatal(err)
				}
			case 2:
				data, err := os.ReadFile(p)
				if err != nil {
					t.Fatal(err)
				}
				renameOver(t, p, string(data), 0o600)
			}
		}
		mustOK(t, apply(t, e, []string{dockerFile}, dockercfg.Set{item("r.io", "u", "final")}, true))
		checkFile(t, p, []string{"a.io"}, []string{"x.io"}, nil, true)
	})
	t.Run("our entry edited by the writer on the stale file", func(t *testing.T) {
		e, root := newEngine(t)
		p := filepath.Join(root, dockerFile)
		writeFile(t, p, raceStart)
		mustOK(t, apply(t, e, []string{dockerFile}, dockercfg.Set{item("r.io", "u", "p")}, true))
		e.hooks.beforeSwap = racer(t, p, false, login("a.io"), both(login("b.io"), setField("credsStore", "z")))
		mustOK(t, apply(t, e, []string{dockerFile}, dockercfg.Set{item("r.io", "u", "final")}, true))
		checkFile(t, p, []string{"a.io", "b.io", "x.io"}, nil, map[string]any{"credsStore": "z"}, true)
	})
}

// TestReviewStaleReaderRacesTheNextSync: sync 1 races as in
// TestReviewExposureForgottenByTheNextSync, and B reads nodecreds' stale
// file S. Within the minute sync 2 reads the file left (L), so its memory
// of S is kept, and plans a rotation; B renames S + b.io between sync 2's
// read and its swap. The race is merged three ways against L only, not S:
// B's lack of a.io (which S lacked) is taken for a logout, and a.io is lost.
func TestReviewStaleReaderRacesTheNextSync(t *testing.T) {
	e, root := newEngine(t)
	p := filepath.Join(root, dockerFile)
	writeFile(t, p, raceStart)
	mustOK(t, apply(t, e, []string{dockerFile}, dockercfg.Set{item("r.io", "u", "p")}, true))
	var read map[string]any
	swaps := 0
	e.hooks.beforeSwap = func() {
		switch swaps++; swaps {
		case 1:
			if _, err := rewrite(p, login("a.io")); err != nil {
				t.Fatal(err)
			}
		case 2:
			read = readJSON(t, p) // B reads nodecreds' stale file
		}
	}
	mustOK(t, apply(t, e, []string{dockerFile}, dockercfg.Set{item("r.io", "u", "final")}, true))
	if read == nil {
		if !hostfs.RenameFlagsOff {
			t.Fatal("no second swap")
		}
		return
	}
	e.hooks.beforeSwap = once(func() {
		login("b.io")(read)
		if err := writeOver(p, read); err != nil {
			t.Fatal(err)
		}
	})
	mustOK(t, apply(t, e, []string{dockerFile}, dockercfg.Set{item("r.io", "u", "final2")}, true))
	e.hooks.beforeSwap = nil
	mustOK(t, apply(t, e, []string{dockerFile}, dockercfg.Set{item("r.io", "u", "final2")}, true))
	checkFile(t, p, []string{"a.io", "b.io", "x.io"}, nil, nil, false)
}
