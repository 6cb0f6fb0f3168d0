package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/nodecreds/nodecreds/internal/nodestatus"
)

// nodeTracker watches every Node, as a controller would (one watch), and
// keeps when each first showed its current nodecreds.io/revision.
type nodeTracker struct {
	mu      sync.Mutex
	rev     map[string]string
	at      map[string]time.Time
	changed chan struct{}
	cancel  context.CancelFunc
}

func newNodeTracker(ctx context.Context, client kubernetes.Interface) (*nodeTracker, error) {
	t := &nodeTracker{rev: map[string]string{}, at: map[string]time.Time{}, changed: make(chan struct{}, 1)}
	lw := cache.NewListWatchFromClient(client.CoreV1().RESTClient(), "nodes", "", fields.Everything())
	inf := cache.NewSharedIndexInformer(lw, &corev1.Node{}, 0, cache.Indexers{})
	see := func(obj any) {
		n, ok := obj.(*corev1.Node)
		if !ok {
			return
		}
		rev := n.Annotations[nodestatus.AnnotationRevision]
		t.mu.Lock()
		if t.rev[n.Name] != rev {
			t.rev[n.Name], t.at[n.Name] = rev, time.Now()
		}
		t.mu.Unlock()
		select {
		case t.changed <- struct{}{}:
		default:
		}
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: see, UpdateFunc: func(_, n any) { see(n) }}); err != nil {
		return nil, err
	}
	ctx, t.cancel = context.WithCancel(ctx)
	go inf.Run(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return nil, fmt.Errorf("the Node watch did not sync")
	}
	return t, nil
}

func (t *nodeTracker) stop() { t.cancel() }

// revisions is each Node's revision now.
func (t *nodeTracker) revisions() map[string]string {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[string]string, len(t.rev))
	for k, v := range t.rev {
		out[k] = v
	}
	return out
}

// until waits until each of names shows a revision other than before's
// (and not none) and returns, per node, the time from t0 it was seen.
func (t *nodeTracker) until(ctx context.Context, names []string, before map[string]string, t0 time.Time, within time.Duration) ([]time.Duration, error) {
	timeout := time.After(within)
	for {
		t.mu.Lock()
		lat := make([]time.Duration, 0, len(names))
		for _, n := range names {
			if r := t.rev[n]; r != "" && r != before[n] {
				lat = append(lat, t.at[n].Sub(t0))
			}
		}
		t.mu.Unlock()
		if len(lat) == len(names) {
			return lat, nil
		}
		select {
		case <-t.changed:
		case <-time.After(100 * time.Millisecond):
		case <-timeout:
			return nil, fmt.Errorf("only %d of %d Nodes reported a new revision within %s", len(lat), len(names), within)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}
