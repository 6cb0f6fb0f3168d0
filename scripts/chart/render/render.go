// Package render renders, lints and packages the nodecreds Helm chart with
// Helm's Go library. deploy/daemonset.yaml is Manifest's output with the
// chart's defaults, so the chart is the one source of truth for both
// install paths.
package render

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"helm.sh/helm/v4/pkg/chart/common"
	"helm.sh/helm/v4/pkg/chart/common/util"
	"helm.sh/helm/v4/pkg/chart/v2/lint"
	"helm.sh/helm/v4/pkg/chart/v2/lint/support"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	chartutil "helm.sh/helm/v4/pkg/chart/v2/util"
	"helm.sh/helm/v4/pkg/engine"
	"helm.sh/helm/v4/pkg/strvals"
	"k8s.io/client-go/rest"
)

// ChartDir is the chart, relative to the repository root.
const ChartDir = "deploy/helm/nodecreds"

// Namespace is where the all-in-one manifest installs.
const Namespace = "nodecreds"

// ManifestValues are what the all-in-one manifest adds to the defaults: it
// creates its namespace (with the Pod Security label), as `kubectl apply
// -f` cannot do otherwise.
const ManifestValues = "namespace.create=true"

// order is the templates' order in the manifest (Helm's install order).
var order = []string{"namespace.yaml", "serviceaccount.yaml", "rbac.yaml", "admission.yaml", "flowcontrol.yaml", "servicemonitor.yaml", "daemonset.yaml"}

const header = `# nodecreds: keeps private-registry pull credentials on every Linux node in
# sync with the Secret nodecreds/registry-credentials.
#
# GENERATED from deploy/helm/nodecreds (make manifests); edit the chart.
#
#   kubectl apply -f deploy/daemonset.yaml
#   kubectl -n nodecreds create secret docker-registry registry-credentials \
#     --docker-server=registry.example.com --docker-username=robot --docker-password=...
#   nodecreds status --wait
#
# The image must be pullable without the credentials nodecreds installs:
# publish it (make push, make release) to a registry your nodes can pull
# from as they are, and set it with kustomize's images: (deploy/
# kustomization.yaml) or use the release bundle's nodecreds.yaml, which pins
# it by digest. Uninstall: see "Uninstall" in README.md.
`

// Render renders the chart with set (helm --set syntax) over its defaults,
// as release "nodecreds" in namespace ns, and returns template → YAML.
func Render(dir, set, ns string) (map[string]string, error) {
	return RenderWithCluster(dir, set, ns, nil)
}

// RenderValues is Render with values as a values file gives them.
func RenderValues(dir string, vals map[string]any, ns string) (map[string]string, error) {
	return render(dir, vals, ns, nil)
}

// RenderValuesWithCluster is RenderValues against the cluster at cfg, as
// RenderWithCluster.
func RenderValuesWithCluster(dir string, vals map[string]any, ns string, cfg *rest.Config) (map[string]string, error) {
	return render(dir, vals, ns, cfg)
}

// RenderWithCluster is Render as `helm install` does it against a cluster:
// the chart's lookup calls read from the API server at cfg (nil: none, as
// `helm template`).
func RenderWithCluster(dir, set, ns string, cfg *rest.Config) (map[string]string, error) {
	vals := map[string]any{}
	if set != "" {
		if err := strvals.ParseInto(set, vals); err != nil {
			return nil, fmt.Errorf("values %q: %w", set, err)
		}
	}
	return render(dir, vals, ns, cfg)
}

func render(dir string, vals map[string]any, ns string, cfg *rest.Config) (map[string]string, error) {
	ch, err := loader.Load(dir)
	if err != nil {
		return nil, fmt.Errorf("loading chart %s: %w", dir, err)
	}
	rv, err := util.ToRenderValues(ch, vals, common.ReleaseOptions{Name: "nodecreds", Namespace: ns, IsInstall: true}, common.DefaultCapabilities)
	if err != nil {
		return nil, err
	}
	var out map[string]string
	if cfg != nil {
		out, err = engine.RenderWithClient(ch, rv, cfg)
	} else {
		out, err = engine.Render(ch, rv)
	}
	if err != nil {
		return nil, err
	}
	byName := map[string]string{}
	for k, v := range out {
		byName[filepath.Base(k)] = v
	}
	return byName, nil
}

// Manifest is the all-in-one manifest: the chart rendered with its
// defaults plus ManifestValues (and set, if any) into Namespace.
func Manifest(dir, set string) (string, error) {
	vals := ManifestValues
	if set != "" {
		vals += "," + set
	}
	out, err := Render(dir, vals, Namespace)
	if err != nil {
		return "", err
	}
	var docs []string
	for _, name := range order {
		doc := strings.TrimSpace(out[name])
		if doc != "" {
			docs = append(docs, doc)
		}
	}
	return header + strings.Join(docs, "\n---\n") + "\n", nil
}

// Lint runs Helm's linter over the chart with set; any error-level message
// fails.
func Lint(dir, set string) error {
	vals := map[string]any{}
	if set != "" {
		if err := strvals.ParseInto(set, vals); err != nil {
			return err
		}
	}
	res := lint.RunAll(dir, vals, Namespace)
	var errs []error
	for _, m := range res.Messages {
		if m.Severity >= support.WarningSev {
			errs = append(errs, errors.New(m.Error()))
		}
	}
	return errors.Join(errs...)
}

// Package writes nodecreds-VERSION.tgz into out with version and
// appVersion set to version, and the image digest (and repository, when
// given) as defaults, and returns its path.
func Package(dir, version, repository, digest, out string) (string, error) {
	if version == "" {
		return "", errors.New("package needs -version")
	}
	ch, err := loader.Load(dir)
	if err != nil {
		return "", err
	}
	ch.Metadata.Version = version
	ch.Metadata.AppVersion = version
	img, _ := ch.Values["image"].(map[string]any)
	if img == nil {
		return "", errors.New("chart values have no image")
	}
	if digest != "" {
		img["digest"] = digest
	}
	if repository != "" {
		img["repository"] = repository
	}
	img["tag"] = version
	// values.yaml is what `helm show values` and `helm install` read: write
	// the new defaults into it, keeping its comments.
	for _, f := range ch.Raw {
		if f.Name == "values.yaml" {
			f.Data = []byte(setValuesYAML(string(f.Data), repository, version, digest))
		}
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return "", err
	}
	return chartutil.Save(ch, out)
}

// setValuesYAML rewrites the image lines of values.yaml.
func setValuesYAML(s, repository, tag, digest string) string {
	lines := strings.Split(s, "\n")
	inImage := false
	for i, l := range lines {
		switch {
		case l == "image:":
			inImage = true
		case inImage && !strings.HasPrefix(l, " ") && l != "":
			inImage = false
		case inImage && strings.HasPrefix(l, "  repository: ") && repository != "":
			lines[i] = "  repository: " + repository
		case inImage && strings.HasPrefix(l, "  tag: "):
			lines[i] = fmt.Sprintf("  tag: %q", tag)
		case inImage && strings.HasPrefix(l, "  digest: ") && digest != "":
			lines[i] = fmt.Sprintf("  digest: %q", digest)
		}
	}
	return strings.Join(lines, "\n")
}
