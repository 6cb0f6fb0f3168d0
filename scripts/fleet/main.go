// Command fleet is `make fleet`: a hollow fleet of N nodes against one
// local etcd + kube-apiserver, as kubemark does for the kubelet. Each
// hollow node runs the real agent (internal/daemon, what `nodecreds sync`
// runs) with its own API connection, Pod-bound ServiceAccount token, Node
// object and node root on a tmpfs, plus a kubelet's watch of its Node over
// a connection of its own; only the code is shared. The API server and
// etcd are pinned to one CPU and the fleet to the other (cpusets), so the
// figures that lead are the API server's.
//
// It measures cold start, rotations (Secret update → every node's file,
// → every Node reported) and, with -restart, every agent restarted at
// once with a rotation pending while another client's requests are timed.
// Results go to _output/fleet/<label>-<N>.json; -table renders those into
// docs/scale.md.
package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/nodecreds/nodecreds/scripts/bench/meter"
	"github.com/nodecreds/nodecreds/test/cluster"
)

const (
	namespace = "nodecreds"
	secret    = "registry-credentials"
	certsDir  = "/etc/containerd/certs.d"
	// registry is the Secret's registry. Nothing contacts it: the agents
	// run with --verify=off, as make bench's rotation figures are.
	registry = "127.0.0.1:5999"
)

type options struct {
	agents      int
	rotations   int
	restart     bool
	flowControl bool
	label       string
	out         string
	pin         bool
	table       bool
	doc         string
	perProcess  int
	worker      string
	chart       string
}

func main() {
	var o options
	flag.IntVar(&o.agents, "agents", 1000, "hollow nodes")
	flag.IntVar(&o.rotations, "rotations", 5, "Secret rotations measured")
	flag.BoolVar(&o.restart, "restart", false, "also restart every agent at once with a rotation pending, timing another client's requests meanwhile")
	flag.BoolVar(&o.flowControl, "flowcontrol", false, "install the chart with flowControl.enabled=true (the agents' own FlowSchema and priority level) instead of deploy/daemonset.yaml")
	flag.StringVar(&o.label, "label", "", "name of this run in the results (default: the commit)")
	flag.StringVar(&o.out, "out", filepath.Join(cluster.RepoRoot(), "_output", "fleet"), "folder of the results")
	flag.BoolVar(&o.pin, "pin", true, "pin the API server and etcd to CPU 0 and the fleet to CPU 1 (cpusets)")
	flag.BoolVar(&o.table, "table", false, "render the results in -out into docs/scale.md and exit")
	flag.StringVar(&o.doc, "doc", filepath.Join(cluster.RepoRoot(), "docs", "scale.md"), "the file -table writes")
	flag.IntVar(&o.perProcess, "per-process", 2500, "hollow nodes per process (this machine allows each process 20,000 open files; a hollow node holds about four)")
	flag.StringVar(&o.worker, "worker", "", "run as a worker process of the fleet, with this spec (the fleet starts them)")
	flag.StringVar(&o.chart, "chart", filepath.Join(cluster.RepoRoot(), "bin", "chart"), "the chart tool (make chart-tool), which renders the chart for -flowcontrol")
	flag.Parse()
	if err := runMain(o); err != nil {
		fmt.Fprintln(os.Stderr, "fleet:", err)
		os.Exit(1)
	}
}

func runMain(o options) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	switch {
	case o.worker != "":
		return runWorker(ctx, o.worker, os.Stdin, os.Stdout)
	case o.table:
		return writeTable(o.out, o.doc)
	default:
		return run(ctx, o)
	}
}

func logf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "%s fleet: %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, a...))
}

func secretData(pass string) []byte {
	b, _ := json.Marshal(map[string]any{"auths": map[string]any{registry: map[string]string{"auth": base64.StdEncoding.EncodeToString([]byte("robot:" + pass))}}})
	return b
}

func wantAuth(pass string) string {
	return `"auth": "` + base64.StdEncoding.EncodeToString([]byte("robot:"+pass)) + `"`
}

func run(ctx context.Context, o options) error {
	if os.Geteuid() != 0 {
		return errors.New("run as root: the fleet mounts a tmpfs, raises inotify and file limits and pins CPUs")
	}
	if o.label == "" {
		o.label = commit()
	}
	work, err := os.MkdirTemp("", "nodecreds-fleet-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	undo, err := prepareHost(o.agents, filepath.Join(work, "nodes"))
	if err != nil {
		return err
	}
	defer undo()

	f, err := newFleet(ctx, o, work)
	if err != nil {
		return err
	}
	defer f.close()
	res := &results{Label: o.label, Agents: o.agents, FlowControl: o.flowControl, Date: time.Now().UTC().Format("2006-01-02"),
		Machine: meter.Machine(), Pinned: f.pinned}
	if err := f.measure(ctx, res); err != nil {
		return err
	}
	return res.save(o.out)
}

// prepareHost lifts the per-user limits a fleet in one process meets and
// real nodes do not (each has its own), and mounts the nodes' tmpfs. It
// returns what puts everything back.
func prepareHost(agents int, nodes string) (func(), error) {
	var undo []func()
	done := func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}
	restore, err := meter.RaiseInotifyInstances(agents, logf)
	if err != nil {
		return nil, err
	}
	undo = append(undo, restore, meter.PauseProactiveReclaim(logf))
	// The measurement's one inotify instance sees every node's kubelet
	// folder: a cold start is several events per node at once, more than
	// the default queue (16,384) holds while the fleet's CPU is busy.
	if restore, err = meter.RaiseSysctl("/proc/sys/fs/inotify/max_queued_events", 64*agents+16384, logf); err != nil {
		done()
		return nil, err
	}
	undo = append(undo, restore)
	if err := os.MkdirAll(nodes, 0o700); err != nil {
		done()
		return nil, err
	}
	if err := syscall.Mount("tmpfs", nodes, "tmpfs", 0, "mode=0700"); err != nil {
		done()
		return nil, fmt.Errorf("mounting the nodes' tmpfs: %w", err)
	}
	undo = append(undo, func() { _ = syscall.Unmount(nodes, syscall.MNT_DETACH) })
	return done, nil
}
