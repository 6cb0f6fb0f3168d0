package check

import (
	"bytes"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nodecreds/nodecreds/internal/kubeletcred"
	"github.com/nodecreds/nodecreds/internal/testsupport"
)

func noProxy(*http.Request) (*url.URL, error) { return nil, nil }

// basicRegistry asks for basic auth and lets user:pass in.
func basicRegistry(user, pass string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != user || p != pass {
			w.Header().Set("WWW-Authenticate", `Basic realm="registry"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.WriteHeader(http.StatusOK)
	}
}

// inClear says whether text written in clear holds the credential or an
// Authorization header at all.
func inClear(wire, user, pass string) bool {
	return strings.Contains(wire, base64.StdEncoding.EncodeToString([]byte(user+":"+pass))) ||
		strings.Contains(strings.ToLower(wire), "authorization:") || strings.Contains(wire, pass)
}

// TestProbePlainHTTPOnlyToLoopbackOrPrivate: go-containerregistry falls
// back to plain HTTP by a name (".localhost") or a private IP literal; the
// credential goes in clear only to a host whose addresses are all loopback
// or private, checked on the address dialled. A name that resolves to a
// public, link-local, shared, unspecified or IPv4-mapped public address —
// or to a private and a public one — gets nothing; a name that answers a
// private address when checked and a public one the next time (DNS
// rebinding) gets its credential only at the private one.
func TestProbePlainHTTPOnlyToLoopbackOrPrivate(t *testing.T) {
	const user, pass = "robot", "plain-canary-pw"
	tests := []struct {
		name     string
		registry string
		dns      []string // the first answer for the registry's name
		later    []string // every later answer, and a dial by name's; nil: dns
		wantOK   bool
	}{
		{"public address behind a .localhost name", "reg.localhost:5000", []string{"203.0.113.5"}, nil, false},
		{"private and public", "reg.localhost:5000", []string{"10.0.0.5", "203.0.113.5"}, nil, false},
		{"public and private", "reg.localhost:5000", []string{"203.0.113.5", "10.0.0.5"}, nil, false},
		{"link-local (cloud metadata)", "reg.localhost:5000", []string{"169.254.169.254"}, nil, false},
		{"IPv6 link-local", "reg.localhost:5000", []string{"fe80::5"}, nil, false},
		{"IPv4-mapped public", "reg.localhost:5000", []string{"::ffff:203.0.113.5"}, nil, false},
		{"shared address space", "reg.localhost:5000", []string{"100.64.0.5"}, nil, false},
		{"unspecified", "reg.localhost:5000", []string{"0.0.0.0"}, nil, false},
		{"public IPv6", "reg.localhost:5000", []string{"2001:db8::5"}, nil, false},
		{"private", "reg.localhost:5000", []string{"10.0.0.5"}, nil, true},
		{"unique local IPv6", "reg.localhost:5000", []string{"fd00::5"}, nil, true},
		{"loopback", "reg.localhost:5000", []string{"127.0.0.2"}, nil, true},
		{"IPv4-mapped private", "reg.localhost:5000", []string{"::ffff:192.168.1.5"}, nil, true},
		{"rebinding: private when checked, public when dialled by name", "reb.localhost:5000", []string{"10.0.0.5"}, []string{"203.0.113.5"}, true},
		{"private IP literal", "10.1.2.3:5000", nil, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := newFakeNet(t)
			host, port, _ := net.SplitHostPort(tt.registry)
			all := slices.Concat(tt.dns, tt.later)
			if len(all) == 0 {
				all = []string{host}
			}
			for _, a := range all {
				n.serve(netip.AddrPortFrom(netip.MustParseAddr(a).Unmap(), 5000).String(), basicRegistry(user, pass), false)
			}
			if tt.dns != nil {
				n.host(host, tt.dns...)
			}
			if tt.later != nil {
				// The HTTPS attempt made first looks the name up too
				// (tlsDialer): the plain-HTTP one gets the second answer.
				n.lookups[host] = [][]netip.Addr{parseAddrs(tt.dns), parseAddrs(tt.dns), parseAddrs(tt.later)}
				n.sysDNS[host] = parseAddrs(tt.later)
			}
			p := RegistryProber{Timeout: 5 * time.Second, Proxy: noProxy, DialContext: n.DialContext, Resolver: n}
			res := p.Probe(t.Context(), tt.registry, "team/app", kubeletcred.Cred{Username: user, Password: pass})
			if res.OK != tt.wantOK || !tt.wantOK && res.Error != descPlainHTTP {
				t.Errorf("probe = %+v; want ok=%v (or the refusal %q)", res, tt.wantOK, descPlainHTTP)
			}
			for _, a := range all {
				ip := netip.MustParseAddr(a).Unmap()
				if plainHTTPAllowed(ip) {
					continue
				}
				if wire := n.clear(netip.AddrPortFrom(ip, 5000).String()); inClear(wire, user, pass) {
					t.Errorf("the credential went in clear to %s:%s:\n%s", ip, port, wire)
				}
			}
		})
	}
}

// TestProbeNeverSwitchesFromHTTPSToPlain: a registry that answers over
// HTTPS — on a public or a private address — gets no request over plain
// HTTP, whatever it redirects to (its own name on port 80 or 443, after
// the login or before), and its token service neither.
func TestProbeNeverSwitchesFromHTTPSToPlain(t *testing.T) {
	const user, pass = "robot", "tls-canary-pw"
	redirect := func(to string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, to, http.StatusFound) }
	}
	tests := []struct {
		name, host, addr string
		handler          http.HandlerFunc
		want             string
	}{
		{"redirect to plain HTTP on its own name", "example.com", "203.0.113.10", redirect("http://example.com/v2/"), descDowngrade},
		{"redirect to plain HTTP on port 443", "example.com", "203.0.113.10", redirect("http://example.com:443/v2/"), descDowngrade},
		{"redirect to plain HTTP on a private address", "reg.example.com", "10.0.0.7", redirect("http://reg.example.com/v2/"), descDowngrade},
		{"redirect to plain HTTP after the login", "example.com", "203.0.113.10", func(w http.ResponseWriter, r *http.Request) {
			if _, _, ok := r.BasicAuth(); !ok {
				w.Header().Set("WWW-Authenticate", `Basic realm="registry"`)
				w.WriteHeader(http.StatusUnauthorized)
				return
			}
			http.Redirect(w, r, "http://example.com/v2/", http.StatusFound)
		}, descRedirect}, // go-containerregistry turns it back into HTTPS: a loop
		{"redirect to port 80 after the login", "example.com", "203.0.113.10", func(w http.ResponseWriter, r *http.Request) {
			if _, _, ok := r.BasicAuth(); !ok {
				w.Header().Set("WWW-Authenticate", `Basic realm="registry"`)
				w.WriteHeader(http.StatusUnauthorized)
				return
			}
			http.Redirect(w, r, "http://example.com:80/v2/", http.StatusFound)
		}, descDowngrade},
		{"plain-HTTP token service on its own name", "example.com", "203.0.113.10", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="http://example.com:8080/token",service="registry"`)
			w.WriteHeader(http.StatusUnauthorized)
		}, descRealm},
		{"token service redirecting to plain HTTP", "example.com", "203.0.113.10", func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/token" {
				http.Redirect(w, r, "http://example.com:8080/token", http.StatusFound)
				return
			}
			w.Header().Set("WWW-Authenticate", `Bearer realm="https://example.com/token",service="registry"`)
			w.WriteHeader(http.StatusUnauthorized)
		}, descRedirect},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := newFakeNet(t)
			n.host(tt.host, tt.addr)
			srv := n.serve(tt.addr+":443", tt.handler, true)
			for _, port := range []string{"80", "8080"} {
				n.serve(tt.addr+":"+port, basicRegistry(user, pass), false)
			}
			roots := x509.NewCertPool()
			roots.AddCert(srv.Certificate())
			p := RegistryProber{Timeout: 5 * time.Second, Proxy: noProxy, DialContext: n.DialContext, Resolver: n, RootCAs: roots}
			res := p.Probe(t.Context(), tt.host, "team/app", kubeletcred.Cred{Username: user, Password: pass})
			if res.OK || res.Error != tt.want {
				t.Errorf("probe = %+v, want the refusal %q", res, tt.want)
			}
			for _, port := range []string{"80", "443", "8080"} {
				if wire := n.clear(tt.addr + ":" + port); inClear(wire, user, pass) {
					t.Errorf("the credential went in clear to %s:%s:\n%s", tt.addr, port, wire)
				}
			}
		})
	}
}

// echoes are the forms in which a server may echo a secret: raw, JSON-
// and Go-quoted, hex, base64 in every alphabet, URL-escaped; of the
// password and of user:password.
func echoes(user, pass string) []string {
	var out []string
	for _, s := range []string{pass, user + ":" + pass} {
		b := []byte(s)
		j, _ := json.Marshal(s)
		q := fmt.Sprintf("%q", s)
		out = append(out, s, strings.Trim(string(j), `"`), q[1:len(q)-1],
			hex.EncodeToString(b), strings.ToUpper(hex.EncodeToString(b)),
			base64.StdEncoding.EncodeToString(b), base64.RawStdEncoding.EncodeToString(b),
			base64.URLEncoding.EncodeToString(b), base64.RawURLEncoding.EncodeToString(b),
			url.QueryEscape(s), url.PathEscape(s), strings.ToUpper(s))
	}
	return out
}

// echoJSON and echoText are bodies holding every echo, and error codes
// that are echoes (an upper-case password is a well-formed code).
func echoJSON(user, pass string) []byte {
	e := echoes(user, pass)
	diags := []map[string]any{{"code": "UNAUTHORIZED", "message": e, "detail": e}}
	for _, s := range e {
		diags = append(diags, map[string]any{"code": s, "message": s})
	}
	b, _ := json.Marshal(map[string]any{"errors": diags, "echo": e, "password_received": pass})
	return b
}

func echoText(user, pass string) string { return strings.Join(echoes(user, pass), " \n ") }

// setEchoHeaders puts the echoes in headers too.
func setEchoHeaders(w http.ResponseWriter, user, pass string) {
	for i, s := range echoes(user, pass) {
		w.Header().Set(fmt.Sprintf("X-Echo-%d", i), url.QueryEscape(s))
	}
}

// TestProbePrintsNoTextTheServerChose: whatever a registry, its token
// service, a redirect or a proxy answers — echoing the password in any
// encoding in bodies, headers, status lines, error codes and redirect
// URLs — the probe reports only the status, error codes the distribution
// spec defines, and one of its fixed descriptions; neither its result nor
// check's table or JSON holds any form of the password.
func TestProbePrintsNoTextTheServerChose(t *testing.T) {
	passwords := []string{`Zq7"Can\ary9`, "ZQ7HUNTERCANARY", "p@ss/w+rd Zq7canary", "Zq7Canary%2F<>&'", "UNAUTHORIZED"}
	scenarios := []struct {
		name    string
		handler func(user, pass string) http.HandlerFunc
	}{
		{"token service answers 200 without a token, as JSON", tokenFlow(func(w http.ResponseWriter, user, pass string) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(echoJSON(user, pass))
		})},
		{"token service answers 200, not JSON", tokenFlow(func(w http.ResponseWriter, user, pass string) {
			_, _ = w.Write([]byte(echoText(user, pass)))
		})},
		{"token service refuses with echoed codes", tokenFlow(func(w http.ResponseWriter, user, pass string) {
			setEchoHeaders(w, user, pass)
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = w.Write(echoJSON(user, pass))
		})},
		{"token service redirects elsewhere with the password", tokenFlow(func(w http.ResponseWriter, user, pass string) {
			w.Header().Set("Location", "https://"+hex.EncodeToString([]byte(pass))+".example.com/?pw="+url.QueryEscape(pass))
			w.WriteHeader(http.StatusFound)
		})},
		{"registry refuses the login with echoed codes", afterLogin(func(w http.ResponseWriter, user, pass string) {
			setEchoHeaders(w, user, pass)
			w.Header().Set("WWW-Authenticate", `Basic realm="`+url.QueryEscape(pass)+`"`)
			w.WriteHeader(http.StatusForbidden)
			_, _ = w.Write(echoJSON(user, pass))
		})},
		{"registry answers text", afterLogin(func(w http.ResponseWriter, user, pass string) {
			w.WriteHeader(http.StatusBadRequest)
			_, _ = w.Write([]byte(echoText(user, pass)))
		})},
		{"redirect to a metadata address with the password", afterLogin(func(w http.ResponseWriter, user, pass string) {
			w.Header().Set("Location", "http://169.254.169.254/x?pw="+url.QueryEscape(pass)+"&b="+base64.StdEncoding.EncodeToString([]byte(user+":"+pass)))
			w.WriteHeader(http.StatusFound)
		})},
		{"redirect loop with the password", afterLogin(func(w http.ResponseWriter, user, pass string) {
			w.Header().Set("Location", "/v2/?q="+url.QueryEscape(pass)+"&h="+hex.EncodeToString([]byte(pass)))
			w.WriteHeader(http.StatusFound)
		})},
		{"status line with the password", afterLogin(func(w http.ResponseWriter, user, pass string) {
			rawStatus(w, 418, strings.NewReplacer("\r", "", "\n", "").Replace(pass)+" "+hex.EncodeToString([]byte(pass)), echoText(user, pass))
		})},
		{"challenge whose realm and scope hold the password", func(user, pass string) http.HandlerFunc {
			return func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/token" {
					setEchoHeaders(w, user, pass)
					w.WriteHeader(http.StatusUnauthorized)
					_, _ = w.Write(echoJSON(user, pass))
					return
				}
				w.Header().Set("WWW-Authenticate", `Bearer realm="http://`+r.Host+`/token?pw=`+url.QueryEscape(pass)+`",service="`+hex.EncodeToString([]byte(pass))+`",scope="`+url.QueryEscape(pass)+`"`)
				w.WriteHeader(http.StatusUnauthorized)
			}
		}},
		{"token accepted, then the registry refuses with echoed codes", func(user, pass string) http.HandlerFunc {
			return func(w http.ResponseWriter, r *http.Request) {
				switch r.URL.Path {
				case "/token":
					_, _ = w.Write([]byte(`{"token":"t0k"}`))
				default:
					w.Header().Set("WWW-Authenticate", `Bearer realm="http://`+r.Host+`/token",service="registry",error="`+url.QueryEscape(pass)+`"`)
					w.WriteHeader(http.StatusUnauthorized)
					_, _ = w.Write(echoJSON(user, pass))
				}
			}
		}},
	}
	for _, pass := range passwords {
		for _, sc := range scenarios {
			t.Run(sc.name+"/"+pass, func(t *testing.T) {
				const user = "robot"
				srv := httptest.NewServer(sc.handler(user, pass))
				defer srv.Close()
				dialer := &loopbackDialer{}
				p := RegistryProber{Timeout: 5 * time.Second, Proxy: noProxy, DialContext: dialer.DialContext}
				res := p.Probe(t.Context(), strings.TrimPrefix(srv.URL, "http://"), "team/app", kubeletcred.Cred{Username: user, Password: pass})
				assertFixedResult(t, res, user, pass)
			})
		}
		// A proxy's CONNECT refusal, with the password in its status
		// line and body.
		t.Run("proxy status line/"+pass, func(t *testing.T) {
			const user = "robot"
			proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				rawStatus(w, 403, strings.NewReplacer("\r", "", "\n", "").Replace(pass), echoText(user, pass))
			}))
			defer proxy.Close()
			u, _ := url.Parse(proxy.URL)
			dialer := &loopbackDialer{}
			p := RegistryProber{Timeout: 5 * time.Second, Proxy: http.ProxyURL(u), DialContext: dialer.DialContext}
			res := p.Probe(t.Context(), "reg.test", "team/app", kubeletcred.Cred{Username: user, Password: pass})
			assertFixedResult(t, res, user, pass)
			if res.Error != descProxy {
				t.Errorf("probe through a refusing proxy = %+v, want %q", res, descProxy)
			}
		})
	}
}

// tokenFlow is a registry that asks for a bearer token from its own host
// and answers the token request with token.
func tokenFlow(token func(w http.ResponseWriter, user, pass string)) func(user, pass string) http.HandlerFunc {
	return func(user, pass string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/token" {
				token(w, user, pass)
				return
			}
			w.Header().Set("WWW-Authenticate", `Bearer realm="http://`+r.Host+`/token",service="registry"`)
			w.WriteHeader(http.StatusUnauthorized)
		}
	}
}

// afterLogin is a registry that asks for basic auth and answers the
// login with then.
func afterLogin(then func(w http.ResponseWriter, user, pass string)) func(user, pass string) http.HandlerFunc {
	return func(user, pass string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if _, _, ok := r.BasicAuth(); !ok {
				w.Header().Set("WWW-Authenticate", `Basic realm="registry"`)
				w.WriteHeader(http.StatusUnauthorized)
				return
			}
			then(w, user, pass)
		}
	}
}

// rawStatus writes a response with a status line of the test's choosing.
func rawStatus(w http.ResponseWriter, code int, text, body string) {
	conn, buf, err := w.(http.Hijacker).Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	fmt.Fprintf(buf, "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", code, text, len(body), body)
	_ = buf.Flush()
}

// assertFixedResult: the result is failed, its error one of the fixed
// descriptions or spec error codes, and no form of the password is in it,
// in check's JSON or in its table.
func assertFixedResult(t *testing.T, res ProbeResult, user, pass string) {
	t.Helper()
	if res.OK {
		t.Errorf("probe succeeded: %+v", res)
	}
	if !fixedText(res) {
		t.Errorf("error %q is not one of the fixed descriptions or spec codes", res.Error)
	}
	rep := Report{Results: []Result{{Ref: "reg", Found: true, Probe: &res}}, Warnings: []string{}}
	var out bytes.Buffer
	if err := json.NewEncoder(&out).Encode(rep); err != nil {
		t.Fatal(err)
	}
	if err := rep.WriteTable(&out); err != nil {
		t.Fatal(err)
	}
	text := out.String()
	for _, e := range echoes(user, pass) {
		if len(e) >= testsupport.LeakMin && strings.Contains(text, e) {
			t.Errorf("output holds the password as %q:\n%s", e, text)
		}
	}
	if leak := testsupport.Leak(text, pass); leak != "" {
		t.Errorf("output holds %q of the password:\n%s", leak, text)
	}
}

func fixedText(res ProbeResult) bool {
	if slices.Contains(failureTexts, res.Error) {
		return true
	}
	msg, _ := strings.CutSuffix(res.Error, "; "+descCodeOther)
	if res.Status != 0 && (msg == http.StatusText(res.Status) || msg == fmt.Sprintf("HTTP status %d", res.Status)) {
		return true
	}
	if len(res.Codes) == 0 || msg != strings.Join(res.Codes, ", ") {
		return false
	}
	for _, c := range res.Codes {
		if !distributionCodes[c] {
			return false
		}
	}
	return true
}

// TestProbeSaysWhenNoCredentialWasAsked: a registry whose /v2/ answers
// 200 without credentials lets any password in; the probe says it was not
// asked for one, and check warns that the entry is not verified.
func TestProbeSaysWhenNoCredentialWasAsked(t *testing.T) {
	tests := []struct {
		name          string
		handler       http.HandlerFunc
		wantAnonymous bool
	}{
		{"anonymous registry", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) }, true},
		{"registry that asks", basicRegistry("robot", "right-pw"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(tt.handler)
			defer srv.Close()
			host := strings.TrimPrefix(srv.URL, "http://")
			root := t.TempDir()
			put(t, root, "var/lib/kubelet/config.json", `{"auths":{"`+host+`":{"auth":"`+testsupport.B64("robot:right-pw")+`"}}}`)
			dialer := &loopbackDialer{}
			rep := Run(t.Context(), Options{HostRoot: root, KubeletRootDir: "/var/lib/kubelet", Registries: []string{host},
				Prober: RegistryProber{Timeout: 5 * time.Second, Proxy: noProxy, DialContext: dialer.DialContext}})
			p := rep.Results[0].Probe
			if p == nil || !p.OK || p.Anonymous != tt.wantAnonymous {
				t.Fatalf("probe %+v, want ok and anonymous=%v", p, tt.wantAnonymous)
			}
			var out bytes.Buffer
			_ = rep.WriteTable(&out)
			warned := strings.Contains(strings.Join(rep.Warnings, "\n"), "without asking for credentials")
			said := strings.Contains(out.String(), "without credentials: not verified")
			if warned != tt.wantAnonymous || said != tt.wantAnonymous {
				t.Errorf("warned=%v, table says it=%v; want %v:\n%s", warned, said, tt.wantAnonymous, out.String())
			}
		})
	}
}

// TestProbeNeverReachesLinkLocal: over HTTPS too, neither a registry nor
// the token service it names is dialled at a link-local (cloud metadata),
// multicast or unspecified address, however its name resolves: a Secret
// names the hosts every agent's verification logins go to.
func TestProbeNeverReachesLinkLocal(t *testing.T) {
	const user, pass = "robot", "meta-canary-pw"
	tokenAt := func(realm string) http.HandlerFunc {
		return func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="`+realm+`",service="registry"`)
			w.WriteHeader(http.StatusUnauthorized)
		}
	}
	tests := []struct {
		name, registry, regAddr string
		handler                 http.HandlerFunc
		metaAddr                string
	}{
		{"a registry on the metadata address", "reg.example.com", "169.254.169.254", basicRegistry(user, pass), "169.254.169.254"},
		{"a registry on an IPv6 link-local address", "reg.example.com", "fe80::1", basicRegistry(user, pass), "fe80::1"},
		{"a registry on the unspecified address", "reg.example.com", "0.0.0.0", basicRegistry(user, pass), "0.0.0.0"},
		{"a token service on the metadata address", "reg.example.com", "203.0.113.10", tokenAt("https://meta.example.com/latest/meta-data/"), "169.254.169.254"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := newFakeNet(t)
			n.host(tt.registry, tt.regAddr)
			n.host("meta.example.com", tt.metaAddr)
			srv := n.serve(netip.AddrPortFrom(netip.MustParseAddr(tt.regAddr), 443).String(), tt.handler, true)
			if tt.metaAddr != tt.regAddr {
				n.serve(netip.AddrPortFrom(netip.MustParseAddr(tt.metaAddr), 443).String(), basicRegistry(user, pass), true)
			}
			roots := x509.NewCertPool()
			roots.AddCert(srv.Certificate())
			p := RegistryProber{Timeout: 5 * time.Second, Proxy: noProxy, DialContext: n.DialContext, Resolver: n, RootCAs: roots}
			res := p.Probe(t.Context(), tt.registry, "", kubeletcred.Cred{Username: user, Password: pass})
			if res.OK || res.Error != descLinkLocal {
				t.Errorf("probe = %+v, want the refusal %q", res, descLinkLocal)
			}
			for _, d := range n.Dialled() {
				if strings.HasPrefix(d, tt.metaAddr+":") || strings.HasPrefix(d, "["+tt.metaAddr+"]:") {
					t.Errorf("dialled %s", d)
				}
			}
		})
	}
}
