// Package report tells the outside world how a node's credentials are:
// Prometheus metrics, health endpoints and, in cluster mode, the Node's
// annotations, condition, startup taint and Events.
package report

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics are the agent's Prometheus metrics. Labels carry target paths,
// source names and reasons only: never a registry credential.
type Metrics struct {
	Syncs        *prometheus.CounterVec
	LastSuccess  prometheus.Gauge
	Entries      *prometheus.GaugeVec
	Writes       *prometheus.CounterVec
	Drift        *prometheus.CounterVec
	SourceErrors *prometheus.CounterVec
	Duration     prometheus.Histogram
	Polling      *prometheus.GaugeVec
}

// NewMetrics creates the metrics and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Syncs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nodecreds_syncs_total", Help: "Syncs by result (success, error).",
		}, []string{"result"}),
		LastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "nodecreds_last_success_timestamp_seconds", Help: "Unix time of the last sync that left every target in sync.",
		}),
		Entries: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "nodecreds_entries", Help: "Registry entries nodecreds owns, per target file.",
		}, []string{"target"}),
		Writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nodecreds_writes_total", Help: "Target files written or removed.",
		}, []string{"target"}),
		Drift: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nodecreds_drift_corrections_total", Help: "Writes that undid a change made to a target by someone else.",
		}, []string{"target"}),
		SourceErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nodecreds_source_errors_total", Help: "Syncs that found a source unusable, by source and reason.",
		}, []string{"source", "reason"}),
		Duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "nodecreds_sync_duration_seconds", Help: "Time to bring all targets in sync.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}),
		Polling: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "nodecreds_watch_polling", Help: "1 when a watch (targets, sources) polls because inotify is unavailable.",
		}, []string{"watch"}),
	}
	reg.MustRegister(m.Syncs, m.LastSuccess, m.Entries, m.Writes, m.Drift, m.SourceErrors, m.Duration, m.Polling)
	return m
}

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
	max := h.MaxSync
	if max == 0 {
		max = DefaultMaxSync
	}
	if took := h.now().Sub(time.Unix(0, start)); took > max {
		return fmt.Sprintf("a sync has been running for %s (more than %s): the agent is stuck on this node; see its log", took.Round(time.Second), max)
	}
	return ""
}

func (h *Health) now() time.Time {
	if h.Now != nil {
		return h.Now()
	}
	return time.Now()
}

// Server serves /metrics, /healthz and /readyz.
type Server struct {
	addr   string
	reg    *prometheus.Registry
	health *Health
	ln     net.Listener
}

// NewServer returns a server for addr; it listens when Run starts. The
// registry also gets the Go and process collectors.
func NewServer(addr string, reg *prometheus.Registry, health *Health) *Server {
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return &Server{addr: addr, reg: reg, health: health}
}

// Listen binds the address now, so a port in use fails start-up rather
// than a goroutine later.
func (s *Server) Listen() error {
	ln, err := net.Listen("tcp", s.addr)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", s.addr, err)
	}
	s.ln = ln
	return nil
}

// Addr is the bound address (useful with port 0).
func (s *Server) Addr() string {
	if s.ln == nil {
		return s.addr
	}
	return s.ln.Addr().String()
}

// Run serves until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	if s.ln == nil {
		if err := s.Listen(); err != nil {
			return err
		}
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if why := s.health.Stuck(); why != "" {
			http.Error(w, why, http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if why := s.health.Stuck(); why != "" {
			http.Error(w, why, http.StatusServiceUnavailable)
			return
		}
		if why := s.health.Waiting(); why != "" {
			http.Error(w, why, http.StatusServiceUnavailable)
			return
		}
		if !s.health.Ready() {
			http.Error(w, "first sync has not succeeded yet", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(s.ln) }()
	select {
	case <-ctx.Done():
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(shutdownCtx); err != nil {
			return fmt.Errorf("stopping metrics server: %w", err)
		}
		return nil
	case err := <-errc:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return fmt.Errorf("metrics server: %w", err)
	}
}
