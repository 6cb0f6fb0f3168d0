package metrics

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestWorkloadAnswers: the counters as read at each scrape, one sample per
// reason; nothing to read gives no samples and no scrape error.
func TestWorkloadAnswers(t *testing.T) {
	tests := []struct {
		name   string
		counts map[string]uint64
		ok     bool
		want   string
	}{
		{name: "counted", counts: map[string]uint64{"Answered": 3, "SecretForbidden": 1, "NoEntry": 0}, ok: true, want: `
# HELP nodecreds_workload_answers_total Answers of the credential provider's service-account-token mode on this node, by reason (Answered, SecretForbidden, ...).
# TYPE nodecreds_workload_answers_total counter
nodecreds_workload_answers_total{reason="Answered"} 3
nodecreds_workload_answers_total{reason="NoEntry"} 0
nodecreds_workload_answers_total{reason="SecretForbidden"} 1
`},
		{name: "no file", ok: false, want: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := prometheus.NewPedanticRegistry()
			reg.MustRegister(NewWorkloadAnswers(func() (map[string]uint64, bool) { return tt.counts, tt.ok }))
			if err := testutil.GatherAndCompare(reg, strings.NewReader(tt.want), WorkloadAnswersName); err != nil {
				t.Error(err)
			}
		})
	}
}
