// Package metrics is what the agent tells a monitoring system: its
// Prometheus metrics, the health of its syncs, and the HTTP server of
// /metrics, /healthz and /readyz. What it tells the Node object is
// nodestatus'.
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
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
