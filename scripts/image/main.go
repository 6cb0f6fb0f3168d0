// Command image builds and pushes the nodecreds container image without a
// Docker engine: one OCI image index for linux/amd64 and linux/arm64, each
// image a single layer holding the static binary at /nodecreds on an empty
// base (TLS roots are compiled into the binary), written reproducibly (same
// source and Go toolchain → same digest) as an OCI image layout.
//
//	go run ./scripts/image build -version V -out _output/image
//	go run ./scripts/image push -layout _output/image IMAGE
//	go run ./scripts/image binaries -version V -out DIR   (nodecreds-linux-ARCH)
package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Platforms are the ones the image index holds.
var platforms = []v1.Platform{{OS: "linux", Architecture: "amd64"}, {OS: "linux", Architecture: "arm64"}}

func main() {
	if err := run(context.Background(), os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return errors.New("usage: image build|push|binaries [flags]")
	}
	fs := flag.NewFlagSet(args[0], flag.ContinueOnError)
	version := fs.String("version", "dev", "version stamped into the binary and the image")
	out := fs.String("out", "_output/image", "output folder")
	lay := fs.String("layout", "_output/image", "OCI layout to push")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	switch args[0] {
	case "build":
		start := time.Now()
		digest, err := build(ctx, *version, *out)
		if err != nil {
			return err
		}
		fmt.Printf("built %s (linux/amd64, linux/arm64) in %s: %s\n", *out, time.Since(start).Round(time.Second), digest)
		return nil
	case "binaries":
		for _, p := range platforms {
			if err := goBuild(ctx, *version, p.Architecture, filepath.Join(*out, "nodecreds-linux-"+p.Architecture)); err != nil {
				return err
			}
		}
		return nil
	case "push":
		if fs.NArg() != 1 {
			return errors.New("usage: image push -layout DIR host[:port]/repo[:tag]")
		}
		ref, err := push(ctx, *lay, fs.Arg(0))
		if err != nil {
			return err
		}
		fmt.Println(ref)
		return nil
	}
	return fmt.Errorf("unknown command %q", args[0])
}

// goBuild builds the static binary for arch, reproducibly: no VCS stamp,
// trimmed paths, no build id.
func goBuild(ctx context.Context, version, arch, out string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-buildvcs=false",
		"-ldflags", "-s -w -buildid= -X main.version="+version, "-o", out, "./cmd/nodecreds")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("building nodecreds for linux/%s: %w", arch, err)
	}
	return nil
}

// build writes the layout at out and returns the index digest.
func build(ctx context.Context, version, out string) (v1.Hash, error) {
	tmp, err := os.MkdirTemp("", "nodecreds-image-")
	if err != nil {
		return v1.Hash{}, err
	}
	defer os.RemoveAll(tmp)
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for _, p := range platforms {
		bin := filepath.Join(tmp, "nodecreds-"+p.Architecture)
		if err := goBuild(ctx, version, p.Architecture, bin); err != nil {
			return v1.Hash{}, err
		}
		img, err := imageFor(bin, p, version)
		if err != nil {
			return v1.Hash{}, err
		}
		plat := p
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &plat}})
	}
	if err := os.RemoveAll(out); err != nil {
		return v1.Hash{}, err
	}
	path, err := layout.Write(out, empty.Index)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("writing layout %s: %w", out, err)
	}
	if err := path.AppendIndex(idx, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": version})); err != nil {
		return v1.Hash{}, fmt.Errorf("writing layout %s: %w", out, err)
	}
	return idx.Digest()
}

// imageFor is one platform's image: an empty base, one layer with the
// binary at /nodecreds (root-owned, 0755, epoch mtime).
func imageFor(bin string, p v1.Platform, version string) (v1.Image, error) {
	data, err := os.ReadFile(bin)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	hdr := &tar.Header{Name: "nodecreds", Mode: 0o755, Size: int64(len(data)), Typeflag: tar.TypeReg, ModTime: time.Unix(0, 0), Format: tar.FormatPAX}
	if err := tw.WriteHeader(hdr); err != nil {
		return nil, err
	}
	if _, err := tw.Write(data); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	raw := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(raw)), nil
	}, tarball.WithMediaType(types.OCILayer), tarball.WithCompressionLevel(gzip.BestCompression))
	if err != nil {
		return nil, err
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.AppendLayers(img, layer)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = p.OS, p.Architecture
	cf.Created = v1.Time{Time: time.Unix(0, 0).UTC()}
	cf.Config = v1.Config{
		Entrypoint: []string{"/nodecreds"},
		Cmd:        []string{"sync"},
		User:       "0:0",
		Labels: map[string]string{
			"org.opencontainers.image.title":   "nodecreds",
			"org.opencontainers.image.version": version,
			"org.opencontainers.image.source":  "https://github.com/nodecreds/nodecreds",
		},
	}
	cf.History = []v1.History{{Created: cf.Created, CreatedBy: "nodecreds scripts/image: /nodecreds"}}
	return mutate.ConfigFile(img, cf)
}

// push uploads the layout's index to ref and returns ref@digest. Plain HTTP
// is used only where go-containerregistry allows it (localhost, loopback
// and private addresses).
func push(ctx context.Context, lay, ref string) (string, error) {
	p, err := layout.FromPath(lay)
	if err != nil {
		return "", fmt.Errorf("reading layout %s (run make image first): %w", lay, err)
	}
	top, err := p.ImageIndex()
	if err != nil {
		return "", err
	}
	im, err := top.IndexManifest()
	if err != nil {
		return "", err
	}
	if len(im.Manifests) != 1 {
		return "", fmt.Errorf("layout %s holds %d entries, want one image index", lay, len(im.Manifests))
	}
	idx, err := top.ImageIndex(im.Manifests[0].Digest)
	if err != nil {
		return "", err
	}
	tag, err := name.ParseReference(ref)
	if err != nil {
		return "", fmt.Errorf("image reference %q: %w", ref, err)
	}
	if err := remote.WriteIndex(tag, idx, remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)); err != nil {
		return "", fmt.Errorf("pushing to %s: %w", ref, err)
	}
	d, err := idx.Digest()
	if err != nil {
		return "", err
	}
	return tag.String() + "@" + d.String(), nil
}
