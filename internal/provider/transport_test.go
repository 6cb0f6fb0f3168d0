package provider

// The service-account mode's client against hostile servers: the Pod's
// token goes to the configured API server only, and nothing a server says
// reaches the kubelet's log. (From a security review's demonstrations,
// turned around.)

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nodecreds/nodecreds/internal/pullsecret"
	"github.com/nodecreds/nodecreds/internal/testsupport"
)

func secretJSON(ns, name, registry, userpass string) []byte {
	b, _ := json.Marshal(pullSecret(ns, name, registry, userpass))
	var m map[string]any
	_ = json.Unmarshal(b, &m)
	m["apiVersion"], m["kind"] = "v1", "Secret"
	b, _ = json.Marshal(m)
	return b
}

// realOptions: the real client (NewSecrets nil) against srv, its cert as CA.
func realOptions(t *testing.T, srv *httptest.Server, server string) ServiceAccountOptions {
	t.Helper()
	root := t.TempDir()
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	testsupport.WriteFile(t, filepath.Join(root, "etc/ca.crt"), string(ca), 0o644)
	return ServiceAccountOptions{HostRoot: root, APIServer: server, CAFile: "/etc/ca.crt",
		Timeout: 5 * time.Second, CacheDuration: 10 * time.Second}
}

// A redirect is refused, whoever sends it (the API server, or anything
// in front of it with a certificate of the CA): the token goes nowhere
// else and the other host's Secret is no answer.
func TestRedirectRefused(t *testing.T) {
	var mu sync.Mutex
	var gotAuth string
	hit := false
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { // plain HTTP
		mu.Lock()
		gotAuth, hit = r.Header.Get("Authorization"), true
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.Write(secretJSON("tenant-a", "registry-pull", "registry.example.com", "attacker:chosen"))
	}))
	defer other.Close()
	for _, target := range []string{other.URL, "https://" + other.Listener.Addr().String()} {
		api := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, target+r.URL.Path, http.StatusTemporaryRedirect)
		}))
		tok := podToken(t, "tenant-a")
		var out bytes.Buffer
		err := ServeServiceAccount(context.Background(), strings.NewReader(saRequest("registry.example.com/app", tok, map[string]string{pullsecret.Annotation: "registry-pull"})), &out, realOptions(t, api, api.URL))
		api.Close()
		mu.Lock()
		if hit || gotAuth != "" {
			t.Errorf("the redirect target %s was asked (token sent: %v)", target, gotAuth != "")
		}
		mu.Unlock()
		if pullsecret.ReasonOf(err) != pullsecret.APIError || out.Len() != 0 {
			t.Errorf("redirect to %s: %v, answer %q; want APIError and no answer", target, err, out.String())
		}
	}
}

// The kubelet's environment (which it passes to plugins) may name a
// proxy: the client has its own, none.
func TestNoProxy(t *testing.T) {
	cfg, err := ServiceAccountOptions{APIServer: "https://api.test:6443", CAFile: "/ca"}.restConfigFor("tok", []byte("ca"))
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodGet, "https://api.test:6443/api", nil)
	if u, err := cfg.Proxy(req); u != nil || err != nil {
		t.Errorf("proxy %v %v, want none", u, err)
	}
}

// An error body of the API server (or a proxy or load balancer in front
// of it) is not relayed: the status code and reason are.
func TestErrorBodyNotRelayed(t *testing.T) {
	body := "upstream said: password=hunter2-canary\nAuthorization: Basic dXNlcjpodW50ZXIy\n" + strings.Repeat("x", 5000)
	api := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(502)
		io.WriteString(w, body)
	}))
	defer api.Close()
	err := ServeServiceAccount(context.Background(), strings.NewReader(saRequest("registry.example.com/app", podToken(t, "tenant-a"), map[string]string{pullsecret.Annotation: "registry-pull"})), io.Discard, realOptions(t, api, api.URL))
	msg := err.Error()
	if strings.Contains(msg, "hunter2") || strings.Contains(msg, "dXNlcjpodW50ZXIy") || strings.Contains(msg, "\n") || len(msg) > 300 || !strings.Contains(msg, "502") {
		t.Errorf("the failure relays the body, or lacks the status: %.400q", msg)
	}
}

// A server that accepts and never answers: the run ends at its timeout.
func TestBlackholeTimesOut(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	api := httptest.NewTLSServer(http.NotFoundHandler())
	defer api.Close()
	o := realOptions(t, api, "https://"+ln.Addr().String())
	o.Timeout = time.Second
	start := time.Now()
	err := ServeServiceAccount(context.Background(), strings.NewReader(saRequest("registry.example.com/app", podToken(t, "tenant-a"), map[string]string{pullsecret.Annotation: "registry-pull"})), io.Discard, o)
	if took := time.Since(start); took > 5*time.Second || pullsecret.ReasonOf(err) != pullsecret.APIError {
		t.Errorf("took %v: %v; want APIError at the 1s timeout", took, err)
	}
}

// A tenant's annotation does not fill the kubelet's log, which gets the
// failure on every pull retried.
func TestHugeAnnotationCapped(t *testing.T) {
	ann := strings.Repeat("A", 200<<10)
	err := ServeServiceAccount(context.Background(), strings.NewReader(saRequest("registry.example.com/app", podToken(t, "tenant-a"), map[string]string{pullsecret.Annotation: ann})), io.Discard, ServiceAccountOptions{Timeout: time.Second})
	if n := len(err.Error()); n > 1024 {
		t.Errorf("the failure is %d bytes", n)
	}
}
