package agent

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/nodecreds/nodecreds/internal/dockercfg"
	"github.com/nodecreds/nodecreds/internal/nodefile"
	"github.com/nodecreds/nodecreds/internal/source"
	"github.com/nodecreds/nodecreds/internal/testsupport"
)

const keyCanary = "Zq7CanaryKeyPw9"

// foreignKeyFiles reports every foreign key as released, displaced and
// restored, and a warning naming one, as nodefile does for keys read from
// the node's files.
type foreignKeyFiles struct{ keys []string }

func (f foreignKeyFiles) Sync(_ context.Context, targets []string, _ nodefile.Desired) ([]nodefile.Result, error) {
	out := make([]nodefile.Result, len(targets))
	for i, t := range targets {
		out[i] = nodefile.Result{Target: t, Changed: true, Released: f.keys, Displaced: f.keys, Restored: f.keys}
	}
	return out, nil
}
func (foreignKeyFiles) Route(p string) (string, []string, error) { return p, nil, nil }

// TestLoggedKeysHideUserInfo: the keys the agent logs — released,
// displaced and restored foreign keys from the node's files, clashes, the
// registries applied — go through dockercfg.SafeKey at every level.
func TestLoggedKeysHideUserInfo(t *testing.T) {
	keys := testsupport.UserInfoKeys(keyCanary)
	clashes := make([]dockercfg.Clash, 0, len(keys))
	for _, k := range keys {
		clashes = append(clashes, dockercfg.Clash{Registry: dockercfg.Normalize(k), WinnerKey: k, Winner: "a", LoserKey: k, Loser: "b"})
	}
	set := make(dockercfg.Set, len(keys))
	for i, k := range keys {
		set[i] = dockercfg.Item{Key: k, Entry: dockercfg.Entry{Username: "u", Password: "p"}}
	}
	logger, hook := logtest.NewNullLogger()
	logger.SetLevel(logrus.DebugLevel)
	src := &fakeSource{snaps: []source.Snapshot{{Name: "ns/s", Revision: "1", Set: set, Clashes: clashes}}}
	a := New(src, foreignKeyFiles{keys: keys}, Options{Targets: []string{"/var/lib/kubelet/config.json"}, Prune: true}, logrus.NewEntry(logger))
	a.Sync(t.Context(), "test")
	var text strings.Builder
	for _, e := range hook.AllEntries() {
		s, err := e.String()
		if err != nil {
			t.Fatal(err)
		}
		text.WriteString(s)
		fmt.Fprintf(&text, "%v\n", e.Data) // values as %v prints them too
	}
	for _, want := range []string{"displaced", "restored", "changed by someone else", "the first wins"} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("nothing logged saying %q:\n%s", want, text.String())
		}
	}
	if leak := testsupport.Leak(text.String(), keyCanary); leak != "" {
		t.Errorf("the log holds %q of a password in a key:\n%s", leak, text.String())
	}
}
