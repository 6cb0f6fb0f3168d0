// Command mkimage builds a one-layer image from local files, with no
// registry and no Docker engine, and writes it as a docker-archive tarball
// that `ctr images import` loads (or pushes it to a registry). The real-node
// test uses it for the pause image, the test app (Debian's busybox-static)
// and the nodecreds image (the static binary).
//
//	mkimage -o out.tar -name docker.io/nodecreds/busybox:local \
//	  -file /usr/bin/busybox=/bin/busybox -entrypoint /bin/busybox,sleep,infinity
package main

import (
	"archive/tar"
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

type files []string

func (f *files) String() string     { return strings.Join(*f, ",") }
func (f *files) Set(v string) error { *f = append(*f, v); return nil }

func main() {
	var (
		out, ref, entry string
		fs              files
	)
	flag.StringVar(&out, "o", "", "output docker-archive tarball")
	flag.StringVar(&ref, "name", "", "image name with tag")
	flag.StringVar(&entry, "entrypoint", "", "comma-separated entrypoint")
	flag.Var(&fs, "file", "SRC=DEST to put in the image (repeatable)")
	flag.Parse()
	if err := run(out, ref, entry, fs); err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}

func run(out, ref, entry string, fs files) error {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range fs {
		src, dest, ok := strings.Cut(f, "=")
		if !ok {
			return fmt.Errorf("-file %q: want SRC=DEST", f)
		}
		data, err := os.ReadFile(src)
		if err != nil {
			return err
		}
		dest = strings.TrimPrefix(dest, "/")
		if dir := dest[:strings.LastIndex(dest, "/")+1]; dir != "" {
			if err := tw.WriteHeader(&tar.Header{Name: dir, Typeflag: tar.TypeDir, Mode: 0o755}); err != nil {
				return err
			}
		}
		if err := tw.WriteHeader(&tar.Header{Name: dest, Mode: 0o755, Size: int64(len(data)), Typeflag: tar.TypeReg}); err != nil {
			return err
		}
		if _, err := tw.Write(data); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf.Bytes())), nil })
	if err != nil {
		return err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cfg = cfg.DeepCopy()
	cfg.Architecture, cfg.OS = "amd64", "linux"
	cfg.Config = v1.Config{Entrypoint: strings.Split(entry, ",")}
	if img, err = mutate.ConfigFile(img, cfg); err != nil {
		return err
	}
	tag, err := name.NewTag(ref)
	if err != nil {
		return err
	}
	return tarball.WriteToFile(out, tag, img)
}
