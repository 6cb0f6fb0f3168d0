package cluster

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// StartControllers starts kube-controller-manager (DaemonSets, the
// kube-root-ca.crt publisher that ServiceAccount token volumes need) and
// kube-scheduler, both bound to 127.0.0.1.
func (c *Cluster) StartControllers(ctx context.Context) error {
	for _, b := range []string{"kube-controller-manager", "kube-scheduler"} {
		if _, err := os.Stat(filepath.Join(c.binDir, b)); err != nil {
			return fmt.Errorf("%w: %s not found in %s; run scripts/controlplane/build.sh %s", ErrMissingBinary, b, c.binDir, b)
		}
	}
	cmPort, err := freePort()
	if err != nil {
		return err
	}
	if _, err := c.run("kube-controller-manager",
		"--kubeconfig="+c.Kubeconfig,
		"--bind-address=127.0.0.1", "--secure-port="+strconv.Itoa(cmPort),
		"--leader-elect=false",
		"--root-ca-file="+c.CAFile,
		"--service-account-private-key-file="+filepath.Join(c.Dir, "sa.key"),
		"--controllers=*,-node-ipam-controller,-node-lifecycle-controller",
		"--v=0",
	); err != nil {
		return err
	}
	schedPort, err := freePort()
	if err != nil {
		return err
	}
	if _, err := c.run("kube-scheduler",
		"--kubeconfig="+c.Kubeconfig,
		"--authentication-kubeconfig="+c.Kubeconfig, "--authorization-kubeconfig="+c.Kubeconfig,
		"--bind-address=127.0.0.1", "--secure-port="+strconv.Itoa(schedPort),
		"--leader-elect=false", "--v=0",
	); err != nil {
		return err
	}
	return nil
}

// Kubelet is a running kubelet.
type Kubelet struct {
	c     *Cluster
	args  []string
	port  int
	hport int
	p     *proc
	Name  string
}

// StartKubelet starts a kubelet registering node name, with its root folder
// at rootDir (the DaemonSet's hostPath), talking to the containerd at
// socket, anonymous auth and AlwaysAllow on 127.0.0.1, cgroupfs on cgroup
// v1, and the given registration taints ("key:Effect"). It authenticates
// as system:node:<name> (NodeKubeconfig), not as an admin.
func (c *Cluster) StartKubelet(ctx context.Context, name, rootDir, socket string, taints ...string) (*Kubelet, error) {
	if _, err := os.Stat(filepath.Join(c.binDir, "kubelet")); err != nil {
		return nil, fmt.Errorf("%w: kubelet not found in %s; run scripts/controlplane/build.sh kubelet", ErrMissingBinary, c.binDir)
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	hport, err := freePort()
	if err != nil {
		return nil, err
	}
	cfg := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: %d
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: %d
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://%s
resolvConf: ""
evictionHard: {memory.available: "1Mi", nodefs.available: "1%%", imagefs.available: "1%%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
enforceNodeAllocatable: []
localStorageCapacityIsolation: false
serializeImagePulls: false
`, port, hport, socket)
	cfgFile := filepath.Join(c.Dir, "kubelet-"+name+".yaml")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	kubeconfig, err := c.NodeKubeconfig(name)
	if err != nil {
		return nil, err
	}
	args := []string{
		"--config=" + cfgFile,
		"--kubeconfig=" + kubeconfig,
		"--root-dir=" + rootDir,
		"--cert-dir=" + filepath.Join(c.Dir, "kubelet-pki-"+name),
		"--hostname-override=" + name,
		"--node-ip=127.0.0.1",
		"--v=1",
	}
	for _, t := range taints {
		args = append(args, "--register-with-taints="+t)
	}
	k := &Kubelet{c: c, args: args, port: port, hport: hport, Name: name}
	if err := k.start(ctx); err != nil {
		return nil, err
	}
	return k, nil
}

func (k *Kubelet) start(ctx context.Context) error {
	p, err := k.c.run("kubelet", k.args...)
	if err != nil {
		return err
	}
	k.p = p
	return k.c.waitHTTP(ctx, fmt.Sprintf("http://127.0.0.1:%d/healthz", k.hport), &http.Client{Timeout: 2 * time.Second}, p, "kubelet", 60*time.Second)
}

// Stop stops the kubelet (its containers keep running, as on a real node).
func (k *Kubelet) Stop() { stop(k.p) }

// Restart restarts the kubelet, which drops its in-memory credential cache.
// extraArgs are added to its command line from now on.
func (k *Kubelet) Restart(ctx context.Context, extraArgs ...string) error {
	stop(k.p)
	k.args = append(k.args, extraArgs...)
	return k.start(ctx)
}

// Metrics returns the kubelet's Prometheus text from its own (self-signed,
// anonymous) port on 127.0.0.1.
func (k *Kubelet) Metrics(ctx context.Context) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("https://127.0.0.1:%d/metrics", k.port), nil)
	if err != nil {
		return "", err
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, // the kubelet's self-signed serving cert
	}}
	resp, err := client.Do(req)
	if err != nil {
		return "", fmt.Errorf("kubelet metrics: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		if err == nil {
			return "", fmt.Errorf("kubelet metrics: %s", resp.Status)
		}
		return "", fmt.Errorf("kubelet metrics: %s: %w", resp.Status, err)
	}
	return string(b), nil
}
