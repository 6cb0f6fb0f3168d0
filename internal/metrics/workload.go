package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
)

// WorkloadAnswersName is the metric of the credential provider's
// service-account-token mode: its runs on this node, by reason.
const WorkloadAnswersName = "nodecreds_workload_answers_total"

// AnswerCounts reads the counters the plugin keeps: runs by reason, and
// false when there are none to read (no file, or one that does not parse).
type AnswerCounts func() (map[string]uint64, bool)

// WorkloadAnswers exports the plugin's counters. The kubelet runs the
// plugin once per answer, so it cannot be scraped itself: it counts in a
// file of the state folder, read here at each scrape.
type WorkloadAnswers struct {
	read AnswerCounts
	desc *prometheus.Desc
}

// NewWorkloadAnswers returns the collector; register it with the agent's
// registry.
func NewWorkloadAnswers(read AnswerCounts) *WorkloadAnswers {
	return &WorkloadAnswers{read: read, desc: prometheus.NewDesc(WorkloadAnswersName,
		"Answers of the credential provider's service-account-token mode on this node, by reason (Answered, SecretForbidden, ...).",
		[]string{"reason"}, nil)}
}

// Describe implements prometheus.Collector.
func (w *WorkloadAnswers) Describe(ch chan<- *prometheus.Desc) { ch <- w.desc }

// Collect implements prometheus.Collector: no samples when the counters
// cannot be read, never a scrape error.
func (w *WorkloadAnswers) Collect(ch chan<- prometheus.Metric) {
	counts, ok := w.read()
	if !ok {
		return
	}
	for reason, n := range counts {
		ch <- prometheus.MustNewConstMetric(w.desc, prometheus.CounterValue, float64(n), reason)
	}
}
