package alerts

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"text/template"

	"github.com/Masterminds/sprig/v3"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/nodecreds/nodecreds/test/cluster"
)

// recipe is the ExternalSecret of one generator in docs/cloud-tokens.md:
// the Secret it writes is rendered here from the page itself, so the
// end-to-end test follows what the page tells users to apply.
type recipe struct{ es *unstructured.Unstructured }

// docRecipe is the ExternalSecret of docs/cloud-tokens.md whose generator
// is of kind generator.
func docRecipe(t *testing.T, generator string) recipe {
	t.Helper()
	path := filepath.Join(repoRoot(), "docs", "cloud-tokens.md")
	page, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var found []*unstructured.Unstructured
	for i, m := range regexp.MustCompile("(?s)```yaml\n(.*?)```").FindAllSubmatch(page, -1) {
		objs, err := cluster.ParseManifest(m[1], path)
		if err != nil {
			t.Fatalf("%s, YAML block %d: %v", path, i+1, err)
		}
		for _, o := range objs {
			if o.GetKind() != "ExternalSecret" {
				continue
			}
			from, _, _ := unstructured.NestedSlice(o.Object, "spec", "dataFrom")
			if len(from) != 1 {
				continue
			}
			kind, _, _ := unstructured.NestedString(from[0].(map[string]any), "sourceRef", "generatorRef", "kind")
			if kind == generator {
				found = append(found, o)
			}
		}
	}
	if len(found) != 1 {
		t.Fatalf("%s has %d ExternalSecrets templating a %s, want 1", path, len(found), generator)
	}
	return recipe{es: found[0]}
}

// secret is the Secret external-secrets writes from the recipe when its
// generator outputs gen: target.template's data, annotations and labels
// rendered as its template engine v2 does (every value a string,
// missingkey=error; sprig from its fork without env and expandenv, the
// functions test/consumers checks the recipes against), type and name as
// the target says.
func (r recipe) secret(gen map[string]string) (*corev1.Secret, error) {
	spec := r.es.Object
	name, _, _ := unstructured.NestedString(spec, "spec", "target", "name")
	typ, _, _ := unstructured.NestedString(spec, "spec", "target", "template", "type")
	sec := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: r.es.GetNamespace()},
		Type:       corev1.SecretType(typ),
		Data:       map[string][]byte{},
	}
	funcs := sprig.TxtFuncMap()
	delete(funcs, "env")
	delete(funcs, "expandenv")
	for _, f := range []struct {
		path []string
		into func(k, v string)
	}{
		{[]string{"data"}, func(k, v string) { sec.Data[k] = []byte(v) }},
		{[]string{"metadata", "annotations"}, func(k, v string) { metav1.SetMetaDataAnnotation(&sec.ObjectMeta, k, v) }},
		{[]string{"metadata", "labels"}, func(k, v string) { metav1.SetMetaDataLabel(&sec.ObjectMeta, k, v) }},
	} {
		tpl, _, err := unstructured.NestedStringMap(spec, append([]string{"spec", "target", "template"}, f.path...)...)
		if err != nil {
			return nil, fmt.Errorf("target.template.%s: %w", strings.Join(f.path, "."), err)
		}
		for k, text := range tpl {
			parsed, err := template.New(k).Option("missingkey=error").Funcs(funcs).Parse(text)
			if err != nil {
				return nil, fmt.Errorf("target.template.%s[%s]: %w", strings.Join(f.path, "."), k, err)
			}
			var b strings.Builder
			if err := parsed.Execute(&b, gen); err != nil {
				return nil, fmt.Errorf("rendering target.template.%s[%s]: %w", strings.Join(f.path, "."), k, err)
			}
			f.into(k, b.String())
		}
	}
	return sec, nil
}
