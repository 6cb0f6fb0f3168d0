package check

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// RegistryProber logs in to a registry's /v2/ endpoint with a credential,
// using go-containerregistry's transport: it pings /v2/ for the challenge
// and then follows the basic or the bearer-token flow, as registry clients
// do. Plain HTTP is used only where go-containerregistry allows it
// (localhost, loopback and private addresses).
type RegistryProber struct {
	Timeout   time.Duration
	Transport http.RoundTripper // http.DefaultTransport when nil
}

// Probe logs in for repo (a repository as the kubelet looks it up) and
// reports the outcome. The error text never holds the credential.
func (p RegistryProber) Probe(ctx context.Context, repo string, c Cred) ProbeResult {
	ctx, cancel := context.WithTimeout(ctx, p.Timeout)
	defer cancel()
	res := p.probe(ctx, repo, c)
	res.Error = scrub(res.Error, c)
	return res
}

func (p RegistryProber) probe(ctx context.Context, repo string, c Cred) ProbeResult {
	ref, err := name.NewRepository(repo)
	if err != nil {
		return ProbeResult{Error: fmt.Sprintf("not a repository: %v", err)}
	}
	inner := p.Transport
	if inner == nil {
		inner = http.DefaultTransport
	}
	auth := authn.FromConfig(authn.AuthConfig{Username: c.Username, Password: c.Password})
	rt, err := transport.NewWithContext(ctx, ref.Registry, auth, inner, []string{ref.Scope(transport.PullScope)})
	if err != nil {
		return failure(err)
	}
	scheme := ref.Registry.Scheme()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s://%s/v2/", scheme, ref.RegistryStr()), nil)
	if err != nil {
		return ProbeResult{Error: err.Error()}
	}
	resp, err := (&http.Client{Transport: rt}).Do(req)
	if err != nil {
		return failure(err)
	}
	defer resp.Body.Close()
	if err := transport.CheckError(resp, http.StatusOK); err != nil {
		return failure(err)
	}
	return ProbeResult{OK: true, Status: resp.StatusCode}
}

// failure turns a transport error into the registry's status and error
// code (UNAUTHORIZED, DENIED, ...), or the network error.
func failure(err error) ProbeResult {
	var terr *transport.Error
	if errors.As(err, &terr) {
		codes := make([]string, 0, len(terr.Errors))
		for _, d := range terr.Errors {
			codes = append(codes, string(d.Code))
		}
		msg := http.StatusText(terr.StatusCode)
		if len(codes) > 0 {
			msg = strings.Join(codes, ", ")
		}
		return ProbeResult{Status: terr.StatusCode, Error: msg}
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return ProbeResult{Error: "timed out"}
	}
	return ProbeResult{Error: err.Error()}
}

// scrub removes the credential from a message, in case a registry or a
// library ever echoes it.
func scrub(msg string, c Cred) string {
	for _, s := range []string{
		c.Password,
		base64.StdEncoding.EncodeToString([]byte(c.Username + ":" + c.Password)),
		base64.RawStdEncoding.EncodeToString([]byte(c.Username + ":" + c.Password)),
	} {
		if len(s) >= 3 {
			msg = strings.ReplaceAll(msg, s, "<redacted>")
		}
	}
	return msg
}
