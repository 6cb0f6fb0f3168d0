package check

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/nodecreds/nodecreds/internal/kubeletcred"
)

// RegistryProber logs in to a registry's /v2/ endpoint with a credential,
// using go-containerregistry's transport: it pings /v2/ for the challenge
// and then follows the basic or the bearer-token flow, as registry clients
// do.
//
// A probe talks only to the registry it was asked about and to the token
// service that registry names in its challenge: every other host (a
// redirect elsewhere) is refused before a connection is made, so a
// credential never leaves for a host it is not for (pinned).
//
// Plain HTTP, which carries the credential in clear, is used only where
// go-containerregistry falls back to it (names and addresses it takes for
// local) and then only to a host whose addresses are all loopback or
// private, checked on the address dialled (plainDialer); nothing ever
// switches from HTTPS to plain HTTP, by a redirect or a fallback.
//
// Proxies: HTTPS goes through the proxy the environment names
// (HTTPS_PROXY, NO_PROXY), as pulls do, but only as a CONNECT tunnel: TLS
// is made with the registry itself and its certificate verified, so the
// proxy sees neither the credential nor can it answer in the registry's
// place. Plain HTTP never goes through a proxy — it would get the
// Authorization header in clear and could answer for a registry it never
// contacted — but straight to the registry (HTTP_PROXY is not used).
type RegistryProber struct {
	Timeout time.Duration
	// Proxy chooses the proxy of an HTTPS request
	// (http.ProxyFromEnvironment when nil). It is never asked about plain
	// HTTP.
	Proxy func(*http.Request) (*url.URL, error)
	// DialContext makes every connection, to a registry or a proxy (a
	// net.Dialer's when nil); it is always given the address checked,
	// never a name (plainDialer, tlsDialer).
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// Resolver looks up the host of a plain-HTTP request
	// (net.DefaultResolver when nil).
	Resolver Resolver
	// RootCAs verify registries' certificates (the system's, or the ones
	// built in, when nil).
	RootCAs *x509.CertPool
}

// transports are the probe's own, one per scheme, so the rules above
// hold whatever the caller or the environment chose.
func (p RegistryProber) transports() (tlsT, plainT *http.Transport) {
	dial := p.DialContext
	if dial == nil {
		dial = (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	}
	res := p.Resolver
	if res == nil {
		res = net.DefaultResolver
	}
	proxy := p.Proxy
	if proxy == nil {
		proxy = http.ProxyFromEnvironment
	}
	base := http.DefaultTransport.(*http.Transport)

	tlsT = base.Clone()
	tlsT.Proxy = func(req *http.Request) (*url.URL, error) {
		if req.URL.Scheme != "https" {
			return nil, errDowngrade
		}
		return proxy(req)
	}
	tlsT.OnProxyConnectResponse = func(_ context.Context, _ *url.URL, _ *http.Request, res *http.Response) error {
		if res.StatusCode != http.StatusOK {
			return errProxy // its status text is the proxy's
		}
		return nil
	}
	tlsT.DialContext = tlsDialer(dial, res)
	tlsT.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: p.RootCAs}

	plainT = base.Clone()
	plainT.Proxy = nil
	plainT.DialContext = plainDialer(dial, res)
	plainT.DialTLSContext = func(context.Context, string, string) (net.Conn, error) { return nil, errDowngrade }
	return tlsT, plainT
}

// Probe logs in to registry (host[:port] as the kubelet matched it) for
// repository (a path in it, "" to log in to the registry alone) and reports
// the outcome. The result holds only fixed texts, the status and the
// registry's error codes that the distribution spec defines.
func (p RegistryProber) Probe(ctx context.Context, registry, repository string, c kubeletcred.Cred) ProbeResult {
	fallbackRoots() // before the first certificate is verified
	ctx, cancel := context.WithTimeout(ctx, p.Timeout)
	defer cancel()
	res := p.probe(ctx, registry, repository, c)
	// A spec code that is (or holds) the password is left out as well.
	codes := make([]string, 0, len(res.Codes))
	for _, code := range res.Codes {
		if scrub(code, c) == code {
			codes = append(codes, code)
		}
	}
	if len(codes) < len(res.Codes) {
		res.Codes = codes
		res.Error = statusError(res.Status, codes, true)
	}
	if len(res.Codes) == 0 {
		res.Codes = nil
	}
	res.Error = scrub(res.Error, c)
	return res
}

func (p RegistryProber) probe(ctx context.Context, registry, repository string, c kubeletcred.Cred) ProbeResult {
	reg, err := name.NewRegistry(registry)
	if err != nil {
		return ProbeResult{Error: descBadHost}
	}
	var scopes []string
	if repository != "" {
		scopes = []string{reg.Repo(repository).Scope(transport.PullScope)}
	}
	tlsT, plainT := p.transports()
	defer tlsT.CloseIdleConnections()
	defer plainT.CloseIdleConnections()
	pin := newPinned(reg, tlsT, plainT)
	auth := authn.FromConfig(authn.AuthConfig{Username: c.Username, Password: c.Password})
	rt, err := transport.NewWithContext(ctx, reg, auth, pin, scopes)
	if err != nil {
		return classify(err, pin.Facts())
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s://%s/v2/", reg.Scheme(), reg.RegistryStr()), nil)
	if err != nil {
		return ProbeResult{Error: descBadHost}
	}
	resp, err := (&http.Client{Transport: rt}).Do(req)
	if err != nil {
		return classify(err, pin.Facts())
	}
	defer resp.Body.Close()
	if err := transport.CheckError(resp, http.StatusOK); err != nil {
		return classify(err, pin.Facts())
	}
	return ProbeResult{OK: true, Status: resp.StatusCode, Anonymous: pin.Facts().anonymous}
}

// Challenge asks host's /v2/ over scheme ("https" or "http"), sending no
// credential and following no redirect, how it challenges: "basic",
// "bearer", "other", or "" when it let the request in. errDesc is one of
// the fixed descriptions when there is no answer to read (the same
// transports as Probe: plain HTTP only to loopback and private addresses).
func (p RegistryProber) Challenge(ctx context.Context, scheme, host string) (challenge string, status int, errDesc string) {
	fallbackRoots()
	ctx, cancel := context.WithTimeout(ctx, p.Timeout)
	defer cancel()
	tlsT, plainT := p.transports()
	defer tlsT.CloseIdleConnections()
	defer plainT.CloseIdleConnections()
	var rt http.RoundTripper = tlsT
	switch scheme {
	case "https":
	case "http":
		rt = plainT
	default:
		return "", 0, descBadHost
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, (&url.URL{Scheme: scheme, Host: host, Path: "/v2/"}).String(), nil)
	if err != nil {
		return "", 0, descBadHost
	}
	client := &http.Client{Transport: rt, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Do(req)
	if err != nil {
		return "", 0, classify(err, facts{}).Error
	}
	defer resp.Body.Close()
	return challengeScheme(resp), resp.StatusCode, ""
}

// challengeScheme is the scheme of a 401's challenge, named from a fixed
// set ("" for an answer that is no challenge).
func challengeScheme(resp *http.Response) string {
	if resp.StatusCode != http.StatusUnauthorized {
		return ""
	}
	scheme, _, _ := strings.Cut(strings.TrimSpace(resp.Header.Get("WWW-Authenticate")), " ")
	switch strings.ToLower(scheme) {
	case "basic":
		return "basic"
	case "bearer":
		return "bearer"
	}
	return "other"
}
