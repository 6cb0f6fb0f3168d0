package check

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"

	"github.com/google/go-containerregistry/pkg/name"
)

// maxTokenBody is go-containerregistry's limit on a token answer.
const maxTokenBody = 64 * 1024

// facts are what a probe's transport saw, for naming a failure's class
// without reading an error's text.
type facts struct {
	anonymous  bool // the registry answered 200 to a request without credentials
	bearer     bool // the registry asked for a bearer token
	realmAsked bool // a request went to a token service
	noToken    bool // a token service answered 200 without a token
	redirected bool // some answer was a redirect
}

// pinned sees every request of a probe (go-containerregistry's and every
// redirect http.Client follows) and lets through only:
//   - the registry over HTTPS, and over plain HTTP only where
//     go-containerregistry falls back to it (a name or address it takes
//     for local) and only until the registry has answered over HTTPS;
//   - the token services the registry names in its challenges: over
//     HTTPS, or over plain HTTP on the registry's own host name when the
//     registry itself answered over plain HTTP;
//   - no request that follows a redirect from HTTPS to plain HTTP.
//
// HTTPS requests go to tls, plain HTTP ones to plain, whose dialer
// connects only to loopback and private addresses (plainDialer): what a
// name says is never trusted for that.
type pinned struct {
	tls, plain http.RoundTripper
	regTLS     string // the registry's key over HTTPS
	regPlain   string // over plain HTTP, "" when go-containerregistry never uses it
	mu         sync.Mutex
	realms     map[string]bool // keys of the token services named
	realmPaths map[string]bool // their key and path, to tell a token request
	tlsSeen    bool            // the registry has answered over HTTPS
	facts      facts
}

func newPinned(reg name.Registry, tls, plain http.RoundTripper) *pinned {
	p := &pinned{tls: tls, plain: plain, realms: map[string]bool{}, realmPaths: map[string]bool{}}
	p.regTLS = hostKey(&url.URL{Scheme: "https", Host: reg.RegistryStr()})
	if reg.Scheme() == "http" {
		p.regPlain = hostKey(&url.URL{Scheme: "http", Host: reg.RegistryStr()})
	}
	return p
}

func (p *pinned) Facts() facts {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.facts
}

// RoundTrip sends req if it may go where it goes, and learns from the
// answer.
func (p *pinned) RoundTrip(req *http.Request) (*http.Response, error) {
	var rt http.RoundTripper
	switch req.URL.Scheme {
	case "https":
		rt = p.tls
	case "http":
		rt = p.plain
	default:
		return nil, errOtherHost
	}
	if prev := req.Response; prev != nil && prev.Request != nil && prev.Request.URL.Scheme == "https" && req.URL.Scheme == "http" {
		return nil, errDowngrade
	}
	isReg, isToken, err := p.admit(req)
	if err != nil {
		return nil, err
	}
	resp, err := rt.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	noToken := false
	if isToken && resp.StatusCode == http.StatusOK {
		if noToken, err = tokenless(resp); err != nil {
			return nil, err
		}
	}
	p.learn(req, resp, isReg, noToken)
	return resp, nil
}

// admit says whether req goes to the registry or to a token service it
// named (a token request), or why it may not be sent.
func (p *pinned) admit(req *http.Request) (isReg, isToken bool, err error) {
	key := hostKey(req.URL)
	p.mu.Lock()
	defer p.mu.Unlock()
	isReg = key == p.regTLS || key == p.regPlain && p.regPlain != ""
	downgrade := isReg && req.URL.Scheme == "http" && p.tlsSeen
	allowed := isReg || p.realms[key]
	isToken = p.realmPaths[key+req.URL.Path]
	if isToken {
		p.facts.realmAsked = true
	}
	switch {
	case downgrade:
		return false, false, errDowngrade
	case !allowed:
		return false, false, errOtherHost
	}
	return isReg, isToken, nil
}

// learn records what an answer says: the facts, and, from the registry,
// the token services its challenges name.
func (p *pinned) learn(req *http.Request, resp *http.Response, isReg, noToken bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.facts.noToken = p.facts.noToken || noToken
	if resp.StatusCode >= 300 && resp.StatusCode < 400 && resp.Header.Get("Location") != "" {
		p.facts.redirected = true
	}
	if !isReg {
		return
	}
	if req.URL.Scheme == "https" {
		p.tlsSeen = true
	}
	if resp.StatusCode == http.StatusOK && req.Header.Get("Authorization") == "" {
		p.facts.anonymous = true
	}
	for _, h := range resp.Header.Values("WWW-Authenticate") {
		bearer, realm := bearerRealm(h)
		p.facts.bearer = p.facts.bearer || bearer
		if realm != nil && (realm.Scheme == "https" || req.URL.Scheme == "http" && strings.EqualFold(realm.Hostname(), req.URL.Hostname())) {
			p.realms[hostKey(realm)] = true
			p.realmPaths[hostKey(realm)+realm.Path] = true
		}
	}
}

// tokenless says whether a token service's 200 holds no token (the
// library's error for it quotes the whole answer), leaving the body for
// the library to read.
func tokenless(resp *http.Response) (bool, error) {
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxTokenBody+1))
	resp.Body.Close()
	if err != nil {
		return false, fmt.Errorf("reading the token service's answer: %w", err)
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	var tok struct {
		Token       string `json:"token"`
		AccessToken string `json:"access_token"`
	}
	return json.Unmarshal(body, &tok) == nil && tok.Token == "" && tok.AccessToken == "", nil
}

// hostKey is scheme://host:port, the host in lower case and the scheme's
// default port made explicit.
func hostKey(u *url.URL) string {
	port := u.Port()
	if port == "" {
		port = "443"
		if u.Scheme == "http" {
			port = "80"
		}
	}
	return u.Scheme + "://" + net.JoinHostPort(strings.ToLower(u.Hostname()), port)
}

// bearerRealm says whether a challenge is Bearer, and returns its realm
// URL (nil when it has none the probe could use).
func bearerRealm(challenge string) (bool, *url.URL) {
	scheme, params, _ := strings.Cut(strings.TrimSpace(challenge), " ")
	if !strings.EqualFold(scheme, "bearer") {
		return false, nil
	}
	for _, part := range strings.Split(params, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok || !strings.EqualFold(k, "realm") {
			continue
		}
		u, err := url.Parse(strings.Trim(v, `"`))
		if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
			return true, nil
		}
		return true, u
	}
	return true, nil
}
