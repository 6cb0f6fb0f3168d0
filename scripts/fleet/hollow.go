package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"

	"github.com/sirupsen/logrus"
	"github.com/spf13/pflag"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"

	"github.com/nodecreds/nodecreds/internal/config"
	"github.com/nodecreds/nodecreds/internal/daemon"
	"github.com/nodecreds/nodecreds/internal/kube"
)

// hollow is one hollow node: the real agent (internal/daemon, what
// `nodecreds sync` runs) with its own API connection, token, Node and node
// root, and a kubelet's watch of the same Node over a connection of its own.
type hollow struct {
	name string
	root string
	// agentConfig authenticates as the agent's Pod-bound ServiceAccount
	// token; kubeletConfig as system:node:<name> (the Node authorizer's).
	agentConfig, kubeletConfig *rest.Config

	mu     sync.Mutex
	stop   context.CancelFunc
	done   chan error
	events int // Node events the kubelet's watch received
}

// ownConnection gives cfg a dialer of its own. client-go shares one
// transport (one HTTP/2 connection) between clients with equal TLS
// settings; a Dial function makes the transport uncacheable, so each
// hollow agent and kubelet opens its own connection, as separate nodes do.
func ownConnection(cfg *rest.Config) *rest.Config {
	c := rest.CopyConfig(cfg)
	c.Dial = (&net.Dialer{}).DialContext
	return c
}

// syncConfig is the agent's configuration, parsed from the flags a
// DaemonSet Pod of the benchmark would get (the defaults are the real
// command's).
func (h *hollow) syncConfig() (config.Sync, error) {
	fs := pflag.NewFlagSet("sync", pflag.ContinueOnError)
	config.SyncFlags(fs)
	if err := fs.Parse([]string{"--namespace", namespace, "--node-name", h.name, "--host-root", h.root,
		"--containerd-certs-dir", certsDir, "--metrics-addr", "0", "--log-level", "warn", "--verify=off"}); err != nil {
		return config.Sync{}, err
	}
	return config.LoadSync(fs)
}

// start runs the agent until stopAgent.
func (h *hollow) start(ctx context.Context, logOut io.Writer) error {
	cfg, err := h.syncConfig()
	if err != nil {
		return err
	}
	client, err := kube.NewForConfig(ownConnection(h.agentConfig))
	if err != nil {
		return err
	}
	log := logrus.New()
	log.SetOutput(logOut)
	log.SetLevel(logrus.WarnLevel)
	log.SetFormatter(&logrus.JSONFormatter{})
	log.AddHook(nodeField(h.name))
	d, err := daemon.New(ctx, cfg, daemon.Deps{Client: client, Log: log, Version: "fleet"})
	if err != nil {
		return err
	}
	actx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- d.Run(actx) }()
	h.mu.Lock()
	h.stop, h.done = cancel, done
	h.mu.Unlock()
	return nil
}

// stopAgent stops the agent, as a Pod deletion would, and waits for it.
func (h *hollow) stopAgent() error {
	h.mu.Lock()
	stop, done := h.stop, h.done
	h.stop, h.done = nil, nil
	h.mu.Unlock()
	if stop == nil {
		return nil
	}
	stop()
	if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("agent of %s: %w", h.name, err)
	}
	return nil
}

// kubelet watches the hollow node's Node as its kubelet does (an informer
// field-selected on its name), until ctx ends; each event is counted.
// ready is told once the Node is listed (or why it is not).
func (h *hollow) kubelet(ctx context.Context, ready chan<- error) error {
	client, err := kube.NewForConfig(ownConnection(h.kubeletConfig))
	if err != nil {
		ready <- err
		return err
	}
	sel := fields.OneTermEqualSelector("metadata.name", h.name).String()
	list, err := client.Nodes().List(ctx, metav1.ListOptions{FieldSelector: sel})
	if err != nil {
		err = fmt.Errorf("kubelet of %s: %w", h.name, err)
		ready <- err
		return err
	}
	rv := list.ResourceVersion
	ready <- nil
	for ctx.Err() == nil {
		w, err := client.Nodes().Watch(ctx, metav1.ListOptions{FieldSelector: sel, ResourceVersion: rv, AllowWatchBookmarks: true})
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("kubelet of %s: %w", h.name, err)
		}
		for ev := range w.ResultChan() {
			if m, err := metaOf(ev); err == nil {
				rv = m
			}
			if ev.Type == watch.Modified || ev.Type == watch.Added {
				h.mu.Lock()
				h.events++
				h.mu.Unlock()
			}
		}
	}
	return nil
}

func metaOf(ev watch.Event) (string, error) {
	type rver interface{ GetResourceVersion() string }
	o, ok := ev.Object.(rver)
	if !ok {
		return "", errors.New("no resourceVersion")
	}
	return o.GetResourceVersion(), nil
}

// makeRoot is a node's root on the fleet's tmpfs: the folders the agent's
// targets live in.
func makeRoot(root string) error {
	for _, d := range []string{"var/lib/kubelet", "root/.docker", certsDir} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o700); err != nil {
			return err
		}
	}
	return nil
}

// nodeField adds the hollow node's name to each of its agent's log lines
// (the fleet's agents share one log).
type nodeField string

func (nodeField) Levels() []logrus.Level { return logrus.AllLevels }

func (n nodeField) Fire(e *logrus.Entry) error {
	e.Data["node"] = string(n)
	return nil
}
