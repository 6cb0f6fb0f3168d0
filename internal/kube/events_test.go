package kube_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	clienttesting "k8s.io/client-go/testing"

	"github.com/nodecreds/nodecreds/internal/kube"
	"github.com/nodecreds/nodecreds/internal/kube/kubetest"
)

// An Event is one Create of a whole core/v1 Event: in the object's
// namespace, or default for a cluster-scoped one (a Node), where kubectl
// describe looks for it.
func TestEventRecorded(t *testing.T) {
	at := time.Date(2026, 12, 1, 9, 30, 0, 0, time.UTC)
	for _, tc := range []struct {
		name   string
		ref    *corev1.ObjectReference
		record func(kube.EventRecorder, runtime.Object)
		wantNS string
		reason string
		msg    string
		kind   string
	}{
		{"a Node", &corev1.ObjectReference{Kind: "Node", Name: "n1", UID: "n1"},
			func(r kube.EventRecorder, o runtime.Object) {
				r.Event(o, corev1.EventTypeWarning, "SourceInvalid", `registry "x": bad`)
			}, metav1.NamespaceDefault, "SourceInvalid", `registry "x": bad`, corev1.EventTypeWarning},
		{"a namespaced object, formatted", &corev1.ObjectReference{Kind: "Pod", Namespace: "nodecreds", Name: "agent-1"},
			func(r kube.EventRecorder, o runtime.Object) {
				r.Eventf(o, corev1.EventTypeNormal, "CredentialsApplied", "applied credentials revision %s: %s", "r2", "1 entry")
			}, "nodecreds", "CredentialsApplied", "applied credentials revision r2: 1 entry", corev1.EventTypeNormal},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client := fake.NewClientset()
			var errs []error
			r := kube.EventRecorder{Client: kubetest.FromClientset(client), Component: "nodecreds", Host: "n1",
				OnError: func(err error) { errs = append(errs, err) }, Now: func() time.Time { return at }}
			tc.record(r, tc.ref)
			if len(errs) > 0 {
				t.Fatal(errs)
			}
			list, err := client.CoreV1().Events(tc.wantNS).List(t.Context(), metav1.ListOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if len(list.Items) != 1 {
				t.Fatalf("%d Events in %s, want 1", len(list.Items), tc.wantNS)
			}
			ev := list.Items[0]
			if !strings.HasPrefix(ev.Name, tc.ref.Name+".") || ev.InvolvedObject != *tc.ref {
				t.Errorf("Event %s about %+v, want one about %+v", ev.Name, ev.InvolvedObject, *tc.ref)
			}
			if ev.Reason != tc.reason || ev.Message != tc.msg || ev.Type != tc.kind || ev.Count != 1 {
				t.Errorf("Event %s %s %q count %d, want %s %s %q count 1", ev.Type, ev.Reason, ev.Message, ev.Count, tc.kind, tc.reason, tc.msg)
			}
			if ev.Source != (corev1.EventSource{Component: "nodecreds", Host: "n1"}) || ev.ReportingController != "nodecreds" || ev.ReportingInstance != "nodecreds-n1" {
				t.Errorf("Event from %+v, %s/%s", ev.Source, ev.ReportingController, ev.ReportingInstance)
			}
			if !ev.FirstTimestamp.Time.Equal(at) || !ev.LastTimestamp.Time.Equal(at) {
				t.Errorf("Event at %v..%v, want %v", ev.FirstTimestamp, ev.LastTimestamp, at)
			}
		})
	}
}

// An Event that cannot be recorded is told to OnError, with what it was
// about; the caller goes on (Events are best effort).
func TestEventFailures(t *testing.T) {
	node := &corev1.ObjectReference{Kind: "Node", Name: "n1"}
	for _, tc := range []struct {
		name   string
		object runtime.Object
		react  clienttesting.ReactionFunc
		want   []string
	}{
		{"not an object reference", &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}}, nil,
			[]string{"recording event Reason", "*v1.Node is not an object reference"}},
		{"the API server refuses it", node, func(clienttesting.Action) (bool, runtime.Object, error) {
			return true, nil, apierrors.NewForbidden(corev1.Resource("events"), "", errors.New("no"))
		}, []string{"recording event Reason on Node n1", "forbidden"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client := fake.NewClientset()
			if tc.react != nil {
				client.PrependReactor("create", "events", tc.react)
			}
			var errs []error
			r := kube.EventRecorder{Client: kubetest.FromClientset(client), Component: "nodecreds", Host: "n1",
				OnError: func(err error) { errs = append(errs, err) }}
			r.Event(tc.object, corev1.EventTypeWarning, "Reason", "message")
			if len(errs) != 1 {
				t.Fatalf("OnError told %v, want one error", errs)
			}
			for _, w := range tc.want {
				if !strings.Contains(errs[0].Error(), w) {
					t.Errorf("error %q does not say %q", errs[0], w)
				}
			}
			// Without OnError a failure is dropped, not a panic.
			r.OnError = nil
			r.Event(tc.object, corev1.EventTypeWarning, "Reason", "message")
		})
	}
}

// blockingEvents is an API server that, when block is set, does not
// answer an Event until its request ends.
type blockingEvents struct {
	kube.Interface
	called chan context.Context
	block  bool
}

func (b blockingEvents) Events(string) kube.EventInterface { return b }

func (b blockingEvents) Create(ctx context.Context, _ *corev1.Event, _ metav1.CreateOptions) (*corev1.Event, error) {
	b.called <- ctx
	if !b.block {
		return &corev1.Event{}, nil
	}
	<-ctx.Done()
	return nil, ctx.Err()
}

func (blockingEvents) Update(context.Context, *corev1.Event, metav1.UpdateOptions) (*corev1.Event, error) {
	return nil, errors.New("not used")
}

func (blockingEvents) Patch(context.Context, string, types.PatchType, []byte, metav1.PatchOptions, ...string) (*corev1.Event, error) {
	return nil, errors.New("not used")
}

// An Event in flight ends when the recorder's Context does (the agent
// stops): a stopping agent does not wait on an API server that does not
// answer; and it is bounded even when the Context never ends.
func TestEventHonoursShutdown(t *testing.T) {
	api := blockingEvents{called: make(chan context.Context, 1), block: true}
	ctx, stop := context.WithCancel(t.Context())
	errs := make(chan error, 1)
	r := kube.EventRecorder{Client: api, Component: "nodecreds", Host: "n1", Context: ctx,
		OnError: func(err error) { errs <- err }}
	done := make(chan struct{})
	start := time.Now()
	go func() {
		defer close(done)
		r.Event(&corev1.ObjectReference{Kind: "Node", Name: "n1"}, corev1.EventTypeNormal, "CredentialsApplied", "m")
	}()
	reqCtx := <-api.called
	deadline, bounded := reqCtx.Deadline()
	if !bounded || deadline.After(start.Add(kube.EventTimeout).Add(time.Second)) {
		t.Errorf("an Event's request has deadline %v (bounded %v), want within %v", deadline, bounded, kube.EventTimeout)
	}
	stop()
	<-done
	if err := <-errs; !errors.Is(err, context.Canceled) {
		t.Errorf("after the stop the Event failed with %v, want context.Canceled", err)
	}
}

// Without a Context (tests, tools) an Event is still bounded.
func TestEventBoundedWithoutContext(t *testing.T) {
	api := blockingEvents{called: make(chan context.Context, 1)}
	var errs []error
	r := kube.EventRecorder{Client: api, OnError: func(err error) { errs = append(errs, err) }}
	start := time.Now()
	r.Event(&corev1.ObjectReference{Kind: "Node", Name: "n1"}, corev1.EventTypeNormal, "CredentialsApplied", "m")
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	reqCtx := <-api.called
	if deadline, ok := reqCtx.Deadline(); !ok || deadline.After(start.Add(kube.EventTimeout).Add(time.Second)) {
		t.Errorf("an Event's request has deadline %v (bounded %v), want within %v", deadline, ok, kube.EventTimeout)
	}
}
