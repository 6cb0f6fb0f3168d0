package check

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

func TestFailureMapping(t *testing.T) {
	tests := []struct {
		err    error
		status int
		want   string
	}{
		{&transport.Error{StatusCode: 401, Errors: []transport.Diagnostic{{Code: transport.UnauthorizedErrorCode}}}, 401, "UNAUTHORIZED"},
		{&transport.Error{StatusCode: 403}, 403, "Forbidden"},
		{fmt.Errorf("wrapped: %w", context.DeadlineExceeded), 0, "timed out"},
		{errors.New("dial tcp 127.0.0.1:1: connection refused"), 0, "connection refused"},
	}
	for _, tt := range tests {
		got := failure(tt.err)
		if got.OK || got.Status != tt.status || !strings.Contains(got.Error, tt.want) {
			t.Errorf("failure(%v) = %+v, want status %d and %q", tt.err, got, tt.status, tt.want)
		}
	}
}

func TestScrub(t *testing.T) {
	c := Cred{Username: "u", Password: "hunter2-canary"}
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
	res := p.Probe(t.Context(), strings.TrimPrefix(srv.URL, "http://")+"/app", Cred{Username: "u", Password: "p"})
	if res.OK || res.Error == "" || time.Since(start) > 5*time.Second {
		t.Errorf("probe of a hanging registry = %+v after %s", res, time.Since(start))
	}
}
