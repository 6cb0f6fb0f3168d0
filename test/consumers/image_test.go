package consumers

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/nodecreds/nodecreds/internal/testsupport"
)

// repoRoot is the nodecreds checkout this module lives in.
const repoRoot = "../.."

// layoutIndex returns the digest and ref.name tag of the one image index
// in an OCI layout written by `make image`.
func layoutIndex(t *testing.T, dir string) (digest, tag string) {
	t.Helper()
	p, err := layout.FromPath(dir)
	if err != nil {
		t.Fatalf("reading %s (make image writes it): %v", dir, err)
	}
	top, err := p.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	im, err := top.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 {
		t.Fatalf("%s holds %d entries, want one image index", dir, len(im.Manifests))
	}
	return im.Manifests[0].Digest.String(), im.Manifests[0].Annotations["org.opencontainers.image.ref.name"]
}

// platformImage returns the image for linux/arch in the layout's index.
func platformImage(t *testing.T, dir, arch string) v1.Image {
	t.Helper()
	p, err := layout.FromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	digest, _ := layoutIndex(t, dir)
	h, _ := v1.NewHash(digest)
	idx, err := p.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	ii, err := idx.ImageIndex(h)
	if err != nil {
		t.Fatal(err)
	}
	im, err := ii.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range im.Manifests {
		if m.Platform != nil && m.Platform.OS == "linux" && m.Platform.Architecture == arch {
			img, err := ii.Image(m.Digest)
			if err != nil {
				t.Fatal(err)
			}
			return img
		}
	}
	t.Fatalf("no linux/%s image in %s", arch, dir)
	return nil
}

// imageFiles lists an image's files (name → mode) and returns the content
// of /nodecreds.
func imageFiles(t *testing.T, img v1.Image) (map[string]int64, []byte) {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]int64{}
	var bin []byte
	for _, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(rc)
		for {
			h, err := tr.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			n := "/" + strings.TrimPrefix(h.Name, "./")
			files[n] = h.Mode
			if n == "/nodecreds" {
				if bin, err = io.ReadAll(tr); err != nil {
					t.Fatal(err)
				}
			}
		}
		rc.Close()
	}
	return files, bin
}

// imageBinary returns /nodecreds from the layout's linux/arch image.
func imageBinary(t *testing.T, dir, arch string) []byte {
	t.Helper()
	_, bin := imageFiles(t, platformImage(t, dir, arch))
	return bin
}

func buildImage(t *testing.T, out string) string {
	t.Helper()
	cmd := exec.Command("go", "run", "./scripts/image", "build", "-version", "0.0.0-test", "-out", out)
	cmd.Dir = repoRoot
	b, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("scripts/image build: %v\n%s", err, b)
	}
	d, _ := layoutIndex(t, out)
	return d
}

// dockerfileFinal is what the Dockerfile's last stage declares.
type dockerfileFinal struct {
	from            string
	files           map[string]int64
	entrypoint, cmd []string
	user            string
}

func parseDockerfile(t *testing.T) dockerfileFinal {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	var d dockerfileFinal
	copyRe := regexp.MustCompile(`^COPY\s+(?:--from=\S+\s+)?(?:--chmod=(\d+)\s+)?\S+\s+(\S+)$`)
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "FROM "):
			d = dockerfileFinal{from: strings.Fields(line)[1], files: map[string]int64{}}
		case strings.HasPrefix(line, "COPY "):
			if m := copyRe.FindStringSubmatch(line); m != nil {
				var mode int64 = 0o644
				if m[1] != "" {
					_, _ = fmtSscanOctal(m[1], &mode)
				}
				d.files[m[2]] = mode
			}
		case strings.HasPrefix(line, "ENTRYPOINT "):
			_ = json.Unmarshal([]byte(strings.TrimPrefix(line, "ENTRYPOINT ")), &d.entrypoint)
		case strings.HasPrefix(line, "CMD "):
			_ = json.Unmarshal([]byte(strings.TrimPrefix(line, "CMD ")), &d.cmd)
		case strings.HasPrefix(line, "USER "):
			d.user = strings.TrimSpace(strings.TrimPrefix(line, "USER "))
		}
	}
	return d
}

// TestImage: `make image`'s builder writes one OCI index for linux/amd64 and
// linux/arm64, reproducibly, each image holding only /nodecreds (0755, a
// static binary that runs) with the Dockerfile's entrypoint, command and
// user. Without a Docker engine the Dockerfile's final stage is compared as
// declared; with one, the image `docker build` makes is compared too.
func TestImage(t *testing.T) {
	a, b := filepath.Join(t.TempDir(), "a"), filepath.Join(t.TempDir(), "b")
	da, db := buildImage(t, a), buildImage(t, b)
	if da != db {
		t.Errorf("two builds of the same source differ: %s vs %s", da, db)
	}
	want := parseDockerfile(t)
	if want.from != "scratch" {
		t.Errorf("the Dockerfile's final stage is FROM %s; the engine-free image has an empty base (scratch)", want.from)
	}
	for _, arch := range []string{"amd64", "arm64"} {
		img := platformImage(t, a, arch)
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		if cf.OS != "linux" || cf.Architecture != arch {
			t.Errorf("%s image says %s/%s", arch, cf.OS, cf.Architecture)
		}
		if !slices.Equal(cf.Config.Entrypoint, want.entrypoint) || !slices.Equal(cf.Config.Cmd, want.cmd) || cf.Config.User != want.user {
			t.Errorf("%s: entrypoint %v cmd %v user %q; the Dockerfile says %v %v %q", arch, cf.Config.Entrypoint, cf.Config.Cmd, cf.Config.User, want.entrypoint, want.cmd, want.user)
		}
		files, bin := imageFiles(t, img)
		if len(files) != len(want.files) || files["/nodecreds"] != want.files["/nodecreds"] || files["/nodecreds"] != 0o755 {
			t.Errorf("%s image files %v; the Dockerfile's final stage has %v", arch, files, want.files)
		}
		if len(bin) == 0 || bytes.Contains(bin[:min(len(bin), 64)], []byte("#!")) {
			t.Fatalf("%s: /nodecreds is missing or not a binary", arch)
		}
		if arch == "amd64" && runtimeArch() == "amd64" {
			p := filepath.Join(t.TempDir(), "nodecreds")
			if err := os.WriteFile(p, bin, 0o755); err != nil {
				t.Fatal(err)
			}
			if out, err := exec.Command(p, "version").CombinedOutput(); err != nil || !strings.Contains(string(out), "0.0.0-test") {
				t.Errorf("the image's binary does not run: %v\n%s", err, out)
			}
			if out, err := exec.Command("go", "version", "-m", p).CombinedOutput(); err == nil && !strings.Contains(string(out), "CGO_ENABLED=0") {
				t.Errorf("the image's binary is not static:\n%s", out)
			}
		}
	}
	if exec.Command("docker", "info").Run() == nil {
		compareDockerBuild(t, want)
	} else {
		t.Logf("no Docker engine: compared the Dockerfile's final stage as declared (FROM %s, files %v, ENTRYPOINT %v, CMD %v, USER %s) with the engine-free image", want.from, want.files, want.entrypoint, want.cmd, want.user)
	}
}

// compareDockerBuild builds the Dockerfile with a Docker engine and checks
// its image config against the declared final stage.
func compareDockerBuild(t *testing.T, want dockerfileFinal) {
	t.Helper()
	tag := "nodecreds-compare:test"
	if out, err := exec.Command("docker", "build", "-q", "-t", tag, repoRoot).CombinedOutput(); err != nil {
		t.Fatalf("docker build: %v\n%s", err, out)
	}
	out, err := exec.Command("docker", "image", "inspect", "--format", "{{json .Config}}", tag).Output()
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		Entrypoint, Cmd []string
		User            string
	}
	if err := json.Unmarshal(out, &cfg); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cfg.Entrypoint, want.entrypoint) || !slices.Equal(cfg.Cmd, want.cmd) || cfg.User != want.user {
		t.Errorf("docker build: %+v, want %v %v %q", cfg, want.entrypoint, want.cmd, want.user)
	}
}

// TestPush: `make push IMAGE=127.0.0.1:PORT/repo:tag` pushes the index to a
// real registry (htpasswd auth through the docker config, plain HTTP on
// loopback) and prints the reference with the digest that is in the
// registry.
func TestPush(t *testing.T) {
	const user, pass = "pusher", "push-canary-pw"
	host := realRegistry(t, user, pass)
	cfgDir := t.TempDir()
	testsupport.WriteFile(t, filepath.Join(cfgDir, "config.json"), `{"auths":{"`+host+`":{"auth":"`+testsupport.B64(user+":"+pass)+`"}}}`, 0o600)
	ref := host + "/nodecreds/nodecreds:0.0.0-test"
	cmd := exec.Command("make", "--no-print-directory", "push", "IMAGE="+ref)
	cmd.Dir = repoRoot
	cmd.Env = append(os.Environ(), "DOCKER_CONFIG="+cfgDir)
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("make push: %v\n%s%s", err, out, ee.Stderr)
		}
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	printed := lines[len(lines)-1]
	localDigest, _ := layoutIndex(t, filepath.Join(repoRoot, "_output", "image"))
	if printed != ref+"@"+localDigest {
		t.Errorf("make push printed %q, want %s@%s", printed, ref, localDigest)
	}
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	desc, err := remote.Get(r, remote.WithAuth(basicAuth(user, pass)))
	if err != nil {
		t.Fatal(err)
	}
	if desc.Digest.String() != localDigest {
		t.Errorf("the registry has %s, the layout %s", desc.Digest, localDigest)
	}
	idx, err := desc.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	im, _ := idx.IndexManifest()
	var plats []string
	for _, m := range im.Manifests {
		plats = append(plats, m.Platform.String())
	}
	slices.Sort(plats)
	if !slices.Equal(plats, []string{"linux/amd64", "linux/arm64"}) {
		t.Errorf("the pushed index has %v", plats)
	}
	if strings.Contains(string(out), pass) {
		t.Error("make push printed the password")
	}
}

func fmtSscanOctal(s string, v *int64) (int, error) {
	n, err := strconv.ParseInt(s, 8, 64)
	*v = n
	return 1, err
}

func runtimeArch() string { return runtime.GOARCH }

func basicAuth(user, pass string) authn.Authenticator {
	return authn.FromConfig(authn.AuthConfig{Username: user, Password: pass})
}

// TestRelease: `make release` against a real registry on 127.0.0.1 leaves
// the manifest (image by the digest that is in the registry), the packaged
// chart (appVersion and digest set), the two static binaries (the very
// bytes of the pushed image's /nodecreds), the kubectl plugin (krew
// manifest and archives, run through a real kubectl: checkKrewPlugin),
// CHANGELOG.md, and SHA256SUMS covering them.
func TestRelease(t *testing.T) {
	const user, pass = "releaser", "release-canary-pw"
	const version = "0.0.1-test"
	const releaseURL = "https://downloads.example.test/nodecreds/" + version
	host := realRegistry(t, user, pass)
	cfgDir := t.TempDir()
	testsupport.WriteFile(t, filepath.Join(cfgDir, "config.json"), `{"auths":{"`+host+`":{"auth":"`+testsupport.B64(user+":"+pass)+`"}}}`, 0o600)
	repo := host + "/nodecreds/nodecreds"
	cmd := exec.Command("make", "--no-print-directory", "release", "VERSION="+version, "IMAGE="+repo, "RELEASE_URL="+releaseURL)
	cmd.Dir = repoRoot
	cmd.Env = append(os.Environ(), "DOCKER_CONFIG="+cfgDir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make release: %v\n%s", err, out)
	}
	rel := filepath.Join(repoRoot, "_output", "release")

	r, err := name.ParseReference(repo + ":" + version)
	if err != nil {
		t.Fatal(err)
	}
	desc, err := remote.Get(r, remote.WithAuth(basicAuth(user, pass)))
	if err != nil {
		t.Fatalf("the release tag is not in the registry: %v", err)
	}
	pinned := repo + "@" + desc.Digest.String()

	manifest := string(testsupport.ReadFile(t, filepath.Join(rel, "nodecreds.yaml")))
	if !strings.Contains(manifest, "image: "+pinned+"\n") {
		t.Errorf("nodecreds.yaml does not pin the image by the registry's digest %s", pinned)
	}

	chart := untar(t, filepath.Join(rel, "nodecreds-"+version+".tgz"))
	if c := chart["nodecreds/Chart.yaml"]; !strings.Contains(c, "version: "+version) || !strings.Contains(c, "appVersion: "+version) {
		t.Errorf("packaged Chart.yaml:\n%s", c)
	}
	if v := chart["nodecreds/values.yaml"]; !strings.Contains(v, `digest: "`+desc.Digest.String()+`"`) || !strings.Contains(v, "repository: "+repo) {
		t.Errorf("packaged values.yaml does not carry the image:\n%s", v)
	}

	idx, err := desc.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	for _, arch := range []string{"amd64", "arm64"} {
		img, err := idx.Image(platformDigest(t, idx, arch))
		if err != nil {
			t.Fatal(err)
		}
		_, inImage := imageFiles(t, img)
		if got := testsupport.ReadFile(t, filepath.Join(rel, "nodecreds-linux-"+arch)); !bytes.Equal(got, inImage) {
			t.Errorf("nodecreds-linux-%s is not the binary in the pushed image", arch)
		}
	}
	sums := exec.Command("sha256sum", "-c", "SHA256SUMS")
	sums.Dir = rel
	out, err := sums.CombinedOutput()
	if err != nil {
		t.Errorf("sha256sum -c: %v\n%s", err, out)
	}
	for _, f := range []string{"nodecreds.yaml", "nodecreds-" + version + ".tgz", "nodecreds-linux-amd64", "nodecreds-linux-arm64",
		"nodecreds-" + version + "-linux-amd64.tar.gz", "nodecreds-" + version + "-linux-arm64.tar.gz", "plugins/nodecreds.yaml", "CHANGELOG.md"} {
		if !strings.Contains(string(out), f+": OK") {
			t.Errorf("SHA256SUMS does not cover %s:\n%s", f, out)
		}
	}
	if got, want := testsupport.ReadFile(t, filepath.Join(rel, "CHANGELOG.md")), testsupport.ReadFile(t, filepath.Join(repoRoot, "CHANGELOG.md")); !bytes.Equal(got, want) {
		t.Error("the release's CHANGELOG.md is not the repository's")
	}
	checkKrewPlugin(t, rel, version, releaseURL)
}

func platformDigest(t *testing.T, idx v1.ImageIndex, arch string) v1.Hash {
	t.Helper()
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range im.Manifests {
		if m.Platform != nil && m.Platform.Architecture == arch {
			return m.Digest
		}
	}
	t.Fatalf("no %s image", arch)
	return v1.Hash{}
}

// untar reads a .tgz into name → content.
func untar(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	gz, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	out := map[string]string{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		out[h.Name] = string(b)
	}
}
