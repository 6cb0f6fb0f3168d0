package metrics

import (
	"fmt"
	"sync/atomic"
	"time"
)

// Health backs /healthz (the process serves, and no sync has been running
// for longer than MaxSync) and /readyz (the agent does not wait for another
// one on its node, the first sync succeeded, so the node has its
// credentials, and no sync is stuck). A sync normally takes
// milliseconds; one that does not finish is stuck on the node (a file that
// cannot be read, a lock never released), and a restart is the remedy the
// kubelet's liveness probe can apply.
type Health struct {
	ready   atomic.Bool
	started atomic.Int64 // unix nanoseconds of the running sync's start; 0 when none
	waiting atomic.Pointer[string]
	// MaxSync is how long a sync may run before health fails; DefaultMaxSync
	// when zero.
	MaxSync time.Duration
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// DefaultMaxSync bounds a healthy sync: well above the several seconds a
// sync may spend merging around another writer.
const DefaultMaxSync = time.Minute

// SetReady marks the first successful sync.
func (h *Health) SetReady() { h.ready.Store(true) }

// Ready reports whether the first sync succeeded and none is stuck.
func (h *Health) Ready() bool { return h.ready.Load() && h.Stuck() == "" }

// SetWaiting says why the agent has not started syncing: it waits for
// another agent on its node ("" when it no longer waits). /readyz says so.
func (h *Health) SetWaiting(why string) { h.waiting.Store(&why) }

// Waiting is what SetWaiting said last.
func (h *Health) Waiting() string {
	if w := h.waiting.Load(); w != nil {
		return *w
	}
	return ""
}

// SyncStarted records that a sync began.
func (h *Health) SyncStarted() { h.started.Store(h.now().UnixNano()) }

// SyncEnded records that the running sync returned.
func (h *Health) SyncEnded() { h.started.Store(0) }

// Stuck says why health fails: a sync running for longer than MaxSync; ""
// when none is.
func (h *Health) Stuck() string {
	start := h.started.Load()
	if start == 0 {
		return ""
	}
	limit := h.MaxSync
	if limit == 0 {
		limit = DefaultMaxSync
	}
	if took := h.now().Sub(time.Unix(0, start)); took > limit {
		return fmt.Sprintf("a sync has been running for %s (more than %s): the agent is stuck on this node; see its log", took.Round(time.Second), limit)
	}
	return ""
}

func (h *Health) now() time.Time {
	if h.Now != nil {
		return h.Now()
	}
	return time.Now()
}
