// Command chart renders, lints and packages the Helm chart with Helm's own
// Go library (no helm binary needed). It is its own Go module, so Helm is
// no requirement of the product's go.mod; run it from here:
//
//	go -C scripts/chart build -o ../../bin/chart .   (make chart-tool)
//	bin/chart manifest                 the all-in-one manifest (deploy/daemonset.yaml)
//	bin/chart manifest -set image.digest=sha256:...,image.tag=1.2.3
//	bin/chart lint
//	bin/chart package -version 1.2.3 -digest sha256:... -out DIR
//	bin/chart render -namespace NS [-set S] [-values FILE] [-kubeconfig FILE]
//	                                   template → YAML as JSON (the chart tests in test/)
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"

	"helm.sh/helm/v4/pkg/chart/common"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

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
		return errors.New("usage: chart manifest|lint|package|render [flags]")
	}
	fs := flag.NewFlagSet(args[0], flag.ContinueOnError)
	dir := fs.String("chart", render.ChartDir, "chart folder")
	set := fs.String("set", "", "values as helm --set takes them")
	version := fs.String("version", "", "chart version and appVersion (package)")
	digest := fs.String("digest", "", "image digest (package)")
	repo := fs.String("repository", "", "image repository (package)")
	out := fs.String("out", ".", "output folder (package)")
	ns := fs.String("namespace", render.Namespace, "release namespace (render)")
	values := fs.String("values", "", "values file, as helm -f takes it (render; not with -set)")
	kubeconfig := fs.String("kubeconfig", "", "render as helm install does against this cluster: lookup reads from it (render)")
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
	case "render":
		tmpl, err := renderCmd(*dir, *set, *values, *ns, *kubeconfig)
		if err != nil {
			return err
		}
		return json.NewEncoder(os.Stdout).Encode(tmpl)
	}
	return fmt.Errorf("unknown command %q", args[0])
}

// renderCmd renders with either -set or -values, with the cluster at
// kubeconfig when given.
func renderCmd(dir, set, values, ns, kubeconfig string) (map[string]string, error) {
	var cfg *rest.Config
	if kubeconfig != "" {
		var err error
		if cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig); err != nil {
			return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
		}
	}
	if values == "" {
		return render.RenderWithCluster(dir, set, ns, cfg)
	}
	if set != "" {
		return nil, errors.New("-values and -set together")
	}
	vals, err := common.ReadValuesFile(values)
	if err != nil {
		return nil, err
	}
	return render.RenderValuesWithCluster(dir, vals, ns, cfg)
}
