// Package releases builds nodecreds as it was released, for the upgrade
// and downgrade tests: the repository has no tags, so RELEASES at its root
// names the commit each release was cut from, and this package builds that
// commit's binary and image from its own source (git archive of the
// commit, built with the module cache), once per machine, into
// _output/releases/<commit>/ (git-ignored).
package releases

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/nodecreds/nodecreds/internal/testsupport"
)

// Release is one line of RELEASES.
type Release struct {
	Version string // x.y.z
	Commit  string // the full commit it was cut from
}

// ErrHistory means the clone lacks the release's commit: a shallow clone,
// or one that fetched only a branch tip.
var ErrHistory = errors.New("release commit not in this clone")

var line = regexp.MustCompile(`^([0-9]+\.[0-9]+\.[0-9]+)\s+([0-9a-f]{40})$`)

// Read parses repo/RELEASES: "VERSION COMMIT" per line, oldest first;
// blank lines and # comments are skipped.
func Read(repo string) ([]Release, error) {
	f, err := os.Open(filepath.Join(repo, "RELEASES"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []Release
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		l := strings.TrimSpace(sc.Text())
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		m := line.FindStringSubmatch(l)
		if m == nil {
			return nil, fmt.Errorf("RELEASES line %d: want \"x.y.z <40-hex commit>\", got %q", n, l)
		}
		out = append(out, Release{Version: m[1], Commit: m[2]})
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, errors.New("RELEASES names no release")
	}
	return out, nil
}

// Previous is the newest release in repo/RELEASES.
func Previous(repo string) (Release, error) {
	rs, err := Read(repo)
	if err != nil {
		return Release{}, err
	}
	return rs[len(rs)-1], nil
}

// Dir is where r's source and builds are kept.
func Dir(repo string, r Release) string {
	return filepath.Join(repo, "_output", "releases", r.Commit)
}

// Source extracts r's tree into Dir/src (once) and returns that folder.
func Source(ctx context.Context, repo string, r Release) (string, error) {
	src := filepath.Join(Dir(repo, r), "src")
	if _, err := os.Stat(filepath.Join(src, "go.mod")); err == nil {
		return src, nil
	}
	if err := haveCommit(ctx, repo, r); err != nil {
		return "", err
	}
	if err := os.MkdirAll(Dir(repo, r), 0o755); err != nil {
		return "", err
	}
	tmp, err := os.MkdirTemp(Dir(repo, r), "src-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	archive := exec.CommandContext(ctx, "git", "-C", repo, "archive", "--format=tar", r.Commit)
	untar := exec.CommandContext(ctx, "tar", "-x", "-C", tmp)
	var aerr, terr bytes.Buffer
	archive.Stderr, untar.Stderr = &aerr, &terr
	pipe, err := archive.StdoutPipe()
	if err != nil {
		return "", err
	}
	untar.Stdin = pipe
	if err := untar.Start(); err != nil {
		return "", err
	}
	if err := archive.Run(); err != nil {
		_ = untar.Wait()
		return "", fmt.Errorf("git archive %s: %w: %s", r.Commit, err, aerr.String())
	}
	if err := untar.Wait(); err != nil {
		return "", fmt.Errorf("extracting %s: %w: %s", r.Commit, err, terr.String())
	}
	// Another test may have extracted it meanwhile: keep the first.
	if err := os.Rename(tmp, src); err != nil && !errors.Is(err, os.ErrExist) {
		if _, serr := os.Stat(filepath.Join(src, "go.mod")); serr != nil {
			return "", err
		}
	}
	return src, nil
}

// haveCommit says how to get r's commit when the clone lacks it.
func haveCommit(ctx context.Context, repo string, r Release) error {
	if exec.CommandContext(ctx, "git", "-C", repo, "cat-file", "-e", r.Commit+"^{commit}").Run() == nil {
		return nil
	}
	out, _ := exec.CommandContext(ctx, "git", "-C", repo, "rev-parse", "--is-shallow-repository").Output()
	if strings.TrimSpace(string(out)) == "true" {
		return fmt.Errorf("%w: release %s was cut from %s, which this shallow clone lacks: run `git fetch --unshallow` (the upgrade tests build that commit)", ErrHistory, r.Version, r.Commit)
	}
	return fmt.Errorf("%w: release %s was cut from %s, which this clone lacks: fetch the full history (`git fetch origin`)", ErrHistory, r.Version, r.Commit)
}

// Binary builds r's nodecreds (static, as `make build` does) once and
// returns its path.
func Binary(ctx context.Context, repo string, r Release) (string, error) {
	bin := filepath.Join(Dir(repo, r), "nodecreds")
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	src, err := Source(ctx, repo, r)
	if err != nil {
		return "", err
	}
	// Absolute: the build runs in src, and repo may be relative ("..").
	tmp, err := filepath.Abs(bin + ".tmp")
	if err != nil {
		return "", err
	}
	if err := testsupport.BuildRelease(src, tmp, r.Version); err != nil {
		return "", fmt.Errorf("release %s (%s): %w", r.Version, r.Commit, err)
	}
	return bin, os.Rename(tmp, bin)
}

// Image builds r's image (an OCI layout, as `make image` does) once and
// returns the layout's folder.
func Image(ctx context.Context, repo string, r Release) (string, error) {
	out := filepath.Join(Dir(repo, r), "image")
	if _, err := os.Stat(filepath.Join(out, "index.json")); err == nil {
		return out, nil
	}
	src, err := Source(ctx, repo, r)
	if err != nil {
		return "", err
	}
	tmp, err := filepath.Abs(out + ".tmp") // the build runs in src
	if err != nil {
		return "", err
	}
	_ = os.RemoveAll(tmp)
	cmd := exec.CommandContext(ctx, "go", "run", "./scripts/image", "build", "-version", r.Version, "-out", tmp)
	cmd.Dir = src
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building release %s's image (%s): %w\n%s", r.Version, r.Commit, err, b)
	}
	_ = os.RemoveAll(out)
	return out, os.Rename(tmp, out)
}
