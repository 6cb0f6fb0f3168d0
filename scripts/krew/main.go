// Command krew writes the kubectl plugin's release files from the release's
// binaries: for each platform an archive nodecreds-V-linux-ARCH.tar.gz
// holding the binary and the LICENSE (krew's validator wants a licence in
// every archive), and the krew manifest plugins/nodecreds.yaml naming each
// archive's download URL and sha256. The archives are reproducible (fixed
// owners, modes and times), so the same binaries give the same sums.
//
//	go run ./scripts/krew -version V -url URL -dir _output/release
package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"sigs.k8s.io/yaml"
)

// arches are the platforms the release has binaries for.
var arches = []string{"amd64", "arm64"}

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "krew:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("krew", flag.ContinueOnError)
	version := fs.String("version", "", "the release's version (x.y.z)")
	url := fs.String("url", "", "where the release's files are downloaded from: each archive's uri is URL/ARCHIVE")
	dir := fs.String("dir", "_output/release", "the release folder: holds nodecreds-linux-ARCH, gets the archives and plugins/nodecreds.yaml")
	license := fs.String("license", "LICENSE", "the licence put in each archive")
	homepage := fs.String("homepage", "https://github.com/nodecreds/nodecreds", "the plugin's homepage")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *version == "" || *url == "" {
		return errors.New("usage: krew -version V -url URL [-dir DIR]")
	}
	lic, err := os.ReadFile(*license)
	if err != nil {
		return fmt.Errorf("reading the licence: %w", err)
	}
	p := plugin{
		APIVersion: "krew.googlecontainertools.github.com/v1alpha2",
		Kind:       "Plugin",
		Metadata:   metadata{Name: "nodecreds"},
		Spec: spec{
			Version:          "v" + strings.TrimPrefix(*version, "v"),
			Homepage:         *homepage,
			ShortDescription: "Show which nodes applied the registry credentials nodecreds syncs",
			Description:      description,
		},
	}
	for _, arch := range arches {
		bin, err := os.ReadFile(filepath.Join(*dir, "nodecreds-linux-"+arch))
		if err != nil {
			return fmt.Errorf("reading the linux/%s binary: %w", arch, err)
		}
		archive, err := tgz([]file{{"nodecreds", 0o755, bin}, {"LICENSE", 0o644, lic}})
		if err != nil {
			return fmt.Errorf("archiving the linux/%s binary: %w", arch, err)
		}
		name := fmt.Sprintf("nodecreds-%s-linux-%s.tar.gz", strings.TrimPrefix(*version, "v"), arch)
		if err := os.WriteFile(filepath.Join(*dir, name), archive, 0o644); err != nil {
			return err
		}
		sum := sha256.Sum256(archive)
		p.Spec.Platforms = append(p.Spec.Platforms, platform{
			Selector: selector{MatchLabels: map[string]string{"os": "linux", "arch": arch}},
			URI:      strings.TrimSuffix(*url, "/") + "/" + name,
			Sha256:   hex.EncodeToString(sum[:]),
			Files:    []fileOp{{From: "nodecreds", To: "."}, {From: "LICENSE", To: "."}},
			Bin:      "nodecreds",
		})
	}
	out, err := yaml.Marshal(p)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(*dir, "plugins"), 0o755); err != nil {
		return err
	}
	header := "# The kubectl plugin (krew): kubectl krew install --manifest=plugins/nodecreds.yaml (in the release folder)\n"
	return os.WriteFile(filepath.Join(*dir, "plugins", "nodecreds.yaml"), append([]byte(header), out...), 0o644)
}

// description is the plugin's description in krew's index.
const description = `The nodecreds commands that talk to the API server, as kubectl nodecreds:
  kubectl nodecreds status [--secret NAME] [--wait]
    which nodes have applied the current revision of the source Secrets
  kubectl nodecreds check --service-account NAMESPACE/NAME --image IMAGE
    what the credential provider's service-account mode answers for a
    ServiceAccount's Pods
--kubeconfig and --context are kubectl's; --namespace (-n) is nodecreds'
namespace (default nodecreds), never the context's.
`

// The krew manifest (sigs.k8s.io/krew/pkg/index, whose module is not a
// dependency worth taking for five structs).
type (
	plugin struct {
		APIVersion string   `json:"apiVersion"`
		Kind       string   `json:"kind"`
		Metadata   metadata `json:"metadata"`
		Spec       spec     `json:"spec"`
	}
	metadata struct {
		Name string `json:"name"`
	}
	spec struct {
		Version          string     `json:"version"`
		Homepage         string     `json:"homepage"`
		ShortDescription string     `json:"shortDescription"`
		Description      string     `json:"description"`
		Platforms        []platform `json:"platforms"`
	}
	platform struct {
		Selector selector `json:"selector"`
		URI      string   `json:"uri"`
		Sha256   string   `json:"sha256"`
		Files    []fileOp `json:"files"`
		Bin      string   `json:"bin"`
	}
	selector struct {
		MatchLabels map[string]string `json:"matchLabels"`
	}
	fileOp struct {
		From string `json:"from"`
		To   string `json:"to"`
	}
)

type file struct {
	name string
	mode int64
	data []byte
}

// tgz archives files reproducibly: root-owned, epoch times, no gzip name
// or time.
func tgz(files []file) ([]byte, error) {
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for _, f := range files {
		h := &tar.Header{Name: f.name, Mode: f.mode, Size: int64(len(f.data)), Typeflag: tar.TypeReg, Format: tar.FormatPAX}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(f.data); err != nil {
			return nil, err
		}
	}
	if err := errors.Join(tw.Close(), gz.Close()); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
