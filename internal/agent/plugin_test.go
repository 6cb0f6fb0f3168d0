package agent

import (
	"errors"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/nodecreds/nodecreds/internal/source"
)

// flakyPlugin fails its first installs, then succeeds.
type flakyPlugin struct {
	fail  int
	calls int
}

func (p *flakyPlugin) Install() (string, bool, error) {
	p.calls++
	if p.calls <= p.fail {
		return "", false, errors.New("the plugin folder /opt/nodecreds/bin is writable by group or others; fix: chmod go-w /opt/nodecreds/bin")
	}
	return "/opt/nodecreds/bin/nodecreds", true, nil
}

// TestPluginFailureKeepsFilesSyncing: a plugin that cannot be installed
// stops nothing — the files are synced and the sync counts as good — but it
// is logged, said in the Node condition's message, marked for a retry, and
// installed by a later sync; once installed it is not installed again.
func TestPluginFailureKeepsFilesSyncing(t *testing.T) {
	plugin := &flakyPlugin{fail: 2}
	files := &fakeFiles{}
	rep := &fakeReporter{}
	logger, hook := logtest.NewNullLogger()
	a := New(&fakeSource{snaps: []source.Snapshot{snap("a", "r.test", "u")}}, files,
		Options{Targets: []string{"/t"}, Prune: true, Plugin: plugin, Reporters: []Reporter{rep}}, logrus.NewEntry(logger))

	for i := range 2 {
		o := a.Sync(t.Context(), "test")
		if o.Err != nil || len(files.desired) != 1 {
			t.Fatalf("sync %d: %v, desired %v; the files must sync whatever the plugin", i, o.Err, files.desired.Keys())
		}
		if o.PluginErr == nil {
			t.Fatalf("sync %d: the failed install is not in the outcome (nothing would retry it)", i)
		}
		st := rep.got[len(rep.got)-1]
		if !st.OK || !strings.Contains(st.Message, "credential-provider plugin not installed") || !strings.Contains(st.Message, "chmod go-w") {
			t.Errorf("sync %d reported %+v; want OK with the plugin's failure and its fix in the message", i, st)
		}
	}
	errorsLogged := 0
	for _, e := range hook.AllEntries() {
		if e.Level == logrus.ErrorLevel && strings.Contains(e.Message, "credential-provider plugin") {
			errorsLogged++
		}
	}
	if errorsLogged != 1 {
		t.Errorf("the same failure logged as an error %d times, want once", errorsLogged)
	}
	o := a.Sync(t.Context(), "retry")
	if o.PluginErr != nil || strings.Contains(rep.got[len(rep.got)-1].Message, "plugin") {
		t.Errorf("after a good install: %v, message %q", o.PluginErr, rep.got[len(rep.got)-1].Message)
	}
	a.Sync(t.Context(), "resync")
	if plugin.calls != 3 {
		t.Errorf("%d installs, want 3 (none after it succeeded)", plugin.calls)
	}
}
