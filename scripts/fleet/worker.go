package main

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sync/errgroup"
	"k8s.io/client-go/rest"
)

// A worker is one process of the fleet running some of its hollow nodes.
// The fleet is split into processes only because each may hold so many
// open files (this machine's hard limit, which a container without
// CAP_SYS_RESOURCE cannot raise): each hollow node holds about four (its
// agent's and its kubelet's connections, its inotify instance, its node
// lock). Workers are driven over stdin/stdout, one command per line:
// kubelets, start, stop, events; each answered by one line ("ok", a
// number, or "error: ...").

// workerSpec is what a worker is given: its hollow nodes.
type workerSpec struct {
	URL, CAFile string
	Log         string
	Nodes       []nodeSpec
}

type nodeSpec struct {
	Name, Root, Token       string
	KubeletCert, KubeletKey []byte
}

// runWorker is a worker process: it runs the commands read from stdin
// until stdin ends, then stops its agents and kubelets.
func runWorker(ctx context.Context, specPath string, in io.Reader, out io.Writer) error {
	b, err := os.ReadFile(specPath)
	if err != nil {
		return err
	}
	var spec workerSpec
	if err := json.Unmarshal(b, &spec); err != nil {
		return err
	}
	logFile, err := os.OpenFile(spec.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logFile.Close()
	nodes := make([]*hollow, len(spec.Nodes))
	tls := rest.TLSClientConfig{CAFile: spec.CAFile}
	for i, n := range spec.Nodes {
		nodes[i] = &hollow{name: n.Name, root: n.Root,
			agentConfig: &rest.Config{Host: spec.URL, BearerToken: n.Token, TLSClientConfig: tls, UserAgent: "nodecreds/fleet"},
			kubeletConfig: &rest.Config{Host: spec.URL, TLSClientConfig: rest.TLSClientConfig{CAFile: spec.CAFile, CertData: n.KubeletCert, KeyData: n.KubeletKey},
				UserAgent: "kubelet/fleet"}}
	}
	kctx, stopKubelets := context.WithCancel(ctx)
	kubelets := &errgroup.Group{}
	defer func() {
		_ = eachNode(nodes, (*hollow).stopAgent)
		stopKubelets()
		_ = kubelets.Wait()
	}()
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		var reply string
		switch cmd := sc.Text(); cmd {
		case "kubelets":
			err = startKubelets(kctx, nodes, kubelets)
		case "start":
			err = eachNode(nodes, func(h *hollow) error { return h.start(ctx, logFile) })
		case "stop":
			err = eachNode(nodes, (*hollow).stopAgent)
		case "events":
			n := 0
			for _, h := range nodes {
				h.mu.Lock()
				n += h.events
				h.mu.Unlock()
			}
			reply = strconv.Itoa(n)
		default:
			err = fmt.Errorf("unknown command %q", cmd)
		}
		switch {
		case err != nil:
			reply = "error: " + strings.ReplaceAll(err.Error(), "\n", " ")
		case reply == "":
			reply = "ok"
		}
		if _, err := fmt.Fprintln(out, reply); err != nil {
			return err
		}
	}
	return sc.Err()
}

// startKubelets opens every kubelet's watch of its Node, a few at a time
// (not what is measured), and returns once all are open.
func startKubelets(ctx context.Context, nodes []*hollow, g *errgroup.Group) error {
	for i, h := range nodes {
		ready := make(chan error, 1)
		g.Go(func() error { return h.kubelet(ctx, ready) })
		if i%setupWorkers == setupWorkers-1 || i == len(nodes)-1 {
			if err := <-ready; err != nil {
				return err
			}
		}
	}
	return nil
}

// eachNode runs do on every node at once (a DaemonSet's Pods all started
// or stopped together) and waits.
func eachNode(nodes []*hollow, do func(*hollow) error) error {
	var wg sync.WaitGroup
	errs := make([]error, len(nodes))
	for i, h := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = do(h)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// worker is the fleet's handle on a worker process.
type worker struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
	mu  sync.Mutex
}

func startWorker(specPath string) (*worker, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, "-worker", specPath)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return &worker{cmd: cmd, in: in, out: bufio.NewScanner(out)}, nil
}

// call sends one command and returns its answer.
func (w *worker) call(cmd string) (string, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, err := fmt.Fprintln(w.in, cmd); err != nil {
		return "", fmt.Errorf("worker %d: %s: %w", w.cmd.Process.Pid, cmd, err)
	}
	if !w.out.Scan() {
		return "", fmt.Errorf("worker %d: %s: no answer: %w", w.cmd.Process.Pid, cmd, cmp.Or(w.out.Err(), io.ErrUnexpectedEOF))
	}
	reply := w.out.Text()
	if msg, ok := strings.CutPrefix(reply, "error: "); ok {
		return "", fmt.Errorf("worker %d: %s: %s", w.cmd.Process.Pid, cmd, msg)
	}
	return reply, nil
}

// close ends the worker (its agents and kubelets stop) and waits for it.
func (w *worker) close() {
	w.in.Close()
	_ = w.cmd.Wait()
}
