package consumers

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	"github.com/nodecreds/nodecreds/internal/testsupport"
	"github.com/nodecreds/nodecreds/test/cluster"
)

// render builds a kustomization of the repository as `kubectl apply -k`
// does (kustomize's own library).
func render(t *testing.T, dir string) []*unstructured.Unstructured {
	t.Helper()
	return renderPath(t, filepath.Join(cluster.RepoRoot(), dir), dir)
}

// withCredentialProvider renders deploy/ with the credential-provider
// component both ways the docs give: a user's own overlay, and deploy/'s
// kustomization with its components lines uncommented. Both must agree.
func withCredentialProvider(t *testing.T) []*unstructured.Unstructured {
	t.Helper()
	dir := t.TempDir()
	deploy, err := filepath.Rel(dir, filepath.Join(cluster.RepoRoot(), "deploy"))
	if err != nil {
		t.Fatal(err)
	}
	testsupport.WriteFile(t, filepath.Join(dir, "kustomization.yaml"), "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"+
		"resources: ["+deploy+"]\ncomponents: ["+filepath.Join(deploy, "credential-provider")+"]\n", 0o600)
	overlay := renderPath(t, dir, "an overlay with deploy/credential-provider")

	copyDir := t.TempDir()
	if err := os.CopyFS(copyDir, os.DirFS(filepath.Join(cluster.RepoRoot(), "deploy"))); err != nil {
		t.Fatal(err)
	}
	k := string(testsupport.ReadFile(t, filepath.Join(copyDir, "kustomization.yaml")))
	uncommented := strings.Replace(k, "# components:\n#   - credential-provider", "components:\n  - credential-provider", 1)
	if uncommented == k {
		t.Fatal("deploy/kustomization.yaml has no commented-out credential-provider component")
	}
	testsupport.WriteFile(t, filepath.Join(copyDir, "kustomization.yaml"), uncommented, 0o600)
	inPlace := renderPath(t, copyDir, "deploy/ with the component uncommented")
	a, _ := json.Marshal(overlay)
	b, _ := json.Marshal(inPlace)
	if string(a) != string(b) {
		t.Error("the two documented ways of adding the component render different objects")
	}
	return overlay
}

func renderPath(t *testing.T, path, dir string) []*unstructured.Unstructured {
	t.Helper()
	res, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), path)
	if err != nil {
		t.Fatalf("kustomize %s: %v", dir, err)
	}
	y, err := res.AsYaml()
	if err != nil {
		t.Fatal(err)
	}
	objs, err := cluster.ParseManifest(y, dir)
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

func daemonSet(t *testing.T, objs []*unstructured.Unstructured) (args []string, mounts, hostPaths map[string]string) {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() != "DaemonSet" {
			continue
		}
		spec := o.Object["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)
		c := spec["containers"].([]any)[0].(map[string]any)
		for _, a := range c["args"].([]any) {
			args = append(args, a.(string))
		}
		mounts, hostPaths = map[string]string{}, map[string]string{}
		for _, m := range c["volumeMounts"].([]any) {
			m := m.(map[string]any)
			mounts[m["name"].(string)] = m["mountPath"].(string)
		}
		for _, v := range spec["volumes"].([]any) {
			v := v.(map[string]any)
			if hp, ok := v["hostPath"].(map[string]any); ok {
				hostPaths[v["name"].(string)] = hp["path"].(string)
			}
		}
		return args, mounts, hostPaths
	}
	t.Fatal("no DaemonSet")
	return nil, nil, nil
}

// TestKustomizations renders every kustomization the docs name and checks
// what each promises.
func TestKustomizations(t *testing.T) {
	base := render(t, "deploy")
	plain, _ := cluster.ReadManifest(filepath.Join(cluster.RepoRoot(), "deploy", "daemonset.yaml"))
	if len(base) != len(plain) {
		t.Errorf("deploy/ renders %d objects, daemonset.yaml has %d", len(base), len(plain))
	}
	args, _, _ := daemonSet(t, base)
	for _, a := range args {
		if strings.HasPrefix(a, "--install-credential-provider=") {
			t.Errorf("the default install installs the plugin: %v", args)
		}
	}

	// The opt-in plugin install: the flag, and the folder it names mounted
	// from the same host folder under --host-root.
	cp := withCredentialProvider(t)
	if len(cp) != len(base) {
		t.Errorf("deploy/credential-provider renders %d objects, deploy/ %d", len(cp), len(base))
	}
	args, mounts, hostPaths := daemonSet(t, cp)
	if !slices.Contains(args, "--install-credential-provider=/opt/nodecreds/bin") || !slices.Contains(args, "--host-root=/host") {
		t.Errorf("args %v", args)
	}
	if mounts["plugin-dir"] != "/host/opt/nodecreds/bin" || hostPaths["plugin-dir"] != "/opt/nodecreds/bin" {
		t.Errorf("plugin folder mount %q from host %q", mounts["plugin-dir"], hostPaths["plugin-dir"])
	}
	// Everything else is deploy/'s.
	_, baseMounts, baseHost := daemonSet(t, base)
	for k, v := range baseMounts {
		if mounts[k] != v || hostPaths[k] != baseHost[k] {
			t.Errorf("volume %s changed by the overlay", k)
		}
	}

	// The real-node test's documented overlay renders.
	node := render(t, "test/node-overlay")
	args, _, _ = daemonSet(t, node)
	if !slices.Contains(args, "--metrics-addr=127.0.0.1:9102") {
		t.Errorf("test/node-overlay args %v", args)
	}
}
