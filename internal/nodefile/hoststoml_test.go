package nodefile

import (
	"reflect"
	"strings"
	"testing"

	"github.com/nodecreds/nodecreds/internal/hoststoml"
)

// TestStateHostsTOMLField: the hosts.toml records are an optional field of
// the state, version unchanged: they round-trip, a state without them reads
// as before, and the decoder skips names it does not know (what an older
// nodecreds does with this field).
func TestStateHostsTOMLField(t *testing.T) {
	st := &State{Version: stateVersion, Targets: map[string]*TargetState{"/t": {Created: true}},
		HostsTOML: map[string]hoststoml.Record{"/etc/containerd/certs.d/r.test/hosts.toml": {Created: true,
			Changes: []hoststoml.Change{{Section: "https://r.test", Action: hoststoml.Replaced, Previous: `"Basic b2xkOm9sZA=="`}}}}}
	data, err := encodeState(st, nil)
	if err != nil {
		t.Fatal(err)
	}
	got := &State{Targets: map[string]*TargetState{}}
	if err := decodeState(data, got); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got.HostsTOML, st.HostsTOML) || got.Version != stateVersion {
		t.Fatalf("round trip: %s → %+v", data, got)
	}
	old := strings.Replace(string(data), `"hostsToml"`, `"someFutureField"`, 1)
	got = &State{Targets: map[string]*TargetState{}}
	if err := decodeState([]byte(old), got); err != nil || got.HostsTOML != nil || !got.Targets["/t"].Created {
		t.Fatalf("unknown field: %v %+v", err, got)
	}
}
