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
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nodecreds/nodecreds/internal/testsupport"
)

// netnsEnv makes the test binary a helper that runs `check --probe` in a
// network namespace of its own (the value is the nodecreds binary): there,
// a plain-HTTP registry on a private address (10.1.2.3:5000, on the
// namespace's loopback interface) and a proxy named by HTTP_PROXY and
// HTTPS_PROXY can be run without a packet ever leaving the machine. Go's
// ProxyFromEnvironment exempts only loopback, so the proxy is used for
// 10.1.2.3 as it would be on a node.
const netnsEnv = "NODECREDS_TEST_PROBE_NETNS"

const (
	netnsRegistry = "10.1.2.3:5000"
	netnsPassword = "netns-proxy-canary-pw"
)

// netnsRun is one `check` run in the namespace, with what the proxy and
// the registry saw ("METHOD host auth=yes|no").
type netnsRun struct {
	Args     []string
	Code     int
	Stdout   string
	Stderr   string
	Proxy    []string
	Registry []string
}

// TestProbeThroughAProxyReachesTheRegistryItself: `check --probe` of a
// plain-HTTP private registry with HTTP_PROXY and HTTPS_PROXY set sends
// nothing but a CONNECT (no credentials) to the proxy and logs in at the
// registry itself; a wrong password is reported as the registry's 401
// although the proxy answers 200 to anything.
func TestProbeThroughAProxyReachesTheRegistryItself(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root for a network namespace of its own (make test runs as root)")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self, "-test.run=^$")
	cmd.Env = append(os.Environ(), netnsEnv+"="+binary)
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	out, err := cmd.Output()
	if err != nil {
		var stderr []byte
		if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
			stderr = ee.Stderr
		}
		t.Fatalf("the helper in its network namespace failed: %v\n%s%s", err, out, stderr)
	}
	var runs []netnsRun
	if err := json.Unmarshal(out, &runs); err != nil {
		t.Fatalf("helper output %q: %v", out, err)
	}
	if len(runs) != 4 {
		t.Fatalf("%d runs, want 4", len(runs))
	}
	for i, r := range runs {
		right := i%2 == 0 // the helper alternates the right and a wrong password
		t.Run(fmt.Sprintf("%v right=%v", r.Args, right), func(t *testing.T) {
			var rep struct {
				OK      bool `json:"ok"`
				Results []struct {
					Probe *struct {
						OK     bool `json:"ok"`
						Status int  `json:"status"`
					} `json:"probe"`
				} `json:"results"`
			}
			if err := json.Unmarshal([]byte(r.Stdout), &rep); err != nil || len(rep.Results) != 1 || rep.Results[0].Probe == nil {
				t.Fatalf("check printed %q (%v); stderr %s", r.Stdout, err, r.Stderr)
			}
			probe := rep.Results[0].Probe
			if right && (r.Code != 0 || !probe.OK || probe.Status != 200) || !right && (r.Code != 1 || probe.OK || probe.Status != 401) {
				t.Errorf("exit %d, probe %+v; want the registry's own answer (right password: %v)\n%s", r.Code, *probe, right, r.Stdout)
			}
			for _, s := range r.Proxy {
				if !strings.HasPrefix(s, "CONNECT ") || strings.HasSuffix(s, "auth=yes") {
					t.Errorf("the proxy got %q: only a CONNECT without credentials may reach it", s)
				}
			}
			if !slices.Contains(r.Registry, "GET "+netnsRegistry+" auth=yes") {
				t.Errorf("the registry saw %v: the login never reached it", r.Registry)
			}
			assertNoSecrets(t, "check output", r.Stdout+r.Stderr, netnsPassword, testsupport.B64("robot:"+netnsPassword))
		})
	}
}

// probeInNetns is the helper: it prints the runs as JSON and exits 0, or
// says what failed on stderr and exits 1.
func probeInNetns(bin string) {
	runs, err := netnsRuns(bin)
	if err == nil {
		err = json.NewEncoder(os.Stdout).Encode(runs)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(0)
}

func netnsRuns(bin string) ([]netnsRun, error) {
	if err := netnsLoopback(); err != nil {
		return nil, err
	}
	registry := &recorder{}
	regLn, err := net.Listen("tcp", netnsRegistry)
	if err != nil {
		return nil, err
	}
	go func() {
		_ = http.Serve(regLn, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			registry.add(r)
			if u, p, ok := r.BasicAuth(); !ok || u != "robot" || p != netnsPassword {
				w.Header().Set("WWW-Authenticate", `Basic realm="registry"`)
				w.WriteHeader(http.StatusUnauthorized)
				return
			}
			w.WriteHeader(http.StatusOK)
		}))
	}()
	proxy := &recorder{}
	proxyLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	go func() {
		// Answers 200 to everything but CONNECT, and forwards nothing.
		_ = http.Serve(proxyLn, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			proxy.add(r)
			if r.Method == http.MethodConnect {
				http.Error(w, "not forwarded", http.StatusForbidden)
				return
			}
			w.WriteHeader(http.StatusOK)
		}))
	}()
	proxyURL := "http://" + proxyLn.Addr().String()
	env := append(os.Environ(), "HTTP_PROXY="+proxyURL, "HTTPS_PROXY="+proxyURL, "http_proxy="+proxyURL, "https_proxy="+proxyURL, "NO_PROXY=", "no_proxy=")
	var runs []netnsRun
	for _, ref := range [][]string{{"--registry", netnsRegistry}, {"--image", netnsRegistry + "/team/app:v1"}} {
		for _, pw := range []string{netnsPassword, "wrong-password"} {
			root, err := os.MkdirTemp("", "nodecreds-netns-")
			if err != nil {
				return nil, err
			}
			defer os.RemoveAll(root)
			file := filepath.Join(root, kubeletFile)
			if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
				return nil, err
			}
			if err := os.WriteFile(file, []byte(`{"auths":{"`+netnsRegistry+`":{"auth":"`+testsupport.B64("robot:"+pw)+`"}}}`), 0o600); err != nil {
				return nil, err
			}
			proxy.reset()
			registry.reset()
			args := append([]string{"check", "--host-root", root, "--probe", "--timeout", "5s", "-o", "json"}, ref...)
			cmd := exec.Command(bin, args...)
			cmd.Env = env
			var stdout, stderr strings.Builder
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			if err := cmd.Run(); err != nil {
				if ee := (*exec.ExitError)(nil); !errors.As(err, &ee) {
					return nil, err
				}
			}
			runs = append(runs, netnsRun{Args: ref, Code: cmd.ProcessState.ExitCode(), Stdout: stdout.String(), Stderr: stderr.String(), Proxy: proxy.seen(), Registry: registry.seen()})
		}
	}
	return runs, nil
}

// netnsLoopback brings the namespace's loopback interface up and gives it
// the registry's private address too.
func netnsLoopback() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	lo, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, lo); err != nil {
		return fmt.Errorf("reading lo's flags: %w", err)
	}
	lo.SetUint16(lo.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, lo); err != nil {
		return fmt.Errorf("bringing lo up: %w", err)
	}
	alias, err := unix.NewIfreq("lo:1")
	if err != nil {
		return err
	}
	host, _, _ := strings.Cut(netnsRegistry, ":")
	if err := alias.SetInet4Addr(netip.MustParseAddr(host).AsSlice()); err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFADDR, alias); err != nil {
		return fmt.Errorf("adding %s to lo: %w", host, err)
	}
	return nil
}

// recorder keeps "METHOD host auth=yes|no" of each request.
type recorder struct {
	mu  sync.Mutex
	got []string
}

func (r *recorder) add(req *http.Request) {
	auth := "no"
	if req.Header.Get("Authorization") != "" {
		auth = "yes"
	}
	r.mu.Lock()
	r.got = append(r.got, req.Method+" "+req.Host+" auth="+auth)
	r.mu.Unlock()
}

func (r *recorder) seen() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.got)
}

func (r *recorder) reset() {
	r.mu.Lock()
	r.got = nil
	r.mu.Unlock()
}
