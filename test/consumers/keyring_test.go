package consumers

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/distribution/reference"
	"github.com/docker/cli/cli/config/configfile"
	"github.com/docker/cli/cli/config/credentials"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	credv1 "k8s.io/kubelet/pkg/apis/credentialprovider/v1"
	"k8s.io/kubernetes/pkg/credentialprovider"
	"k8s.io/kubernetes/pkg/credentialprovider/secrets"

	nccheck "github.com/nodecreds/nodecreds/internal/check"
	"github.com/nodecreds/nodecreds/internal/dockercfg"
	"github.com/nodecreds/nodecreds/internal/nodefile"
	"github.com/nodecreds/nodecreds/internal/provider"
	"github.com/nodecreds/nodecreds/internal/source"
	"github.com/nodecreds/nodecreds/internal/testsupport"
)

// The differential tests below take the kubelet's own keyring (v1.37) as
// the judge: for a Secret nodecreds accepts, the kubelet file nodecreds
// writes must make the kubelet try exactly the credentials the Secret
// would as an imagePullSecret, for any image; `nodecreds check` must name
// exactly those; the credential-provider plugin must hand over what its
// one-credential-per-key answer can carry (the first key in key order of
// those the kubelet files under one index key), also for the other images
// of the registry the kubelet keeps its answer for. The docker CLI's own
// configfile is the judge of the docker CLI's file. Where the kubelet's
// order is undefined (it ranges over a map for two spellings of one index
// key) credentials are compared as sets.

// gen turns bytes into choices, so the fuzzer can steer them; past the end
// every choice is the first.
type gen struct {
	b []byte
	i int
}

func (g *gen) pick(n int) int {
	if g.i >= len(g.b) {
		return 0
	}
	v := int(g.b[g.i]) % n
	g.i++
	return v
}

func (g *gen) of(choices []string) string { return choices[g.pick(len(choices))] }

var (
	keySchemes = []string{"", "https://", "http://"}
	keyHosts   = []string{"r.test", "R.TEST", "r.test:5000", "a.r.test", "*.r.test", "docker.io", "index.docker.io", "registry-1.docker.io",
		"localhost", "localhost:5000", "127.0.0.1:5000", "[::1]:5000", "Docker.io", "x.test", "*.b.test", "*.test"}
	keyPaths    = []string{"", "", "/", "/v1/", "/v2/", "/team", "/team/", "/v1/team", "/v2/team/sub", "/Team", "/v1", "/teamx"}
	imageHosts  = []string{"r.test", "R.TEST", "r.test:5000", "a.r.test", "b.a.r.test", "docker.io", "index.docker.io", "registry-1.docker.io", "localhost", "localhost:5000", "127.0.0.1:5000", "[::1]:5000", "x.test", "", "y.test", "x.b.test"}
	imagePaths  = []string{"team/app", "team/sub/app", "Team/app", "library/busybox", "teamx/app", "app", "v1/app", "v2/team/app"}
	imageSuffix = []string{"", ":v1", "@sha256:" + strings.Repeat("a", 64)}
)

// randomSecret is a dockerconfigjson of 1 to 5 random keys.
func randomSecret(g *gen) ([]byte, map[string]struct{ user, pass, email string }) {
	auths := map[string]any{}
	creds := map[string]struct{ user, pass, email string }{}
	for i := range 1 + g.pick(5) {
		key := g.of(keySchemes) + g.of(keyHosts) + g.of(keyPaths)
		user, pass := fmt.Sprintf("u%d", i), fmt.Sprintf("p%d:%s", i, g.of([]string{"x", "", "y/z"}))
		entry := map[string]string{}
		if g.pick(2) == 0 {
			entry["auth"] = testsupport.B64(user + ":" + pass)
		} else {
			entry["username"], entry["password"] = user, pass
		}
		email := ""
		if g.pick(3) == 0 {
			email = fmt.Sprintf("e%d@x.test", i)
			entry["email"] = email
		}
		auths[key] = entry
		creds[key] = struct{ user, pass, email string }{user, pass, email}
	}
	data, _ := json.Marshal(map[string]any{"auths": auths})
	return data, creds
}

// randomImages are image references of the kinds a Pod names, and the
// repository the kubelet looks each up by.
func randomImages(g *gen) (refs, repos []string) {
	for range 10 {
		host := g.of(imageHosts)
		ref := g.of(imagePaths) + g.of(imageSuffix)
		if host != "" {
			ref = host + "/" + ref
		}
		named, err := reference.ParseNormalizedNamed(ref)
		if err != nil {
			continue // not a reference a Pod can name (upper case path)
		}
		refs, repos = append(refs, ref), append(repos, named.Name())
	}
	return refs, repos
}

// asSet renders what a keyring returned as a sorted list.
func asSet(cs []credentialprovider.TrackedAuthConfig) []string {
	out := make([]string, 0, len(cs))
	for _, c := range cs {
		out = append(out, c.Username+"\x00"+c.Password)
	}
	slices.Sort(out)
	return out
}

// indexKey is credentialprovider's BasicDockerKeyring.Add key (unexported
// there): scheme dropped, a leading /v1/ or /v2/ dropped.
func indexKey(key string) string {
	if !strings.HasPrefix(key, "https://") && !strings.HasPrefix(key, "http://") {
		key = "https://" + key
	}
	u, err := url.Parse(key)
	if err != nil {
		return ""
	}
	p := u.Path
	if strings.HasPrefix(p, "/v2/") || strings.HasPrefix(p, "/v1/") {
		p = p[3:]
	}
	if p != "" && p != "/" {
		return u.Host + p
	}
	return u.Host
}

type differStats struct{ accepted, refused, lookups, found int }

// differ runs one random Secret and its images through nodecreds and the
// judges.
func differ(t *testing.T, g *gen, st *differStats) {
	data, creds := randomSecret(g)
	refs, repos := randomImages(g)
	set, _, err := source.FromData("kubernetes.io/dockerconfigjson", map[string][]byte{dockercfg.KeyConfigJSON: data})
	if err != nil {
		st.refused++
		return // nodecreds refuses it: nothing is written
	}
	st.accepted++
	secret := v1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "s", Namespace: "ns", UID: "uid"}, Type: v1.SecretTypeDockerConfigJson, Data: map[string][]byte{v1.DockerConfigJsonKey: data}}
	fromSecret, err := secrets.MakeDockerKeyring([]v1.Secret{secret}, &credentialprovider.BasicDockerKeyring{})
	if err != nil {
		t.Fatalf("the kubelet refuses a Secret nodecreds accepts: %v\n%s", err, data)
	}

	root := t.TempDir()
	e := nodefile.New(nodefile.Options{HostRoot: root, StateDir: "/var/lib/nodecreds"})
	res, err := e.Sync(t.Context(), []string{"/var/lib/kubelet/config.json", "/root/.docker/config.json"}, nodefile.Desired{Sources: []dockercfg.NamedSet{{Name: "ns/s", Set: set}}, Prune: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res {
		if r.Err != nil {
			t.Fatal(r.Err)
		}
	}
	cfg, err := credentialprovider.ReadDockerConfigJSONFile([]string{filepath.Join(root, "var/lib/kubelet")})
	if err != nil {
		t.Fatalf("the kubelet cannot read the file nodecreds wrote: %v", err)
	}
	fromFile := &credentialprovider.BasicDockerKeyring{}
	fromFile.Add(nil, cfg)

	// What the plugin can carry: one key per index key, the first in key
	// order.
	dedup := map[string]any{}
	var keys []string
	for k := range creds {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	seenIdx := map[string]bool{}
	for _, k := range keys {
		if idx := indexKey(k); !seenIdx[idx] {
			seenIdx[idx] = true
			dedup[k] = map[string]string{"auth": testsupport.B64(creds[k].user + ":" + creds[k].pass)}
		}
	}
	dedupData, _ := json.Marshal(map[string]any{"auths": dedup})
	var dedupCfg credentialprovider.DockerConfigJSON
	if err := json.Unmarshal(dedupData, &dedupCfg); err != nil {
		t.Fatal(err)
	}
	pluginWant := &credentialprovider.BasicDockerKeyring{}
	pluginWant.Add(nil, dedupCfg.Auths)

	for i, repo := range repos {
		st.lookups++
		want, _ := fromSecret.Lookup(repo)
		if len(want) > 0 {
			st.found++
		}
		got, _ := fromFile.Lookup(repo)
		if !slices.Equal(asSet(got), asSet(want)) {
			t.Errorf("image %s: the kubelet tries %q from the file, %q from the Secret\nSecret: %s\nfile: %s", refs[i], asSet(got), asSet(want), data, readFile(t, root, "var/lib/kubelet/config.json"))
		}

		// nodecreds check names every credential the kubelet tries.
		rep := nccheck.Run(t.Context(), nccheck.Options{HostRoot: root, KubeletRootDir: "/var/lib/kubelet", Images: []string{refs[i]}})
		r := rep.Results[0]
		var named []string
		for _, k := range r.Entries {
			c, ok := creds[k]
			if !ok {
				t.Fatalf("check names entry %q, which is not the Secret's", k)
			}
			named = append(named, c.user+"\x00"+c.pass)
		}
		slices.Sort(named)
		if r.Found != (len(want) > 0) || !slices.Equal(nonNilS(named), asSet(want)) || (r.Found && r.Entry != r.Entries[0]) {
			t.Errorf("image %s: check found=%v entries %q, the kubelet tries %q", refs[i], r.Found, r.Entries, asSet(want))
		}

		// The plugin's answer, as the kubelet turns it into a keyring,
		// for this image and for every image of the same registry while
		// it keeps the answer.
		answer := pluginKeyring(t, root, refs[i])
		for j, other := range repos {
			if registryOf(other) != registryOf(repo) {
				continue
			}
			got, _ := answer.Lookup(other)
			exp, _ := pluginWant.Lookup(other)
			if !slices.Equal(asSet(got), asSet(exp)) {
				t.Errorf("plugin asked for %s: for image %s the kubelet tries %q, want %q\nSecret: %s", refs[i], refs[j], asSet(got), asSet(exp), data)
			}
		}
	}

	// The docker CLI's file, judged by the docker CLI's configfile.
	dockerCLIAgrees(t, root, creds, repos)
}

// registryOf is the kubelet's cache key of type Registry for an image.
func registryOf(repo string) string {
	host, _, _ := strings.Cut(repo, "/")
	return host
}

func nonNilS(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func readFile(t *testing.T, root, rel string) string {
	t.Helper()
	b, _ := os.ReadFile(filepath.Join(root, rel))
	return string(b)
}

// pluginKeyring asks the plugin for ref and builds the kubelet's keyring
// from its answer, as the kubelet's plugin provider does.
func pluginKeyring(t *testing.T, root, ref string) *credentialprovider.BasicDockerKeyring {
	t.Helper()
	req, _ := json.Marshal(credv1.CredentialProviderRequest{TypeMeta: metav1.TypeMeta{APIVersion: provider.APIVersion, Kind: "CredentialProviderRequest"}, Image: ref})
	var out bytes.Buffer
	if err := provider.Serve(bytes.NewReader(req), &out, provider.Options{HostRoot: root, File: "/var/lib/kubelet/config.json", CacheDuration: time.Second}); err != nil {
		t.Fatalf("plugin for %s: %v", ref, err)
	}
	var resp credv1.CredentialProviderResponse
	if err := json.Unmarshal(out.Bytes(), &resp); err != nil {
		t.Fatal(err)
	}
	if resp.CacheKeyType != credv1.RegistryPluginCacheKeyType {
		t.Fatalf("cache key type %s: the registry-wide check below assumes Registry", resp.CacheKeyType)
	}
	cfg := credentialprovider.DockerConfig{}
	for k, a := range resp.Auth {
		cfg[k] = credentialprovider.DockerConfigEntry{Username: a.Username, Password: a.Password}
	}
	ring := &credentialprovider.BasicDockerKeyring{}
	ring.Add(nil, cfg)
	return ring
}

// dockerIndexServer is the key the docker CLI reads Docker Hub by.
const dockerIndexServer = "https://index.docker.io/v1/"

// dockerCLIAgrees: for every registry host the docker CLI could be asked
// about, what it reads from nodecreds' file is one of the answers its own
// lookup (GetAuthConfig: the exact key, else any key whose host name is
// the one asked, in map order) could give from the Secret as a config
// file, with Docker Hub's keys (docker.io, index.docker.io, with a scheme
// or /v1/) moved to the one key it reads Docker Hub by; and there is one
// exactly when the Secret has one.
func dockerCLIAgrees(t *testing.T, root string, creds map[string]struct{ user, pass, email string }, repos []string) {
	t.Helper()
	f, err := os.Open(filepath.Join(root, "root/.docker/config.json"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cf := configfile.New(f.Name())
	if err := cf.LoadFromReader(f); err != nil {
		t.Fatalf("the docker CLI cannot read nodecreds' file: %v", err)
	}
	answers := func(asked string) []string {
		if asked == "docker.io" || asked == "index.docker.io" {
			asked = dockerIndexServer // as GetAuthConfig does
		}
		var exact, byHost []string
		for k, c := range creds {
			key := k
			if dockercfg.Normalize(k) == "docker.io" {
				key = dockerIndexServer
			}
			switch {
			case key == asked && k == key:
				exact = append(exact, c.user+"\x00"+c.pass)
			case key == asked || credentials.ConvertToHostname(key) == asked:
				byHost = append(byHost, c.user+"\x00"+c.pass)
			}
		}
		if len(exact) > 0 {
			return exact
		}
		return byHost
	}
	hosts := map[string]bool{"docker.io": true}
	for k := range creds {
		hosts[credentials.ConvertToHostname(k)] = true
	}
	for _, r := range repos {
		hosts[registryOf(r)] = true
	}
	for h := range hosts {
		candidates := answers(h)
		got, err := cf.GetAuthConfig(h)
		if err != nil {
			t.Fatal(err)
		}
		have := got.Username != "" || got.Password != ""
		if have != (len(candidates) > 0) || have && !slices.Contains(candidates, got.Username+"\x00"+got.Password) {
			t.Errorf("docker CLI for %s: user %q from nodecreds' file; the Secret's candidates %q", h, got.Username, candidates)
		}
	}
}

// TestKubeletAgreesWithSecret runs 1,000 random Secrets (a fixed seed, so a
// failure is reproducible) through the judges above.
func TestKubeletAgreesWithSecret(t *testing.T) {
	rng := rand.New(rand.NewPCG(21, 14))
	var st differStats
	for range 1000 {
		b := make([]byte, 64)
		for i := range b {
			b[i] = byte(rng.UintN(256))
		}
		differ(t, &gen{b: b}, &st)
		if t.Failed() {
			break
		}
	}
	t.Logf("%d Secrets accepted, %d refused; %d lookups, %d with credentials", st.accepted, st.refused, st.lookups, st.found)
	// Most random Secrets must be accepted, and hundreds of lookups must
	// find credentials, or the comparison proves little.
	if st.accepted < 500 || st.found < 500 {
		t.Errorf("too few accepted Secrets (%d) or found credentials (%d of %d) for the comparison to mean much", st.accepted, st.found, st.lookups)
	}
}

// FuzzKubeletAgreesWithSecret is the same comparison, steered by the
// fuzzer (make fuzz).
func FuzzKubeletAgreesWithSecret(f *testing.F) {
	f.Add([]byte{0, 5, 3, 0, 1, 2})
	f.Add([]byte{3, 1, 6, 4, 1, 1, 0, 9, 2, 1, 0, 0, 4, 7, 3, 2})
	f.Fuzz(func(t *testing.T, b []byte) {
		differ(t, &gen{b: b}, &differStats{})
	})
}

// TestCheckReadsFilesAsTheKubeletDoes: for node files the kubelet refuses
// (or reads), `nodecreds check` names the same file or none, judged by the
// kubelet's own ReadDockerConfigJSONFile.
func TestCheckReadsFilesAsTheKubeletDoes(t *testing.T) {
	good := `{"auth":"` + testsupport.B64("u:p") + `"}`
	for _, doc := range []string{
		`{"auths":{"r.test":` + good + `}}`,
		`{"auths":{"r.test":` + good + `},"HttpHeaders":{"X":1}}`,
		`{"auths":{"r.test":` + good + `},"HTTPHEADERS":{"X":"y"}}`,
		`{"auths":{"r.test":{"auth":"not base64!"},"r.test":` + good + `}}`,
		`{"auths":{"r.test":` + good + `,"r.test":{"auth":"%%%"}}}`,
		`{"Auths":{"r.test":` + good + `},"auths":null}`,
		`{"auths":{"r.test":{"Auth":"` + testsupport.B64("u:p") + `","auth":null}}}`,
	} {
		root := t.TempDir()
		dir := filepath.Join(root, "var/lib/kubelet")
		testsupport.WriteFile(t, filepath.Join(dir, "config.json"), doc, 0o600)
		_, kerr := credentialprovider.ReadDockerConfigJSONFile([]string{dir})
		rep := nccheck.Run(t.Context(), nccheck.Options{HostRoot: root, KubeletRootDir: "/var/lib/kubelet", Images: []string{"r.test/app"}})
		if (kerr == nil) != (rep.File != "") {
			t.Errorf("%s: the kubelet reads it: %v; check says the kubelet reads %q", doc, kerr == nil, rep.File)
		}
	}
}
