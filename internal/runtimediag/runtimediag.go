// Package runtimediag tells why containerd may not use the Authorization
// headers nodecreds keeps in its hosts.toml files: containerd's
// configuration (read at each sync from its files on the node, read-only)
// and version (the Node's status.nodeInfo), and each registry's login
// challenge (asked once per registry, in the background, with no
// credentials). It never talks to containerd: its CRI socket would give
// the agent root on the node.
package runtimediag

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nodecreds/nodecreds/internal/check"
	"github.com/nodecreds/nodecreds/internal/containerdconf"
	"github.com/nodecreds/nodecreds/internal/hostfs"
	"github.com/nodecreds/nodecreds/internal/runtimeauth"
)

// retryAfter is how long a registry whose challenge could not be had
// (unreachable, DNS, TLS) waits before it is asked again.
const retryAfter = 10 * time.Minute

// Diagnosis answers, at each sync, what stands between the headers and
// containerd. Problems is called by the agent's loop, Run in its own
// goroutine.
type Diagnosis struct {
	hostRoot, config, certsDir string
	runtime                    string
	version                    containerdconf.Version
	versionKnown               bool
	prober                     check.RegistryProber

	mu         sync.Mutex
	challenges map[string]challenge // by registry URL (scheme://host)
	queue      chan string
	changed    chan struct{}
}

type challenge struct {
	scheme string    // "basic", "bearer", "none" (no login asked), another scheme's name; "" unknown
	failed time.Time // when the last ask failed
	queued bool
}

// New returns a Diagnosis for containerd's configuration file config and
// the certs folder certsDir (node paths under hostRoot), on a node whose
// runtime reports runtimeVersion ("containerd://1.6.20"; "" unknown).
func New(hostRoot, config, certsDir, runtimeVersion string) *Diagnosis {
	d := &Diagnosis{hostRoot: hostRoot, config: config, certsDir: certsDir,
		challenges: map[string]challenge{}, queue: make(chan string, 64), changed: make(chan struct{}, 1),
		prober: check.RegistryProber{Timeout: 10 * time.Second}}
	d.runtime, d.version, d.versionKnown = containerdconf.RuntimeVersion(runtimeVersion)
	return d
}

// Changed fires when a challenge became known: the agent reports again.
func (d *Diagnosis) Changed() <-chan struct{} { return d.changed }

// Problems says what stands between the headers of regs and containerd,
// each with its fix. It reads the configuration files afresh (an admin's
// fix shows at the next sync) and queues the challenges not yet known.
func (d *Diagnosis) Problems(regs []runtimeauth.Registry) []containerdconf.Problem {
	if len(regs) == 0 {
		// No header written: nothing containerd could fail to use (and
		// no configuration read at every sync of a node that has none).
		d.forget(nil)
		return nil
	}
	if d.versionKnown && d.runtime != "containerd" {
		return []containerdconf.Problem{{Reason: "RuntimeNotContainerd",
			Message: fmt.Sprintf("The node's container runtime is %s, which does not read containerd's hosts.toml.", d.runtime),
			Fix:     "Turn the runtime target off on this node (runtimeAuth.containerdCertsDir); for CRI-O, see docs/pause-image-and-mirrors.md#cri-o."}}
	}
	problems := d.configProblems()
	d.forget(regs)
	for _, r := range regs {
		if p := d.challengeProblem(r); p != nil {
			problems = append(problems, *p)
		}
	}
	return problems
}

// forget drops the challenges of registries no longer in regs, so what is
// kept is bounded by the Secrets of now, however many registries came and
// went; one asked meanwhile is not recorded (learnt).
func (d *Diagnosis) forget(regs []runtimeauth.Registry) {
	now := make(map[string]bool, len(regs))
	for _, r := range regs {
		now[registryURL(r)] = true
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for key := range d.challenges {
		if !now[key] {
			delete(d.challenges, key)
		}
	}
}

func (d *Diagnosis) configProblems() []containerdconf.Problem {
	root, err := hostfs.OpenRoot(d.hostRoot)
	if err != nil {
		return []containerdconf.Problem{unreadable(d.config, err)}
	}
	defer root.Close()
	cfg, err := containerdconf.Load(root, d.config)
	if err != nil {
		return []containerdconf.Problem{unreadable(d.config, err)}
	}
	return containerdconf.Diagnose(cfg, d.version, d.versionKnown, d.certsDir)
}

func unreadable(config string, err error) containerdconf.Problem {
	p := containerdconf.Problem{Reason: "ContainerdConfigUnreadable",
		Message: fmt.Sprintf("containerd's configuration %s cannot be read, so whether containerd uses the headers was not checked: %v.", config, err),
		Fix:     "Mount containerd's configuration folder read-only into the agent (the chart does, with runtimeAuth.containerdCertsDir), name its file with --containerd-config (runtimeAuth.containerdConfig), or fix what the error names."}
	return p
}

// challengeProblem is the problem r's challenge makes, nil when there is
// none or it is not known yet (then it is asked for).
func (d *Diagnosis) challengeProblem(r runtimeauth.Registry) *containerdconf.Problem {
	key := registryURL(r)
	d.mu.Lock()
	c := d.challenges[key]
	ask := c.scheme == "" && !c.queued && (c.failed.IsZero() || time.Since(c.failed) > retryAfter)
	if ask {
		select {
		case d.queue <- key:
			c.queued = true
			d.challenges[key] = c
		default: // full: asked at a later sync
		}
	}
	d.mu.Unlock()
	if c.scheme == "" || c.scheme == "none" {
		return nil
	}
	return containerdconf.ChallengeProblem(r.Host, c.scheme, d.version, d.versionKnown)
}

func registryURL(r runtimeauth.Registry) string {
	// As containerd talks to it: plain HTTP for an http:// key and for a
	// loopback host keyed without a scheme (PlainHTTP covers both).
	if r.Scheme == "http" || r.PlainHTTP {
		return "http://" + r.Host
	}
	return "https://" + r.Host
}

// Run asks the queued registries for their challenge until ctx ends.
func (d *Diagnosis) Run(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case key := <-d.queue:
			scheme, err := d.ask(ctx, key)
			d.learnt(key, scheme, err)
		}
	}
}

// learnt records what asking registry key gave, unless key was forgotten
// while it was asked.
func (d *Diagnosis) learnt(key, scheme string, err error) {
	d.mu.Lock()
	if _, asked := d.challenges[key]; !asked {
		d.mu.Unlock()
		return
	}
	c := challenge{scheme: scheme}
	if err != nil {
		c = challenge{failed: time.Now()}
	}
	d.challenges[key] = c
	d.mu.Unlock()
	if err == nil {
		select {
		case d.changed <- struct{}{}:
		default:
		}
	}
}

// ask learns the registry's challenge through check's prober (the same
// transports as check --probe; no credential sent, no redirect followed):
// "none" when it asks for no login, else "basic", "bearer" or "other" —
// never the registry's own text.
func (d *Diagnosis) ask(ctx context.Context, registry string) (string, error) {
	scheme, host, _ := strings.Cut(registry, "://")
	challenge, status, errDesc := d.prober.Challenge(ctx, scheme, host)
	switch {
	case errDesc != "":
		return "", errors.New(errDesc)
	case status >= 500:
		return "", fmt.Errorf("status %d", status)
	case challenge == "":
		return "none", nil
	}
	return challenge, nil
}
