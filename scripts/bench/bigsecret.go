package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/nodecreds/nodecreds/internal/testsupport"
	"github.com/nodecreds/nodecreds/scripts/bench/meter"
)

// measureBigSecret is issue 16's end-to-end case as a new user would try
// it: one agent in dir mode with both default targets, 2,000 foreign
// entries in the kubelet file, a 10,000-entry Secret mounted the kubelet's
// way; each run changes one entry and swaps ..data, and the time until both
// files hold the change is taken (debounce included).
func (r *results) measureBigSecret(ctx context.Context, bin, work string, runs int) error {
	root := filepath.Join(work, "big-node")
	kubelet := filepath.Join(root, "var/lib/kubelet/config.json")
	docker := filepath.Join(root, "root/.docker/config.json")
	if err := os.MkdirAll(filepath.Dir(kubelet), 0o700); err != nil {
		return err
	}
	var foreign strings.Builder
	foreign.WriteString(`{"auths":{`)
	for i := range 2000 {
		if i > 0 {
			foreign.WriteByte(',')
		}
		fmt.Fprintf(&foreign, `"foreign-%d.example.org":{"auth":%q}`, i, testsupport.B64(fmt.Sprintf("them:%d", i)))
	}
	foreign.WriteString(`}}`)
	if err := os.WriteFile(kubelet, []byte(foreign.String()), 0o600); err != nil {
		return err
	}
	secretDir := filepath.Join(work, "big-secret")
	swap := func(n int) (time.Time, error) {
		var doc strings.Builder
		doc.WriteString(`{"auths":{`)
		for i := range 10000 {
			if i > 0 {
				doc.WriteByte(',')
			}
			pw := "pw"
			if i == 0 {
				pw = fmt.Sprintf("changed-%d", n)
			}
			fmt.Fprintf(&doc, `"reg-%d.example.com":{"auth":%q}`, i, testsupport.B64("robot:"+pw))
		}
		doc.WriteString(`}}`)
		ts := filepath.Join(secretDir, fmt.Sprintf("..ts_%04d", n))
		if err := os.MkdirAll(ts, 0o755); err != nil {
			return time.Time{}, err
		}
		if err := os.WriteFile(filepath.Join(ts, ".dockerconfigjson"), []byte(doc.String()), 0o644); err != nil {
			return time.Time{}, err
		}
		tmp := filepath.Join(secretDir, "..data_tmp")
		if err := os.Symlink(filepath.Base(ts), tmp); err != nil {
			return time.Time{}, err
		}
		if err := os.Rename(tmp, filepath.Join(secretDir, "..data")); err != nil {
			return time.Time{}, err
		}
		return time.Now(), nil
	}
	if _, err := swap(0); err != nil {
		return err
	}
	if err := os.Symlink("..data/.dockerconfigjson", filepath.Join(secretDir, ".dockerconfigjson")); err != nil {
		return err
	}
	agent := exec.CommandContext(ctx, bin, "sync", "--source", "dir", "--secret-dir", secretDir, "--host-root", root, "--metrics-addr", "0", "--log-level", "warn",
		"--verify=off") // as every figure but the verified rotations: the file path alone
	if err := agent.Start(); err != nil {
		return err
	}
	defer func() { _ = agent.Process.Signal(syscall.SIGTERM); _ = agent.Wait() }()
	want := func(n int) []byte { return []byte(testsupport.B64(fmt.Sprintf("robot:changed-%d", n))) }
	both := func(n int) bool {
		for _, f := range []string{kubelet, docker} {
			b, err := os.ReadFile(f)
			if err != nil || !bytes.Contains(b, want(n)) {
				return false
			}
		}
		return true
	}
	if err := testsupport.WaitFor(ctx, 30*time.Second, 2*time.Millisecond, "both files written", func() bool { return both(0) }); err != nil {
		return fmt.Errorf("big Secret, first sync: %w", err)
	}
	for n := 1; n <= runs; n++ {
		time.Sleep(300 * time.Millisecond) // apart, as rotations are
		before := [2]time.Time{mtime(kubelet), mtime(docker)}
		t0, err := swap(n)
		if err != nil {
			return err
		}
		// Cheap until both files were replaced; then read them once.
		err = testsupport.WaitFor(ctx, 10*time.Second, 2*time.Millisecond, "the change in both files", func() bool {
			return mtime(kubelet) != before[0] && mtime(docker) != before[1] && both(n)
		})
		if err != nil {
			return fmt.Errorf("big Secret, change %d: %w", n, err)
		}
		r.bigSecret = append(r.bigSecret, time.Since(t0))
	}
	slices.Sort(r.bigSecret)
	logf("big Secret: median %s, max %s over %d changes", meter.Pct(r.bigSecret, 50).Round(time.Millisecond), slices.Max(r.bigSecret).Round(time.Millisecond), runs)
	return nil
}

func mtime(path string) time.Time {
	fi, err := os.Stat(path)
	if err != nil {
		return time.Time{}
	}
	return fi.ModTime()
}
