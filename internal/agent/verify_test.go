package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/nodecreds/nodecreds/internal/check"
	"github.com/nodecreds/nodecreds/internal/dockercfg"
	"github.com/nodecreds/nodecreds/internal/kubeletcred"
	"github.com/nodecreds/nodecreds/internal/metrics"
	"github.com/nodecreds/nodecreds/internal/nodefile"
	"github.com/nodecreds/nodecreds/internal/source"
	"github.com/nodecreds/nodecreds/internal/verifier"
)

// registryDouble answers logins by password: accepted ones get in,
// others get a 401; down answers nothing.
type registryDouble struct {
	mu       sync.Mutex
	accepted map[string]bool
	down     bool
	logins   int
}

func (r *registryDouble) Probe(_ context.Context, _, _ string, c kubeletcred.Cred) check.ProbeResult {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.logins++
	switch {
	case r.down:
		return check.ProbeResult{Error: "connection refused"}
	case r.accepted[c.Password]:
		return check.ProbeResult{OK: true, Status: 200}
	}
	return check.ProbeResult{Status: 401, Error: "UNAUTHORIZED", Codes: []string{"UNAUTHORIZED"}}
}

func (r *registryDouble) accept(pw ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.accepted = map[string]bool{}
	for _, p := range pw {
		r.accepted[p] = true
	}
}

func passwordIn(t *testing.T, path, key string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	var f struct {
		Auths map[string]struct{ Auth string } `json:"auths"`
	}
	if err := json.Unmarshal(data, &f); err != nil {
		t.Fatal(err)
	}
	_, pw, _ := dockercfg.DecodeAuth(f.Auths[key].Auth)
	return pw
}

// TestVerifyBeforeSwitching runs the agent on real files with a real
// Verifier: a rotation reaches the files only once a login with it
// succeeds; a rejected one leaves the previous password in force and says
// so (never a password); an unreachable registry never blocks a rotation;
// a Secret that opts out, and a wildcard key, are applied at once.
func TestVerifyBeforeSwitching(t *testing.T) {
	root := t.TempDir()
	target := filepath.Join(root, "var/lib/kubelet/config.json")
	reg := &registryDouble{}
	reg.accept("pw-1")
	m := metrics.NewMetrics(prometheus.NewRegistry())
	v := verifier.New(reg, verifier.Options{Retry: 10 * time.Millisecond, MaxRetry: 20 * time.Millisecond, Metrics: m})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go v.Run(ctx) // returns nil when ctx ends
	src := &fakeSource{}
	rep := &fakeReporter{}
	logger, hook := logtest.NewNullLogger()
	logger.SetLevel(logrus.DebugLevel)
	a := New(src, nodefile.New(nodefile.Options{HostRoot: root, StateDir: "/var/lib/nodecreds"}),
		Options{Targets: []string{"/var/lib/kubelet/config.json"}, HostRoot: root, Prune: true, Metrics: m, Reporters: []Reporter{rep}, Verifier: v}, logrus.NewEntry(logger))
	secret := func(rev, pw string, noVerify bool) {
		src.snaps = []source.Snapshot{{Name: "ns/creds", Revision: rev, NoVerify: noVerify,
			Set: dockercfg.Set{{Key: "r.test", Entry: dockercfg.Entry{Username: "u", Password: pw}}}}}
	}
	settle := func() Outcome {
		t.Helper()
		a.Sync(ctx, "test")
		if err := v.Wait(ctx); err != nil {
			t.Fatal(err)
		}
		return a.Sync(ctx, "test")
	}

	// A new entry is written at once and verified after.
	secret("1", "pw-1", false)
	if o := a.Sync(ctx, "test"); o.Verifying || passwordIn(t, target, "r.test") != "pw-1" {
		t.Fatalf("a new entry waited for its login (verifying %v, password in file %q)", o.Verifying, passwordIn(t, target, "r.test"))
	}
	if o := settle(); !o.Status().OK {
		t.Fatalf("after a good login: %+v", o.Status())
	}

	// A wrong password: the previous one stays, reported as rejected.
	secret("2", "pw-2-typo", false)
	reported := len(rep.got)
	if o := a.Sync(ctx, "test"); !o.Verifying && !o.Again || len(rep.got) != reported {
		t.Fatalf("a changed password was not held for its login (verifying %v, again %v, reports %d→%d)", o.Verifying, o.Again, reported, len(rep.got))
	}
	if got := passwordIn(t, target, "r.test"); got != "pw-1" {
		t.Fatalf("before its login the new password replaced the old one (file has %q)", got)
	}
	o := settle()
	st := o.Status()
	if st.OK || st.Reason != "CredentialsRejected" || !strings.Contains(st.Message, "ns/creds") || !strings.Contains(st.Message, "401") {
		t.Fatalf("a rejection reported as %+v", st)
	}
	if got := passwordIn(t, target, "r.test"); got != "pw-1" {
		t.Fatalf("a rejected password is in the file (%q)", got)
	}
	if testutil.ToFloat64(m.Rejected.WithLabelValues("ns/creds", "r.test")) != 1 {
		t.Error("nodecreds_credentials_rejected is not 1")
	}

	// The registry goes away: a rejected password stays out.
	reg.mu.Lock()
	reg.down = true
	reg.mu.Unlock()
	time.Sleep(60 * time.Millisecond) // several retries
	if o := a.Sync(ctx, "test"); o.Status().Reason != "CredentialsRejected" || passwordIn(t, target, "r.test") != "pw-1" {
		t.Fatalf("an unreachable registry let a rejected password in: %+v", o.Status())
	}

	// The registry comes back accepting it: switched without a change
	// to the Secret.
	reg.mu.Lock()
	reg.down = false
	reg.mu.Unlock()
	reg.accept("pw-2-typo")
	deadline := time.Now().Add(5 * time.Second)
	for o = a.Sync(ctx, "test"); !o.Status().OK && time.Now().Before(deadline); o = a.Sync(ctx, "test") {
		select {
		case <-v.Changed(): // a verdict (or one seen before)
		case <-time.After(100 * time.Millisecond):
		}
	}
	if !o.Status().OK || passwordIn(t, target, "r.test") != "pw-2-typo" {
		t.Fatalf("not switched once the registry accepted it: %+v, file %q", o.Status(), passwordIn(t, target, "r.test"))
	}
	if testutil.ToFloat64(m.Rejected.WithLabelValues("ns/creds", "r.test")) != 0 {
		t.Error("nodecreds_credentials_rejected still 1")
	}

	// An unreachable registry never blocks a rotation.
	reg.mu.Lock()
	reg.down = true
	reg.mu.Unlock()
	secret("3", "pw-3", false)
	o = settle()
	if passwordIn(t, target, "r.test") != "pw-3" || !o.Status().OK || !strings.Contains(o.Status().Message, "unverified") {
		t.Fatalf("registry down: %+v, file %q", o.Status(), passwordIn(t, target, "r.test"))
	}

	// Opted out: applied at once, no login.
	reg.mu.Lock()
	before := reg.logins
	reg.mu.Unlock()
	secret("4", "pw-4", true)
	if o := a.Sync(ctx, "test"); o.Verifying || passwordIn(t, target, "r.test") != "pw-4" {
		t.Fatal("a Secret annotated nodecreds.io/verify=off waited for a login")
	}
	reg.mu.Lock()
	after := reg.logins
	reg.mu.Unlock()
	if after != before {
		t.Errorf("%d logins for a Secret that opted out", after-before)
	}

	for _, e := range hook.AllEntries() {
		line, _ := e.String()
		for _, pw := range []string{"pw-1", "pw-2-typo", "pw-3", "pw-4"} {
			if strings.Contains(line, pw) {
				t.Fatalf("a password in the log: %s", line)
			}
		}
	}
	for _, st := range rep.got {
		for _, pw := range []string{"pw-1", "pw-2-typo", "pw-3", "pw-4"} {
			if strings.Contains(st.Message, pw) {
				t.Fatalf("a password in a report: %s", st.Message)
			}
		}
	}
}

// TestVerifyWhatChanges: the logins the files call for, and only those:
//   - an agent started on files that already hold its Secret's entries
//     logs in for none of them (a fleet's restart is no login storm);
//   - a respelled key (r.test → https://r.test/) with a new password
//     keeps the previous entry, under its old key, until verified;
//   - an entry a higher-precedence Secret wins over is never verified;
//   - one Secret with many changed entries starts at most
//     maxLoginsPerSource logins; the rest are applied unverified.
func TestVerifyWhatChanges(t *testing.T) {
	root := t.TempDir()
	target := filepath.Join(root, "var/lib/kubelet/config.json")
	files := nodefile.New(nodefile.Options{HostRoot: root, StateDir: "/var/lib/nodecreds"})
	set := func(pw string, keys ...string) dockercfg.Set {
		var s dockercfg.Set
		for _, k := range keys {
			s = append(s, dockercfg.Item{Key: k, Entry: dockercfg.Entry{Username: "u", Password: pw}})
		}
		return s
	}
	src := &fakeSource{snaps: []source.Snapshot{{Name: "ns/a", Revision: "1", Set: set("pw-1", "r.test", "s.test")}}}
	newAgent := func(reg *registryDouble) (*Agent, *verifier.Verifier) {
		v := verifier.New(reg, verifier.Options{Retry: time.Hour})
		go v.Run(t.Context()) // returns nil when ctx ends
		return New(src, files, Options{Targets: []string{"/var/lib/kubelet/config.json"}, HostRoot: root, Prune: true, Verifier: v}, logrus.NewEntry(logrus.New())), v
	}
	first := &registryDouble{}
	first.accept("pw-1")
	a, v := newAgent(first)
	a.Sync(t.Context(), "test")
	if err := v.Wait(t.Context()); err != nil {
		t.Fatal(err)
	}
	if first.logins != 2 {
		t.Fatalf("%d logins for two new entries, want 2", first.logins)
	}

	// A restarted agent: nothing changed, nothing to log in for.
	again := &registryDouble{}
	again.accept("pw-1")
	a, v = newAgent(again)
	for range 3 {
		a.Sync(t.Context(), "test")
	}
	if err := v.Wait(t.Context()); err != nil {
		t.Fatal(err)
	}
	if again.logins != 0 {
		t.Errorf("a restarted agent logged in %d times for entries already in the files", again.logins)
	}

	// Respelled with a new password the registry rejects: the old entry
	// stays under its old key.
	src.snaps = []source.Snapshot{{Name: "ns/a", Revision: "2", Set: set("pw-2", "https://r.test/", "s.test")}}
	a.Sync(t.Context(), "test")
	if err := v.Wait(t.Context()); err != nil {
		t.Fatal(err)
	}
	o := a.Sync(t.Context(), "test")
	if passwordIn(t, target, "r.test") != "pw-1" || passwordIn(t, target, "https://r.test/") != "" {
		t.Errorf("a respelled key let a rejected password in: r.test=%q https://r.test/=%q", passwordIn(t, target, "r.test"), passwordIn(t, target, "https://r.test/"))
	}
	if st := o.Status(); st.Reason != "CredentialsRejected" || !strings.Contains(st.Message, "keeps its previous ones") {
		t.Errorf("status %+v", st)
	}

	// Shadowed: a higher-precedence Secret provides r.test; ns/b's
	// entry for it is never written, and never verified.
	shadow := &registryDouble{}
	shadow.accept("pw-3")
	a, v = newAgent(shadow)
	src.snaps = []source.Snapshot{
		{Name: "ns/a", Revision: "3", Set: set("pw-3", "r.test")},
		{Name: "ns/b", Revision: "1", Set: set("pw-b", "r.test")},
	}
	a.Sync(t.Context(), "test")
	if err := v.Wait(t.Context()); err != nil {
		t.Fatal(err)
	}
	if o := a.Sync(t.Context(), "test"); !o.Status().OK || shadow.logins != 1 {
		t.Errorf("with a shadowed entry: %d logins (want 1), status %+v", shadow.logins, o.Status())
	}

	// Many changed at once: at most maxLoginsPerSource logins.
	var keys []string
	for i := range 3 * maxLoginsPerSource {
		keys = append(keys, fmt.Sprintf("r%d.test", i))
	}
	many := &registryDouble{}
	many.accept("pw-4", "pw-5")
	a, v = newAgent(many)
	src.snaps = []source.Snapshot{{Name: "ns/a", Revision: "4", Set: set("pw-4", keys...)}}
	a.Sync(t.Context(), "test")
	if err := v.Wait(t.Context()); err != nil {
		t.Fatal(err)
	}
	many.logins = 0
	src.snaps = []source.Snapshot{{Name: "ns/a", Revision: "5", Set: set("pw-5", keys...)}}
	a.Sync(t.Context(), "test")
	if err := v.Wait(t.Context()); err != nil {
		t.Fatal(err)
	}
	a.Sync(t.Context(), "test")
	if many.logins != maxLoginsPerSource {
		t.Errorf("%d logins for %d changed entries of one Secret, want %d", many.logins, len(keys), maxLoginsPerSource)
	}
	for _, k := range keys {
		if got := passwordIn(t, target, k); got != "pw-5" {
			t.Fatalf("%s holds %q after the rotation, want the new password", k, got)
		}
	}
}

// TestNothingInForceAfterAFailedWrite: entries a failed sync did not
// write are not taken for the node's own (then applied unverified later).
func TestNothingInForceAfterAFailedWrite(t *testing.T) {
	reg := &registryDouble{}
	v := verifier.New(reg, verifier.Options{})
	files := &fakeFiles{injectError: errors.New("disk full")}
	src := &fakeSource{snaps: []source.Snapshot{snap("ns/a", "r.test", "u")}}
	a := New(src, files, Options{Targets: []string{"/t"}, Verifier: v}, logrus.NewEntry(logrus.New()))
	a.Sync(t.Context(), "test")
	if got := v.Check("r.test", kubeletcred.Cred{Key: "r.test", Username: "u", Password: "p"}); got.Verdict != verifier.Pending {
		t.Errorf("after a failed write: %v, want pending", got.Verdict)
	}
}

// TestOneCredentialTwoKeys: a robot account for two paths of one registry,
// one path already holding the new password, the other changing to it:
// the change still waits for its login, and a rejection keeps the old
// password on the changing path (an agent just started, knowing nothing).
func TestOneCredentialTwoKeys(t *testing.T) {
	root := t.TempDir()
	target := filepath.Join(root, "var/lib/kubelet/config.json")
	files := nodefile.New(nodefile.Options{HostRoot: root, StateDir: "/var/lib/nodecreds"})
	entry := func(pw string) dockercfg.Entry { return dockercfg.Entry{Username: "u", Password: pw} }
	src := &fakeSource{snaps: []source.Snapshot{{Name: "ns/a", Revision: "1", Set: dockercfg.Set{{Key: "r.test/a", Entry: entry("pw-2")}, {Key: "r.test/b", Entry: entry("pw-1")}}}}}
	opts := Options{Targets: []string{"/var/lib/kubelet/config.json"}, HostRoot: root, Prune: true}
	New(src, files, opts, logrus.NewEntry(logrus.New())).Sync(t.Context(), "setup")

	reg := &registryDouble{} // accepts nothing
	v := verifier.New(reg, verifier.Options{Retry: time.Hour})
	go v.Run(t.Context()) // returns nil when ctx ends
	opts.Verifier = v
	a := New(src, files, opts, logrus.NewEntry(logrus.New()))
	src.snaps = []source.Snapshot{{Name: "ns/a", Revision: "2", Set: dockercfg.Set{{Key: "r.test/a", Entry: entry("pw-2")}, {Key: "r.test/b", Entry: entry("pw-2")}}}}
	a.Sync(t.Context(), "test")
	if got := passwordIn(t, target, "r.test/b"); got != "pw-1" {
		t.Fatalf("the changed path did not wait for its login: it holds %q", got)
	}
	if err := v.Wait(t.Context()); err != nil {
		t.Fatal(err)
	}
	o := a.Sync(t.Context(), "test")
	if got := passwordIn(t, target, "r.test/b"); got != "pw-1" || reg.logins != 1 || o.Status().Reason != "CredentialsRejected" {
		t.Errorf("r.test/b holds %q after a rejection (want pw-1), %d logins, status %+v", got, reg.logins, o.Status())
	}
}

// TestVerificationIsBounded: however many registries the sources name,
// verification looks at maxVerified of them (its memory per entry stays
// within the agent's limit); the rest are applied as they come.
func TestVerificationIsBounded(t *testing.T) {
	var set dockercfg.Set
	for i := range maxVerified + 100 {
		set = append(set, dockercfg.Item{Key: fmt.Sprintf("r%d.test", i), Entry: dockercfg.Entry{Username: "u", Password: "p"}})
	}
	src := &fakeSource{snaps: []source.Snapshot{{Name: "ns/a", Revision: "1", Set: set}}}
	v := verifier.New(&registryDouble{}, verifier.Options{})
	a := New(src, &fakeFiles{}, Options{Targets: []string{"/t"}, Verifier: v}, logrus.NewEntry(logrus.New()))
	o := a.Sync(t.Context(), "test")
	if len(o.Logins) != maxVerified {
		t.Errorf("%d entries looked at for verification, want %d", len(o.Logins), maxVerified)
	}
}

// TestRotationWaitsWhole: a rotation of a Secret with more entries than
// are verified (and more than one sync starts logins for) reaches the
// files whole: all old until its logins have answered, then all new in
// one write — never part old, part new, whenever the agent is killed.
func TestRotationWaitsWhole(t *testing.T) {
	root := t.TempDir()
	target := filepath.Join(root, "var/lib/kubelet/config.json")
	files := nodefile.New(nodefile.Options{HostRoot: root, StateDir: "/var/lib/nodecreds"})
	n := maxVerified + 50
	set := func(pw string) dockercfg.Set {
		s := make(dockercfg.Set, n)
		for i := range n {
			s[i] = dockercfg.Item{Key: fmt.Sprintf("r%04d.test", i), Entry: dockercfg.Entry{Username: "u", Password: pw}}
		}
		return s
	}
	src := &fakeSource{snaps: []source.Snapshot{{Name: "ns/a", Revision: "1", Set: set("old")}}}
	opts := Options{Targets: []string{"/var/lib/kubelet/config.json"}, HostRoot: root, Prune: true}
	New(src, files, opts, logrus.NewEntry(logrus.New())).Sync(t.Context(), "setup")

	reg := &registryDouble{}
	reg.accept("new")
	v := verifier.New(reg, verifier.Options{})
	go v.Run(t.Context()) // returns nil when ctx ends
	opts.Verifier = v
	a := New(src, files, opts, logrus.NewEntry(logrus.New()))
	a.Sync(t.Context(), "restart") // nothing changed: in force
	src.snaps = []source.Snapshot{{Name: "ns/a", Revision: "2", Set: set("new")}}
	whole := func(pw string) bool {
		for i := range n {
			if passwordIn(t, target, fmt.Sprintf("r%04d.test", i)) != pw {
				return false
			}
		}
		return true
	}
	o := a.Sync(t.Context(), "rotation")
	if !o.Verifying && !o.Again || !whole("old") {
		t.Fatalf("while its logins are under way the rotation is partly in the file (verifying %v, again %v)", o.Verifying, o.Again)
	}
	if err := v.Wait(t.Context()); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if o = a.Sync(t.Context(), "login"); !o.Again {
			break
		}
	}
	if !whole("new") {
		t.Fatal("after its logins the rotation is not whole in the file")
	}
}
