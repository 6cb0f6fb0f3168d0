package test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nodecreds/nodecreds/internal/dockercfg"
	"github.com/nodecreds/nodecreds/internal/testsupport"
	"github.com/nodecreds/nodecreds/test/releases"
)

// The upgrade and downgrade tests hand one node root (its files, its
// state, its lock) back and forth between the previous release's binary
// (RELEASES, built from its own source by test/releases) and today's, as a
// DaemonSet rollout and its rollback do, and hold the compatibility rule
// of docs/design.md ("State compatibility across releases").

const certsDir = "/etc/containerd/certs.d"

// previousRelease builds (once per machine) the binary of the newest
// release in RELEASES. A clone without that commit fails here with
// releases.ErrHistory's advice: never a skip.
func previousRelease(t *testing.T) (releases.Release, string) {
	t.Helper()
	repo, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	r, err := releases.Previous(repo)
	if err != nil {
		t.Fatal(err)
	}
	bin, err := releases.Binary(t.Context(), repo, r)
	if err != nil {
		t.Fatalf("the previous release's binary: %v", err)
	}
	return r, bin
}

// handoverNode is a node root whose original files (in the docker CLI's
// format, so that cleanup gives them back byte for byte) hold foreign
// entries, some of them for registries the Secret provides (displaced),
// one of them only in odd revisions (displaced and put back in turn).
type handoverNode struct {
	root     string
	original map[string]string      // node path (relative) → content
	modes    map[string]fs.FileMode // of the original files
	certsDir string                 // containerd's hosts folder, "" for none
	big      int                    // entries added to each revision (the kill -9 test's long writes)
}

const mirrorHostsTOML = `# The admin's mirror (ticket 42).
server = "https://mirror.example.test"

[host."https://mirror.example.test"]
  capabilities = ["pull", "resolve"]
`

func newHandoverNode(t *testing.T, withCerts bool, big int) *handoverNode {
	t.Helper()
	cli := func(v map[string]any) string {
		b, err := json.MarshalIndent(v, "", "\t")
		if err != nil {
			t.Fatal(err)
		}
		return string(b) + "\n"
	}
	entry := func(up string, more ...string) map[string]any {
		e := map[string]any{"auth": testsupport.B64(up)}
		for i := 0; i+1 < len(more); i += 2 {
			e[more[i]] = more[i+1]
		}
		return e
	}
	n := &handoverNode{root: t.TempDir(), big: big, original: map[string]string{
		kubeletFile: cli(map[string]any{
			"auths": map[string]any{
				"foreign.example.test":        entry("theirs:k-foreign"),
				"displaced.example.test":      entry("theirs:k-displaced", "email", "ops@example.test"),
				"https://index.docker.io/v1/": entry("theirs:k-hub"),
				"odd.example.test":            entry("theirs:k-odd"),
			},
			"credsStore": "desktop",
			"x-unknown":  []int{1, 2},
		}),
		dockerFile: cli(map[string]any{
			"auths": map[string]any{
				"foreign-docker.example.test": entry("theirs:d-foreign"),
				"displaced.example.test":      entry("theirs:d-displaced"),
				"https://index.docker.io/v1/": entry("theirs:d-hub"),
			},
			"credHelpers": map[string]string{"gcr.io": "gcloud"},
		}),
	}, modes: map[string]fs.FileMode{kubeletFile: 0o600, dockerFile: 0o600}}
	if withCerts {
		n.certsDir = certsDir
		p := strings.TrimPrefix(certsDir, "/") + "/mirror.example.test/hosts.toml"
		n.original[p], n.modes[p] = mirrorHostsTOML, 0o644 // an admin's, group-readable
	}
	for rel, content := range n.original {
		testsupport.WriteFile(t, filepath.Join(n.root, rel), content, n.modes[rel])
	}
	return n
}

// rev is revision r of the Secret: registry key → user:password.
func (n *handoverNode) rev(r int) map[string]string {
	m := map[string]string{
		"displaced.example.test": fmt.Sprintf("robot:d%d", r),
		"docker.io":              fmt.Sprintf("robot:h%d", r),
		"mirror.example.test":    fmt.Sprintf("robot:m%d", r),
	}
	for i := range 3 {
		m[fmt.Sprintf("reg-%d.example.test", i)] = fmt.Sprintf("robot:r%d-%d", r, i)
	}
	if r%2 == 1 {
		m["odd.example.test"] = fmt.Sprintf("robot:o%d", r)
	}
	maps.Copy(m, bigSecret(n.big, fmt.Sprintf("big%d", r)))
	return m
}

// spelled is key as written in the target: the docker CLI's file names
// Docker Hub as the docker CLI does.
func spelled(target, key string) string {
	if target == dockerFile && key == "docker.io" {
		return "https://index.docker.io/v1/"
	}
	return key
}

// hostDir is the folder of key's hosts.toml under the certs folder.
func hostDir(key string) string {
	if key == "docker.io" {
		return "docker.io"
	}
	return key
}

// state reads the targets' displaced entries from state.json (format 1).
func (n *handoverNode) displaced() (map[string]map[string]json.RawMessage, error) {
	data, err := os.ReadFile(filepath.Join(n.root, "var/lib/nodecreds/state.json"))
	if err != nil {
		return nil, fmt.Errorf("state.json: %w", err)
	}
	var st struct {
		Targets map[string]struct {
			Displaced map[string]json.RawMessage `json:"displaced"`
		} `json:"targets"`
	}
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("state.json: %w", err)
	}
	out := map[string]map[string]json.RawMessage{}
	for target, ts := range st.Targets {
		out[strings.TrimPrefix(target, "/")] = ts.Displaced
	}
	return out, nil
}

// check returns what is wrong on the node for revisions revs: each target
// holds exactly one of them (every entry of that revision as the Secret
// gives it, every foreign entry it does not override verbatim, every other
// field as it was, no key twice); every original entry it overrides is in
// the state, verbatim (with exact, only those); each hosts.toml carries
// one of them. With exact, it also wants every file at the same revision,
// the state folder without leftovers, and no temp file anywhere.
func (n *handoverNode) check(exact bool, revs ...int) error {
	disp, err := n.displaced()
	if err != nil {
		return err
	}
	var errs []error
	held := map[int]int{}
	for _, target := range []string{kubeletFile, dockerFile} {
		r, err := n.checkTarget(target, disp[target], exact, revs)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		held[r]++
	}
	if n.certsDir != "" {
		for _, r := range revs {
			if err := n.checkHostsTOML(r); err == nil {
				held[r]++
				break
			} else if r == revs[len(revs)-1] {
				errs = append(errs, err)
			}
		}
	}
	if exact && len(errs) == 0 && len(held) != 1 {
		errs = append(errs, fmt.Errorf("files at different revisions: %v", held))
	}
	if exact {
		if err := n.checkLeftovers(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// checkTarget checks one target against revs and returns the one it holds.
func (n *handoverNode) checkTarget(target string, disp map[string]json.RawMessage, exact bool, revs []int) (int, error) {
	data, err := os.ReadFile(filepath.Join(n.root, target))
	if err != nil {
		return 0, err
	}
	if err := noDuplicateKeys(data); err != nil {
		return 0, fmt.Errorf("%s: %w", target, err)
	}
	var doc, orig map[string]json.RawMessage
	if err := json.Unmarshal(data, &doc); err != nil {
		return 0, fmt.Errorf("%s is not JSON: %w", target, err)
	}
	if err := json.Unmarshal([]byte(n.original[target]), &orig); err != nil {
		return 0, err
	}
	for k, v := range orig {
		if k != "auths" && !sameJSON(v, doc[k]) {
			return 0, fmt.Errorf("%s: field %s changed", target, k)
		}
	}
	if len(doc) != len(orig) {
		return 0, fmt.Errorf("%s: top-level fields %v, want %v", target, slices.Sorted(maps.Keys(doc)), slices.Sorted(maps.Keys(orig)))
	}
	var auths, origAuths map[string]json.RawMessage
	if err := json.Unmarshal(doc["auths"], &auths); err != nil {
		return 0, fmt.Errorf("%s: auths: %w", target, err)
	}
	_ = json.Unmarshal(orig["auths"], &origAuths)

	// Every original entry is in the file verbatim or displaced into the
	// state verbatim: never lost, whatever revision the file holds.
	for k, v := range origAuths {
		if !sameJSON(auths[k], v) && !sameJSON(disp[k], v) {
			return 0, fmt.Errorf("%s: the foreign entry %s is neither in the file nor kept in the state", target, k)
		}
	}
	var problems []string
	for _, r := range revs {
		want := map[string]json.RawMessage{}
		provided := map[string]bool{}
		for key, up := range n.rev(r) {
			provided[dockercfg.Normalize(key)] = true
			want[spelled(target, key)] = json.RawMessage(`{"auth":"` + testsupport.B64(up) + `"}`)
		}
		for k, v := range origAuths {
			if !provided[dockercfg.Normalize(k)] {
				want[k] = v
			}
		}
		if p := sameAuths(auths, want); p != "" {
			problems = append(problems, fmt.Sprintf("revision %d: %s", r, p))
			continue
		}
		if exact {
			var wantDisp []string
			for k := range origAuths {
				if provided[dockercfg.Normalize(k)] {
					wantDisp = append(wantDisp, k)
				}
			}
			slices.Sort(wantDisp)
			if got := slices.Sorted(maps.Keys(disp)); !slices.Equal(got, wantDisp) {
				return 0, fmt.Errorf("%s at revision %d: the state keeps displaced %v, want %v", target, r, got, wantDisp)
			}
		}
		return r, nil
	}
	return 0, fmt.Errorf("%s holds none of revisions %v whole: %s", target, revs, strings.Join(problems, "; "))
}

// sameAuths says how got differs from want ("" when it does not).
func sameAuths(got, want map[string]json.RawMessage) string {
	var missing, extra, changed []string
	for k, v := range want {
		g, ok := got[k]
		switch {
		case !ok:
			missing = append(missing, k)
		case !sameJSON(g, v):
			changed = append(changed, k)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			extra = append(extra, k)
		}
	}
	if len(missing)+len(extra)+len(changed) == 0 {
		return ""
	}
	short := func(s []string) []string {
		slices.Sort(s)
		if len(s) > 3 {
			return append(s[:3:3], fmt.Sprintf("… %d in all", len(s)))
		}
		return s
	}
	return fmt.Sprintf("missing %v, not wanted %v, other value %v", short(missing), short(extra), short(changed))
}

// checkHostsTOML checks that every registry of revision r has its header
// (once) in its hosts.toml, the admin's file kept around it, and that no
// file nodecreds created for a registry r lacks is left.
func (n *handoverNode) checkHostsTOML(r int) error {
	rev := n.rev(r)
	for key := range n.rev(1) { // every registry any revision has
		rel := filepath.Join(strings.TrimPrefix(n.certsDir, "/"), hostDir(key), "hosts.toml")
		data, err := os.ReadFile(filepath.Join(n.root, rel))
		up, provided := rev[key]
		if !provided {
			if !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("%s left at revision %d (%w)", rel, r, err)
			}
			continue
		}
		if err != nil {
			return err
		}
		s := string(data)
		header := `Authorization = "Basic ` + testsupport.B64(up) + `"`
		if strings.Count(s, header) != 1 || strings.Count(s, "Authorization = ") != 1 {
			return fmt.Errorf("%s does not hold revision %d's header once", rel, r)
		}
		if orig, ok := n.original[rel]; ok && !strings.HasPrefix(s, orig) {
			return fmt.Errorf("%s: the admin's content changed:\n%s", rel, s)
		}
	}
	return nil
}

// checkLeftovers wants no temp file of nodecreds' anywhere under the root
// and only its own files in the state folder.
func (n *handoverNode) checkLeftovers() error {
	var bad []string
	err := filepath.WalkDir(n.root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(n.root, path)
		switch {
		case d.IsDir():
		case filepath.Dir(rel) == "var/lib/nodecreds":
			if !slices.Contains([]string{"lock", "agent.lock", "state.json", "hoststoml.json"}, d.Name()) {
				bad = append(bad, rel)
			}
		case strings.Contains(d.Name(), ".nodecreds-") || strings.Contains(d.Name(), "corrupt"):
			bad = append(bad, rel)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if len(bad) > 0 {
		return fmt.Errorf("left behind: %v", bad)
	}
	return nil
}

// checkRestored fails unless the root holds exactly the original files,
// byte for byte and with their modes (and the state folder's locks).
func (n *handoverNode) checkRestored(t *testing.T, by string) {
	t.Helper()
	seen := map[string]bool{}
	err := filepath.WalkDir(n.root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(n.root, path)
		if rel == "var/lib/nodecreds/lock" || rel == "var/lib/nodecreds/agent.lock" {
			return nil
		}
		seen[rel] = true
		want, ok := n.original[rel]
		if !ok {
			t.Errorf("cleanup by %s left %s", by, rel)
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if got := testsupport.ReadFile(t, path); string(got) != want || info.Mode().Perm() != n.modes[rel] {
			t.Errorf("cleanup by %s: %s (mode %o) is not the original (mode %o):\n%s\nwant\n%s", by, rel, info.Mode().Perm(), n.modes[rel], got, want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for rel := range n.original {
		if !seen[rel] {
			t.Errorf("cleanup by %s lost %s", by, rel)
		}
	}
}

// noDuplicateKeys fails on an object of data that names a key twice
// (encoding/json would keep the last silently).
func noDuplicateKeys(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	var walk func() error
	walk = func() error {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		switch tok {
		case json.Delim('{'):
			seen := map[string]bool{}
			for dec.More() {
				k, err := dec.Token()
				if err != nil {
					return err
				}
				if seen[k.(string)] {
					return fmt.Errorf("key %q twice", k)
				}
				seen[k.(string)] = true
				if err := walk(); err != nil {
					return err
				}
			}
			_, err = dec.Token()
			return err
		case json.Delim('['):
			for dec.More() {
				if err := walk(); err != nil {
					return err
				}
			}
			_, err = dec.Token()
			return err
		}
		return nil
	}
	if err := walk(); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("trailing data after the document")
	}
	return nil
}

// errorLines returns an agent log's error lines, the last few.
func errorLines(logs string) string {
	var out []string
	for _, l := range strings.Split(logs, "\n") {
		if strings.Contains(l, "level=error") {
			out = append(out, l)
		}
	}
	return strings.Join(out[max(0, len(out)-3):], "\n")
}

func sameJSON(a, b json.RawMessage) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	xb, _ := json.Marshal(x)
	yb, _ := json.Marshal(y)
	return bytes.Equal(xb, yb)
}

// TestUpgradeDowngrade: the previous release runs as the agent on a node
// with foreign and displaced entries and an admin's hosts.toml; it is
// stopped (SIGTERM) with a rotation pending; today's agent takes the same
// root (files, state, lock) over, applies it, rotates, and is stopped with
// another pending; the previous release takes over again and rotates.
// After each hand-over every file holds one revision entire, every
// foreign entry is in the file or, displaced, in the state, verbatim; once
// the new agent has caught up, exactly the current revision and the
// entries it displaces. Cleanup by the previous release (first run) and
// by today's (second run) gives back the original files byte for byte.
func TestUpgradeDowngrade(t *testing.T) {
	rel, old := previousRelease(t)
	for _, tc := range []struct{ cleanupBy, bin string }{{"release " + rel.Version, old}, {"today's nodecreds", binary}} {
		t.Run("cleanup by "+tc.cleanupBy, func(t *testing.T) {
			start := time.Now()
			n := newHandoverNode(t, true, 0)
			secret := newSecretDir(t, ".dockerconfigjson", dockerconfigjson(t, n.rev(1)))
			args := []string{"--source", "dir", "--secret-dir", secret.dir, "--host-root", n.root, "--containerd-certs-dir", certsDir,
				"--metrics-addr", "0", "--log-format", "text"}
			rotate := func(r int) { secret.swap(".dockerconfigjson", dockerconfigjson(t, n.rev(r))) }
			caughtUp := func(a *agentProc, who string, r int) {
				t.Helper()
				var last error
				for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
					if last = n.check(true, r); last == nil {
						return
					}
				}
				t.Fatalf("%s has not applied revision %d within 30s: %v\nits errors:\n%s", who, r, last, errorLines(a.logs.String()))
			}
			handedOver := func(r int) {
				t.Helper()
				if err := n.check(false, r-1, r); err != nil {
					t.Fatalf("after the stop with revision %d pending: %v", r, err)
				}
			}
			stop := func(a *agentProc, who string) {
				t.Helper()
				if code := a.stop(t); code != 0 {
					t.Fatalf("%s exited %d on SIGTERM:\n%s", who, code, a.logs.String())
				}
			}

			prev := startAgentOf(t, old, args...)
			caughtUp(prev, "release "+rel.Version, 1)
			rotate(2)
			stop(prev, "release "+rel.Version)
			handedOver(2)

			today := startAgent(t, args...)
			caughtUp(today, "today's agent, taking over", 2)
			rotate(3)
			caughtUp(today, "today's agent", 3)
			rotate(4)
			stop(today, "today's agent")
			handedOver(4)

			back := startAgentOf(t, old, args...)
			caughtUp(back, "release "+rel.Version+", rolled back to,", 4)
			rotate(5)
			caughtUp(back, "release "+rel.Version, 5)
			stop(back, "release "+rel.Version)
			if err := n.check(true, 5); err != nil {
				t.Fatal(err)
			}

			if out, err := exec.Command(tc.bin, "cleanup", "--host-root", n.root, "--log-format", "text").CombinedOutput(); err != nil {
				t.Fatalf("cleanup by %s: %v\n%s", tc.cleanupBy, err, out)
			}
			n.checkRestored(t, tc.cleanupBy)
			t.Logf("three hand-overs, five revisions and cleanup by %s in %s", tc.cleanupBy, time.Since(start).Round(time.Millisecond))
		})
	}
}

// TestUpgradeDowngradeKill9: kill -9 at the hand-over. In turn the previous
// release and today's nodecreds are killed at a random instant of a
// rotation of a file of a thousand entries; the other binary then takes
// the root over and completes it. After each kill each file holds one
// revision whole with every foreign entry in it or displaced into the
// state; after each take-over exactly the new revision; cleanup at the
// end gives back the original files.
func TestUpgradeDowngradeKill9(t *testing.T) {
	rel, old := previousRelease(t)
	const minRounds, maxRounds, wantMidway = 12, 80, 3
	n := newHandoverNode(t, false, 1000)
	secret := t.TempDir()
	setRev := func(r int) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(secret, ".dockerconfigjson"), dockerconfigjson(t, n.rev(r)), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	args := []string{"sync", "--once", "--source", "dir", "--secret-dir", secret, "--host-root", n.root, "--metrics-addr", "0", "--log-level", "error"}
	bins := []struct{ name, path string }{{"release " + rel.Version, old}, {"today's nodecreds", plainBinary}}
	once := func(bin string) time.Duration {
		t.Helper()
		start := time.Now()
		if out, err := exec.Command(bin, args...).CombinedOutput(); err != nil {
			t.Fatalf("%s %v: %v\n%s", bin, args, err, out)
		}
		return time.Since(start)
	}

	// How long a rotation takes (the slowest of either binary's), to
	// spread the kills over it.
	var full time.Duration
	for r := 1; r <= 4; r++ {
		setRev(r)
		full = max(full, once(bins[r%2].path))
	}
	if err := n.check(true, 4); err != nil {
		t.Fatal(err)
	}
	full = full * 3 / 2

	// Rounds alternate the binary killed, until each was killed after it
	// replaced the kubelet file (mid-rotation, the other target and the
	// final state save still to come) a few times, and at least minRounds.
	rng := rand.New(rand.NewPCG(3, 4))
	midway := [2]int{}
	i := 0
	for ; i < minRounds || min(midway[0], midway[1]) < wantMidway; i++ {
		if i == maxRounds {
			t.Fatalf("in %d rounds the kills landed mid-rotation %d times (release %s killed) and %d times (today's killed), want %d each: the test is not exercising the hand-over",
				i, midway[0], rel.Version, midway[1], wantMidway)
		}
		r := 5 + i
		victim, taker := bins[i%2], bins[1-i%2]
		before := testsupport.ReadFile(t, filepath.Join(n.root, kubeletFile))
		setRev(r)
		cmd := exec.Command(victim.path, args...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Past the first third: the start (reading the Secret, the state
		// and the files) writes nothing.
		time.Sleep(full/3 + time.Duration(rng.Int64N(int64(full)*2/3+1)))
		_ = cmd.Process.Signal(syscall.SIGKILL)
		err := cmd.Wait()
		if ee := (*exec.ExitError)(nil); errors.As(err, &ee) && ee.ExitCode() == -1 &&
			!bytes.Equal(before, testsupport.ReadFile(t, filepath.Join(n.root, kubeletFile))) {
			midway[i%2]++ // killed after it replaced the kubelet file
		}
		if err := n.check(false, r-1, r); err != nil {
			t.Fatalf("round %d, %s killed: %v", i, victim.name, err)
		}
		once(taker.path)
		if err := n.check(true, r); err != nil {
			t.Fatalf("round %d, %s taking over from %s killed: %v", i, taker.name, victim.name, err)
		}
	}
	t.Logf("a rotation of %d entries takes up to %s; in %d rounds, kills within %s landed after the kubelet file was replaced %d times (release %s killed) and %d times (today's killed)",
		len(n.rev(0)), full*2/3, i, full, midway[0], rel.Version, midway[1])
	if out, err := exec.Command(old, "cleanup", "--host-root", n.root).CombinedOutput(); err != nil {
		t.Fatalf("cleanup by release %s: %v\n%s", rel.Version, err, out)
	}
	n.checkRestored(t, "release "+rel.Version)
}
