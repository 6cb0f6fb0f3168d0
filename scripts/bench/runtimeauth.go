package main

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nodecreds/nodecreds/scripts/bench/meter"
	"github.com/nodecreds/nodecreds/test/cluster"
)

const (
	// certsDir is containerd's config_path on each node, under the
	// agent's --host-root; every agent runs with --containerd-certs-dir
	// pointing at it.
	certsDir = "/etc/containerd/certs.d"
	// runtimeAuth is the annotation by which a Secret opts in to the
	// hosts.toml headers (source.AnnotationRuntimeAuth).
	runtimeAuth = "nodecreds.io/runtime-auth"
	// settle is the pause before each hosts.toml rotation, so that one
	// rotation's Node reports and state saves are not the next one's load.
	settle = 3 * time.Second
)

// wantHeader is the line of a hosts.toml holding the Authorization header
// for the bench's registry with password pass.
func wantHeader(pass string) string {
	return `Authorization = "Basic ` + base64.StdEncoding.EncodeToString([]byte("robot:"+pass)) + `"`
}

func hostsTOMLFiles(agents []*agent, registry string) []string {
	out := make([]string, len(agents))
	for i, a := range agents {
		out[i] = filepath.Join(a.root, certsDir, registry, "hosts.toml")
	}
	return out
}

// measureHostsTOML runs after the kubelet-file rotations, so those keep
// measuring agents with no annotated Secret: the bench's Secret opts in to
// containerd's hosts.toml (nodecreds.io/runtime-auth: "true"), every agent
// creates its registry's hosts.toml, then cfg.rotations more rotations are
// timed to the new header in every hosts.toml, and, in the same rotations,
// to the kubelet file (kubelet, the watch of the kubelet files).
func measureHostsTOML(ctx context.Context, c *cluster.Cluster, cfg config, agents []*agent, kubelet *meter.FileWatch, res *results) error {
	secrets := c.Admin.CoreV1().Secrets(ns)
	s, err := secrets.Get(ctx, secret, metav1.GetOptions{})
	if err != nil {
		return err
	}
	if s.Annotations == nil {
		s.Annotations = map[string]string{}
	}
	s.Annotations[runtimeAuth] = "true"
	if _, err := secrets.Update(ctx, s, metav1.UpdateOptions{}); err != nil {
		return err
	}
	files := hostsTOMLFiles(agents, res.registry)
	// The folders do not exist until the agents create them: wait for
	// them (the opt-in is not a measurement), then watch them.
	if err := waitContains(ctx, files, wantHeader(fmt.Sprintf("v%d", cfg.rotations)), 2*time.Minute); err != nil {
		return fmt.Errorf("opting the Secret in to hosts.toml: %w", err)
	}
	hosts, err := meter.NewFileWatch(files)
	if err != nil {
		return err
	}
	defer hosts.Close()
	logf("hosts.toml: created on all %d nodes; %d rotations of the annotated Secret", cfg.agents, cfg.rotations)
	for r := cfg.rotations + 1; r <= 2*cfg.rotations; r++ {
		time.Sleep(settle)
		pass := fmt.Sprintf("v%d", r)
		s, err := secrets.Get(ctx, secret, metav1.GetOptions{})
		if err != nil {
			return err
		}
		s.Data[corev1.DockerConfigJsonKey] = secretData(res.registry, pass)
		t0 := time.Now()
		if _, err := secrets.Update(ctx, s, metav1.UpdateOptions{}); err != nil {
			return err
		}
		var kubeletLat []time.Duration
		var kubeletErr error
		done := make(chan struct{})
		go func() {
			defer close(done)
			kubeletLat, kubeletErr = kubelet.Until(ctx, wantAuth(pass), t0, time.Minute)
		}()
		lat, err := hosts.Until(ctx, wantHeader(pass), t0, time.Minute)
		<-done
		if err := errors.Join(err, kubeletErr); err != nil {
			return fmt.Errorf("hosts.toml rotation %d: %w", r, err)
		}
		res.hostsTOML = append(res.hostsTOML, lat...)
		res.hostsTOMLKubelet = append(res.hostsTOMLKubelet, kubeletLat...)
		logf("rotation %d: hosts.toml on all %d nodes in %s (p50 %s); kubelet file p50 %s", r, cfg.agents,
			slices.Max(lat).Round(time.Millisecond), meter.Pct(lat, 50).Round(time.Millisecond), meter.Pct(kubeletLat, 50).Round(time.Millisecond))
	}
	return nil
}

// waitContains polls until every file contains want.
func waitContains(ctx context.Context, files []string, want string, within time.Duration) error {
	deadline := time.Now().Add(within)
	left := slices.Clone(files)
	for {
		left = slices.DeleteFunc(left, func(f string) bool { return meter.Contains(f, want) })
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d files without it after %s, such as %s", len(left), len(files), within, left[0])
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}
