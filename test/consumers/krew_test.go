package consumers

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/nodecreds/nodecreds/internal/testsupport"
	"github.com/nodecreds/nodecreds/test/cluster"
)

// krewValidator is krew's own manifest validator. Its code is under
// internal/, so it is run, not imported: `go run pkg@version` outside any
// module, so nothing lands in a go.mod. -skip-install, since its install
// step downloads every uri.
const krewValidator = "sigs.k8s.io/krew/cmd/validate-krew-manifest@v0.4.3"

// krewManifest is the part of krew's Plugin type the test reads.
type krewManifest struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name string `json:"name"`
	} `json:"metadata"`
	Spec struct {
		Version   string `json:"version"`
		Platforms []struct {
			Selector struct {
				MatchLabels map[string]string `json:"matchLabels"`
			} `json:"selector"`
			URI    string `json:"uri"`
			Sha256 string `json:"sha256"`
			Bin    string `json:"bin"`
			Files  []struct {
				From string `json:"from"`
				To   string `json:"to"`
			} `json:"files"`
		} `json:"platforms"`
	} `json:"spec"`
}

// checkKrewPlugin: the release's krew manifest passes krew's validator;
// each platform's archive is at RELEASE_URL, has the sha256 the manifest
// says, and holds the release's binary and the LICENSE; installed as krew
// installs it (files copied into the store, kubectl-nodecreds linked to
// bin on PATH), the host's archive runs as `kubectl nodecreds` through a
// real kubectl, built from the control plane's Kubernetes release, against
// a real API server.
func checkKrewPlugin(t *testing.T, rel, version, releaseURL string) {
	t.Helper()
	manifestPath, err := filepath.Abs(filepath.Join(rel, "plugins", "nodecreds.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	validate := exec.Command(goTool(t), "run", krewValidator, "-manifest", manifestPath, "-skip-install")
	validate.Dir = t.TempDir()
	validate.Env = append(os.Environ(), "GOFLAGS=", "GOWORK=off")
	if out, err := validate.CombinedOutput(); err != nil {
		t.Fatalf("krew's validator refuses %s: %v\n%s", manifestPath, err, out)
	}

	var m krewManifest
	if err := yaml.Unmarshal(testsupport.ReadFile(t, manifestPath), &m); err != nil {
		t.Fatalf("%s: %v", manifestPath, err)
	}
	if m.APIVersion != "krew.googlecontainertools.github.com/v1alpha2" || m.Kind != "Plugin" || m.Metadata.Name != "nodecreds" || m.Spec.Version != "v"+version {
		t.Errorf("manifest header: %+v", m)
	}
	license := string(testsupport.ReadFile(t, filepath.Join(repoRoot, "LICENSE")))
	var arches []string
	var hostArchive, hostBin string
	for _, p := range m.Spec.Platforms {
		arch := p.Selector.MatchLabels["arch"]
		arches = append(arches, p.Selector.MatchLabels["os"]+"/"+arch)
		name := "nodecreds-" + version + "-linux-" + arch + ".tar.gz"
		if p.URI != releaseURL+"/"+name {
			t.Errorf("linux/%s: uri %s, want %s/%s", arch, p.URI, releaseURL, name)
		}
		archive := filepath.Join(rel, path.Base(p.URI))
		data := testsupport.ReadFile(t, archive)
		if sum := sha256.Sum256(data); hex.EncodeToString(sum[:]) != p.Sha256 {
			t.Errorf("%s: sha256 %x, the manifest says %s", name, sum, p.Sha256)
		}
		files := untar(t, archive)
		if files["LICENSE"] != license {
			t.Errorf("%s holds no LICENSE equal to the repository's (files: %v)", name, keys(files))
		}
		if files[p.Bin] != string(testsupport.ReadFile(t, filepath.Join(rel, "nodecreds-linux-"+arch))) {
			t.Errorf("%s: bin %q is not the release's nodecreds-linux-%s (files: %v)", name, p.Bin, arch, keys(files))
		}
		for _, op := range p.Files {
			if _, ok := files[op.From]; !ok || op.To != "." {
				t.Errorf("%s: files entry %+v: not a file of the archive put at the top", name, op)
			}
		}
		if arch == runtime.GOARCH {
			hostArchive, hostBin = archive, p.Bin
		}
	}
	slices.Sort(arches)
	if !slices.Equal(arches, []string{"linux/amd64", "linux/arm64"}) {
		t.Errorf("platforms %v, want linux/amd64 and linux/arm64", arches)
	}
	if hostArchive == "" {
		t.Fatalf("no archive for linux/%s to run", runtime.GOARCH)
	}

	// As krew installs it: the archive's files in the store, the link
	// kubectl-nodecreds to its bin in a folder on PATH.
	krewRoot := t.TempDir()
	store := filepath.Join(krewRoot, "store", "nodecreds", "v"+version)
	unpack(t, hostArchive, store)
	binDir := filepath.Join(krewRoot, "bin")
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(store, hostBin), filepath.Join(binDir, "kubectl-nodecreds")); err != nil {
		t.Fatal(err)
	}
	runPluginThroughKubectl(t, binDir)
}

// runPluginThroughKubectl runs `kubectl nodecreds` with only binDir on
// PATH (never the machine's kubectl or another plugin): its help names it
// `kubectl nodecreds`; status and check --service-account read the API
// server with kubectl's --kubeconfig, --context and -n/--namespace, whose
// default is nodecreds' namespace for status, none for check, never the
// context's.
func runPluginThroughKubectl(t *testing.T, binDir string) {
	t.Helper()
	kubectl := filepath.Join(cluster.BinDir(), "kubectl")
	if _, err := os.Stat(kubectl); err != nil {
		t.Fatalf("%s: %v (make kubectl builds it from the control plane's Kubernetes release)", kubectl, err)
	}
	home := t.TempDir()
	run := func(args ...string) (string, string, error) {
		cmd := exec.Command(kubectl, args...)
		cmd.Env = []string{"PATH=" + binDir, "HOME=" + home}
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		return stdout.String(), stderr.String(), err
	}

	help, stderr, err := run("nodecreds", "--help")
	if err != nil {
		t.Fatalf("kubectl nodecreds --help: %v\n%s", err, stderr)
	}
	if !strings.Contains(help, "\n  kubectl nodecreds [command]\n") || strings.Contains(help, "\n  nodecreds ") {
		t.Errorf("kubectl nodecreds --help does not name itself kubectl nodecreds:\n%s", help)
	}

	ctx := t.Context()
	c := startCluster(t, "nodecreds-krew-")
	secret := func(ns, registry string) {
		if _, err := c.Admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		cfg := `{"auths":{"` + registry + `":{"auth":"` + testsupport.B64("robot:pw") + `"}}}`
		if _, err := c.Admin.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: "registry-credentials"},
			Type:       corev1.SecretTypeDockerConfigJson,
			Data:       map[string][]byte{corev1.DockerConfigJsonKey: []byte(cfg)},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	secret("nodecreds", "nodecreds.example.test")
	secret("platform", "platform.example.test")
	if _, err := c.Admin.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-k",
		Labels: map[string]string{"kubernetes.io/os": "linux"}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The current context reaches nothing; "good" reaches the API server,
	// with the namespace platform, which nodecreds must not take.
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	testsupport.WriteFile(t, kubeconfig, `apiVersion: v1
kind: Config
clusters:
- name: local
  cluster: {server: "`+c.URL+`", certificate-authority: "`+c.CAFile+`"}
- name: nowhere
  cluster: {server: "https://127.0.0.1:1", certificate-authority: "`+c.CAFile+`"}
users:
- name: admin
  user: {token: "`+c.AdminToken+`"}
contexts:
- name: good
  context: {cluster: local, user: admin, namespace: platform}
- name: broken
  context: {cluster: nowhere, user: admin}
current-context: broken
`, 0o600)

	table, stderr, err := run("nodecreds", "status", "--kubeconfig", kubeconfig, "--context", "good", "--namespace", "platform")
	if err != nil {
		t.Fatalf("kubectl nodecreds status: %v\n%s", err, stderr)
	}
	if !strings.Contains(table, "registry-credentials") || !strings.Contains(table, "node-k") {
		t.Errorf("kubectl nodecreds status does not show the Secret and the node:\n%s", table)
	}

	// status -o json, with the namespace it is expected to read.
	revision := func(ns string, args ...string) string {
		t.Helper()
		out, stderr, err := run(append([]string{"nodecreds", "status", "--kubeconfig", kubeconfig, "--context", "good", "-o", "json"}, args...)...)
		if err != nil {
			t.Fatalf("kubectl nodecreds status %v: %v\n%s", args, err, stderr)
		}
		var st struct {
			Revision string   `json:"revision"`
			Sources  []string `json:"sources"`
		}
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			t.Fatalf("kubectl nodecreds status %v -o json: %v\n%s", args, err, out)
		}
		if st.Revision == "" || !slices.Equal(st.Sources, []string{ns + "/registry-credentials"}) {
			t.Errorf("kubectl nodecreds status %v: %+v, want the Secret of %s", args, st, ns)
		}
		return st.Revision
	}
	// The context's namespace is platform; without --namespace, status
	// reads nodecreds'.
	inPlatform, byDefault := revision("platform", "-n", "platform"), revision("nodecreds")
	if inPlatform == byDefault {
		t.Errorf("-n platform and the default namespace give the same revision %s", byDefault)
	}
	if got := revision("nodecreds", "--namespace", "nodecreds"); got != byDefault {
		t.Errorf("without --namespace, revision %s; in nodecreds %s", byDefault, got)
	}

	// check --service-account through the API, with kubectl's flags: a
	// ServiceAccount of platform, its annotation naming the Secret, a Role
	// letting it get that Secret.
	if _, err := c.Admin.CoreV1().ServiceAccounts("platform").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "puller",
		Annotations: map[string]string{"nodecreds.io/pull-secret": "registry-credentials"}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Admin.RbacV1().Roles("platform").Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "pull"},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"get"}, ResourceNames: []string{"registry-credentials"}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Admin.RbacV1().RoleBindings("platform").Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "pull"},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "pull"},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: "puller", Namespace: "platform"}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	checkArgs := []string{"nodecreds", "check", "--kubeconfig", kubeconfig, "--context", "good", "--service-account", "puller", "--image", "platform.example.test/app:v1"}
	report, stderr, err := run(append(checkArgs, "-n", "platform")...)
	if err != nil || !strings.Contains(report, "Answered") {
		t.Errorf("kubectl nodecreds check -n platform --service-account puller: %v\n%s%s", err, report, stderr)
	}
	// The context's namespace is not the ServiceAccount's: a bare name
	// without -n is bad usage.
	if _, stderr, err := run(checkArgs...); !isExit(err, 2) || !strings.Contains(stderr, "NAME with --namespace") {
		t.Errorf("kubectl nodecreds check --service-account puller without -n: %v, want exit 2 asking for --namespace\n%s", err, stderr)
	}

	// Without --context, the kubeconfig's current context (nowhere) is used.
	if _, stderr, err := run("nodecreds", "status", "--kubeconfig", kubeconfig, "-n", "platform"); !isExit(err, 1) || !strings.Contains(stderr, "127.0.0.1:1") {
		t.Errorf("kubectl nodecreds status through the broken current context: %v, want exit 1 naming its server\n%s", err, stderr)
	}
}

// isExit says whether err is a command's exit with code.
func isExit(err error, code int) bool {
	var ee *exec.ExitError
	return errors.As(err, &ee) && ee.ExitCode() == code
}

// goTool is the go command (the tests run under it).
func goTool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("go not found on PATH: krew's validator is run with it: %v", err)
	}
	return p
}

// unpack writes a .tgz's regular files into dir, with their modes.
func unpack(t *testing.T, archive, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("tar", "-xzf", archive, "-C", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("unpacking %s: %v\n%s", archive, err, out)
	}
}

func keys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
