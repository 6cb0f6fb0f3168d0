package consumers

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"k8s.io/component-base/metrics/legacyregistry"
	"k8s.io/kubernetes/pkg/credentialprovider"
	"k8s.io/kubernetes/pkg/credentialprovider/plugin"
	"sigs.k8s.io/yaml"

	"github.com/nodecreds/nodecreds/internal/testsupport"
)

// pluginCounts reads the kubelet's own plugin metrics: how many times it
// executed the plugin and how many of those failed.
func pluginCounts(t *testing.T) (execs, errs uint64) {
	t.Helper()
	mfs, err := legacyregistry.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			if !hasLabel(m, "plugin_name", "nodecreds") {
				continue
			}
			switch mf.GetName() {
			case "kubelet_credential_provider_plugin_duration":
				execs += m.GetHistogram().GetSampleCount()
			case "kubelet_credential_provider_plugin_errors_total":
				errs += uint64(m.GetCounter().GetValue())
			}
		}
	}
	return execs, errs
}

func hasLabel(m *dto.Metric, name, value string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == name && l.GetValue() == value {
			return true
		}
	}
	return false
}

// TestKubeletExecsThePlugin runs the kubelet's own credential-provider code
// (config parsing and validation, matchImages, exec, response decoding, its
// cache) against the binary that `sync --install-credential-provider`
// installed, configured as the docs show.
func TestKubeletExecsThePlugin(t *testing.T) {
	root := t.TempDir()
	secretDir := filepath.Join(t.TempDir(), "secret")
	writeSecret := func(pass string) {
		t.Helper()
		testsupport.WriteFile(t, filepath.Join(secretDir, ".dockerconfigjson"),
			`{"auths":{"reg.test:5000":{"auth":"`+testsupport.B64("robot:"+pass)+`"},"a.corp.test/team":{"auth":"`+testsupport.B64("team:"+pass)+`"}}}`, 0o600)
	}
	sync := func() {
		t.Helper()
		out, err := exec.Command(binary, "sync", "--once", "--source", "dir", "--secret-dir", secretDir, "--host-root", root,
			"--metrics-addr", "0", "--install-credential-provider", "/opt/nodecreds/bin").CombinedOutput()
		if err != nil {
			t.Fatalf("sync: %v\n%s", err, out)
		}
		if strings.Contains(string(out), "plugin-canary") {
			t.Fatalf("sync printed a password:\n%s", out)
		}
	}
	writeSecret("plugin-canary-1")
	sync()
	binDir := filepath.Join(root, "opt/nodecreds/bin")
	if fi, err := os.Stat(filepath.Join(binDir, "nodecreds")); err != nil || fi.Mode().Perm() != 0o755 {
		t.Fatalf("installed plugin: %v %v", fi, err)
	}

	// The documented configuration, with this test's registries, the
	// node's root where this test keeps it (through the environment, as
	// NODECREDS_* works for every command) and a short cache so the
	// rotation below needs no long wait.
	cfg := providerConfig(t, []string{"reg.test:5000", "*.corp.test", "other.test"}, []string{"--cache-duration=2s"},
		map[string]string{"NODECREDS_HOST_ROOT": root})
	if err := plugin.RegisterCredentialProviderPlugins(cfg, binDir, nil, nil); err != nil {
		t.Fatalf("the kubelet refuses the documented configuration: %v", err)
	}
	lookup := func(image string) []credentialprovider.TrackedAuthConfig {
		creds, _ := plugin.NewExternalCredentialProviderDockerKeyring("", "", "", "").Lookup(image)
		return creds
	}
	expect := func(image, user, pass string) {
		t.Helper()
		creds := lookup(image)
		if user == "" {
			if len(creds) != 0 {
				t.Errorf("%s: %d credentials, want none", image, len(creds))
			}
			return
		}
		if len(creds) != 1 || creds[0].Username != user || creds[0].Password != pass {
			t.Errorf("%s: got %d credentials (user %q), want %s", image, len(creds), firstUser(creds), user)
		}
	}

	expect("reg.test:5000/app", "robot", "plugin-canary-1")
	expect("a.corp.test/team/app", "team", "plugin-canary-1")
	// matchImages covers it, the file does not: an empty answer, no error.
	expect("b.corp.test/team/app", "", "")
	expect("other.test/app", "", "")
	// Not in matchImages: the kubelet does not run the plugin at all.
	before, _ := pluginCounts(t)
	expect("reg.test/app", "", "")           // the port is part of the pattern
	expect("x.a.corp.test/team/app", "", "") // * is one label
	if after, _ := pluginCounts(t); after != before {
		t.Errorf("the kubelet ran the plugin for images outside matchImages (%d → %d runs)", before, after)
	}

	// Rotation: the files change at once; the kubelet keeps the plugin's
	// answer for the registry until the cache duration ends, then asks
	// again and gets the new password.
	writeSecret("plugin-canary-2")
	sync()
	runs, _ := pluginCounts(t)
	expect("reg.test:5000/another", "robot", "plugin-canary-1") // cached per registry
	if now, _ := pluginCounts(t); now != runs {
		t.Errorf("cacheKeyType Registry: the kubelet ran the plugin again for the same registry")
	}
	time.Sleep(2100 * time.Millisecond)
	expect("reg.test:5000/app", "robot", "plugin-canary-2")
	expect("a.corp.test/team/app", "team", "plugin-canary-2")

	execs, errs := pluginCounts(t)
	if execs < 6 || errs != 0 {
		t.Errorf("the kubelet ran the plugin %d times with %d errors, want ≥6 runs and no error", execs, errs)
	}
}

func firstUser(c []credentialprovider.TrackedAuthConfig) string {
	if len(c) == 0 {
		return ""
	}
	return c[0].Username
}

// TestMatchImagesSemantics pins down, with the kubelet's own matcher, every
// claim the docs make about matchImages patterns.
func TestMatchImagesSemantics(t *testing.T) {
	tests := []struct {
		pattern, image string
		match          bool
	}{
		{"registry.example.com", "registry.example.com/team/app", true},
		{"registry.example.com", "registry.example.com:5000/team/app", false},
		{"registry.example.com:5000", "registry.example.com:5000/team/app", true},
		{"registry.example.com:5000", "registry.example.com/team/app", false},
		{"registry.example.com:5000", "registry.example.com:5001/team/app", false},
		{"*.example.com", "registry.example.com/app", true},
		{"*.example.com", "example.com/app", false},
		{"*.example.com", "a.registry.example.com/app", false},
		{"*.*.example.com", "a.registry.example.com/app", true},
		{"127.0.0.1:5000", "127.0.0.1:5000/team/app", true},
		{"*.*.*.*:5000", "127.0.0.1:5000/team/app", true},
		{"registry.example.com/team", "registry.example.com/team/app", true},
		{"registry.example.com/team", "registry.example.com/other/app", false},
		{"docker.io", "docker.io/library/busybox", true},
		{"*.io", "docker.io/library/busybox", true},
		{"*", "localhost/app", true},
		{"*", "registry.example.com/app", false},
	}
	for _, tt := range tests {
		got, err := credentialprovider.URLsMatchStr(tt.pattern, tt.image)
		if err != nil || got != tt.match {
			t.Errorf("matchImages %q on %q: %v (%v), the docs say %v", tt.pattern, tt.image, got, err, tt.match)
		}
	}
}

// providerConfig writes deploy/credential-provider's CredentialProviderConfig
// with matchImages replaced and extra plugin arguments and environment, and
// returns its path.
func providerConfig(t *testing.T, matchImages, extraArgs []string, env map[string]string) string {
	t.Helper()
	doc := map[string]any{}
	b := testsupport.ReadFile(t, filepath.Join("..", "..", "deploy", "credential-provider", "nodecreds-credential-provider.yaml"))
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	p := doc["providers"].([]any)[0].(map[string]any)
	p["matchImages"] = matchImages
	p["args"] = append(p["args"].([]any), toAny(extraArgs)...)
	var vars []any
	for k, v := range env {
		vars = append(vars, map[string]any{"name": k, "value": v})
	}
	if len(vars) > 0 {
		p["env"] = vars
	}
	out, err := yaml.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "nodecreds.yaml")
	testsupport.WriteFile(t, path, string(out), 0o600)
	return path
}

func toAny(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}
