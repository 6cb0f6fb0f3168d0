package nodestatus

import (
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/sirupsen/logrus/hooks/test"
	"k8s.io/client-go/tools/record"

	"github.com/nodecreds/nodecreds/internal/metrics"
	"github.com/nodecreds/nodecreds/internal/nodelock"
)

// An agent that waits for another on its node says so in its log and on
// /readyz at once; on the Node (an Event) at once when the holder is of
// another pool — two pools select the node — and only after the grace
// period for one of its own pool, whose handover in a rollout is normal.
// Each holder is reported once, however long the wait.
func TestAgentWaitReports(t *testing.T) {
	start := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	held := func(pool, pod string) nodelock.Wait {
		return nodelock.Wait{Holder: nodelock.Holder{Pool: pool, Pod: pod}, Known: true, Started: start}
	}
	type step struct {
		after   time.Duration // since the start
		wait    nodelock.Wait
		event   string // "" none; else the start of the Event ("Warning Reason")
		says    []string
		level   logrus.Level // of a log line; 0 for none
		logSays string
	}
	for _, tc := range []struct {
		name  string
		pool  string
		steps []step
	}{
		{"two pools select the node", "tenant-b", []step{
			{0, held("tenant-a", "nodecreds-tenant-a-1"), "Warning " + ReasonTwoPools, []string{"two nodecreds pools select this node", `pool "tenant-a"`, "nodecreds-tenant-a-1", `pool "tenant-b"`}, logrus.WarnLevel, "two nodecreds pools"},
			{time.Minute, held("tenant-a", "nodecreds-tenant-a-1"), "", nil, 0, ""},
		}},
		{"the default DaemonSet holds a pool's node", "tenant-b", []step{
			{0, held("", "nodecreds-1"), "Warning " + ReasonTwoPools, []string{"the default pool"}, logrus.WarnLevel, "two nodecreds pools"},
		}},
		{"a rollout's old Pod stops in time", "tenant-a", []step{
			{0, held("tenant-a", "old"), "", nil, logrus.InfoLevel, "waits for agent old of the same pool"},
			{29 * time.Second, held("tenant-a", "old"), "", nil, 0, ""},
		}},
		{"an old Pod that does not stop", "tenant-a", []step{
			{0, held("tenant-a", "old"), "", nil, logrus.InfoLevel, "same pool"},
			{31 * time.Second, held("tenant-a", "old"), "Warning " + ReasonWaitingForAgent, []string{"has waited 31s", "old"}, 0, ""},
			{5 * time.Minute, held("tenant-a", "old"), "", nil, 0, ""},
			// Another holder is a new wait, reported on its own.
			{6 * time.Minute, held("tenant-c", "intruder"), "Warning " + ReasonTwoPools, []string{"intruder"}, logrus.WarnLevel, "two nodecreds pools"},
		}},
		{"a holder that has not said who it is", "", []step{
			{0, nodelock.Wait{Started: start}, "", nil, logrus.InfoLevel, "has not said who it is"},
			{40 * time.Second, nodelock.Wait{Started: start}, "Warning " + ReasonWaitingForAgent, []string{"has not said who it is"}, 0, ""},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			now := start
			log, hook := test.NewNullLogger()
			rec := record.NewFakeRecorder(10)
			h := &metrics.Health{}
			a := &AgentWait{Recorder: rec, Node: "node-1", Pool: tc.pool, Pod: "me", Health: h, Log: logrus.NewEntry(log), Now: func() time.Time { return now }}
			for i, s := range tc.steps {
				now = start.Add(s.after)
				hook.Reset()
				a.Waiting(s.wait)
				select {
				case ev := <-rec.Events:
					if s.event == "" || !strings.HasPrefix(ev, s.event) {
						t.Errorf("step %d: Event %q, want %q", i, ev, s.event)
					}
					for _, want := range s.says {
						if !strings.Contains(ev, want) {
							t.Errorf("step %d: Event %q does not say %q", i, ev, want)
						}
					}
				default:
					if s.event != "" {
						t.Errorf("step %d: no Event, want %q", i, s.event)
					}
				}
				if h.Waiting() == "" {
					t.Errorf("step %d: /readyz does not say the agent waits", i)
				}
				entries := hook.AllEntries()
				switch {
				case s.level == 0 && len(entries) > 0:
					t.Errorf("step %d: logged again %q", i, entries[0].Message)
				case s.level != 0 && (len(entries) != 1 || entries[0].Level != s.level || !strings.Contains(entries[0].Message, s.logSays)):
					t.Errorf("step %d: log %v, want one %s line saying %q", i, entries, s.level, s.logSays)
				}
			}
			a.Acquired()
			if h.Waiting() != "" {
				t.Errorf("after the lock is taken /readyz still says %q", h.Waiting())
			}
		})
	}
}
