package check

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/nodecreds/nodecreds/internal/kubeletcred"
)

// RegistryProber logs in to a registry's /v2/ endpoint with a credential,
// using go-containerregistry's transport: it pings /v2/ for the challenge
// and then follows the basic or the bearer-token flow, as registry clients
// do. Plain HTTP is used only where go-containerregistry allows it
// (localhost, loopback and private addresses).
//
// A probe talks only to the registry it was asked about and to the token
// service that registry names in its challenge: every other host (a
// redirect elsewhere, a default registry) is refused before a connection
// is made, so a credential never leaves for a host it is not for.
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
	// net.Dialer's when nil).
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
}

// transport is the probe's own: the proxy rule above holds whatever the
// caller or the environment chose.
func (p RegistryProber) transport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	proxy := p.Proxy
	if proxy == nil {
		proxy = http.ProxyFromEnvironment
	}
	t.Proxy = func(req *http.Request) (*url.URL, error) {
		if req.URL.Scheme != "https" {
			return nil, nil
		}
		return proxy(req)
	}
	if p.DialContext != nil {
		t.DialContext = p.DialContext
	}
	return t
}

// Probe logs in to registry (host[:port] as the kubelet matched it) for
// repository (a path in it, "" to log in to the registry alone) and reports
// the outcome. The error text never holds the credential.
func (p RegistryProber) Probe(ctx context.Context, registry, repository string, c kubeletcred.Cred) ProbeResult {
	fallbackRoots() // before the first certificate is verified
	ctx, cancel := context.WithTimeout(ctx, p.Timeout)
	defer cancel()
	res := p.probe(ctx, registry, repository, c)
	res.Error = scrub(res.Error, c)
	return res
}

func (p RegistryProber) probe(ctx context.Context, registry, repository string, c kubeletcred.Cred) ProbeResult {
	reg, err := name.NewRegistry(registry)
	if err != nil {
		return ProbeResult{Error: fmt.Sprintf("not a registry host: %v", err)}
	}
	var scopes []string
	if repository != "" {
		scopes = []string{reg.Repo(repository).Scope(transport.PullScope)}
	}
	inner := p.transport()
	defer inner.CloseIdleConnections()
	pin := newPinned(inner, reg)
	auth := authn.FromConfig(authn.AuthConfig{Username: c.Username, Password: c.Password})
	rt, err := transport.NewWithContext(ctx, reg, auth, pin, scopes)
	if err != nil {
		return failure(err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s://%s/v2/", reg.Scheme(), reg.RegistryStr()), nil)
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

// ErrOtherHost means a probe was about to contact a host other than the
// registry it checks and the token service that registry named.
var ErrOtherHost = errors.New("refusing to contact a host other than the registry being probed")

// pinned lets requests through only to the registry and to the token
// realms the registry announces in its WWW-Authenticate challenges.
type pinned struct {
	inner    http.RoundTripper
	registry string          // host[:port], for messages
	regKeys  map[string]bool // the registry's hostKeys; never changes
	mu       sync.Mutex
	realms   map[string]bool // hostKeys of token services the registry named
}

func newPinned(inner http.RoundTripper, reg name.Registry) *pinned {
	// The registry on either scheme: go-containerregistry falls back from
	// https to http for the hosts where it allows plain HTTP.
	keys := map[string]bool{
		hostKey(&url.URL{Scheme: "https", Host: reg.RegistryStr()}): true,
		hostKey(&url.URL{Scheme: "http", Host: reg.RegistryStr()}):  true,
	}
	return &pinned{inner: inner, registry: reg.RegistryStr(), regKeys: keys, realms: map[string]bool{}}
}

func (p *pinned) RoundTrip(req *http.Request) (*http.Response, error) {
	host := hostKey(req.URL)
	p.mu.Lock()
	ok := p.regKeys[host] || p.realms[host]
	p.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("%w (%s is not %s)", ErrOtherHost, req.URL.Host, p.registry)
	}
	resp, err := p.inner.RoundTrip(req)
	if err != nil || !p.regKeys[host] {
		return resp, err
	}
	for _, h := range resp.Header.Values("WWW-Authenticate") {
		// A token service over HTTPS, or on the registry's own host.
		if realm := bearerRealm(h); realm != nil && (realm.Scheme == "https" || realm.Hostname() == req.URL.Hostname()) {
			p.mu.Lock()
			p.realms[hostKey(realm)] = true
			p.mu.Unlock()
		}
	}
	return resp, nil
}

// hostKey is host:port with the scheme's default port made explicit.
func hostKey(u *url.URL) string {
	if u.Port() != "" {
		return u.Host
	}
	if u.Scheme == "http" {
		return u.Host + ":80"
	}
	return u.Host + ":443"
}

// bearerRealm returns the realm URL of a Bearer challenge, or nil.
func bearerRealm(challenge string) *url.URL {
	scheme, params, _ := strings.Cut(strings.TrimSpace(challenge), " ")
	if !strings.EqualFold(scheme, "bearer") {
		return nil
	}
	for _, part := range strings.Split(params, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok || !strings.EqualFold(k, "realm") {
			continue
		}
		u, err := url.Parse(strings.Trim(v, `"`))
		if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
			return nil
		}
		return u
	}
	return nil
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
	// A URL in an error may carry what a registry echoed (a redirect's
	// query): keep only the operation and the cause.
	var uerr *url.Error
	if errors.As(err, &uerr) {
		return ProbeResult{Error: fmt.Sprintf("%s: %v", uerr.Op, uerr.Err)}
	}
	return ProbeResult{Error: err.Error()}
}

// scrub removes the credential from a message, in case a registry or a
// library ever echoes it: raw, base64 (as sent in basic auth) and
// URL-encoded (as a redirect's query or path would carry it).
func scrub(msg string, c kubeletcred.Cred) string {
	basic := base64.StdEncoding.EncodeToString([]byte(c.Username + ":" + c.Password))
	var forms []string
	for _, s := range []string{c.Password, basic, base64.RawStdEncoding.EncodeToString([]byte(c.Username + ":" + c.Password)), base64.URLEncoding.EncodeToString([]byte(c.Username + ":" + c.Password))} {
		forms = append(forms, s, url.QueryEscape(s), url.PathEscape(s), url.QueryEscape(url.QueryEscape(s)))
	}
	sort.Slice(forms, func(i, j int) bool { return len(forms[i]) > len(forms[j]) })
	for _, s := range forms {
		if len(s) >= 3 {
			msg = strings.ReplaceAll(msg, s, "<redacted>")
		}
	}
	return msg
}
