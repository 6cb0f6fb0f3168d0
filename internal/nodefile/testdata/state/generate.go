//go:build ignore

// generate writes the golden files of a release's on-node state: it builds
// that release's binary from its own source (test/releases), runs it on a
// temporary node root with foreign entries, entries it displaces, a
// containerd hosts.toml of an admin's and a registry on 127.0.0.1 that
// rejects a rotated password, and copies what it left into
// testdata/state/<version>/. Run from the repository root:
//
//	go run ./internal/nodefile/testdata/state/generate.go [VERSION]
//
// (default: the newest release in RELEASES). Every credential in it is a
// made-up test value.
package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/nodecreds/nodecreds/test/releases"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "generate:", err)
		os.Exit(1)
	}
}

// original is the node before the release first ran, in the docker CLI's
// format (so that cleanup gives it back byte for byte): a foreign entry,
// two the Secret displaces (one by a Docker Hub alias), fields nodecreds
// keeps. There is no docker CLI file (the release creates it).
var original = map[string]string{
	"var/lib/kubelet/config.json": `{
	"auths": {
		"displaced.example.test": {
			"auth": "` + b64("theirs:displaced-pw") + `",
			"email": "ops@example.test"
		},
		"foreign.example.test": {
			"auth": "` + b64("theirs:foreign-pw") + `"
		},
		"https://index.docker.io/v1/": {
			"auth": "` + b64("theirs:hub-pw") + `"
		}
	},
	"credsStore": "desktop",
	"x-unknown": [
		1,
		2
	]
}
`,
	"etc/containerd/certs.d/mirror.example.test/hosts.toml": `# The admin's mirror (ticket 42).
server = "https://mirror.example.test"

[host."https://mirror.example.test"]
  capabilities = ["pull", "resolve"]
`,
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func run() error {
	ctx := context.Background()
	repo, err := filepath.Abs(".")
	if err != nil {
		return err
	}
	rs, err := releases.Read(repo)
	if err != nil {
		return err
	}
	r := rs[len(rs)-1]
	if len(os.Args) > 1 {
		r = releases.Release{}
		for _, x := range rs {
			if x.Version == os.Args[1] {
				r = x
			}
		}
		if r.Version == "" {
			return fmt.Errorf("RELEASES names no release %s", os.Args[1])
		}
	}
	bin, err := releases.Binary(ctx, repo, r)
	if err != nil {
		return err
	}

	const certsDir = "/etc/containerd/certs.d"
	// A registry that takes alice:good only.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	reg := ln.Addr().String()
	go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if u, p, ok := req.BasicAuth(); ok && u == "alice" && p == "good" {
			w.WriteHeader(http.StatusOK)
			return
		}
		w.Header().Set("WWW-Authenticate", `Basic realm="golden"`)
		w.WriteHeader(http.StatusUnauthorized)
	}))

	tmp, err := os.MkdirTemp("", "nodecreds-golden-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	root, secret := filepath.Join(tmp, "root"), filepath.Join(tmp, "secret")
	for rel, content := range original {
		mode := fs.FileMode(0o600)
		if strings.HasSuffix(rel, "hosts.toml") {
			mode = 0o644 // kept in hoststoml.json's modes
		}
		if err := write(filepath.Join(root, rel), content, mode); err != nil {
			return err
		}
	}
	secretDoc := func(entries map[string]string) string {
		auths := map[string]map[string]string{}
		for k, up := range entries {
			auths[k] = map[string]string{"auth": b64(up)}
		}
		b, _ := json.Marshal(map[string]any{"auths": auths})
		return string(b)
	}
	sync := func(entries map[string]string, verify, certsDir string, wantCode int) error {
		if err := write(filepath.Join(secret, ".dockerconfigjson"), secretDoc(entries), 0o600); err != nil {
			return err
		}
		cmd := exec.CommandContext(ctx, bin, "sync", "--once", "--source", "dir", "--secret-dir", secret, "--host-root", root,
			"--containerd-certs-dir", certsDir, "--verify", verify, "--metrics-addr", "0", "--log-level", "warn")
		out, err := cmd.CombinedOutput()
		if ee := (*exec.ExitError)(nil); err != nil && !errors.As(err, &ee) {
			return err
		}
		if code := cmd.ProcessState.ExitCode(); code != wantCode {
			return fmt.Errorf("sync --once exited %d, want %d:\n%s", code, wantCode, out)
		}
		return nil
	}
	// 1. First sync: entries written, two foreign ones displaced, the
	// docker CLI file created, hosts.toml headers added.
	rev1 := map[string]string{
		"displaced.example.test": "robot:d1", "docker.io": "robot:h1", "mirror.example.test": "robot:m1",
		"pruned.example.test": "robot:p1",
	}
	if err := sync(rev1, "off", certsDir, 0); err != nil {
		return err
	}
	// 2. The docker CLI file is found corrupt (moved aside, the copy
	// recorded), two entries rotate and one leaves (stale marks).
	if err := write(filepath.Join(root, "root/.docker/config.json"), `{"auths":`, 0o600); err != nil {
		return err
	}
	rev2 := map[string]string{
		"displaced.example.test": "robot:d2", "docker.io": "robot:h1", "mirror.example.test": "robot:m2",
	}
	if err := sync(rev2, "off", certsDir, 0); err != nil {
		return err
	}
	// 3. A new registry's credentials that it rejects: recorded (written
	// all the same, as there are no old ones to keep). Only this one is
	// logged in with: the others did not change. Without hosts.toml
	// headers, so that no file name holds its port's colon, which Go's
	// module zips refuse.
	rev3 := map[string]string{
		"displaced.example.test": "robot:d2", "docker.io": "robot:h1", "mirror.example.test": "robot:m2", reg: "alice:typo",
	}
	if err := sync(rev3, "on", "", 1); err != nil {
		return err
	}

	out := filepath.Join(repo, "internal/nodefile/testdata/state", r.Version)
	if err := os.RemoveAll(out); err != nil {
		return err
	}
	for rel, content := range original {
		if err := write(filepath.Join(out, "original", rel), content, 0o644); err != nil {
			return err
		}
	}
	if err := write(filepath.Join(out, "applied.json"), secretDoc(rev3)+"\n", 0o644); err != nil {
		return err
	}
	stateDir := filepath.Join(root, "var/lib/nodecreds")
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		dst := filepath.Join(out, "node", rel)
		if filepath.Dir(path) == stateDir {
			if d.Name() == "lock" {
				return nil
			}
			dst = filepath.Join(out, d.Name())
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return write(dst, string(data), 0o644)
	})
	if err != nil {
		return err
	}
	fmt.Printf("wrote %s (release %s, %s; registry at %s)\n", out, r.Version, r.Commit, reg)
	return nil
}

func write(path, content string, mode fs.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, []byte(content), mode)
}
