// Package kubeletcred emulates how the kubelet finds registry credentials
// on its node: the same files in the same order, the same parsing and the
// same key matching. `nodecreds check` and the credential-provider plugin
// both answer through it.
//
// It follows the kubelet of Kubernetes v1.37.2 — k8s.io/kubernetes
// v1.37.2, the version test/consumers/go.mod pins —
// pkg/credentialprovider/config.go (search paths, DockerConfigJSON and
// DockerConfigEntry.UnmarshalJSON, decodeDockerConfigFieldAuth) and
// keyring.go (BasicDockerKeyring.Add and Lookup, URLsMatch,
// isDefaultRegistryMatch). test/consumers puts `check` and the plugin,
// which answer through this package, next to that code on the same files
// (TestKubeletReadsWhatNodecredsWrites, TestCheckReadsFilesAsTheKubeletDoes,
// TestKubeletExecsThePlugin), and a differential test and fuzz compare its
// answers with the kubelet's keyring on random Secrets
// (TestKubeletAgreesWithSecret, FuzzKubeletAgreesWithSecret, FuzzKubeletShapes);
// when the pin moves, they say what changed.
//
// Where it deliberately differs:
//   - Files are read through hostfs under --host-root: no link leaves the
//     root, a FIFO or device is refused without blocking, a file over
//     hostfs.MaxFileSize is not read. The kubelet reads with os.ReadFile;
//     a file refused here is reported Unread rather than guessed at.
//   - The search order assumes a kubelet run by systemd: its working
//     directory is / and $HOME is /root (the kubelet uses its own).
//   - Two keys of one index key (https://r.test/ and r.test) are tried in
//     key order; the kubelet's order is Go map order, that is random.
//   - Errors say why a file is unreadable (the field, the entry's key
//     through dockercfg.SafeKey) where the kubelet says only that it does
//     not parse; no error holds a value from the file.
//   - The kubelet's tracking of which source a credential came from
//     (TrackedAuthConfig, for KubeletEnsureSecretPulledImages) is left out.
//   - ForRegistry and ProviderAnswer are the credential-provider plugin's
//     side, which keyring.go does not have: one credential per index key of
//     the image's registry, and no entry whose key dockercfg.ValidateKey
//     refuses (a password in a key never leaves in an answer).
package kubeletcred

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net"
	"net/url"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/distribution/reference"

	"github.com/nodecreds/nodecreds/internal/dockercfg"
	"github.com/nodecreds/nodecreds/internal/hostfs"
)

// Cred is one credential the kubelet would use.
type Cred struct {
	Key      string // the auths key as written in the file
	Username string
	Password string
}

// String never shows the password, nor a password in the key.
func (c Cred) String() string {
	return fmt.Sprintf("Cred{key=%q, username=%q}", dockercfg.SafeKey(c.Key), dockercfg.SafeUsername(c.Username, c.Password))
}

// GoString keeps %#v as safe as %v.
func (c Cred) GoString() string { return c.String() }

// Candidate is a file the kubelet looks at, in order.
type Candidate struct {
	Path   string // node path
	Legacy bool   // .dockercfg (bare map) rather than config.json
}

// SearchOrder is the kubelet's: config.json in its --root-dir, its working
// directory (/ for a kubelet run by systemd), $HOME/.docker (/root/.docker),
// /.docker; only if none parses, .dockercfg in the same folders (with $HOME
// itself instead of $HOME/.docker).
func SearchOrder(kubeletRoot string) []Candidate {
	var out []Candidate
	for _, dir := range dedupe([]string{kubeletRoot, "/", "/root/.docker", "/.docker"}) {
		out = append(out, Candidate{Path: filepath.Join(dir, "config.json")})
	}
	for _, dir := range dedupe([]string{kubeletRoot, "/", "/root", "/"}) {
		out = append(out, Candidate{Path: filepath.Join(dir, ".dockercfg"), Legacy: true})
	}
	return out
}

func dedupe(dirs []string) []string {
	var out []string
	for _, d := range dirs {
		if !slices.Contains(out, d) {
			out = append(out, d)
		}
	}
	return out
}

// File is what the kubelet would make of one Candidate file.
type File struct {
	Candidate
	Exists bool
	Err    error // parse error: the kubelet skips the file silently
	// Unread: nodecreds refused to read the file (not a regular file, too
	// large, no permission); what the kubelet makes of it is unknown.
	Unread bool
	Creds  map[string]Cred
}

// Read reads a node file through the host root and parses it as
// the kubelet does. The path is resolved in the root as the node sees it,
// then read through a folder handle: a FIFO or device is refused without
// blocking, and a file over hostfs.MaxFileSize is not read.
func Read(hostRoot string, c Candidate) File {
	return ReadAll(hostRoot, []Candidate{c})[0]
}

// ReadAll is Read for each candidate, through one handle of the host root.
func ReadAll(hostRoot string, cs []Candidate) []File {
	out := make([]File, len(cs))
	root, err := hostfs.OpenRoot(hostRoot)
	if err != nil {
		for i, c := range cs {
			out[i] = File{Candidate: c, Exists: true, Err: err, Unread: true}
		}
		return out
	}
	defer root.Close()
	for i, c := range cs {
		out[i] = read(root, c)
	}
	return out
}

func read(root *hostfs.Root, c Candidate) File {
	st := File{Candidate: c}
	d, name, err := root.OpenParent(c.Path, false, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return st
	}
	if err != nil {
		st.Exists, st.Err, st.Unread = true, err, true
		return st
	}
	defer d.Close()
	data, _, err := d.ReadFile(name, hostfs.MaxFileSize)
	if errors.Is(err, fs.ErrNotExist) {
		return st
	}
	st.Exists = true
	if err != nil {
		st.Err, st.Unread = err, true
		return st
	}
	st.Creds, st.Err = parseKubelet(data, c.Legacy)
	return st
}

// kubeletEntry mirrors credentialprovider.DockerConfigEntry's decoding: its
// UnmarshalJSON decodes auth as each entry is read, so an entry that does
// not decode fails the whole file even when a later entry of the same key
// replaces it.
type kubeletEntry struct {
	Auth     string
	Username string
	Password string
	Email    string
}

// errBadAuth is an auth the kubelet cannot decode. It never holds the value.
var errBadAuth = errors.New("auth is not base64 of user:password")

func (e *kubeletEntry) UnmarshalJSON(data []byte) error {
	var tmp struct {
		Username string `json:"username,omitempty"`
		Password string `json:"password,omitempty"`
		Email    string `json:"email,omitempty"`
		Auth     string `json:"auth,omitempty"`
	}
	if err := json.Unmarshal(data, &tmp); err != nil {
		return err
	}
	*e = kubeletEntry{Auth: tmp.Auth, Username: tmp.Username, Password: tmp.Password, Email: tmp.Email}
	if tmp.Auth != "" {
		if _, _, err := decodeKubeletAuth(tmp.Auth); err != nil {
			return errBadAuth
		}
	}
	return nil
}

// parseKubelet decodes like credentialprovider.readDockerConfigJSONFileFromBytes
// (config.json: DockerConfigJSON, whose HttpHeaders must be strings too) and
// ReadDockerConfigFileFromBytes (.dockercfg): one bad entry makes the whole
// file unreadable.
func parseKubelet(data []byte, legacy bool) (map[string]Cred, error) {
	var entries map[string]kubeletEntry
	var err error
	if legacy {
		err = json.Unmarshal(data, &entries)
	} else {
		var doc struct {
			Auths       map[string]kubeletEntry `json:"auths"`
			HTTPHeaders map[string]string       `json:"HttpHeaders,omitempty"`
		}
		err = json.Unmarshal(data, &doc)
		entries = doc.Auths
	}
	switch {
	case errors.Is(err, errBadAuth):
		return nil, badAuthError(data, legacy)
	case err != nil && legacy:
		return nil, errors.New("not a valid .dockercfg")
	case err != nil:
		return nil, fmt.Errorf("not valid JSON of the config.json shape (%s)", jsonShapeProblem(err))
	}
	creds := map[string]Cred{}
	for key, e := range entries {
		c := Cred{Key: key, Username: e.Username, Password: e.Password}
		if e.Auth != "" {
			c.Username, c.Password, _ = decodeKubeletAuth(e.Auth) // decoded above
		}
		creds[key] = c
	}
	return creds, nil
}

// badAuthError names the entry whose auth the kubelet cannot decode (its
// key through dockercfg.SafeKey), or says it is an entry a later one of its
// key replaces.
func badAuthError(data []byte, legacy bool) error {
	type plain struct{ Auth string }
	var entries map[string]plain
	if legacy {
		_ = json.Unmarshal(data, &entries)
	} else {
		var doc struct{ Auths map[string]plain }
		_ = json.Unmarshal(data, &doc)
		entries = doc.Auths
	}
	keys := slices.Sorted(maps.Keys(entries))
	for _, key := range keys {
		if a := entries[key].Auth; a != "" {
			if _, _, err := decodeKubeletAuth(a); err != nil {
				return fmt.Errorf("entry %q: %w (one is enough for the kubelet to read none of the file)", dockercfg.SafeKey(key), errBadAuth)
			}
		}
	}
	return fmt.Errorf("an entry that a later entry of its key replaces: %w (the kubelet decodes each as it reads it, and one is enough for it to read none of the file)", errBadAuth)
}

// jsonShapeProblem says where a file does not fit the kubelet's struct, by
// field name only: a syntax error's text may quote the file.
func jsonShapeProblem(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) && te.Field != "" {
		// The top-level field only: the rest of the path holds the file's
		// keys, which may hold anything.
		top, _, _ := strings.Cut(te.Field, ".")
		return fmt.Sprintf("a value in %q has the wrong type", top)
	}
	return "not a JSON object of that shape"
}

func decodeKubeletAuth(field string) (string, string, error) {
	var (
		decoded []byte
		err     error
	)
	if strings.HasSuffix(strings.TrimSpace(field), "=") {
		decoded, err = base64.StdEncoding.DecodeString(field)
	} else {
		decoded, err = base64.RawStdEncoding.DecodeString(field)
	}
	if err != nil {
		return "", "", errors.New("auth is not valid base64")
	}
	u, p, ok := strings.Cut(string(decoded), ":")
	if !ok {
		return "", "", errors.New("auth is not user:password")
	}
	return u, p, nil
}

// Keyring mirrors credentialprovider.BasicDockerKeyring (Add and Lookup).
type Keyring struct {
	index []string          // the kubelet's index keys, reverse-sorted: more specific first
	creds map[string][]Cred // by index key, each list in key order
}

// defaultRegistryHost is the index key whose credentials the kubelet falls
// back to for images of the default registry (docker.io/..., and any whose
// first part has no dot or colon, localhost/... included).
const defaultRegistryHost = "index.docker.io"

func NewKeyring(creds map[string]Cred) *Keyring {
	k := &Keyring{creds: map[string][]Cred{}}
	keys := make([]string, 0, len(creds))
	for key := range creds {
		keys = append(keys, key)
	}
	// Two keys of one index key (https://r.test/ and r.test) are tried in
	// the kubelet's map order, which is random; here in key order.
	sort.Strings(keys)
	for _, key := range keys {
		idx, ok := IndexKey(key)
		if !ok {
			continue // the kubelet logs and ignores such an entry
		}
		if _, seen := k.creds[idx]; !seen {
			k.index = append(k.index, idx)
		}
		k.creds[idx] = append(k.creds[idx], creds[key])
	}
	sort.Sort(sort.Reverse(sort.StringSlice(k.index)))
	return k
}

// IndexKey is the kubelet's index key for an auths key: host[:port] and
// path, scheme dropped, a leading /v1/ or /v2/ dropped; false when the
// kubelet cannot parse the key (and ignores its entry).
func IndexKey(key string) (string, bool) {
	repo := key
	if !strings.HasPrefix(repo, "https://") && !strings.HasPrefix(repo, "http://") {
		repo = "https://" + repo
	}
	parsed, err := url.Parse(repo)
	if err != nil {
		return "", false
	}
	path := parsed.Path
	if strings.HasPrefix(path, "/v2/") || strings.HasPrefix(path, "/v1/") {
		path = path[3:]
	}
	if path != "" && path != "/" {
		return parsed.Host + path, true
	}
	return parsed.Host, true
}

// Lookup returns every credential the kubelet would try for repo, in its
// order (most specific index key first), each with the index key (Pattern)
// it is filed under.
func (k *Keyring) Lookup(repo string) []Match {
	var out []Match
	for _, idx := range k.index {
		if ok, _ := urlsMatchStr(idx, repo); ok {
			for _, c := range k.creds[idx] {
				out = append(out, Match{Cred: c, Pattern: idx})
			}
		}
	}
	if len(out) > 0 {
		return out
	}
	if isDefaultRegistryMatch(repo) {
		for _, c := range k.creds[defaultRegistryHost] {
			out = append(out, Match{Cred: c, Pattern: defaultRegistryHost})
		}
	}
	return out
}

// ForRegistry returns what a credential provider answering for repo hands
// the kubelet: one credential per index key (the first in key order; the
// answer is a map, so two spellings of one index key cannot both go) for
// every index key whose host matches repo's registry, whatever its path,
// and the default registry's when the kubelet would fall back to it. The
// kubelet keeps the answer for every image of that registry (cache key
// "Registry") and matches paths and the fallback itself, exactly as it
// would in the file.
func (k *Keyring) ForRegistry(repo string) []Match {
	host, _, _ := strings.Cut(repo, "/")
	var out []Match
	for _, idx := range k.index {
		if ok, _ := urlsMatchStr(hostOf(idx), host); ok {
			out = append(out, Match{Cred: k.creds[idx][0], Pattern: idx})
		}
	}
	if c := k.creds[defaultRegistryHost]; len(c) > 0 && isDefaultRegistryMatch(repo) && !slices.ContainsFunc(out, func(m Match) bool { return m.Pattern == defaultRegistryHost }) {
		out = append(out, Match{Cred: c[0], Pattern: defaultRegistryHost})
	}
	return out
}

// hostOf is an index key's host[:port].
func hostOf(idx string) string {
	host, _, _ := strings.Cut(idx, "/")
	return host
}

func isDefaultRegistryMatch(image string) bool {
	parts := strings.SplitN(image, "/", 2)
	if len(parts[0]) == 0 {
		return false
	}
	if len(parts) == 1 {
		return true
	}
	if parts[0] == "docker.io" || parts[0] == "index.docker.io" {
		return true
	}
	return !strings.ContainsAny(parts[0], ".:")
}

func parseSchemeless(s string) (*url.URL, error) {
	u, err := url.Parse("https://" + s)
	if err != nil {
		return nil, err
	}
	u.Scheme = ""
	return u, nil
}

func splitURL(u *url.URL) ([]string, string) {
	host, port, err := net.SplitHostPort(u.Host)
	if err != nil {
		host, port = u.Host, ""
	}
	return strings.Split(host, "."), port
}

func urlsMatchStr(glob, target string) (bool, error) {
	g, err := parseSchemeless(glob)
	if err != nil {
		return false, err
	}
	t, err := parseSchemeless(target)
	if err != nil {
		return false, err
	}
	gParts, gPort := splitURL(g)
	tParts, tPort := splitURL(t)
	if gPort != tPort || len(gParts) != len(tParts) || !strings.HasPrefix(t.Path, g.Path) {
		return false, nil
	}
	for i, gp := range gParts {
		ok, err := filepath.Match(gp, tParts[i])
		if err != nil || !ok {
			return false, err
		}
	}
	return true, nil
}

// RepoOf turns an image reference into the repository the kubelet looks up
// (docker.io/library/ for short names, no tag or digest). A registry given
// alone (host[:port]) is looked up as itself. An error names the ref as
// SafeRef prints it.
func RepoOf(ref string, isRegistry bool) (string, error) {
	if isRegistry {
		return RegistryHost(ref)
	}
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return "", RefError(ref, err)
	}
	return named.Name(), nil
}

// RefError says that ref is not an image reference, naming it as SafeRef
// prints it and the parser's complaint by its class only: the parser's
// own text quotes parts of the ref.
func RefError(ref string, err error) error {
	why := reference.ErrReferenceInvalidFormat
	for _, e := range []error{reference.ErrNameEmpty, reference.ErrNameTooLong, reference.ErrNameNotCanonical, reference.ErrTagInvalidFormat, reference.ErrDigestInvalidFormat, reference.ErrNameContainsUppercase} {
		if errors.Is(err, e) {
			why = e
		}
	}
	if strings.Contains(err.Error(), "must be lowercase") {
		why = reference.ErrNameContainsUppercase
	}
	return fmt.Errorf("%q is not an image reference: %w", SafeRef(ref, false), why)
}

// RegistryHost is the host[:port] of a registry given alone (an optional
// http(s) scheme and trailing '/' are dropped). One that is no valid
// registry key's host — user-info, a port that is not a number, a path —
// is refused, named as SafeRef prints it.
func RegistryHost(ref string) (string, error) {
	r := strings.TrimSuffix(strings.TrimPrefix(strings.TrimPrefix(ref, "https://"), "http://"), "/")
	if r == "" || strings.ContainsAny(r, " \t/") || dockercfg.ValidateKey(r) != nil {
		return "", fmt.Errorf("%q is not a registry host", SafeRef(ref, true))
	}
	return r, nil
}

// SafeRef is an --image or --registry as outputs print it: an image
// reference that parses as it is (nothing in it is user-info), anything
// else as dockercfg.SafeKey prints a key, so that a password written into
// its user-info, or where a port or a path goes, is left out.
func SafeRef(ref string, isRegistry bool) string {
	if !isRegistry {
		if _, err := reference.ParseNormalizedNamed(ref); err == nil {
			return ref
		}
	}
	return dockercfg.SafeKey(ref)
}

// Match is a credential the kubelet would try, read from one config.json,
// and the index key it is filed under (scheme and /v1/ stripped), which is
// also the pattern a credential provider answers with.
type Match struct {
	Cred
	Pattern string
}

// ProviderAnswer is Keyring.ForRegistry for image, read from a single
// config.json (node path under hostRoot) with the kubelet's parsing. A file
// that does not exist answers nothing. The answer names each entry by its
// key (the index key), so only entries whose key nodecreds itself accepts
// (dockercfg.ValidateKey: no user-info, no character a repository path
// lacks) are in it: the kubelet still reads the others from the file, but
// a password written into a key never leaves in the plugin's answer.
func ProviderAnswer(hostRoot, nodePath, image string) ([]Match, error) {
	st := Read(hostRoot, Candidate{Path: nodePath})
	if st.Err != nil {
		return nil, fmt.Errorf("%s: %w", nodePath, st.Err)
	}
	repo, err := RepoOf(image, false)
	if err != nil {
		return nil, err
	}
	creds := maps.Clone(st.Creds)
	maps.DeleteFunc(creds, func(key string, _ Cred) bool { return dockercfg.ValidateKey(key) != nil })
	return NewKeyring(creds).ForRegistry(repo), nil
}
