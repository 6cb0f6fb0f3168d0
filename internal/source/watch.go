package source

import (
	"context"
	"math"
	"sync/atomic"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/tools/cache"
)

// reconnect is how soon a watch is tried again after it broke. client-go's
// informers start at 0.8 s and double to 30 s, so after an API server
// outage of some seconds a change reached the node files ~10 s after the
// server was back. 250 ms doubling to 1.5 s, with up to 50 % jitter so the
// agents of a large cluster do not come back in step: a failed attempt
// against a server that is down costs a refused connection; docs/scale.md
// has the arithmetic for a server that is up but struggling.
var reconnect = wait.Backoff{Duration: 250 * time.Millisecond, Factor: 2, Jitter: 0.5, Cap: 1500 * time.Millisecond, Steps: math.MaxInt32}

// watched is one list+watch (one reflector) into a store that keeps only
// what transform returns and calls onChange after every change. It is what
// an informer would be without the delta queue and handler fan-out nodecreds
// does not need, and with the reconnect backoff above.
type watched struct {
	store     cache.Store
	transform func(any) any
	onChange  func()
	synced    atomic.Bool
	reflector *cache.Reflector
}

func newWatched(lw cache.ListerWatcher, example runtime.Object, transform func(any) any, onChange func()) *watched {
	w := &watched{store: cache.NewStore(cache.MetaNamespaceKeyFunc), transform: transform, onChange: onChange}
	backoff := reconnect
	w.reflector = cache.NewReflectorWithOptions(lw, example, w, cache.ReflectorOptions{Backoff: &backoff})
	return w
}

// Run lists and watches until ctx ends.
func (w *watched) Run(ctx context.Context) { w.reflector.RunWithContext(ctx) }

// HasSynced reports whether the first list is in.
func (w *watched) HasSynced() bool { return w.synced.Load() }

// The reflector's store interface.

func (w *watched) Add(obj any) error    { return w.changed(w.store.Add(w.transform(obj))) }
func (w *watched) Update(obj any) error { return w.changed(w.store.Update(w.transform(obj))) }
func (w *watched) Delete(obj any) error { return w.changed(w.store.Delete(obj)) }
func (w *watched) Resync() error        { return nil }

func (w *watched) Replace(list []any, rv string) error {
	for i := range list {
		list[i] = w.transform(list[i])
	}
	err := w.store.Replace(list, rv)
	w.synced.Store(true)
	return w.changed(err)
}

func (w *watched) changed(err error) error {
	w.onChange()
	return err
}
