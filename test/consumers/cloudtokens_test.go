package consumers

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"text/template"
	"time"

	"github.com/Masterminds/sprig/v3"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"

	"github.com/nodecreds/nodecreds/internal/source"
	"github.com/nodecreds/nodecreds/test/cluster"
)

// esoModule is the external-secrets release whose CRDs the recipes are
// checked against: the newest the module proxy serves whole here. v0.17.0
// changed nothing in these CRDs but v1beta1's served: true→false, which
// esoCRDs applies, so the API server answers as v0.17 and later do.
const esoModule = "github.com/external-secrets/external-secrets@v0.16.2"

const expiresAt = "nodecreds.io/expires-at"

// generatorOutput is what each generator hands the template: the keys of
// the map[string][]byte its Generate returns (external-secrets v0.16.2
// pkg/generator/<name>/<name>.go), with made-up values of the real shape.
// expiry names the key holding the expiry in Unix seconds, if any.
var generatorOutput = map[string]struct {
	data   map[string]string
	expiry string
}{
	"ECRAuthorizationToken": {data: map[string]string{
		"username":       "AWS",
		"password":       "ecr-token-not-a-real-one",
		"proxy_endpoint": "https://123456789012.dkr.ecr.eu-west-1.amazonaws.com",
		"expires_at":     "1767225600",
	}, expiry: "expires_at"},
	"GCRAccessToken": {data: map[string]string{
		"username": "oauth2accesstoken",
		"password": "ya29.gcr-token-not-a-real-one",
		"expiry":   "1767229200",
	}, expiry: "expiry"},
	"ACRAccessToken": {data: map[string]string{
		"username": "00000000-0000-0000-0000-000000000000",
		"password": "acr-refresh-token-not-a-real-one",
	}},
	"QuayAccessToken": {data: map[string]string{
		"registry": "quay.io",
		"auth":     base64.StdEncoding.EncodeToString([]byte("myorg+nodecreds:quay-token-not-a-real-one")),
		"expiry":   "1767232800",
	}, expiry: "expiry"},
}

// docObjects reads every object of the YAML blocks of
// docs/cloud-tokens.md.
func docObjects(t *testing.T) []*unstructured.Unstructured {
	t.Helper()
	path := filepath.Join(cluster.RepoRoot(), "docs", "cloud-tokens.md")
	page, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var objs []*unstructured.Unstructured
	for i, m := range regexp.MustCompile("(?s)```yaml\n(.*?)```").FindAllSubmatch(page, -1) {
		block, err := cluster.ParseManifest(m[1], path)
		if err != nil {
			t.Fatalf("YAML block %d: %v", i+1, err)
		}
		for _, o := range block {
			if o.GetAPIVersion() == "" || o.GetKind() == "" {
				t.Fatalf("YAML block %d holds a document that is no Kubernetes object (no apiVersion or kind)", i+1)
			}
		}
		objs = append(objs, block...)
	}
	if len(objs) == 0 {
		t.Fatalf("%s has no YAML objects", path)
	}
	return objs
}

// externalSecrets returns the recipes: the page's ExternalSecrets, each
// with the kind of its generator.
func externalSecrets(t *testing.T, objs []*unstructured.Unstructured) map[string]*unstructured.Unstructured {
	t.Helper()
	byGenerator := map[string]*unstructured.Unstructured{}
	for _, o := range objs {
		if o.GetKind() != "ExternalSecret" {
			continue
		}
		from, _, _ := unstructured.NestedSlice(o.Object, "spec", "dataFrom")
		if len(from) != 1 {
			t.Fatalf("ExternalSecret %s: want one dataFrom (a generator), got %d", o.GetName(), len(from))
		}
		kind, _, _ := unstructured.NestedString(from[0].(map[string]any), "sourceRef", "generatorRef", "kind")
		if _, dup := byGenerator[kind]; dup {
			t.Fatalf("two recipes for %s", kind)
		}
		byGenerator[kind] = o
	}
	return byGenerator
}

// TestCloudTokenRecipesDryRun: every object of docs/cloud-tokens.md is
// accepted by a server-side dry run on a real API server with
// external-secrets' CRDs installed as v0.17 and later serve them (v1beta1
// no longer served), every ExternalSecret is written as
// external-secrets.io/v1, and the same ExternalSecret as v1beta1 is
// refused — so the recipes keep working after that upgrade.
func TestCloudTokenRecipesDryRun(t *testing.T) {
	ctx := t.Context()
	objs := docObjects(t)
	for _, o := range objs {
		if strings.HasPrefix(o.GetAPIVersion(), "external-secrets.io/") && o.GetAPIVersion() != "external-secrets.io/v1" {
			t.Errorf("%s %s is written as %s: write external-secrets.io/v1 (v1beta1 is not served from v0.17)", o.GetKind(), o.GetName(), o.GetAPIVersion())
		}
	}
	recipes := externalSecrets(t, objs)
	if len(recipes) == 0 {
		t.Fatal("docs/cloud-tokens.md has no ExternalSecret")
	}
	crds := esoCRDs(t)

	c := startCluster(t, "nodecreds-eso-")
	dyn, err := dynamic.NewForConfig(c.RESTConfig)
	if err != nil {
		t.Fatal(err)
	}
	crdRes := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	for _, crd := range crds {
		if _, err := dyn.Resource(crdRes).Create(ctx, crd, metav1.CreateOptions{}); err != nil {
			t.Fatalf("creating CRD %s: %v", crd.GetName(), err)
		}
	}
	for _, crd := range crds {
		err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
			got, err := dyn.Resource(crdRes).Get(ctx, crd.GetName(), metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			conds, _, _ := unstructured.NestedSlice(got.Object, "status", "conditions")
			for _, cond := range conds {
				m := cond.(map[string]any)
				if m["type"] == "Established" && m["status"] == "True" {
					return true, nil
				}
			}
			return false, nil
		})
		if err != nil {
			t.Fatalf("CRD %s not established: %v", crd.GetName(), err)
		}
	}
	ns := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": "nodecreds"},
	}}
	if _, err := dyn.Resource(schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}).Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	dc, err := discovery.NewDiscoveryClientForConfig(c.RESTConfig)
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))
	// Strict: a misspelt or misplaced field is refused rather than pruned.
	dryRun := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}, FieldManager: "nodecreds-test", FieldValidation: metav1.FieldValidationStrict}
	for _, o := range objs {
		gvk := o.GroupVersionKind()
		var res schema.GroupVersionResource
		// Discovery may lag the CRDs' Established condition by a moment.
		err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
			m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
			if err != nil {
				mapper.Reset()
				return false, nil
			}
			res = m.Resource
			return true, nil
		})
		if err != nil {
			t.Fatalf("%s: the API server serves no such kind: %v", gvk, err)
		}
		if _, err := dyn.Resource(res).Namespace(o.GetNamespace()).Create(ctx, o, dryRun); err != nil {
			t.Errorf("dry run of %s %s/%s: %v", o.GetKind(), o.GetNamespace(), o.GetName(), err)
		}
	}

	// The Secrets external-secrets would write from the recipes: the API
	// server's own checks of a kubernetes.io/dockerconfigjson Secret pass.
	secrets := schema.GroupVersionResource{Version: "v1", Resource: "secrets"}
	for kind, es := range recipes {
		gen, ok := generatorOutput[kind]
		if !ok {
			t.Errorf("no generator output known for %s: add its keys to generatorOutput", kind)
			continue
		}
		raw, err := runtime.DefaultUnstructuredConverter.ToUnstructured(renderRecipe(t, es, gen.data))
		if err != nil {
			t.Fatal(err)
		}
		sec := &unstructured.Unstructured{Object: raw}
		if _, err := dyn.Resource(secrets).Namespace(sec.GetNamespace()).Create(ctx, sec, dryRun); err != nil {
			t.Errorf("dry run of the Secret the %s recipe renders: %v", kind, err)
		}
	}

	// The same recipe as v1beta1, which external-secrets served until
	// v0.17: refused, so a page written with it would fail here.
	for kind, es := range recipes {
		old := es.DeepCopy()
		old.SetAPIVersion("external-secrets.io/v1beta1")
		v1beta1 := schema.GroupVersionResource{Group: "external-secrets.io", Version: "v1beta1", Resource: "externalsecrets"}
		_, err := dyn.Resource(v1beta1).Namespace(old.GetNamespace()).Create(ctx, old, dryRun)
		if !apierrors.IsNotFound(err) {
			t.Errorf("the %s recipe as external-secrets.io/v1beta1: want it refused as not served (404), got %v", kind, err)
		}
	}
}

// esoCRDs returns external-secrets' CRDs from its Go module (downloaded
// into the module cache once), with v1beta1 of every external-secrets.io
// kind set to served: false. That is all v0.17.0 changed in them ("Stops
// serving v1beta1 apis", external-secrets#4758) besides marking it
// deprecated, so the API server then refuses v1beta1 objects as v0.17 and
// later do, while v0.16.2 is the newest release the module proxy serves
// whole here (v1.x is fetched only partly).
func esoCRDs(t *testing.T) []*unstructured.Unstructured {
	t.Helper()
	// Outside any module, so that nothing is added to a go.mod.
	cmd := exec.CommandContext(t.Context(), "go", "mod", "download", "-json", esoModule)
	cmd.Dir = t.TempDir()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var mod struct{ Dir, Error string }
	if jerr := json.Unmarshal(out, &mod); err != nil || jerr != nil || mod.Error != "" || mod.Dir == "" {
		t.Fatalf("downloading %s from the Go module proxy for its CRDs (go mod download; needs the proxy or a module cache holding it): %v %s %s", esoModule, err, mod.Error, stderr.String())
	}
	files, err := filepath.Glob(filepath.Join(mod.Dir, "config", "crds", "bases", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var crds []*unstructured.Unstructured
	unserved := 0
	for _, f := range files {
		objs, err := cluster.ReadManifest(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range objs {
			if o.GetKind() != "CustomResourceDefinition" {
				continue // kustomization.yaml
			}
			group, _, _ := unstructured.NestedString(o.Object, "spec", "group")
			versions, _, _ := unstructured.NestedSlice(o.Object, "spec", "versions")
			for _, v := range versions {
				if m := v.(map[string]any); group == "external-secrets.io" && m["name"] == "v1beta1" {
					m["served"] = false
					unserved++
				}
			}
			if err := unstructured.SetNestedSlice(o.Object, versions, "spec", "versions"); err != nil {
				t.Fatal(err)
			}
			crds = append(crds, o)
		}
	}
	names := make([]string, len(crds))
	for i, c := range crds {
		names[i] = c.GetName()
	}
	for _, want := range []string{"externalsecrets.external-secrets.io", "ecrauthorizationtokens.generators.external-secrets.io",
		"gcraccesstokens.generators.external-secrets.io", "acraccesstokens.generators.external-secrets.io", "quayaccesstokens.generators.external-secrets.io"} {
		if !slices.Contains(names, want) {
			t.Fatalf("%s has no CRD %s in config/crds/bases", esoModule, want)
		}
	}
	if unserved == 0 {
		t.Fatalf("%s: no external-secrets.io CRD has a v1beta1 version to stop serving; the premise of this test changed", esoModule)
	}
	return crds
}

// esoTemplateFuncs are the functions external-secrets' template engine v2
// offers that a recipe may use: sprig from its fork
// (github.com/external-secrets/sprig/v3, the replace in its go.mod and in
// ours) without env and expandenv (v0.16.2 pkg/template/v2/template.go
// init). Its own pkcs12, PEM, JWK and YAML helpers are left out: a recipe
// needs none, and one that used them would fail here. Importing its
// pkg/template/v2 instead would bring its whole go.mod (every cloud SDK)
// into this module's version selection. spf13/cast, behind int64, is
// v1.10.0 here (other modules need it) and v1.7.1 in its build: both parse
// a decimal string of Unix seconds alike, and give 0 for a non-number.
func esoTemplateFuncs() template.FuncMap {
	funcs := sprig.TxtFuncMap()
	delete(funcs, "env")
	delete(funcs, "expandenv")
	return funcs
}

// renderESO renders one template value as external-secrets does
// (pkg/template/v2/template.go execute): every generator value as a
// string, missingkey=error.
func renderESO(name, text string, data map[string]string) (string, error) {
	tpl, err := template.New(name).Option("missingkey=error").Funcs(esoTemplateFuncs()).Delims("{{", "}}").Parse(text)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	if err := tpl.Execute(&b, data); err != nil {
		return "", err
	}
	return b.String(), nil
}

// renderRecipe is the Secret external-secrets writes for the recipe es
// when its generator hands it gen: target.template's data and annotations
// rendered (its labels too, had a recipe any), type and name as the
// target says.
func renderRecipe(t *testing.T, es *unstructured.Unstructured, gen map[string]string) *corev1.Secret {
	t.Helper()
	name, _, _ := unstructured.NestedString(es.Object, "spec", "target", "name")
	typ, _, _ := unstructured.NestedString(es.Object, "spec", "target", "template", "type")
	sec := &corev1.Secret{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: es.GetNamespace()},
		Type:       corev1.SecretType(typ),
		Data:       map[string][]byte{},
	}
	render := func(field string, into func(k, v string)) {
		tpl, _, err := unstructured.NestedStringMap(es.Object, "spec", "target", "template", field)
		if field != "data" {
			tpl, _, err = unstructured.NestedStringMap(es.Object, "spec", "target", "template", "metadata", field)
		}
		if err != nil {
			t.Fatalf("template %s: %v", field, err)
		}
		for k, v := range tpl {
			out, err := renderESO(k, v, gen)
			if err != nil {
				t.Fatalf("rendering %s %s: %v", field, k, err)
			}
			into(k, out)
		}
	}
	render("data", func(k, v string) { sec.Data[k] = []byte(v) })
	render("annotations", func(k, v string) { metav1.SetMetaDataAnnotation(&sec.ObjectMeta, k, v) })
	render("labels", func(k, v string) { metav1.SetMetaDataLabel(&sec.ObjectMeta, k, v) })
	return sec
}

// TestCloudTokenTemplatesRender: each recipe's template, fed what its
// generator outputs and rendered with external-secrets' template functions
// and options, gives a kubernetes.io/dockerconfigjson Secret in nodecreds'
// namespace that nodecreds' own parser accepts, holding the generator's
// credentials, and an expires-at annotation in RFC 3339 that is the
// generator's expiry to the second — none where the generator gives no
// expiry (ACR).
func TestCloudTokenTemplatesRender(t *testing.T) {
	recipes := externalSecrets(t, docObjects(t))
	for kind := range generatorOutput {
		if recipes[kind] == nil {
			t.Errorf("docs/cloud-tokens.md has no recipe for %s", kind)
		}
	}
	for kind, es := range recipes {
		t.Run(kind, func(t *testing.T) {
			gen, ok := generatorOutput[kind]
			if !ok {
				t.Fatalf("no generator output known for %s: add its keys to generatorOutput", kind)
			}
			sec := renderRecipe(t, es, gen.data)
			if sec.Type != corev1.SecretTypeDockerConfigJson {
				t.Fatalf("target.template.type is %q, want %s", sec.Type, corev1.SecretTypeDockerConfigJson)
			}
			if sec.Name == "" || sec.Namespace != "nodecreds" {
				t.Errorf("the Secret is %s/%s: want a target name, in the namespace nodecreds reads (nodecreds)", sec.Namespace, sec.Name)
			}
			set, _, err := source.FromData(string(sec.Type), sec.Data)
			if err != nil {
				t.Fatalf("nodecreds refuses the rendered Secret: %v", err)
			}
			if len(set) == 0 {
				t.Fatal("the rendered Secret holds no registry")
			}
			wantUser, wantPass := gen.data["username"], gen.data["password"]
			if gen.data["auth"] != "" {
				raw, _ := base64.StdEncoding.DecodeString(gen.data["auth"])
				wantUser, wantPass, _ = strings.Cut(string(raw), ":")
			}
			for _, it := range set {
				// Compared, never printed: these stand for secrets.
				if it.Entry.Username != wantUser || it.Entry.Password != wantPass {
					t.Errorf("registry %s: the entry does not hold the generator's username and password", it.Key)
				}
			}
			if ep := gen.data["proxy_endpoint"]; ep != "" && !slices.Equal(set.Keys(), []string{strings.TrimPrefix(ep, "https://")}) {
				t.Errorf("registries %v, want the host of proxy_endpoint %s", set.Keys(), ep)
			}
			if reg := gen.data["registry"]; reg != "" && !slices.Equal(set.Keys(), []string{reg}) {
				t.Errorf("registries %v, want the generator's registry %s", set.Keys(), reg)
			}

			got, has := sec.Annotations[expiresAt]
			if gen.expiry == "" {
				if has {
					t.Fatalf("%s gives no expiry, yet the recipe writes %s", kind, expiresAt)
				}
				return
			}
			if !has {
				t.Fatalf("no %s annotation in target.template.metadata", expiresAt)
			}
			at, err := time.Parse(time.RFC3339, got)
			if err != nil {
				t.Fatalf("%s renders to %q, not RFC 3339: %v", expiresAt, got, err)
			}
			if want := gen.data[gen.expiry]; at.Unix() != mustEpoch(t, want) {
				t.Errorf("%s renders to %q, want the instant %s (Unix seconds from %s)", expiresAt, got, want, gen.expiry)
			}
		})
	}
}

func mustEpoch(t *testing.T, s string) int64 {
	t.Helper()
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		t.Fatalf("epoch %q: %v", s, err)
	}
	return n
}

// TestCloudTokenTemplatePitfalls: what docs/cloud-tokens.md says of the
// date functions holds with external-secrets' functions — the wrong
// spellings render without an error, to the wrong instant.
func TestCloudTokenTemplatePitfalls(t *testing.T) {
	ecr := generatorOutput["ECRAuthorizationToken"].data
	epoch := mustEpoch(t, ecr["expires_at"])
	const rfc3339 = `"2006-01-02T15:04:05Z07:00"`
	for _, tc := range []struct {
		name, text string
		want       string // "epoch", "now", "1970" or "error"
	}{
		{"the recipe", `{{ dateInZone ` + rfc3339 + ` (.expires_at | int64) "UTC" }}`, "epoch"},
		{"int64 then date, local zone", `{{ .expires_at | int64 | date ` + rfc3339 + ` }}`, "epoch"},
		{"a string into date gives now", `{{ .expires_at | date ` + rfc3339 + ` }}`, "now"},
		{"a pipe into dateInZone fills the zone", `{{ .expires_at | dateInZone ` + rfc3339 + ` "UTC" }}`, "now"},
		{"int64 of a non-number is 1970", `{{ dateInZone ` + rfc3339 + ` ("soon" | int64) "UTC" }}`, "1970"},
		{"a key another generator has", `{{ dateInZone ` + rfc3339 + ` (.expiry | int64) "UTC" }}`, "error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := time.Now().Truncate(time.Second)
			got, err := renderESO("annotation", tc.text, ecr)
			after := time.Now()
			if tc.want == "error" {
				if err == nil {
					t.Fatalf("rendered %q, want an error (missingkey=error)", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			at, err := time.Parse(time.RFC3339, got)
			if err != nil {
				t.Fatalf("%q is not RFC 3339: %v", got, err)
			}
			switch tc.want {
			case "epoch":
				if at.Unix() != epoch {
					t.Errorf("%q, want the instant %d", got, epoch)
				}
			case "now":
				if at.Before(before) || at.After(after) {
					t.Errorf("%q, want the time of rendering (the pitfall the page describes)", got)
				}
			case "1970":
				if at.Unix() != 0 {
					t.Errorf("%q, want 1970-01-01T00:00:00Z", got)
				}
			}
		})
	}
}
