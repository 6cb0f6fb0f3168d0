package kube

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// EventRecorder records Events about an object reference, one API call
// each, synchronously. nodecreds records a handful — on an applied
// revision, a new failure, the startup taint's removal — already
// de-duplicated by its caller, so client-go's broadcaster (a queue, a
// spam filter, aggregation by strategic-merge patches) would add a
// goroutine per process and its dependencies' memory on every node for
// nothing; and `sync --once` could exit before it sent them.
type EventRecorder struct {
	Client    Interface
	Component string // the reporting controller
	Host      string // the node
	// Context ends the Events in flight when it ends (the process's, so a
	// stopping agent does not wait on the API server); each Event is also
	// bounded by eventTimeout. context.Background() when nil.
	Context context.Context
	// OnError is told of an Event that could not be recorded (optional).
	OnError func(error)
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// eventTimeout bounds the recording of one Event.
const eventTimeout = 10 * time.Second

// Event records an Event about object, which must be an
// *corev1.ObjectReference. Events about cluster-scoped objects (Nodes) go
// to the default namespace, as kubectl describe looks for them there.
func (r EventRecorder) Event(object runtime.Object, eventtype, reason, message string) {
	ref, ok := object.(*corev1.ObjectReference)
	if !ok {
		r.fail(fmt.Errorf("recording event %s: %T is not an object reference", reason, object))
		return
	}
	now := time.Now
	if r.Now != nil {
		now = r.Now
	}
	t := metav1.NewTime(now())
	ns := ref.Namespace
	if ns == "" {
		ns = metav1.NamespaceDefault
	}
	ev := &corev1.Event{
		ObjectMeta:          metav1.ObjectMeta{Name: fmt.Sprintf("%s.%x", ref.Name, t.UnixNano()), Namespace: ns},
		InvolvedObject:      *ref,
		Reason:              reason,
		Message:             message,
		Type:                eventtype,
		Source:              corev1.EventSource{Component: r.Component, Host: r.Host},
		FirstTimestamp:      t,
		LastTimestamp:       t,
		Count:               1,
		ReportingController: r.Component,
		ReportingInstance:   r.Component + "-" + r.Host,
	}
	parent := r.Context
	if parent == nil {
		parent = context.Background()
	}
	ctx, cancel := context.WithTimeout(parent, eventTimeout)
	defer cancel()
	if _, err := r.Client.Events(ns).Create(ctx, ev, metav1.CreateOptions{}); err != nil {
		r.fail(fmt.Errorf("recording event %s on %s %s: %w", reason, ref.Kind, ref.Name, err))
	}
}

// Eventf is Event with a formatted message.
func (r EventRecorder) Eventf(object runtime.Object, eventtype, reason, messageFmt string, args ...any) {
	r.Event(object, eventtype, reason, fmt.Sprintf(messageFmt, args...))
}

func (r EventRecorder) fail(err error) {
	if r.OnError != nil {
		r.OnError(err)
	}
}
