// Package cluster starts a real control plane for tests and the demo: etcd
// and kube-apiserver built from Go modules (scripts/controlplane), bound to
// 127.0.0.1 only, with RBAC and ServiceAccount token signing, so agents can
// run with real ServiceAccount tokens under real RBAC.
package cluster

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// ErrMissingBinary means the control plane is not built; `make controlplane`
// builds it.
var ErrMissingBinary = errors.New("control plane binary missing")

// Cluster is a running etcd + kube-apiserver.
type Cluster struct {
	Dir        string // working folder (certs, data, logs, kubeconfigs)
	URL        string // https://127.0.0.1:<port>
	CAFile     string
	AdminToken string
	Kubeconfig string // admin kubeconfig
	Version    string // the API server's gitVersion, e.g. v1.37.2 (scripts/controlplane/build.sh sets it)
	Admin      *kubernetes.Clientset
	RESTConfig *rest.Config

	binDir    string
	extraArgs []string
	etcd      *proc
	apiserver *proc
	etcdURL   string
	apiPort   int
	apiArgs   []string
	clientCA  *clientCA
}

type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// RepoRoot finds the repository root from this source file's location.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// BinDir is where `make controlplane` puts etcd and kube-apiserver.
func BinDir() string { return filepath.Join(RepoRoot(), "bin") }

// Start starts etcd and kube-apiserver in dir and waits until the API
// server is ready. Their output goes to files in dir. extraArgs go to the
// API server (see PodSecurityArgs), each replacing the default of its
// flag.
func Start(ctx context.Context, dir string, extraArgs ...string) (*Cluster, error) {
	c := &Cluster{Dir: dir, binDir: BinDir(), extraArgs: extraArgs}
	for _, b := range []string{"etcd", "kube-apiserver"} {
		if _, err := os.Stat(filepath.Join(c.binDir, b)); err != nil {
			return nil, fmt.Errorf("%w: %s not found in %s; run `make controlplane` (builds it from Go modules, a few minutes the first time)", ErrMissingBinary, b, c.binDir)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if err := c.startEtcd(ctx); err != nil {
		c.Stop()
		return nil, err
	}
	if err := c.prepareAPIServer(); err != nil {
		c.Stop()
		return nil, err
	}
	if err := c.startAPIServer(ctx); err != nil {
		c.Stop()
		return nil, err
	}
	return c, nil
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func (c *Cluster) run(name string, args ...string) (*proc, error) {
	logf, err := os.OpenFile(filepath.Join(c.Dir, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(filepath.Join(c.binDir, name), args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group, so a test that dies does not leave it behind
	// attached to the terminal; Stop kills it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); logf.Close(); close(p.done) }()
	return p, nil
}

func (c *Cluster) startEtcd(ctx context.Context) error {
	client, err := freePort()
	if err != nil {
		return err
	}
	peer, err := freePort()
	if err != nil {
		return err
	}
	c.etcdURL = fmt.Sprintf("http://127.0.0.1:%d", client)
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", peer)
	c.etcd, err = c.run("etcd",
		"--name=default",
		"--data-dir="+filepath.Join(c.Dir, "etcd"),
		"--listen-client-urls="+c.etcdURL, "--advertise-client-urls="+c.etcdURL,
		"--listen-peer-urls="+peerURL, "--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=default="+peerURL,
		"--unsafe-no-fsync", "--log-level=warn",
	)
	if err != nil {
		return err
	}
	return c.waitHTTP(ctx, c.etcdURL+"/health", nil, c.etcd, "etcd", 30*time.Second)
}

func (c *Cluster) prepareAPIServer() error {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(c.Dir, "sa.key"), pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(c.Dir, "sa.pub"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o600); err != nil {
		return err
	}
	tok := make([]byte, 16)
	if _, err := rand.Read(tok); err != nil {
		return err
	}
	c.AdminToken = hex.EncodeToString(tok)
	if err := os.WriteFile(filepath.Join(c.Dir, "tokens.csv"), []byte(c.AdminToken+",admin,admin,system:masters\n"), 0o600); err != nil {
		return err
	}
	if c.clientCA, err = newClientCA(filepath.Join(c.Dir, "client-ca.crt")); err != nil {
		return err
	}
	c.apiPort, err = freePort()
	if err != nil {
		return err
	}
	c.URL = fmt.Sprintf("https://127.0.0.1:%d", c.apiPort)
	certDir := filepath.Join(c.Dir, "certs")
	c.CAFile = filepath.Join(certDir, "apiserver.crt")
	c.apiArgs = []string{
		"--etcd-servers=" + c.etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(c.apiPort),
		"--cert-dir=" + certDir,
		// As a kubeadm cluster: kubelets authenticate with client
		// certificates as system:node:NAME (NodeKubeconfig), the Node
		// authorizer and NodeRestriction keep each to its own Node, Pods and
		// the tokens of those Pods' ServiceAccounts.
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction",
		"--client-ca-file=" + c.clientCA.file,
		"--token-auth-file=" + filepath.Join(c.Dir, "tokens.csv"),
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + filepath.Join(c.Dir, "sa.pub"),
		"--service-account-signing-key-file=" + filepath.Join(c.Dir, "sa.key"),
		"--api-audiences=https://kubernetes.default.svc.cluster.local",
		"--service-cluster-ip-range=10.96.0.0/24",
		"--allow-privileged=true",
		// The kubernetes Service endpoint would be 127.0.0.1, which the
		// reconciler refuses; nothing here uses that Service.
		"--endpoint-reconciler-type=none",
		"--enable-priority-and-fairness=false",
		"--profiling=false",
		"--v=0",
	}
	// An extra flag replaces the default of the same name (list flags such
	// as --authorization-mode would otherwise add up).
	c.apiArgs = slices.DeleteFunc(c.apiArgs, func(a string) bool {
		name, _, _ := strings.Cut(a, "=")
		return slices.ContainsFunc(c.extraArgs, func(e string) bool { return strings.HasPrefix(e, name+"=") })
	})
	c.apiArgs = append(c.apiArgs, c.extraArgs...)
	return nil
}

func (c *Cluster) startAPIServer(ctx context.Context) error {
	var err error
	c.apiserver, err = c.run("kube-apiserver", c.apiArgs...)
	if err != nil {
		return err
	}
	// The serving certificate is created at start; wait for the file, then
	// for /readyz.
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := os.Stat(c.CAFile); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("kube-apiserver wrote no serving certificate; see %s", filepath.Join(c.Dir, "kube-apiserver.log"))
		}
		select {
		case <-c.apiserver.done:
			return fmt.Errorf("kube-apiserver exited; see %s:\n%s", filepath.Join(c.Dir, "kube-apiserver.log"), tail(filepath.Join(c.Dir, "kube-apiserver.log")))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	c.RESTConfig = &rest.Config{Host: c.URL, BearerToken: c.AdminToken, TLSClientConfig: rest.TLSClientConfig{CAFile: c.CAFile}, QPS: 100, Burst: 200}
	tr, err := rest.TransportFor(c.RESTConfig)
	if err != nil {
		return err
	}
	if err := c.waitHTTP(ctx, c.URL+"/readyz", &http.Client{Transport: tr, Timeout: 5 * time.Second}, c.apiserver, "kube-apiserver", 90*time.Second); err != nil {
		return err
	}
	c.Admin, err = kubernetes.NewForConfig(c.RESTConfig)
	if err != nil {
		return err
	}
	v, err := c.Admin.Discovery().ServerVersion()
	if err != nil {
		return fmt.Errorf("kube-apiserver version: %w", err)
	}
	c.Version = v.GitVersion
	c.Kubeconfig = filepath.Join(c.Dir, "admin.kubeconfig")
	return WriteKubeconfig(c.Kubeconfig, c.URL, c.CAFile, c.AdminToken)
}

func (c *Cluster) waitHTTP(ctx context.Context, url string, client *http.Client, p *proc, name string, within time.Duration) error {
	if client == nil {
		client = &http.Client{Timeout: 2 * time.Second}
	}
	deadline := time.Now().Add(within)
	for {
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready within %s; see %s:\n%s", name, within, filepath.Join(c.Dir, name+".log"), tail(filepath.Join(c.Dir, name+".log")))
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited; see %s:\n%s", name, filepath.Join(c.Dir, name+".log"), tail(filepath.Join(c.Dir, name+".log")))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func tail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return string(b)
}

// StopAPIServer stops kube-apiserver only (etcd keeps the data), to test
// an outage.
func (c *Cluster) StopAPIServer() { stop(c.apiserver) }

// RestartAPIServer starts kube-apiserver again on the same port.
func (c *Cluster) RestartAPIServer(ctx context.Context) error {
	stop(c.apiserver)
	return c.startAPIServer(ctx)
}

// Stop stops everything.
func (c *Cluster) Stop() {
	stop(c.apiserver)
	stop(c.etcd)
}

func stop(p *proc) {
	if p == nil {
		return
	}
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// WriteKubeconfig writes a token kubeconfig for server.
func WriteKubeconfig(path, server, caFile, token string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["local"] = &clientcmdapi.Cluster{Server: server, CertificateAuthority: caFile}
	cfg.AuthInfos["user"] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts["local"] = &clientcmdapi.Context{Cluster: "local", AuthInfo: "user"}
	cfg.CurrentContext = "local"
	return clientcmd.WriteToFile(*cfg, path)
}

// EtcdURL is etcd's client URL (plain HTTP on 127.0.0.1; its /metrics too).
func (c *Cluster) EtcdURL() string { return c.etcdURL }

// Pids are etcd's and the API server's process IDs (0 for one not running).
func (c *Cluster) Pids() (etcd, apiserver int) {
	pid := func(p *proc) int {
		if p == nil || p.cmd.Process == nil {
			return 0
		}
		return p.cmd.Process.Pid
	}
	return pid(c.etcd), pid(c.apiserver)
}

// Logs returns the tail of a component's log, for failure messages.
func (c *Cluster) Logs(name string) string { return tail(filepath.Join(c.Dir, name+".log")) }

// PodSecurityArgs writes an admission configuration under dir that makes
// the PodSecurity admission plugin enforce level (baseline, restricted) in
// every namespace without its own label, as many clusters do, and returns
// the API server flag that loads it.
func PodSecurityArgs(dir, level string) ([]string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	p := filepath.Join(dir, "admission.yaml")
	cfg := fmt.Sprintf(`apiVersion: apiserver.config.k8s.io/v1
kind: AdmissionConfiguration
plugins:
  - name: PodSecurity
    configuration:
      apiVersion: pod-security.admission.config.k8s.io/v1
      kind: PodSecurityConfiguration
      defaults:
        enforce: %q
        enforce-version: latest
      exemptions: {}
`, level)
	if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	return []string{"--admission-control-config-file=" + p}, nil
}
