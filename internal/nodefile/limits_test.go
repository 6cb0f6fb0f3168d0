package nodefile

import (
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/nodecreds/nodecreds/internal/dockercfg"
	"github.com/nodecreds/nodecreds/internal/hostfs"
	"github.com/nodecreds/nodecreds/internal/testsupport"
)

// tinyEntries is a config.json of n entries of the smallest kind, plus
// extra top-level fields: the shape that packs the most entries into
// 4 MiB (some 440,000).
func tinyEntries(n, fields int) string {
	var b strings.Builder
	b.WriteString(`{"auths":{`)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `"a%d":{}`, i)
	}
	b.WriteString(`}`)
	for i := range fields {
		fmt.Fprintf(&b, `,"f%d":0`, i)
	}
	b.WriteString(`}`)
	return b.String()
}

// TestEntryLimit (issue 21, point 4): a file of more entries and fields
// than MaxEntries is counted before anything is built and left as it is
// (never set aside: the consumers read it), with an error naming the limit;
// a merge that would write more is refused before the file is touched; the
// other target is synced all the same. Just under the limit is fine.
func TestEntryLimit(t *testing.T) {
	ours := dockercfg.Set{item("r.io", "u", "p")}
	tests := []struct {
		name    string
		file    string
		refused string // in the error; "" when the sync succeeds
	}{
		{"entries over the limit", tinyEntries(MaxEntries+1, 0), "more than the 50000 nodecreds reads"},
		{"top-level fields count too", tinyEntries(MaxEntries-10, 11), "more than the 50000 nodecreds reads"},
		{"a 4 MiB file of tiny entries", tinyEntries(300_000, 0), "more than the 50000 nodecreds reads"},
		{"two auths objects count together", strings.Replace(tinyEntries(MaxEntries, 0), `"a0":{},`, `"a0":{}},"Auths":{`, 1), "more than the 50000 nodecreds reads"},
		{"the merge would write one too many", tinyEntries(MaxEntries-1, 0), "would hold 50001 entries"},
		{"at the limit", tinyEntries(MaxEntries-2, 0), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, root := newEngine(t)
			p := filepath.Join(root, kubeletFile)
			testsupport.WriteFile(t, p, tt.file, 0o600)
			res := apply(t, e, []string{kubeletFile, dockerFile}, ours, true)
			if res[1].Err != nil || authOf(t, filepath.Join(root, dockerFile), "r.io") == "" {
				t.Errorf("the other target was not synced: %v", res[1].Err)
			}
			if tt.refused == "" {
				mustOK(t, res[:1])
				if len(auths(t, p)) != MaxEntries-1 {
					t.Errorf("the file holds %d entries, want %d", len(auths(t, p)), MaxEntries-1)
				}
				return
			}
			if !errors.Is(res[0].Err, ErrTooManyEntries) || !strings.Contains(res[0].Err.Error(), tt.refused) || !strings.Contains(res[0].Err.Error(), p) {
				t.Errorf("want an error naming the file and %q, got %v", tt.refused, res[0].Err)
			}
			if string(testsupport.ReadFile(t, p)) != tt.file || res[0].SetAside != "" || res[0].Changed {
				t.Errorf("the file was changed or set aside (%q)", res[0].SetAside)
			}
		})
	}
}

// TestTooManyDesiredRefusedUpFront (issue 21, point 4): sources that add
// up to more entries than a file may hold are refused for every target
// before anything is built, and nothing is touched.
func TestTooManyDesiredRefusedUpFront(t *testing.T) {
	e, root := newEngine(t)
	p := filepath.Join(root, kubeletFile)
	testsupport.WriteFile(t, p, `{"auths":{}}`, 0o600)
	set := make(dockercfg.Set, MaxEntries+1)
	for i := range set {
		set[i] = item(fmt.Sprintf("r%d.test", i), "u", "p")
	}
	res := apply(t, e, []string{kubeletFile, dockerFile}, set, true)
	for _, r := range res {
		if !errors.Is(r.Err, ErrTooManyEntries) || r.Changed {
			t.Errorf("%s: %v, changed %v; want refused", r.Target, r.Err, r.Changed)
		}
	}
	if string(testsupport.ReadFile(t, p)) != `{"auths":{}}` {
		t.Error("the file changed")
	}
}

// TestDeepNestingRefusedCheaply (issue 21, point 4): a foreign value nested
// 9,000 levels deep (18 KB, valid JSON) would indent to some 80 MB; the
// write is refused naming the size limit, having allocated little. Under a
// key nodecreds writes, the same value is displaced into the state
// (compact) without decoding it.
func TestDeepNestingRefusedCheaply(t *testing.T) {
	deep := strings.Repeat("[", 9000) + strings.Repeat("]", 9000)
	for _, tt := range []struct {
		file    string
		refused bool
	}{
		{`{"auths":{},"deep":` + deep + `}`, true},
		{`{"auths":{"r.io":{"auth":"dTpw","x":` + deep + `}}}`, false},
	} {
		e, root := newEngine(t)
		p := filepath.Join(root, kubeletFile)
		testsupport.WriteFile(t, p, tt.file, 0o600)
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		res := apply(t, e, []string{kubeletFile}, dockercfg.Set{item("r.io", "u", "p")}, true)
		runtime.ReadMemStats(&after)
		if got := after.TotalAlloc - before.TotalAlloc; got > 4<<20 {
			t.Errorf("the sync allocated %d MiB", got>>20)
		}
		if !tt.refused {
			mustOK(t, res)
			if len(res[0].Displaced) != 1 {
				t.Errorf("displaced %v, want r.io", res[0].Displaced)
			}
			continue
		}
		if !errors.Is(res[0].Err, hostfs.ErrTooLarge) || !strings.Contains(res[0].Err.Error(), "4 MiB") {
			t.Errorf("want the write refused as too large, got %v", res[0].Err)
		}
		if string(testsupport.ReadFile(t, p)) != tt.file {
			t.Error("the file was changed")
		}
	}
}

// TestSourcesAddingUpRefused (found by review): five sources each under a
// Secret's limit add up to more than nodecreds applies: refused for every
// target before anything is built, the files as they were.
func TestSourcesAddingUpRefused(t *testing.T) {
	e, root := newEngine(t)
	p := filepath.Join(root, kubeletFile)
	testsupport.WriteFile(t, p, `{"auths":{}}`, 0o600)
	var sources []dockercfg.NamedSet
	for s := range 5 {
		set := make(dockercfg.Set, dockercfg.MaxEntries/5+1)
		for i := range set {
			set[i] = item(fmt.Sprintf("r%d-%d.test", s, i), "u", "p")
		}
		sources = append(sources, dockercfg.NamedSet{Name: fmt.Sprintf("ns/s%d", s), Set: set})
	}
	res, err := e.Sync(t.Context(), []string{kubeletFile, dockerFile}, Desired{Sources: sources, Prune: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res {
		if !errors.Is(r.Err, ErrTooManyEntries) || r.Changed {
			t.Errorf("%s: %v, changed %v; want refused", r.Target, r.Err, r.Changed)
		}
	}
	if string(testsupport.ReadFile(t, p)) != `{"auths":{}}` {
		t.Error("the file changed")
	}
}

// TestFullRotationOfTheLargestSecretFitsTheState (found by review): every
// password of a 10,000-entry Secret rotated at once, into four targets:
// the intent (old and new fingerprints of every entry) fits the state.
func TestFullRotationOfTheLargestSecretFitsTheState(t *testing.T) {
	e, _ := newEngine(t)
	targets := []string{kubeletFile, dockerFile, "/var/lib/extra-a/config.json", "/var/lib/extra-b/config.json"}
	secret := func(pw string) Desired {
		set := make(dockercfg.Set, dockercfg.MaxEntries)
		for i := range set {
			set[i] = item(fmt.Sprintf("registry-%05d.example.test", i), "robot", pw)
		}
		return Desired{Sources: []dockercfg.NamedSet{{Name: "nodecreds/registry-credentials", Set: set}}, Prune: true}
	}
	for _, pw := range []string{"one", "two", "three"} {
		res, err := e.Sync(t.Context(), targets, secret(pw))
		if err != nil {
			t.Fatal(err)
		}
		mustOK(t, res)
	}
}
