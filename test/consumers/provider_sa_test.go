package consumers

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	kubeletconfigv1 "k8s.io/kubelet/config/v1"
	"k8s.io/kubernetes/pkg/credentialprovider/plugin"
	"sigs.k8s.io/yaml"

	"github.com/nodecreds/nodecreds/internal/pullsecret"
	"github.com/nodecreds/nodecreds/internal/testsupport"
)

// shippedProviderConfig is deploy/credential-provider's
// CredentialProviderConfig, as the docs tell an admin to copy it.
var shippedProviderConfig = filepath.Join("..", "..", "deploy", "credential-provider", "nodecreds-credential-provider.yaml")

// TestKubeletAcceptsTheServiceAccountEntry: the shipped
// CredentialProviderConfig (both entries) is read and validated by the
// kubelet's own code (v1.37, the feature gates at their defaults) and
// refused only for the missing binaries; its nodecreds-sa entry is the
// contract's — the API server's default audience, answers cached per
// ServiceAccount for 10 s, the opt-in annotation required, the kubelet's
// kubeconfig for server and CA. The same file with the entry's
// tokenAttributes broken is refused by the same call, so the call does
// validate what it is given.
func TestKubeletAcceptsTheServiceAccountEntry(t *testing.T) {
	raw := testsupport.ReadFile(t, shippedProviderConfig)
	var cfg kubeletconfigv1.CredentialProviderConfig
	if err := yaml.UnmarshalStrict(raw, &cfg); err != nil {
		t.Fatalf("%s is not a kubelet CredentialProviderConfig (v1, strict): %v", shippedProviderConfig, err)
	}
	names := []string{}
	var sa *kubeletconfigv1.CredentialProvider
	for i, p := range cfg.Providers {
		names = append(names, p.Name)
		if p.Name == "nodecreds-sa" {
			sa = &cfg.Providers[i]
		}
	}
	if !slices.Equal(names, []string{"nodecreds", "nodecreds-sa"}) {
		t.Fatalf("providers %v, want the node-wide nodecreds first and nodecreds-sa", names)
	}
	ta := sa.TokenAttributes
	switch {
	case sa.APIVersion != "credentialprovider.kubelet.k8s.io/v1":
		t.Errorf("nodecreds-sa apiVersion %q", sa.APIVersion)
	case sa.DefaultCacheDuration == nil || sa.DefaultCacheDuration.Duration != 10*time.Second:
		t.Errorf("nodecreds-sa defaultCacheDuration %v, want 10s", sa.DefaultCacheDuration)
	case !slices.Equal(sa.Args, []string{"credential-provider", "--service-account", "--kubelet-kubeconfig=/etc/kubernetes/kubelet.conf"}):
		t.Errorf("nodecreds-sa args %q", sa.Args)
	case len(sa.MatchImages) == 0:
		t.Errorf("nodecreds-sa has no matchImages")
	case ta == nil:
		t.Fatalf("nodecreds-sa has no tokenAttributes")
	case ta.ServiceAccountTokenAudience != "https://kubernetes.default.svc.cluster.local":
		t.Errorf("audience %q, want the API server's default (kubeadm's shown)", ta.ServiceAccountTokenAudience)
	case ta.CacheType != kubeletconfigv1.ServiceAccountServiceAccountTokenCacheType:
		t.Errorf("cacheType %q, want ServiceAccount", ta.CacheType)
	case ta.RequireServiceAccount == nil || !*ta.RequireServiceAccount:
		t.Errorf("requireServiceAccount %v, want true", ta.RequireServiceAccount)
	case !slices.Equal(ta.RequiredServiceAccountAnnotationKeys, []string{pullsecret.Annotation}):
		t.Errorf("requiredServiceAccountAnnotationKeys %v, want [%s]", ta.RequiredServiceAccountAnnotationKeys, pullsecret.Annotation)
	case len(ta.OptionalServiceAccountAnnotationKeys) != 0:
		t.Errorf("optionalServiceAccountAnnotationKeys %v, want none", ta.OptionalServiceAccountAnnotationKeys)
	}

	// The kubelet's loader: reads the file (its own decoder and
	// conversion), validates every entry, then looks for each binary. An
	// empty binary folder stops it there, before anything is registered
	// (registration is process-wide, and the binaries are other tests').
	register := func(doc []byte) error {
		t.Helper()
		path := filepath.Join(t.TempDir(), "config.yaml")
		testsupport.WriteFile(t, path, string(doc), 0o600)
		return plugin.RegisterCredentialProviderPlugins(path, t.TempDir(), nil, nil)
	}
	if err := register(raw); err == nil || strings.Contains(err.Error(), "validate") || !strings.Contains(err.Error(), "plugin binary executable") {
		t.Fatalf("the kubelet's loader on the shipped file: %v; want only the missing binary refused", err)
	}
	for _, tc := range []struct{ name, from, to string }{
		{"no requireServiceAccount", "      requireServiceAccount: true\n", ""},
		{"requireServiceAccount false with a required annotation", "requireServiceAccount: true", "requireServiceAccount: false"},
		{"no cacheType", "      cacheType: ServiceAccount\n", ""},
		{"an empty audience", `serviceAccountTokenAudience: "https://kubernetes.default.svc.cluster.local"`, `serviceAccountTokenAudience: ""`},
		{"a bad annotation key", `["nodecreds.io/pull-secret"]`, `["nodecreds.io/pull secret"]`},
	} {
		broken := strings.Replace(string(raw), tc.from, tc.to, 1)
		if broken == string(raw) {
			t.Fatalf("%s: %q is not in the shipped file", tc.name, tc.from)
		}
		if err := register([]byte(broken)); err == nil || !strings.Contains(err.Error(), "failed to validate credential provider config") {
			t.Errorf("%s: the kubelet's loader says %v; want a validation error", tc.name, err)
		}
	}
}
