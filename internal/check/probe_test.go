package check

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/nodecreds/nodecreds/internal/check/checktest"
	"github.com/nodecreds/nodecreds/internal/kubeletcred"
)

// TestClassify: a failure is named by its class, from the error's type
// and the transport's facts, never from its text (which a library builds
// from what the registry sent).
func TestClassify(t *testing.T) {
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	tests := []struct {
		err    error
		facts  facts
		status int
		want   string
	}{
		{&transport.Error{StatusCode: 401, Errors: []transport.Diagnostic{{Code: transport.UnauthorizedErrorCode}}}, facts{}, 401, "UNAUTHORIZED"},
		{&transport.Error{StatusCode: 401, Errors: []transport.Diagnostic{{Code: "SECRETPASSWORD"}, {Code: "DENIED"}}}, facts{}, 401, "DENIED; " + descCodeOther},
		{&transport.Error{StatusCode: 403}, facts{}, 403, "Forbidden"},
		{&transport.Error{StatusCode: 599}, facts{}, 599, "HTTP status 599"},
		{fmt.Errorf("wrapped: %w", context.DeadlineExceeded), facts{}, 0, descTimeout},
		{&url.Error{Op: "Get", URL: "http://r.test/?pw=secret", Err: refused}, facts{}, 0, descRefused},
		{&net.DNSError{Err: "no such host secret", Name: "secret.test", IsNotFound: true}, facts{}, 0, descNotFound},
		{&url.Error{Op: "Get", URL: "https://r.test/", Err: x509.UnknownAuthorityError{}}, facts{}, 0, descCert},
		{errors.New("no token in bearer response:\n{\"pw\":\"secret\"}"), facts{bearer: true, realmAsked: true, noToken: true}, 0, descNoToken},
		{errors.New("invalid realm in www-authenticate: secret"), facts{bearer: true}, 0, descRealm},
		{errors.New(`refusing token-server redirect to "http://169.254.169.254/?pw=secret"`), facts{bearer: true, realmAsked: true, redirected: true}, 0, descRedirect},
		{&url.Error{Op: "Get", URL: "http://r.test/?pw=secret", Err: fmt.Errorf("x: %w", errOtherHost)}, facts{}, 0, descOtherHost},
		{errors.New("library text quoting the registry: secret"), facts{}, 0, descOther},
	}
	for _, tt := range tests {
		got := classify(tt.err, tt.facts)
		if got.OK || got.Status != tt.status || got.Error != tt.want || strings.Contains(got.Error, "secret") {
			t.Errorf("classify(%v) = %+v, want status %d and %q", tt.err, got, tt.status, tt.want)
		}
	}
}

func TestScrub(t *testing.T) {
	c := kubeletcred.Cred{Username: "u", Password: "hunter2-canary"}
	msg := "bad: hunter2-canary dTpodW50ZXIyLWNhbmFyeQ== dTpodW50ZXIyLWNhbmFyeQ"
	if got := scrub(msg, c); strings.Contains(got, "hunter2") || strings.Contains(got, "dTpodW50") {
		t.Errorf("scrub left a secret: %q", got)
	}
}

func TestProbeTimeout(t *testing.T) {
	block := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { <-block }))
	defer srv.Close()
	defer close(block)
	p := RegistryProber{Timeout: 200 * time.Millisecond}
	start := time.Now()
	res := p.Probe(t.Context(), strings.TrimPrefix(srv.URL, "http://"), "app", kubeletcred.Cred{Username: "u", Password: "p"})
	if res.OK || res.Error == "" || time.Since(start) > 5*time.Second {
		t.Errorf("probe of a hanging registry = %+v after %s", res, time.Since(start))
	}
}

// A probe talks only to the registry it was asked about: a bare host is
// not a Docker Hub repository, a port is kept, and an image's registry is
// its own host.
func TestProbeTalksOnlyToTheRegistryAsked(t *testing.T) {
	tests := []struct {
		registry, repository string
		want                 string
	}{
		{"reg.test", "", "CONNECT reg.test:443"},
		{"reg.test:5443", "", "CONNECT reg.test:5443"},
		{"reg.test", "team/app", "CONNECT reg.test:443"},
		{"sub.reg.test:8443", "app", "CONNECT sub.reg.test:8443"},
		{"docker.io", "library/busybox", "CONNECT index.docker.io:443"},
	}
	for _, tt := range tests {
		t.Run(tt.registry+"/"+tt.repository, func(t *testing.T) {
			rec := &checktest.RecordingProxy{}
			proxy := httptest.NewServer(rec)
			defer proxy.Close()
			u, _ := url.Parse(proxy.URL)
			p := RegistryProber{Timeout: 5 * time.Second, Proxy: http.ProxyURL(u)}
			res := p.Probe(t.Context(), tt.registry, tt.repository, kubeletcred.Cred{Username: "robot", Password: "probe-canary"})
			if res.OK {
				t.Fatalf("probe through a refusing proxy succeeded: %+v", res)
			}
			got := rec.Seen()
			if len(got) == 0 {
				t.Fatalf("no request reached the proxy (%+v)", res)
			}
			for _, h := range got {
				if h != tt.want {
					t.Errorf("the probe contacted %q; want only %q (all: %v)", h, tt.want, got)
				}
			}
		})
	}
}

// A registry that redirects elsewhere, or names a plain-HTTP token service
// on another host, does not get the probe to send anything there; and a
// redirect that echoes the password URL-encoded does not get it printed.
func TestProbeRefusesOtherHostsAndRedacts(t *testing.T) {
	const pass = "p@ss/w+rd canary"
	var otherHits atomic.Int32
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { otherHits.Add(1) }))
	defer other.Close()
	tests := []struct {
		name    string
		handler http.HandlerFunc
		want    string
	}{
		{"redirect to another host", func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, other.URL+"/v2/", http.StatusFound)
		}, descOtherHost},
		{"plain-HTTP token service on another host", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="`+other.URL+`/token",service="x"`)
			w.WriteHeader(http.StatusUnauthorized)
		}, descRealm}, // refused by go-containerregistry already, or by us
		{"redirect loop echoing the password", func(w http.ResponseWriter, r *http.Request) {
			_, p, _ := r.BasicAuth()
			q := url.Values{"q": {p}, "b": {base64.StdEncoding.EncodeToString([]byte("robot:" + p))}}
			http.Redirect(w, r, "/v2/?"+q.Encode(), http.StatusFound)
		}, descRedirect},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			otherHits.Store(0)
			reg := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Header.Get("Authorization") == "" && tt.name != "plain-HTTP token service on another host" {
					w.Header().Set("WWW-Authenticate", `Basic realm="reg"`)
					w.WriteHeader(http.StatusUnauthorized)
					return
				}
				tt.handler(w, r)
			}))
			defer reg.Close()
			p := RegistryProber{Timeout: 5 * time.Second}
			res := p.Probe(t.Context(), strings.TrimPrefix(reg.URL, "http://"), "", kubeletcred.Cred{Username: "robot", Password: pass})
			if res.OK || res.Error != tt.want {
				t.Errorf("probe = %+v, want an error saying %q", res, tt.want)
			}
			if n := otherHits.Load(); n > 0 {
				t.Errorf("the other host got %d requests", n)
			}
			for _, enc := range []string{pass, url.QueryEscape(pass), url.PathEscape(pass), "p%40ss", "cm9ib3Q6cEBzcy93K3JkIGNhbmFyeQ"} {
				if strings.Contains(res.Error, enc) {
					t.Errorf("error %q holds the password (as %q)", res.Error, enc)
				}
			}
		})
	}
}
