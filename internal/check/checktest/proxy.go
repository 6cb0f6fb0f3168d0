// Package checktest has test helpers for registry probes.
package checktest

import (
	"net/http"
	"slices"
	"sync"
)

// RecordingProxy answers every request and CONNECT with 403 (nothing is
// ever forwarded anywhere) and records which host each was for, as
// "METHOD host:port".
type RecordingProxy struct {
	mu    sync.Mutex
	hosts []string
}

func (p *RecordingProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	p.hosts = append(p.hosts, r.Method+" "+r.Host)
	p.mu.Unlock()
	http.Error(w, "recorded, not forwarded", http.StatusForbidden)
}

// Seen returns what was recorded so far.
func (p *RecordingProxy) Seen() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.hosts)
}
