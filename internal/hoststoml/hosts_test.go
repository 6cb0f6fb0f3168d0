package hoststoml

import (
	"strings"
	"testing"
)

// TestHostsForPulls: the hosts a pull tries are the file's host tables in
// order, then the top level; a host whose capabilities name neither pull
// nor resolve is not tried (containerd filters it out), so its header
// counts for nothing.
func TestHostsForPulls(t *testing.T) {
	for _, tc := range []struct {
		name, file string
		want       []string
	}{
		{"mirror then server", "server = \"https://r.test\"\n[host.\"https://m.test\"]\n  capabilities = [\"pull\", \"resolve\"]\n", []string{"m.test", "r.test"}},
		{"capabilities unset: every capability", "[host.\"https://m.test\"]\n", []string{"m.test", "r.test"}},
		{"a push-only mirror is skipped", "server = \"https://r.test\"\n[host.\"https://m.test\"]\n  capabilities = [\"push\"]\n  [host.\"https://m.test\".header]\n    Authorization = \"Basic eDp5\"\n", []string{"r.test"}},
		{"resolve only still serves pulls", "[host.\"https://m.test\"]\n  capabilities = [\"resolve\"]\n", []string{"m.test", "r.test"}},
		{"a push-only server", "server = \"https://r.test\"\ncapabilities = [\"push\"]\n[host.\"https://m.test\"]\n", []string{"m.test"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hosts, _, err := Hosts([]byte(tc.file), "r.test")
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, h := range hosts {
				got = append(got, h.Host)
			}
			if strings.Join(got, ",") != strings.Join(tc.want, ",") {
				t.Errorf("hosts %v, want %v", got, tc.want)
			}
		})
	}
}
