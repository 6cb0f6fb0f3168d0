// Command chart renders, lints and packages the Helm chart with Helm's own
// Go library (no helm binary needed).
//
//	go run ./scripts/chart manifest                 the all-in-one manifest (deploy/daemonset.yaml)
//	go run ./scripts/chart manifest -set image.digest=sha256:...,image.tag=1.2.3
//	go run ./scripts/chart lint
//	go run ./scripts/chart package -version 1.2.3 -digest sha256:... -out DIR
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/nodecreds/nodecreds/scripts/chart/render"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "chart:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) == 0 {
		return errors.New("usage: chart manifest|lint|package [flags]")
	}
	fs := flag.NewFlagSet(args[0], flag.ContinueOnError)
	dir := fs.String("chart", render.ChartDir, "chart folder")
	set := fs.String("set", "", "values as helm --set takes them")
	version := fs.String("version", "", "chart version and appVersion (package)")
	digest := fs.String("digest", "", "image digest (package)")
	repo := fs.String("repository", "", "image repository (package)")
	out := fs.String("out", ".", "output folder (package)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	switch args[0] {
	case "manifest":
		m, err := render.Manifest(*dir, *set)
		if err != nil {
			return err
		}
		_, err = os.Stdout.WriteString(m)
		return err
	case "lint":
		return render.Lint(*dir, *set)
	case "package":
		p, err := render.Package(*dir, *version, *repo, *digest, *out)
		if err != nil {
			return err
		}
		fmt.Println(p)
		return nil
	}
	return fmt.Errorf("unknown command %q", args[0])
}
