package test

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nodecreds/nodecreds/internal/testsupport"
)

// hostsNetnsEnv makes the test binary a helper that runs `check --probe`
// in a network and mount namespace of its own (the value is the nodecreds
// binary), with an /etc/hosts of its own that names hosts on public
// addresses. Those addresses sit on the namespace's loopback interface,
// the only one it has, so no packet leaves it.
const hostsNetnsEnv = "NODECREDS_TEST_PROBE_HOSTS"

const (
	hubCanary     = "HubCanary123"
	plainCanary   = "plain-netns-canary-pw"
	publicAddr    = "203.0.113.5" // reg.localhost: a .localhost name on a public address
	myregAddr     = "203.0.113.7" // myregistry: a single-label name
	privateAddr   = "10.1.2.9"    // priv.localhost
	netnsHostFile = "127.0.0.1 localhost\n::1 localhost\n" + publicAddr + " reg.localhost\n" + myregAddr + " myregistry\n" + privateAddr + " priv.localhost\n"
)

// hostsRun is one `check` run and what every listener saw: "conn" for a
// bare connection, "METHOD host auth=yes|no" for a request.
type hostsRun struct {
	Args   []string
	Code   int
	Stdout string
	Stderr string
	Seen   map[string][]string
}

// TestProbeSendsNoCredentialWhereItDoesNotBelong runs the real binary's
// `check --probe` where names resolve as an attacker would have them:
//   - --registry myregistry, with only Docker Hub's credential: refused as
//     no registry host; nothing connects to myregistry;
//   - --image localhost/app with only Docker Hub's credential: not sent,
//     with a warning; nothing connects to localhost:443;
//   - --registry reg.localhost:5000, a name go-containerregistry takes for
//     local, on a public address: refused; the server there gets no
//     credential;
//   - --registry priv.localhost:5000 on a private address: the login
//     works (the rule is the address, not the name).
func TestProbeSendsNoCredentialWhereItDoesNotBelong(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root for a network and mount namespace of its own (make test runs as root)")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self, "-test.run=^$")
	cmd.Env = append(os.Environ(), hostsNetnsEnv+"="+binary)
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET | syscall.CLONE_NEWNS}
	out, err := cmd.Output()
	if err != nil {
		var stderr []byte
		if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
			stderr = ee.Stderr
		}
		t.Fatalf("the helper in its namespaces failed: %v\n%s%s", err, out, stderr)
	}
	var runs []hostsRun
	if err := json.Unmarshal(out, &runs); err != nil {
		t.Fatalf("helper output %q: %v", out, err)
	}
	if len(runs) != 4 {
		t.Fatalf("%d runs, want 4", len(runs))
	}
	type probe struct {
		OK      bool   `json:"ok"`
		Status  int    `json:"status"`
		NotSent bool   `json:"not_sent"`
		Error   string `json:"error"`
	}
	type report struct {
		OK      bool `json:"ok"`
		Results []struct {
			Found bool   `json:"found"`
			Error string `json:"error"`
			Probe *probe `json:"probe"`
		} `json:"results"`
		Warnings []string `json:"warnings"`
	}
	checks := []func(t *testing.T, r hostsRun, rep report){
		func(t *testing.T, r hostsRun, rep report) {
			if r.Code != 1 || !strings.Contains(rep.Results[0].Error, "not a registry host") || rep.Results[0].Probe != nil {
				t.Errorf("exit %d; want 1 and myregistry refused as no registry host, unprobed:\n%s", r.Code, r.Stdout)
			}
			if s := r.Seen[myregAddr+":443"]; len(s) > 0 {
				t.Errorf("myregistry:443 saw %v", s)
			}
		},
		func(t *testing.T, r hostsRun, rep report) {
			p := rep.Results[0].Probe
			if r.Code != 1 || p == nil || !p.NotSent || !strings.Contains(strings.Join(rep.Warnings, "\n"), "sends Docker Hub's password to localhost") {
				t.Errorf("exit %d; want 1, the probe not sent and a warning that the runtime sends Docker Hub's password to localhost:\n%s", r.Code, r.Stdout)
			}
			for _, a := range []string{"127.0.0.1:443", "[::1]:443"} {
				if s := r.Seen[a]; len(s) > 0 {
					t.Errorf("%s saw %v", a, s)
				}
			}
		},
		func(t *testing.T, r hostsRun, rep report) {
			p := rep.Results[0].Probe
			if r.Code != 1 || p == nil || p.OK || !strings.Contains(p.Error, "plain HTTP") {
				t.Errorf("exit %d; want 1 and plain HTTP refused:\n%s", r.Code, r.Stdout)
			}
			for _, s := range r.Seen[publicAddr+":5000"] {
				if strings.HasSuffix(s, "auth=yes") {
					t.Errorf("the server on the public address got a credential: %v", r.Seen[publicAddr+":5000"])
				}
			}
		},
		func(t *testing.T, r hostsRun, rep report) {
			p := rep.Results[0].Probe
			if r.Code != 0 || p == nil || !p.OK || p.Status != 200 {
				t.Errorf("exit %d; want 0 and the login at the private address:\n%s", r.Code, r.Stdout)
			}
		},
	}
	for i, r := range runs {
		t.Run(strings.Join(r.Args, " "), func(t *testing.T) {
			var rep report
			if err := json.Unmarshal([]byte(r.Stdout), &rep); err != nil || len(rep.Results) != 1 {
				t.Fatalf("check printed %q (%v); stderr %s", r.Stdout, err, r.Stderr)
			}
			checks[i](t, r, rep)
			for _, secret := range []string{hubCanary, plainCanary} {
				assertNoSecrets(t, "check output", r.Stdout+r.Stderr, secret, testsupport.B64("hubuser:"+secret), testsupport.B64("robot:"+secret))
			}
		})
	}
}

// probeWithHosts is the helper: it prints the runs as JSON and exits 0, or
// says what failed on stderr and exits 1.
func probeWithHosts(bin string) {
	runs, err := hostsRuns(bin)
	if err == nil {
		err = json.NewEncoder(os.Stdout).Encode(runs)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(0)
}

func hostsRuns(bin string) ([]hostsRun, error) {
	if err := ownHostsFile(); err != nil {
		return nil, err
	}
	if err := netnsLoopback(); err != nil {
		return nil, err
	}
	if err := loAddrs(publicAddr, myregAddr, privateAddr); err != nil {
		return nil, err
	}
	var (
		mu   sync.Mutex
		seen = map[string][]string{}
	)
	note := func(addr, s string) {
		mu.Lock()
		seen[addr] = append(seen[addr], s)
		mu.Unlock()
	}
	// Bare listeners: any connection at all is recorded.
	for _, addr := range []string{myregAddr + ":443", "127.0.0.1:443", "[::1]:443"} {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			if addr == "[::1]:443" {
				continue // no IPv6 in this namespace: nothing can connect there either
			}
			return nil, err
		}
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				note(addr, "conn")
				c.Close()
			}
		}()
	}
	// Plain registries asking for basic auth.
	for _, addr := range []string{publicAddr + ":5000", privateAddr + ":5000"} {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, err
		}
		go func() {
			_ = http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				auth := "no"
				if r.Header.Get("Authorization") != "" {
					auth = "yes"
				}
				note(addr, r.Method+" "+r.Host+" auth="+auth)
				if u, p, ok := r.BasicAuth(); !ok || u != "robot" || p != plainCanary {
					w.Header().Set("WWW-Authenticate", `Basic realm="registry"`)
					w.WriteHeader(http.StatusUnauthorized)
					return
				}
				w.WriteHeader(http.StatusOK)
			}))
		}()
	}
	var env []string
	for _, e := range os.Environ() {
		if name, _, _ := strings.Cut(e, "="); !strings.HasSuffix(strings.ToLower(name), "_proxy") {
			env = append(env, e)
		}
	}
	hub := `{"https://index.docker.io/v1/":{"auth":"` + testsupport.B64("hubuser:"+hubCanary) + `"}}`
	plain := func(host string) string {
		return `{"` + host + `":{"auth":"` + testsupport.B64("robot:"+plainCanary) + `"}}`
	}
	cases := []struct {
		auths string
		args  []string
	}{
		{hub, []string{"--registry", "myregistry"}},
		{hub, []string{"--image", "localhost/app:v1"}},
		{plain("reg.localhost:5000"), []string{"--registry", "reg.localhost:5000"}},
		{plain("priv.localhost:5000"), []string{"--registry", "priv.localhost:5000"}},
	}
	var runs []hostsRun
	for _, c := range cases {
		root, err := os.MkdirTemp("", "nodecreds-hosts-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(root)
		file := filepath.Join(root, kubeletFile)
		if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
			return nil, err
		}
		if err := os.WriteFile(file, []byte(`{"auths":`+c.auths+`}`), 0o600); err != nil {
			return nil, err
		}
		mu.Lock()
		seen = map[string][]string{}
		mu.Unlock()
		cmd := exec.Command(bin, append([]string{"check", "--host-root", root, "--probe", "--timeout", "5s", "-o", "json"}, c.args...)...)
		cmd.Env = env
		var stdout, stderr strings.Builder
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			if ee := (*exec.ExitError)(nil); !errors.As(err, &ee) {
				return nil, err
			}
		}
		mu.Lock()
		runs = append(runs, hostsRun{Args: c.args, Code: cmd.ProcessState.ExitCode(), Stdout: stdout.String(), Stderr: stderr.String(), Seen: seen})
		mu.Unlock()
	}
	return runs, nil
}

// ownHostsFile gives this mount namespace an /etc/hosts of its own,
// without the change reaching the host's.
func ownHostsFile() error {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("making mounts private: %w", err)
	}
	f, err := os.CreateTemp("", "nodecreds-hosts-")
	if err != nil {
		return err
	}
	if _, err := f.WriteString(netnsHostFile); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := unix.Mount(f.Name(), "/etc/hosts", "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind-mounting a hosts file: %w", err)
	}
	return nil
}

// loAddrs adds addresses to the namespace's loopback interface.
func loAddrs(addrs ...string) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	for i, a := range addrs {
		alias, err := unix.NewIfreq(fmt.Sprintf("lo:%d", 10+i))
		if err != nil {
			return err
		}
		if err := alias.SetInet4Addr(netip.MustParseAddr(a).AsSlice()); err != nil {
			return err
		}
		if err := unix.IoctlIfreq(fd, unix.SIOCSIFADDR, alias); err != nil {
			return fmt.Errorf("adding %s to lo: %w", a, err)
		}
	}
	return nil
}
