package nodestatus

import (
	"fmt"
	"time"

	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/nodecreds/nodecreds/internal/nodelock"
)

// Event reasons of an agent that waits for another one on its node.
const (
	// ReasonTwoPools: an agent of another pool holds the node's files.
	ReasonTwoPools = "TwoPoolsSelectNode"
	// ReasonWaitingForAgent: an agent of the same pool (or one that did not
	// say) has held the node's files for longer than a handover takes.
	ReasonWaitingForAgent = "WaitingForAgent"
)

// Readiness is told why the agent is not ready to sync (metrics.Health,
// which /readyz serves).
type Readiness interface {
	SetWaiting(why string)
}

// DefaultWaitGrace is how long a wait for an agent of the same pool stays
// off the Node: a rollout's old Pod has terminationGracePeriodSeconds (10 s
// in the chart) to stop, and every node of a fleet goes through one such
// wait per rollout.
const DefaultWaitGrace = 30 * time.Second

// AgentWait reports an agent that waits for another agent holding its
// node's files (nodelock): in the log and on /readyz at once, and as an
// Event on the Node — at once when the holder is of another pool (two
// pools select this node, which the operator must fix), after Grace
// otherwise. It never touches the Node's annotations or condition: those
// are the holder's.
type AgentWait struct {
	Recorder Recorder // nil without a Node to report to
	Node     string
	Pool     string    // this agent's pool
	Pod      string    // this agent's Pod
	Health   Readiness // nil without one
	Log      *logrus.Entry
	// Grace is DefaultWaitGrace when zero.
	Grace time.Duration
	// Now is the clock; time.Now when nil.
	Now func() time.Time

	holder   nodelock.Holder
	known    bool
	seen     bool      // a holder was seen (holder/known are set)
	since    time.Time // when this holder was first seen
	reported bool      // an Event was recorded for this holder
}

// Waiting is nodelock.Options.OnWait.
func (a *AgentWait) Waiting(w nodelock.Wait) {
	now := a.now()
	if !a.seen || w.Known != a.known || w.Holder.Pool != a.holder.Pool || w.Holder.Pod != a.holder.Pod {
		a.seen, a.holder, a.known, a.since, a.reported = true, w.Holder, w.Known, now, false
		msg := a.message(w, 0)
		if a.Health != nil {
			a.Health.SetWaiting(msg)
		}
		fields := logrus.Fields{"pool": a.Pool, "holderPool": w.Holder.Pool, "holderPod": w.Holder.Pod, "holderSince": w.Holder.Since}
		if w.OtherPool(a.Pool) {
			a.Log.WithFields(fields).Warn(msg)
		} else {
			a.Log.WithFields(fields).Info(msg)
		}
	}
	if a.reported || a.Recorder == nil {
		return
	}
	grace := a.Grace
	if grace == 0 {
		grace = DefaultWaitGrace
	}
	waited := now.Sub(a.since)
	if !w.OtherPool(a.Pool) && waited < grace {
		return
	}
	reason := ReasonWaitingForAgent
	if w.OtherPool(a.Pool) {
		reason = ReasonTwoPools
	}
	ref := &corev1.ObjectReference{Kind: "Node", Name: a.Node, UID: types.UID(a.Node)}
	a.Recorder.Event(ref, corev1.EventTypeWarning, reason, a.message(w, waited))
	a.reported = true
}

// Acquired ends the wait.
func (a *AgentWait) Acquired() {
	if a.Health != nil {
		a.Health.SetWaiting("")
	}
	if a.seen {
		a.Log.WithFields(logrus.Fields{"pool": a.Pool, "waited": a.now().Sub(a.since).Round(time.Millisecond).String()}).Info("the other agent stopped; this agent holds the node's files now")
	}
}

func (a *AgentWait) message(w nodelock.Wait, waited time.Duration) string {
	me := fmt.Sprintf("agent %s of %s", a.Pod, poolName(a.Pool))
	switch {
	case !w.Known:
		return fmt.Sprintf("%s waits for another nodecreds agent that holds this node's files (it has not said who it is)", me)
	case w.OtherPool(a.Pool):
		return fmt.Sprintf("two nodecreds pools select this node: agent %s of %s holds its files and %s waits for it; a node must be in one pool only (look for two releases or DaemonSets whose nodeSelectors both match this node's labels)",
			w.Holder.Pod, poolName(w.Holder.Pool), me)
	case waited > 0:
		return fmt.Sprintf("%s has waited %s for agent %s of the same pool, which still holds this node's files (an old Pod that does not stop?)", me, waited.Round(time.Second), w.Holder.Pod)
	}
	return fmt.Sprintf("%s waits for agent %s of the same pool, which holds this node's files (a rollout's old Pod stopping)", me, w.Holder.Pod)
}

func poolName(p string) string {
	if p == "" {
		return "the default pool"
	}
	return fmt.Sprintf("pool %q", p)
}

func (a *AgentWait) now() time.Time {
	if a.Now != nil {
		return a.Now()
	}
	return time.Now()
}
