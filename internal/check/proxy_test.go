package check

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nodecreds/nodecreds/internal/kubeletcred"
)

// liarProxy records what reaches it and answers every plain request with
// 200, as a proxy (or whoever sits where HTTP_PROXY points) could: a probe
// that believed it would report a login that never happened. CONNECT is
// refused: nothing is ever forwarded.
type liarProxy struct {
	mu   sync.Mutex
	seen []string // "METHOD host auth=yes|no"
}

func (p *liarProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	auth := "no"
	if r.Header.Get("Authorization") != "" {
		auth = "yes"
	}
	p.mu.Lock()
	p.seen = append(p.seen, r.Method+" "+r.Host+" auth="+auth)
	p.mu.Unlock()
	if r.Method == http.MethodConnect {
		http.Error(w, "not forwarded", http.StatusForbidden)
		return
	}
	w.WriteHeader(http.StatusOK)
}

func (p *liarProxy) Seen() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.seen)
}

// loopbackDialer dials 127.0.0.1 only and records every address asked
// for: a test never sends a packet anywhere else.
type loopbackDialer struct {
	mu    sync.Mutex
	asked []string
}

func (d *loopbackDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	d.mu.Lock()
	d.asked = append(d.asked, addr)
	d.mu.Unlock()
	if host, _, err := net.SplitHostPort(addr); err != nil || host != "127.0.0.1" {
		return nil, errors.New("test dialer: refusing to dial " + addr)
	}
	var nd net.Dialer
	return nd.DialContext(ctx, network, addr)
}

func (d *loopbackDialer) Asked() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.asked)
}

// TestProbeSendsNoCredentialThroughAProxyInClear: with a proxy chosen for
// every request (as HTTP_PROXY does for a registry that is not on
// loopback), a plain-HTTP probe goes to the registry itself, never to the
// proxy — which would get the Authorization header in clear and could
// answer 200 for a registry never contacted. `ok` is the registry's own
// answer. HTTPS may only tunnel through the proxy (CONNECT), where TLS to
// the registry is verified end to end.
func TestProbeSendsNoCredentialThroughAProxyInClear(t *testing.T) {
	const user, pass = "robot", "proxy-canary-pw"
	registry := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != user || p != pass {
			w.Header().Set("WWW-Authenticate", `Basic realm="registry"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	defer registry.Close()
	local := strings.TrimPrefix(registry.URL, "http://")
	tests := []struct {
		name     string
		registry string
		password string
		wantOK   bool
		wantDial string // the registry dialled directly
	}{
		{"private address, unreachable", "10.1.2.3:5000", pass, false, "10.1.2.3:5000"},
		{"loopback, right password", local, pass, true, local},
		{"loopback, wrong password", local, "wrong", false, local},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			liar := &liarProxy{}
			proxy := httptest.NewServer(liar)
			defer proxy.Close()
			proxyURL, err := url.Parse(proxy.URL)
			if err != nil {
				t.Fatal(err)
			}
			dialer := &loopbackDialer{}
			p := proberThrough(http.ProxyURL(proxyURL), dialer.DialContext)
			res := p.Probe(t.Context(), tt.registry, "team/app", kubeletcred.Cred{Username: user, Password: tt.password})
			if res.OK != tt.wantOK {
				t.Errorf("probe = %+v, want ok=%v (the registry's answer)", res, tt.wantOK)
			}
			for _, s := range liar.Seen() {
				if !strings.HasPrefix(s, http.MethodConnect+" ") || strings.HasSuffix(s, "auth=yes") {
					t.Errorf("the proxy got %q: only a CONNECT without credentials may reach it", s)
				}
			}
			if !slices.Contains(dialer.Asked(), tt.wantDial) {
				t.Errorf("dialled %v; want the registry %s dialled directly", dialer.Asked(), tt.wantDial)
			}
		})
	}
}

// proberThrough is a prober whose proxy choice and dialer are the test's.
func proberThrough(proxy func(*http.Request) (*url.URL, error), dial func(context.Context, string, string) (net.Conn, error)) RegistryProber {
	return RegistryProber{Timeout: 5 * time.Second, Proxy: proxy, DialContext: dial}
}
