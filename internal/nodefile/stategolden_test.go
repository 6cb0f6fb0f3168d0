package nodefile

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nodecreds/nodecreds/internal/dockercfg"
	"github.com/nodecreds/nodecreds/internal/hostfs"
	"github.com/nodecreds/nodecreds/internal/testsupport"
	"github.com/nodecreds/nodecreds/test/releases"
)

// goldenDir holds, per release, its state folder and node files as that
// release's binary left them (testdata/state/README.md).
const goldenDir = "testdata/state"

// TestStateGolden holds the compatibility rule of docs/design.md ("State
// compatibility across releases") for the state every release wrote: today's
// code decodes state.json, hoststoml.json and rejected.json of each release
// in RELEASES and finds in them what that release recorded (its entries in
// the node files recognised, the foreign entries it displaced verbatim, the
// files it created, its corrupt copy, its stale fingerprints, the modes and
// records of hosts.toml files, the rejected credential); a sync of the
// credentials those files hold writes nothing; cleanup gives back the
// original node files byte for byte. A release named in RELEASES without
// golden files fails it.
func TestStateGolden(t *testing.T) {
	rs, err := releases.Read(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	named := map[string]bool{}
	for _, r := range rs {
		named[r.Version] = true
		t.Run(r.Version, func(t *testing.T) {
			dir := filepath.Join(goldenDir, r.Version)
			for _, f := range []string{stateFileName, hostsTOMLFileName, rejectionsFileName, "applied.json", "node", "original"} {
				if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
					t.Fatalf("RELEASES names %s but %s has no golden %s (%v): every released state format is kept; make them with `go run ./internal/nodefile/testdata/state/generate.go %s` (testdata/state/README.md)",
						r.Version, dir, f, err, r.Version)
				}
			}
			checkGolden(t, dir)
		})
	}
	entries, err := os.ReadDir(goldenDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.IsDir() && !named[e.Name()] {
			t.Errorf("%s/%s is the state of no release in RELEASES", goldenDir, e.Name())
		}
	}
}

func checkGolden(t *testing.T, dir string) {
	e, root := newEngine(t)
	copyTree(t, filepath.Join(dir, "node"), root)
	for _, f := range []string{stateFileName, hostsTOMLFileName, rejectionsFileName} {
		testsupport.WriteFile(t, filepath.Join(root, stateDir, f), string(testsupport.ReadFile(t, filepath.Join(dir, f))), 0o600)
	}
	original := readTree(t, filepath.Join(dir, "original"))
	node := readTree(t, filepath.Join(dir, "node"))
	applied, _, err := dockercfg.Parse(testsupport.ReadFile(t, filepath.Join(dir, "applied.json")), dockercfg.ConfigJSON)
	if err != nil {
		t.Fatal(err)
	}

	// state.json
	var st *State
	var recs hostsTOMLFile
	err = e.withStateDir(t.Context(), func(_ *hostfs.Root, sd *hostfs.Dir) error {
		var err error
		if st, err = loadState(sd, nil); err != nil {
			return err
		}
		recs, err = loadHostsTOMLFile(sd)
		return err
	})
	if err != nil {
		t.Fatalf("today's nodecreds cannot read the state: %v", err)
	}
	if got := slices.Sorted(maps.Keys(st.Targets)); !slices.Equal(got, []string{dockerFile, kubeletFile}) {
		t.Fatalf("targets %v", got)
	}
	source := ""
	for _, target := range []string{kubeletFile, dockerFile} {
		ts := st.Targets[target]
		doc := docOf(t, node[strings.TrimPrefix(target, "/")])
		view, _ := dockercfg.View(dockercfg.ReaderOf(target), dockercfg.NamedSet{Set: applied})
		var want []string
		for _, it := range view {
			want = append(want, it.Key)
		}
		slices.Sort(want)
		if got := slices.Sorted(maps.Keys(ownedIn(doc, *ts))); !slices.Equal(got, want) {
			t.Errorf("%s: the entries recognised as nodecreds' are %v, want %v (those of the applied Secret)", target, got, want)
		}
		for _, k := range want {
			if source == "" {
				source = ts.From[k]
			}
			if ts.From[k] == "" || ts.From[k] != source {
				t.Errorf("%s: entry %s from source %q, want %q", target, k, ts.From[k], source)
			}
		}
		if _, had := original[strings.TrimPrefix(target, "/")]; ts.Created == had {
			t.Errorf("%s: created %v, but the file existed before: %v", target, ts.Created, had)
		}
		if len(ts.Stale) == 0 || ts.Stale["pruned.example.test"].fp == "" {
			t.Errorf("%s: no stale fingerprint of the pruned entry: %v", target, ts.Stale)
		}
	}
	kubelet := st.Targets[kubeletFile]
	orig := docOf(t, original[strings.TrimPrefix(kubeletFile, "/")])
	wantDisplaced := []string{"displaced.example.test", "https://index.docker.io/v1/"}
	if got := slices.Sorted(maps.Keys(kubelet.Displaced)); !slices.Equal(got, wantDisplaced) {
		t.Errorf("displaced %v, want %v", got, wantDisplaced)
	}
	for k, raw := range kubelet.Displaced {
		if !sameJSON(raw, orig.auths[k]) {
			t.Errorf("displaced %s is not the original entry", k)
		}
	}
	copies := slices.Collect(maps.Keys(st.Targets[dockerFile].Copies))
	if len(copies) != 1 || node["root/.docker/"+copies[0]] == "" || !slices.Equal(st.Targets[dockerFile].Copies[copies[0]], []string{source}) {
		t.Errorf("corrupt copies %v", st.Targets[dockerFile].Copies)
	}

	// hoststoml.json: a record of each hosts.toml, created unless the
	// admin's, whose mode is kept.
	var wantPaths []string
	for rel := range node {
		if strings.HasSuffix(rel, "/hosts.toml") {
			wantPaths = append(wantPaths, "/"+rel)
		}
	}
	slices.Sort(wantPaths)
	if got := slices.Sorted(maps.Keys(recs.Files)); !slices.Equal(got, wantPaths) {
		t.Errorf("hosts.toml records %v, want %v", got, wantPaths)
	}
	for p, rec := range recs.Files {
		_, admins := original[strings.TrimPrefix(p, "/")]
		if rec.Created == admins || len(rec.Changes) == 0 {
			t.Errorf("hosts.toml record %s: %+v", p, rec)
		}
		if m, ok := recs.Modes[p]; ok != admins || admins && m != 0o644 {
			t.Errorf("hosts.toml %s: mode kept %v %o", p, ok, m)
		}
	}

	// rejected.json: read, not dropped as unreadable.
	rejected, err := e.LoadRejections(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(rejected) != 1 || !strings.HasPrefix(rejected[0].Host, "127.0.0.1:") || rejected[0].Status != 401 || len(rejected[0].Digest) != 64 {
		t.Errorf("rejections %+v", rejected)
	}
	if _, err := os.Stat(filepath.Join(root, stateDir, rejectionsFileName)); err != nil {
		t.Errorf("rejected.json dropped: %v", err)
	}

	// The same credentials again: nothing to write.
	res, err := e.Sync(t.Context(), []string{kubeletFile, dockerFile}, Desired{Sources: []dockercfg.NamedSet{{Name: source, Set: applied}}, Prune: true})
	if err != nil {
		t.Fatal(err)
	}
	mustOK(t, res)
	for _, r := range res {
		if r.Changed || len(r.Displaced) > 0 || len(r.Released) > 0 {
			t.Errorf("%s: a sync of what the release applied changed it: %+v", r.Target, r)
		}
	}
	for _, target := range []string{kubeletFile, dockerFile} {
		rel := strings.TrimPrefix(target, "/")
		if got := string(testsupport.ReadFile(t, filepath.Join(root, rel))); got != node[rel] {
			t.Errorf("%s rewritten:\n%s", target, got)
		}
	}

	// Cleanup of the node files: the originals, byte for byte; the file
	// and the corrupt copy nodecreds made, gone.
	res, err = e.Cleanup(t.Context(), nil)
	if err != nil {
		t.Fatal(err)
	}
	mustOK(t, res)
	for _, target := range []string{kubeletFile, dockerFile} {
		rel := strings.TrimPrefix(target, "/")
		got, err := os.ReadFile(filepath.Join(root, rel))
		want, had := original[rel]
		switch {
		case !had && !errors.Is(err, fs.ErrNotExist):
			t.Errorf("%s, created by the release, still there after cleanup: %v", target, err)
		case had && !bytes.Equal(got, []byte(want)):
			t.Errorf("%s after cleanup:\n%s\nwant\n%s", target, got, want)
		}
	}
	if _, err := os.Stat(filepath.Join(root, "root/.docker", copies[0])); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("corrupt copy left after cleanup: %v", err)
	}
}

// copyTree copies the files under src into dst (0600, folders 0700).
func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	for rel, content := range readTree(t, src) {
		testsupport.WriteFile(t, filepath.Join(dst, rel), content, 0o600)
	}
}

// readTree returns the files under dir by relative path.
func readTree(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(path)
		rel, _ := filepath.Rel(dir, path)
		out[filepath.ToSlash(rel)] = string(data)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestStateVersionRefusal: a state file of a version this nodecreds does not
// read is refused, nothing written, with the way out the compatibility
// rule leaves: one minor release at a time, in the direction that fits.
func TestStateVersionRefusal(t *testing.T) {
	for _, tt := range []struct {
		version int
		want    string
	}{
		{oldestStateVersion - 1, "upgrade one minor release at a time"},
		{stateVersion + 1, "roll back one minor release at a time"},
	} {
		e, root := newEngine(t)
		before := `{"auths":{"f.test":{"auth":"Zjpw"}}}`
		testsupport.WriteFile(t, filepath.Join(root, kubeletFile), before, 0o600)
		testsupport.WriteFile(t, filepath.Join(root, stateDir, stateFileName), fmt.Sprintf(`{"version":%d,"targets":{}}`, tt.version), 0o600)
		_, err := e.Apply(t.Context(), []string{kubeletFile}, dockercfg.Set{item("r.test", "u", "p")}, true)
		if !errors.Is(err, ErrState) || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), fmt.Sprintf("has version %d", tt.version)) {
			t.Errorf("version %d: %v, want ErrState saying %q", tt.version, err, tt.want)
		}
		if got := string(testsupport.ReadFile(t, filepath.Join(root, kubeletFile))); got != before {
			t.Errorf("version %d: the target was written: %s", tt.version, got)
		}
	}
}

// TestStateSavedInThisReleasesVersion: a state read at another version it
// reads is saved at this release's, the format it writes: kept at the
// version it was read with, a newer format would go out under an older
// number, which the release before would take for its own.
func TestStateSavedInThisReleasesVersion(t *testing.T) {
	e, root := newEngine(t)
	err := e.withStateDir(t.Context(), func(_ *hostfs.Root, sd *hostfs.Dir) error {
		return saveState(sd, &State{Version: oldestStateVersion - 1, Targets: map[string]*TargetState{kubeletFile: {Created: true}}}, nil)
	})
	if err != nil {
		t.Fatal(err)
	}
	var saved struct{ Version int }
	if err := json.Unmarshal(testsupport.ReadFile(t, filepath.Join(root, stateDir, stateFileName)), &saved); err != nil || saved.Version != stateVersion {
		t.Errorf("saved at version %d (%v), want %d", saved.Version, err, stateVersion)
	}
}
