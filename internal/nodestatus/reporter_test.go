package nodestatus

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/record"

	"github.com/nodecreds/nodecreds/internal/kube/kubetest"
)

// TestNodePush drives the reporter with client-go's fake clientset (a
// narrow unit test; test/ proves it against a real API server).
func TestNodePush(t *testing.T) {
	client := fake.NewClientset(&corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "n1"},
		Spec: corev1.NodeSpec{Taints: []corev1.Taint{
			{Key: StartupTaintKey, Effect: corev1.TaintEffectNoSchedule},
			{Key: "keep", Effect: corev1.TaintEffectNoExecute},
		}},
	})
	rec := record.NewFakeRecorder(20)
	n := NewNodeReporter(kubetest.FromClientset(client), "n1", rec, logrus.NewEntry(logrus.New()))
	clock := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
	n.now = func() time.Time { return clock }
	ctx := t.Context()

	// A failure first: condition False, a Warning event, taint kept.
	if err := n.push(ctx, SyncStatus{Revision: "r1", OK: false, Reason: "SourceInvalid", Message: `registry "x": bad`}); err != nil {
		t.Fatal(err)
	}
	node, _ := client.CoreV1().Nodes().Get(ctx, "n1", metav1.GetOptions{})
	cond := findCond(node)
	if cond == nil || cond.Status != corev1.ConditionFalse || cond.Reason != "SourceInvalid" {
		t.Fatalf("condition = %+v", cond)
	}
	if len(node.Spec.Taints) != 2 || node.Annotations[AnnotationRevision] != "" {
		t.Errorf("a failed sync touched taints or annotations: %v %v", node.Spec.Taints, node.Annotations)
	}
	if ev := <-rec.Events; !strings.HasPrefix(ev, "Warning SourceInvalid") {
		t.Errorf("event %q", ev)
	}

	// Success: annotations, condition True with a new transition time,
	// startup taint gone, the other one kept.
	clock = clock.Add(time.Minute)
	if err := n.push(ctx, SyncStatus{Revision: "r2", OK: true, Reason: "Synced", Message: "ok"}); err != nil {
		t.Fatal(err)
	}
	node, _ = client.CoreV1().Nodes().Get(ctx, "n1", metav1.GetOptions{})
	cond = findCond(node)
	if cond.Status != corev1.ConditionTrue || !cond.LastTransitionTime.Time.Equal(clock) {
		t.Errorf("condition = %+v", cond)
	}
	if node.Annotations[AnnotationRevision] != "r2" || node.Annotations[AnnotationSyncedAt] != "2026-11-26T10:01:00Z" {
		t.Errorf("annotations = %v", node.Annotations)
	}
	if len(node.Spec.Taints) != 1 || node.Spec.Taints[0].Key != "keep" {
		t.Errorf("taints = %v", node.Spec.Taints)
	}

	// The same status again: no API writes at all.
	before := len(client.Actions())
	clock = clock.Add(time.Minute)
	if err := n.push(ctx, SyncStatus{Revision: "r2", OK: true, Reason: "Synced", Message: "ok"}); err != nil {
		t.Fatal(err)
	}
	if after := len(client.Actions()); after != before {
		t.Errorf("an unchanged status made %d API calls: %v", after-before, client.Actions()[before:])
	}
}

// TestWarningOfASyncedNode: a sync that is fine but leaves the operator
// something to fix (containerd will not use the headers) keeps the
// condition True with that reason, removes the startup taint (the files
// are in place), and is told once by a Warning Event.
func TestWarningOfASyncedNode(t *testing.T) {
	client := fake.NewClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"},
		Spec: corev1.NodeSpec{Taints: []corev1.Taint{{Key: StartupTaintKey, Effect: corev1.TaintEffectNoSchedule}}}})
	rec := record.NewFakeRecorder(20)
	n := NewNodeReporter(kubetest.FromClientset(client), "n1", rec, logrus.NewEntry(logrus.New()))
	ctx := t.Context()
	st := SyncStatus{Revision: "r1", OK: true, Warn: true, Reason: "ConfigPathMultipleFolders", Message: "containerd may not use the hosts.toml headers: ..."}
	for range 2 {
		if err := n.push(ctx, st); err != nil {
			t.Fatal(err)
		}
	}
	node, _ := client.CoreV1().Nodes().Get(ctx, "n1", metav1.GetOptions{})
	if cond := findCond(node); cond == nil || cond.Status != corev1.ConditionTrue || cond.Reason != st.Reason {
		t.Errorf("condition = %+v", cond)
	}
	if len(node.Spec.Taints) != 0 {
		t.Errorf("the startup taint stays: %v", node.Spec.Taints)
	}
	var warnings []string
	for len(rec.Events) > 0 {
		if ev := <-rec.Events; strings.HasPrefix(ev, "Warning") {
			warnings = append(warnings, ev)
		}
	}
	if len(warnings) != 1 || !strings.HasPrefix(warnings[0], "Warning ConfigPathMultipleFolders") {
		t.Errorf("warning events %q, want one", warnings)
	}
}

func findCond(n *corev1.Node) *corev1.NodeCondition {
	for i := range n.Status.Conditions {
		if n.Status.Conditions[i].Type == ConditionType {
			return &n.Status.Conditions[i]
		}
	}
	return nil
}

// TestRoutineReportsAreSpread: the first report and failures reach the
// Node at once; a routine new revision within the spread (a fleet's
// agents would otherwise all patch their Nodes in the same instant), and
// only the latest status is pushed.
func TestRoutineReportsAreSpread(t *testing.T) {
	client := fake.NewClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}})
	n := NewNodeReporter(kubetest.FromClientset(client), "n1", record.NewFakeRecorder(20), logrus.NewEntry(logrus.New()))
	n.spread = 700 * time.Millisecond
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	defer func() { cancel(); <-done }()

	node := func() *corev1.Node {
		got, _ := client.CoreV1().Nodes().Get(ctx, "n1", metav1.GetOptions{})
		return got
	}
	within := func(d time.Duration, what string, cond func(*corev1.Node) bool) {
		t.Helper()
		deadline := time.Now().Add(d)
		for !cond(node()) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not on the Node after %v", what, d)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	rev := func(r string) func(*corev1.Node) bool {
		return func(n *corev1.Node) bool { return n.Annotations[AnnotationRevision] == r }
	}
	n.Report(ctx, SyncStatus{Revision: "r1", OK: true, Reason: "Synced", Message: "1 entry"})
	within(300*time.Millisecond, "the first report", rev("r1"))

	n.Report(ctx, SyncStatus{Revision: "r2", OK: true, Reason: "Synced", Message: "1 entry"})
	n.Report(ctx, SyncStatus{Revision: "r3", OK: true, Reason: "Synced", Message: "1 entry"})
	within(n.spread+300*time.Millisecond, "a routine report", rev("r3"))

	n.Report(ctx, SyncStatus{Revision: "r4", OK: false, Reason: "SourceInvalid", Message: "bad"})
	within(300*time.Millisecond, "a failure", func(n *corev1.Node) bool {
		c := findCond(n)
		return c != nil && c.Status == corev1.ConditionFalse
	})
}

// Flush (sync --once's report) and Run may push at once: they share what
// the Node already shows, so (under -race) neither may see the other's
// half-done push, and the applied revision is recorded once, not by both.
func TestFlushWhileRunning(t *testing.T) {
	client := fake.NewClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}})
	rec := record.NewFakeRecorder(100)
	n := NewNodeReporter(kubetest.FromClientset(client), "n1", rec, logrus.NewEntry(logrus.New()))
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()

	n.Report(ctx, SyncStatus{Revision: "r1", OK: true, Reason: "Synced", Message: "1 entry"})
	flushed := make(chan error, 4)
	for range cap(flushed) {
		go func() { flushed <- n.Flush(ctx) }()
	}
	for range cap(flushed) {
		if err := <-flushed; err != nil {
			t.Fatal(err)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	node, _ := client.CoreV1().Nodes().Get(t.Context(), "n1", metav1.GetOptions{})
	if node.Annotations[AnnotationRevision] != "r1" {
		t.Errorf("annotations = %v", node.Annotations)
	}
	if c := findCond(node); c == nil || c.Status != corev1.ConditionTrue {
		t.Errorf("condition = %+v", c)
	}
	close(rec.Events)
	applied := 0
	for ev := range rec.Events {
		if strings.HasPrefix(ev, "Normal CredentialsApplied") {
			applied++
		}
	}
	if applied != 1 {
		t.Errorf("%d CredentialsApplied Events for one revision, want 1", applied)
	}
}
