package nodestatus

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/record"

	"github.com/nodecreds/nodecreds/internal/kube"
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

// writes are the API writes a clientset saw from index from on, as
// "verb resource[/subresource]".
func writes(client *fake.Clientset, from int) []string {
	var out []string
	for _, a := range client.Actions()[from:] {
		switch a.GetVerb() {
		case "get", "list", "watch":
			continue
		}
		w := a.GetVerb() + " " + a.GetResource().Resource
		if a.GetSubresource() != "" {
			w += "/" + a.GetSubresource()
		}
		out = append(out, w)
	}
	return out
}

// eventReasons are the reasons of the Events created from index from on.
func eventReasons(client *fake.Clientset, from int) []string {
	var out []string
	for _, a := range client.Actions()[from:] {
		if c, ok := a.(k8stesting.CreateAction); ok && a.GetResource().Resource == "events" {
			out = append(out, c.GetObject().(*corev1.Event).Reason)
		}
	}
	return out
}

// TestWritesPerReport counts the API writes of each report, Events
// included (recorded through the clientset as the agent records them): a
// routine rotation is one PATCH of nodes/status carrying the annotations
// and, when it changed, the condition; CredentialsApplied is recorded when
// the condition turns True (first install, recovery), not per revision.
func TestWritesPerReport(t *testing.T) {
	synced := func(rev, msg string) SyncStatus {
		return SyncStatus{Revision: rev, Sources: "nodecreds/registry-credentials@" + rev, OK: true, Reason: "Synced", Message: msg}
	}
	failed := SyncStatus{Revision: "bad", OK: false, Reason: "SourceInvalid", Message: `registry "x": bad`}
	type step struct {
		what    string
		restart bool // a new reporter (the agent restarted)
		st      SyncStatus
		writes  []string
		events  []string
	}
	statusPatch, nodePatch, event := "patch nodes/status", "patch nodes", "create events"
	for _, tc := range []struct {
		name   string
		taints []corev1.Taint
		steps  []step
	}{
		{name: "rotations", steps: []step{
			{what: "first install", st: synced("r1", "1 entry"), writes: []string{statusPatch, event}, events: []string{"CredentialsApplied"}},
			{what: "routine rotation", st: synced("r2", "1 entry"), writes: []string{statusPatch}},
			{what: "rotation that changes the message too", st: synced("r3", "2 entries"), writes: []string{statusPatch}},
			{what: "the same status again", st: synced("r3", "2 entries")},
			{what: "a failure", st: failed, writes: []string{statusPatch, event}, events: []string{"SourceInvalid"}},
			{what: "the same failure again", st: failed},
			{what: "recovery", st: synced("r4", "2 entries"), writes: []string{statusPatch, event}, events: []string{"CredentialsApplied"}},
			{what: "restart with a new revision", restart: true, st: synced("r5", "2 entries"), writes: []string{statusPatch}},
			{what: "restart with the same one", restart: true, st: synced("r5", "2 entries")},
		}},
		{name: "startup taint", taints: []corev1.Taint{{Key: StartupTaintKey, Effect: corev1.TaintEffectNoSchedule}}, steps: []step{
			{what: "first install", st: synced("r1", "1 entry"), writes: []string{statusPatch, event, nodePatch, event}, events: []string{"CredentialsApplied", "StartupTaintRemoved"}},
			{what: "routine rotation", st: synced("r2", "1 entry"), writes: []string{statusPatch}},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client := fake.NewClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}, Spec: corev1.NodeSpec{Taints: tc.taints}})
			kc := kubetest.FromClientset(client)
			newReporter := func() *NodeReporter {
				return NewNodeReporter(kc, "n1", kube.EventRecorder{Client: kc, Component: "nodecreds", Host: "n1"}, logrus.NewEntry(logrus.New()))
			}
			n := newReporter()
			ctx := t.Context()
			for _, s := range tc.steps {
				if s.restart {
					n = newReporter()
				}
				from := len(client.Actions())
				if err := n.push(ctx, s.st); err != nil {
					t.Fatalf("%s: %v", s.what, err)
				}
				if got := writes(client, from); !slices.Equal(got, s.writes) {
					t.Errorf("%s: writes %q, want %q", s.what, got, s.writes)
				}
				if got := eventReasons(client, from); !slices.Equal(got, s.events) {
					t.Errorf("%s: Events %q, want %q", s.what, got, s.events)
				}
				node, _ := client.CoreV1().Nodes().Get(ctx, "n1", metav1.GetOptions{})
				cond := findCond(node)
				if cond == nil || cond.Status != conditionStatus(s.st) || cond.Message != s.st.Message {
					t.Errorf("%s: condition %+v", s.what, cond)
				}
				if s.st.OK && (node.Annotations[AnnotationRevision] != s.st.Revision || node.Annotations[AnnotationSources] != s.st.Sources) {
					t.Errorf("%s: annotations %v", s.what, node.Annotations)
				}
			}
		})
	}
}

// TestAnnotationsWhereStatusDropsMetadata: an API server that resets the
// metadata of a status update (as v1.37 does for Pods, not Nodes) answers
// the status PATCH without the annotations; the reporter then annotates by
// a PATCH of the Node, and keeps doing so.
func TestAnnotationsWhereStatusDropsMetadata(t *testing.T) {
	client := fake.NewClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}})
	client.PrependReactor("patch", "nodes", func(action k8stesting.Action) (bool, runtime.Object, error) {
		p := action.(k8stesting.PatchActionImpl)
		if p.GetSubresource() != "status" {
			return false, nil, nil
		}
		var patch map[string]any
		if err := json.Unmarshal(p.Patch, &patch); err != nil {
			return true, nil, err
		}
		delete(patch, "metadata")
		p.Patch, _ = json.Marshal(patch)
		return k8stesting.ObjectReaction(client.Tracker())(p)
	})
	n := NewNodeReporter(kubetest.FromClientset(client), "n1", record.NewFakeRecorder(20), logrus.NewEntry(logrus.New()))
	ctx := t.Context()
	for _, s := range []struct {
		st     SyncStatus
		writes []string
	}{
		{SyncStatus{Revision: "r1", OK: true, Reason: "Synced", Message: "1 entry"}, []string{"patch nodes/status", "patch nodes"}},
		{SyncStatus{Revision: "r2", OK: true, Reason: "Synced", Message: "1 entry"}, []string{"patch nodes"}},
		{SyncStatus{Revision: "r3", OK: true, Reason: "Synced", Message: "2 entries"}, []string{"patch nodes", "patch nodes/status"}},
	} {
		from := len(client.Actions())
		if err := n.push(ctx, s.st); err != nil {
			t.Fatal(err)
		}
		if got := writes(client, from); !slices.Equal(got, s.writes) {
			t.Errorf("%s: writes %q, want %q", s.st.Revision, got, s.writes)
		}
		node, _ := client.CoreV1().Nodes().Get(ctx, "n1", metav1.GetOptions{})
		if node.Annotations[AnnotationRevision] != s.st.Revision {
			t.Errorf("%s: annotations %v", s.st.Revision, node.Annotations)
		}
		if c := findCond(node); c == nil || c.Message != s.st.Message {
			t.Errorf("%s: condition %+v", s.st.Revision, c)
		}
	}
}

// TestBurstsAreCoalesced: reports that come while a push is on its way, or
// while a routine report waits its spread, are pushed once, as the latest.
// Every status PATCH is held until the test lets it go, and the spread's
// timer fires when the test says: no timing.
func TestBurstsAreCoalesced(t *testing.T) {
	client := fake.NewClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}})
	ctx, cancel := context.WithCancel(t.Context())
	patched := make(chan string) // the revision or condition reason each status PATCH carries
	release := make(chan struct{})
	client.PrependReactor("patch", "nodes", func(action k8stesting.Action) (bool, runtime.Object, error) {
		p := action.(k8stesting.PatchActionImpl)
		var patch struct {
			Metadata struct{ Annotations map[string]string }     `json:"metadata"`
			Status   struct{ Conditions []corev1.NodeCondition } `json:"status"`
		}
		_ = json.Unmarshal(p.Patch, &patch)
		what := patch.Metadata.Annotations[AnnotationRevision]
		if what == "" && len(patch.Status.Conditions) > 0 {
			what = patch.Status.Conditions[0].Reason
		}
		select {
		case patched <- what:
		case <-ctx.Done(): // a push the test does not expect must not hold up its end
			return true, nil, ctx.Err()
		}
		<-release
		return false, nil, nil
	})
	waiting := make(chan struct{})
	fire := make(chan time.Time)
	n := NewNodeReporter(kubetest.FromClientset(client), "n1", record.NewFakeRecorder(100), logrus.NewEntry(logrus.New()))
	n.after = func(time.Duration) <-chan time.Time {
		waiting <- struct{}{}
		return fire
	}
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	defer func() { cancel(); <-done }()

	ok := func(rev string) SyncStatus {
		return SyncStatus{Revision: rev, OK: true, Reason: "Synced", Message: "1 entry"}
	}
	failure := SyncStatus{Revision: "bad", OK: false, Reason: "SourceInvalid", Message: "bad"}
	expect := func(want string) {
		t.Helper()
		if got := <-patched; got != want {
			t.Fatalf("status PATCH carries %q, want %q", got, want)
		}
		release <- struct{}{}
	}
	count := func(from int) int { return len(writes(client, from)) }

	// The first report goes at once; nine more come while it is on its way.
	from := len(client.Actions())
	n.Report(ctx, ok("r1"))
	if got := <-patched; got != "r1" {
		t.Fatalf("first PATCH carries %q", got)
	}
	for i := 2; i <= 10; i++ {
		n.Report(ctx, ok(fmt.Sprintf("r%d", i)))
	}
	release <- struct{}{}
	<-waiting // the burst is routine: it waits its spread
	fire <- time.Time{}
	expect("r10")
	// A failure is pushed at once; had anything of the burst been pushed
	// again, this PATCH would carry it instead.
	n.Report(ctx, failure)
	expect("SourceInvalid")
	if got := count(from); got != 3 {
		t.Errorf("a report and a burst of nine during its push made %d writes, want 3 (first, burst, failure): %q", got, writes(client, from))
	}

	// A burst while a routine report waits its spread: one write.
	from = len(client.Actions())
	n.Report(ctx, ok("r11"))
	<-waiting
	for i := 12; i <= 20; i++ {
		n.Report(ctx, ok(fmt.Sprintf("r%d", i)))
	}
	fire <- time.Time{}
	expect("r20")
	n.Report(ctx, failure)
	expect("SourceInvalid")
	if got := count(from); got != 2 {
		t.Errorf("a burst of ten during the spread made %d writes, want 2 (burst, failure): %q", got, writes(client, from))
	}
}
