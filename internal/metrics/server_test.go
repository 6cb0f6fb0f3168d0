package metrics

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// A sync that does not return within MaxSync fails /healthz and /readyz, so
// the kubelet restarts an agent stuck on its node instead of reporting it
// healthy for ever.
func TestHealthReflectsStuckSync(t *testing.T) {
	now := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	h := &Health{MaxSync: time.Minute, Now: func() time.Time { return now }}
	srv := NewServer("127.0.0.1:0", prometheus.NewRegistry(), h)
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Run(t.Context()) }()
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get("http://" + srv.ln.Addr().String() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	steps := []struct {
		name          string
		do            func()
		health, ready int
		say           string
	}{
		{"start", func() {}, 200, 503, "first sync"},
		{"another agent holds the node", func() { h.SetWaiting("two nodecreds pools select this node") }, 200, 503, "two nodecreds pools"},
		{"it stopped", func() { h.SetWaiting("") }, 200, 503, "first sync"},
		{"first sync running", h.SyncStarted, 200, 503, ""},
		{"first sync done", func() { h.SetReady(); h.SyncEnded() }, 200, 200, ""},
		{"a sync runs briefly", func() { h.SyncStarted(); now = now.Add(59 * time.Second) }, 200, 200, ""},
		{"the sync is stuck", func() { now = now.Add(2 * time.Second) }, 503, 503, "running for 1m1s"},
		{"it returns", h.SyncEnded, 200, 200, ""},
	}
	for _, s := range steps {
		s.do()
		if code, _ := get("/healthz"); code != s.health {
			t.Errorf("%s: /healthz %d, want %d", s.name, code, s.health)
		}
		code, body := get("/readyz")
		if code != s.ready {
			t.Errorf("%s: /readyz %d, want %d", s.name, code, s.ready)
		}
		if !strings.Contains(body, s.say) {
			t.Errorf("%s: /readyz says %q, want %q", s.name, body, s.say)
		}
	}
}
