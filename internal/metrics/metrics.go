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

	// SourceVersion is 1 for the version of each source this node applies
	// (a Secret's resourceVersion): nodes that disagree for long lag.
	SourceVersion *prometheus.GaugeVec
	// Rotation is the time from a source version first seen to it being
	// in every target, the login before switching included.
	Rotation prometheus.Histogram
	// Logins counts the logins that verify new credentials, by result
	// (verified, rejected, unverifiable).
	Logins *prometheus.CounterVec
	// Rejected is 1 for each registry of a source whose new credentials
	// the registry refused on this node.
	Rejected *prometheus.GaugeVec
	// Expiry and Lifetime are what a source's nodecreds.io/expires-at
	// says, per registry of it: the expiry, and its lifetime counted from
	// when this agent first saw that expiry.
	Expiry   *prometheus.GaugeVec
	Lifetime *prometheus.GaugeVec
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
	m.SourceVersion = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "nodecreds_source_version_info", Help: "1 for the version (resourceVersion) of each source this node applies.",
	}, []string{"source", "version"})
	m.Rotation = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "nodecreds_rotation_seconds", Help: "Time from a new source version seen to it being in every target, the login that verifies it included.",
		Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300},
	})
	m.Logins = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "nodecreds_logins_total", Help: "Logins that verify new credentials before they replace the old ones, by result (verified, rejected, unverifiable).",
	}, []string{"result"})
	m.Rejected = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "nodecreds_credentials_rejected", Help: "1 for each registry of a Secret whose new credentials the registry rejected on this node.",
	}, []string{"secret", "registry"})
	m.Expiry = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "nodecreds_credentials_expiry_timestamp_seconds", Help: "Unix time the credentials expire (a Secret's nodecreds.io/expires-at), per registry.",
	}, []string{"secret", "registry"})
	m.Lifetime = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "nodecreds_credentials_lifetime_seconds", Help: "The credentials' lifetime: their expiry less when this agent first saw that expiry.",
	}, []string{"secret", "registry"})
	reg.MustRegister(m.Syncs, m.LastSuccess, m.Entries, m.Writes, m.Drift, m.SourceErrors, m.Duration, m.Polling,
		m.SourceVersion, m.Rotation, m.Logins, m.Rejected, m.Expiry, m.Lifetime)
	return m
}
