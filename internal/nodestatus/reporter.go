// Package nodestatus reports an agent's state on its Node object: the
// applied revision as annotations, the RegistryCredentialsSynced
// condition, the startup taint's removal and Events — for every sync
// (NodeReporter) and while the agent waits for another one holding its
// node's files (AgentWait).
package nodestatus

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/nodecreds/nodecreds/internal/kube"
)

// Names on the Node object.
const (
	AnnotationRevision = "nodecreds.io/revision"
	AnnotationSyncedAt = "nodecreds.io/synced-at"
	// AnnotationSources lists the applied sources as name@revision.
	AnnotationSources = "nodecreds.io/sources"
	ConditionType     = corev1.NodeConditionType("RegistryCredentialsSynced")
	StartupTaintKey   = "nodecreds.io/not-ready"
	// FieldManager owns, in the Node's managedFields, what the agent
	// writes; the chart's admission policy allows an agent no other.
	FieldManager = "nodecreds"
)

// maxMessage bounds condition and event messages.
const maxMessage = 1024

// SyncStatus is what the agent reports after a sync. It holds no secret: the
// message is built from errors that never carry values.
type SyncStatus struct {
	Revision string
	// Sources are the applied sources as name@revision (source.Versions).
	Sources string
	OK      bool
	// Warn: OK, but something for the operator to fix (Reason says what);
	// told by a Warning Event as a failure is.
	Warn    bool
	Reason  string // CamelCase, for the condition
	Message string
	Changed bool
}

// Recorder records Events (kube.EventRecorder; client-go's FakeRecorder
// in tests).
type Recorder interface {
	Event(object runtime.Object, eventtype, reason, message string)
	Eventf(object runtime.Object, eventtype, reason, messageFmt string, args ...any)
}

// NodeReporter reports to this node's Node object: the applied revision and time as
// annotations, the RegistryCredentialsSynced condition, Events when the
// condition turns True and for failures, and the removal of the startup
// taint after the first successful sync. It reports from its own goroutine
// so an API outage never holds up the files; only the latest status is
// pushed, with backoff.
//
// A routine rotation costs one write: the annotations and the condition go
// in one PATCH of nodes/status (the Node's status strategy keeps the
// metadata of a status update, v1.37), and no Event — at thousands of
// nodes each write is also sent to every watcher of that Node.
type NodeReporter struct {
	client   kube.Interface
	name     string
	recorder Recorder
	log      *logrus.Entry
	now      func() time.Time

	mu     sync.Mutex // guards latest
	latest *SyncStatus
	signal chan struct{}
	// spread is the longest a routine report (a new revision applied, with
	// the Node reported before) waits, at random, before it is pushed: a
	// rotation reaches every agent of a fleet at once, and their patches and
	// Events would otherwise arrive together and compete with the other
	// agents' file writes on the API server. Failures, the first report and
	// sync --once are not delayed.
	spread time.Duration
	// after is the spread's clock (time.After; tests drive it).
	after func(time.Duration) <-chan time.Time

	// pushMu serialises pushes — Run's and Flush's, which may run at once —
	// and guards what the Node already shows: two pushes at once would
	// both see the Node stale and record the same Event twice.
	pushMu      sync.Mutex
	knownCond   *corev1.NodeCondition
	reportedRev string
	taintDone   bool
	lastEvent   string
	// appliedOwed: the condition turned True (or is about to) and its
	// CredentialsApplied Event is not recorded yet; kept across a failed
	// push so a retry still records it.
	appliedOwed bool
	// metaByStatus: the API server keeps annotations sent to nodes/status.
	// Cleared the first time a status update comes back without them, as
	// from an API server that resets the metadata of status updates (v1.37
	// does so for Pods, not Nodes); annotations then go by a PATCH of the
	// Node.
	metaByStatus bool
}

// NewNodeReporter returns a reporter for node name.
func NewNodeReporter(client kube.Interface, name string, recorder Recorder, log *logrus.Entry) *NodeReporter {
	return &NodeReporter{client: client, name: name, recorder: recorder, log: log, now: time.Now, signal: make(chan struct{}, 1), spread: reportSpread, after: time.After, metaByStatus: true}
}

// Report records the latest status; Run pushes it.
func (n *NodeReporter) Report(_ context.Context, st SyncStatus) {
	n.mu.Lock()
	n.latest = &st
	n.mu.Unlock()
	select {
	case n.signal <- struct{}{}:
	default:
	}
}

// reportSpread is NodeReporter.spread's default.
const reportSpread = time.Second

// maxNodeBackoff caps the wait between failed Node updates.
const maxNodeBackoff = 30 * time.Second

// pushTimeout bounds one push (a few API calls).
const pushTimeout = 15 * time.Second

// retryBackoff is the schedule of retried pushes: 1 s, doubling, capped at
// maxNodeBackoff.
func retryBackoff() wait.Backoff {
	return wait.Backoff{Duration: time.Second, Factor: 2, Steps: math.MaxInt32, Cap: maxNodeBackoff}
}

// Flush pushes the latest status now, retrying with backoff until it is on
// the Node or ctx ends (`sync --once` reports as the daemon does, then
// exits).
func (n *NodeReporter) Flush(ctx context.Context) error {
	st := n.current()
	if st == nil {
		return nil
	}
	bo := retryBackoff()
	for {
		err := n.pushBounded(ctx, *st)
		if err == nil {
			return nil
		}
		delay := bo.Step()
		n.log.WithError(err).WithField("retryIn", delay.String()).Warn("cannot update the Node's status; retrying")
		select {
		case <-ctx.Done():
			return fmt.Errorf("reporting to node %s: %w", n.name, err)
		case <-time.After(delay):
		}
	}
}

// Run pushes statuses until ctx ends, retrying failed pushes with backoff.
func (n *NodeReporter) Run(ctx context.Context) error {
	bo := retryBackoff()
	retry := time.NewTimer(0)
	<-retry.C
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-n.signal:
		case <-retry.C:
		}
		st := n.current()
		if st == nil {
			continue
		}
		if n.routine(*st) {
			if !n.wait(ctx) {
				return nil
			}
			st = n.current() // what came meanwhile replaces it
		}
		if err := n.pushBounded(ctx, *st); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			delay := bo.Step()
			n.log.WithError(err).WithField("retryIn", delay.String()).Warn("cannot update the Node's status; retrying")
			retry.Reset(delay)
			continue
		}
		bo = retryBackoff()
	}
}

// current is the latest status reported, nil before the first.
func (n *NodeReporter) current() *SyncStatus {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.latest
}

// routine reports whether st is a routine report, to be spread: a
// success that changes the Node, reported before.
func (n *NodeReporter) routine(st SyncStatus) bool {
	n.pushMu.Lock()
	defer n.pushMu.Unlock()
	return st.OK && n.knownCond != nil && n.spread > 0 && !n.shown(st)
}

// wait waits a random part of the spread, cut short by a failure to
// report; false when ctx ended.
func (n *NodeReporter) wait(ctx context.Context) bool {
	fire := n.after(rand.N(n.spread))
	for {
		select {
		case <-ctx.Done():
			return false
		case <-fire:
			return true
		case <-n.signal:
			if st := n.current(); !st.OK {
				return true
			}
		}
	}
}

// shown reports whether the Node already shows st (pushing it would
// change nothing).
func (n *NodeReporter) shown(st SyncStatus) bool {
	return !n.annotationStale(st) && !n.conditionStale(st)
}

// annotationStale reports whether st is a revision applied that the Node's
// annotations do not name yet.
func (n *NodeReporter) annotationStale(st SyncStatus) bool {
	return st.OK && st.Revision != n.reportedRev
}

// conditionStale reports whether the Node's condition differs from st.
func (n *NodeReporter) conditionStale(st SyncStatus) bool {
	return n.knownCond.Status != conditionStatus(st) || n.knownCond.Reason != st.Reason || n.knownCond.Message != truncate(st.Message)
}

func conditionStatus(st SyncStatus) corev1.ConditionStatus {
	if st.OK {
		return corev1.ConditionTrue
	}
	return corev1.ConditionFalse
}

// pushBounded is push within pushTimeout.
func (n *NodeReporter) pushBounded(ctx context.Context, st SyncStatus) error {
	ctx, cancel := context.WithTimeout(ctx, pushTimeout)
	defer cancel()
	return n.push(ctx, st)
}

// push brings the Node in line with st: what it shows differently, and
// nothing else.
func (n *NodeReporter) push(ctx context.Context, st SyncStatus) error {
	n.pushMu.Lock()
	defer n.pushMu.Unlock()
	if n.knownCond == nil {
		if err := n.load(ctx); err != nil {
			return err
		}
	}
	ref := n.ref()
	msg := truncate(st.Message)
	// The per-revision record is the annotations; an Event tells the
	// condition turning True (first install, recovery), not each revision.
	n.appliedOwed = st.OK && (n.appliedOwed || n.knownCond.Status != corev1.ConditionTrue)
	if err := n.update(ctx, st, msg); err != nil {
		return err
	}
	if n.appliedOwed {
		n.recorder.Eventf(ref, corev1.EventTypeNormal, "CredentialsApplied", "applied credentials revision %s: %s", st.Revision, msg)
		n.appliedOwed = false
	}
	if (!st.OK || st.Warn) && n.lastEvent != msg {
		n.recorder.Event(ref, corev1.EventTypeWarning, st.Reason, msg)
	}
	if st.OK && !st.Warn {
		n.lastEvent = ""
	} else {
		n.lastEvent = msg
	}
	if st.OK && !n.taintDone {
		if err := n.removeStartupTaint(ctx); err != nil {
			return err
		}
		n.taintDone = true
	}
	return nil
}

// load learns what the Node shows already, once: pushes after it change
// only what differs.
func (n *NodeReporter) load(ctx context.Context) error {
	node, err := n.client.Nodes().Get(ctx, n.name, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("getting node %s: %w", n.name, err)
	}
	n.knownCond = &corev1.NodeCondition{}
	for _, c := range node.Status.Conditions {
		if c.Type == ConditionType {
			n.knownCond = c.DeepCopy()
		}
	}
	n.reportedRev = node.Annotations[AnnotationRevision]
	// Most nodes never had the startup taint: no need to look again.
	n.taintDone = !hasTaint(node, StartupTaintKey)
	return nil
}

// update writes what of st the Node does not show yet — the annotations,
// the condition or both — in one PATCH of nodes/status, or in two where
// the API server drops metadata sent there.
func (n *NodeReporter) update(ctx context.Context, st SyncStatus, msg string) error {
	annotate, setCond := n.annotationStale(st), n.conditionStale(st)
	if annotate && !n.metaByStatus {
		if err := n.annotate(ctx, st); err != nil {
			return err
		}
		annotate = false
	}
	if !annotate && !setCond {
		return nil
	}
	patch := map[string]any{}
	if annotate {
		patch["metadata"] = map[string]any{"annotations": n.annotations(st)}
	}
	var cond corev1.NodeCondition
	if setCond {
		cond = n.condition(st, msg)
		patch["status"] = map[string]any{"conditions": []corev1.NodeCondition{cond}}
	}
	raw, _ := json.Marshal(patch)
	// As the field manager of every other write: the admission policy
	// lets an agent own fields as "nodecreds" only.
	node, err := n.client.Nodes().Patch(ctx, n.name, types.StrategicMergePatchType, raw, metav1.PatchOptions{FieldManager: FieldManager}, "status")
	if err != nil {
		return fmt.Errorf("updating the status of node %s: %w", n.name, err)
	}
	if setCond {
		n.knownCond = &cond
	}
	if !annotate {
		return nil
	}
	if node.Annotations[AnnotationRevision] == st.Revision {
		n.reportedRev = st.Revision
		return nil
	}
	n.metaByStatus = false
	n.log.Info("the API server drops annotations sent to nodes/status; annotating the Node by a PATCH of its own")
	return n.annotate(ctx, st)
}

// annotations name st's revision, sources and the time.
func (n *NodeReporter) annotations(st SyncStatus) map[string]string {
	return map[string]string{
		AnnotationRevision: st.Revision,
		AnnotationSources:  st.Sources,
		AnnotationSyncedAt: n.now().UTC().Format(time.RFC3339),
	}
}

// annotate names st's revision, sources and the time on the Node, by a
// PATCH of the Node (for an API server that drops them on nodes/status).
func (n *NodeReporter) annotate(ctx context.Context, st SyncStatus) error {
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": n.annotations(st)}})
	if _, err := n.client.Nodes().Patch(ctx, n.name, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: FieldManager}); err != nil {
		return fmt.Errorf("annotating node %s: %w", n.name, err)
	}
	n.reportedRev = st.Revision
	return nil
}

// condition is the RegistryCredentialsSynced condition for st, with a new
// transition time when its status changes.
func (n *NodeReporter) condition(st SyncStatus, msg string) corev1.NodeCondition {
	status := conditionStatus(st)
	now := metav1.NewTime(n.now())
	cond := corev1.NodeCondition{Type: ConditionType, Status: status, Reason: st.Reason, Message: msg,
		LastHeartbeatTime: now, LastTransitionTime: n.knownCond.LastTransitionTime}
	if n.knownCond.Status != status {
		cond.LastTransitionTime = now
	}
	return cond
}

// ref is the Node as the object of an Event.
func (n *NodeReporter) ref() *corev1.ObjectReference {
	return &corev1.ObjectReference{Kind: "Node", Name: n.name, UID: types.UID(n.name)}
}

// removeStartupTaint drops nodecreds.io/not-ready from the Node, with the
// resourceVersion in the patch so a concurrent change to the taints is not
// overwritten (a conflict is retried).
func (n *NodeReporter) removeStartupTaint(ctx context.Context) error {
	for range 5 {
		node, err := n.client.Nodes().Get(ctx, n.name, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("getting node %s: %w", n.name, err)
		}
		kept := make([]corev1.Taint, 0, len(node.Spec.Taints))
		for _, t := range node.Spec.Taints {
			if t.Key != StartupTaintKey {
				kept = append(kept, t)
			}
		}
		if len(kept) == len(node.Spec.Taints) {
			return nil
		}
		patch, _ := json.Marshal(map[string]any{
			"metadata": map[string]any{"resourceVersion": node.ResourceVersion},
			"spec":     map[string]any{"taints": kept},
		})
		_, err = n.client.Nodes().Patch(ctx, n.name, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: FieldManager})
		if apierrors.IsConflict(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("removing taint %s from node %s: %w", StartupTaintKey, n.name, err)
		}
		n.log.WithField("taint", StartupTaintKey).Info("credentials in place; removed the startup taint")
		n.recorder.Event(n.ref(), corev1.EventTypeNormal, "StartupTaintRemoved", "registry credentials in place; removed taint "+StartupTaintKey)
		return nil
	}
	return fmt.Errorf("removing taint %s from node %s: conflicts kept happening", StartupTaintKey, n.name)
}

func hasTaint(n *corev1.Node, key string) bool {
	for _, t := range n.Spec.Taints {
		if t.Key == key {
			return true
		}
	}
	return false
}

func truncate(s string) string {
	if len(s) <= maxMessage {
		return s
	}
	return s[:maxMessage-3] + "..."
}
