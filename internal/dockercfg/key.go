package dockercfg

import (
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"unicode"

	"golang.org/x/net/publicsuffix"
)

// isDockerHub reports the hosts the docker CLI reads Docker Hub's
// credentials for (docker.io and its legacy name index.docker.io), and that
// the kubelet falls back to for Docker Hub images. registry-1.docker.io is
// not one of them: to both it is a registry of its own. (A switch:
// Normalize runs for every key of files with thousands.)
func isDockerHub(host string) bool {
	switch host {
	case "docker.io", "index.docker.io":
		return true
	}
	return false
}

// ValidateKey reports whether key is a registry key both consumers can use:
// an optional http(s) scheme, a host (globs allowed) with an optional
// numeric port, and an optional path of repository characters. A valid key
// holds nothing that could be a password (no '@' anywhere, nothing but
// letters, digits, '.', '_', '-' and '/' after the host), so SafeKey prints
// it as it is; the errors describe what is wrong and where, and never quote
// any part of the key.
func ValidateKey(key string) error {
	if err := validateKeyChars(key); err != nil {
		return err
	}
	rest, err := stripScheme(key)
	if err != nil {
		return err
	}
	hostport, path, _ := strings.Cut(rest, "/")
	if hostport == "" {
		return errors.New("registry key has no host")
	}
	if err := validatePath(path, len(key)-len(path)); err != nil {
		return err
	}
	host, port, ipv6, err := splitHostPort(hostport)
	if err != nil {
		return err
	}
	if host == "" {
		return errors.New("registry key has no host")
	}
	if port != "" {
		n, err := strconv.Atoi(port)
		if err != nil || n < 1 || n > 65535 || port[0] == '+' || port[0] == '-' {
			return errors.New("registry key's port is not a number from 1 to 65535")
		}
	}
	if !ipv6 {
		if err := validateHostName(host, len(key)-len(rest)); err != nil {
			return err
		}
	}
	// The kubelet parses keys as URLs and silently skips those that fail.
	if _, err := url.Parse("https://" + rest); err != nil {
		return errors.New("registry key is not a valid URL")
	}
	return nil
}

// validateKeyChars refuses an empty key, and one with white space, control
// characters or an '@' (user-info) anywhere.
func validateKeyChars(key string) error {
	if key == "" {
		return errors.New("empty registry key")
	}
	for i, r := range key {
		if unicode.IsSpace(r) || unicode.IsControl(r) {
			return fmt.Errorf("registry key contains white space or control characters (at byte %d)", i)
		}
	}
	if strings.Contains(key, "@") {
		return errUserInfo
	}
	return nil
}

// stripScheme returns key without its http:// or https://, and refuses
// any other scheme.
func stripScheme(key string) (string, error) {
	i := strings.Index(key, "://")
	if i < 0 {
		return key, nil
	}
	if scheme := key[:i]; scheme != "http" && scheme != "https" {
		// The kubelet knows only these two, in lower case: it reads
		// HTTPS://r.test as a host named "HTTPS:".
		return "", errors.New("registry key has a scheme other than http:// or https:// (in lower case, the only spellings the kubelet reads)")
	}
	return key[i+3:], nil
}

// validatePath refuses a path (at byte offset at of the key) with a
// character no repository path has. A path is a prefix of repositories,
// which hold nothing else: any other character (':' of "user:password", a
// query, a fragment, a percent-encoding) cannot match an image and may be
// a secret.
func validatePath(path string, at int) error {
	for i, r := range path {
		if !isPathRune(r) {
			return fmt.Errorf("registry key's path has a character no repository path has (at byte %d); a path holds only letters, digits, '.', '_', '-' and '/'", at+i)
		}
	}
	return nil
}

// splitHostPort splits hostport into a host (an IPv6 address without its
// brackets) and a port ("" when none).
func splitHostPort(hostport string) (host, port string, ipv6 bool, err error) {
	if !strings.HasPrefix(hostport, "[") {
		h, p, ok := strings.Cut(hostport, ":")
		if ok && p == "" {
			return "", "", false, errors.New("registry key has an empty port")
		}
		return h, p, false, nil
	}
	end := strings.Index(hostport, "]")
	if end < 0 {
		return "", "", true, errors.New("registry key has an unclosed IPv6 bracket")
	}
	after := hostport[end+1:]
	host, port = hostport[1:end], strings.TrimPrefix(after, ":")
	if after != "" && !strings.HasPrefix(after, ":") {
		return "", "", true, errors.New("registry key has junk after the IPv6 address")
	}
	if a, err := netip.ParseAddr(host); err != nil || !a.Is6() || a.Zone() != "" {
		return "", "", true, errors.New("registry key's brackets do not hold an IPv6 address")
	}
	if strings.HasPrefix(after, ":") && port == "" {
		return "", "", true, errors.New("registry key has an empty port")
	}
	return host, port, true, nil
}

// validateHostName refuses a host name (at byte offset at of the key)
// with an empty label or a character a host name cannot have, one of
// wildcards only, and a glob reaching beyond one registrable domain.
func validateHostName(host string, at int) error {
	for _, label := range strings.Split(host, ".") {
		if label == "" {
			return errors.New("registry key has an empty host label")
		}
		for i, r := range label {
			if !isHostRune(r) {
				return fmt.Errorf("registry key's host has a character a host name cannot have (at byte %d)", at+i)
			}
		}
		at += len(label) + 1
	}
	if strings.Trim(host, "*?.") == "" {
		// The kubelet would send this credential to any registry a Pod
		// names, including one an attacker runs.
		return errors.New("registry key matches every host (only wildcards); name the registry, e.g. *.example.com")
	}
	return globWithinDomain(host)
}

// globWithinDomain refuses a glob host whose wildcards reach beyond one
// registrable domain: everything right of the last label with a wildcard
// must hold a whole domain under a public suffix (example.com, not com or
// co.uk). The kubelet would send the credential of *.com to every registry
// under .com, an attacker's included.
func globWithinDomain(host string) error {
	labels := strings.Split(host, ".")
	last := -1
	for i, l := range labels {
		if strings.ContainsAny(l, "*?") {
			last = i
		}
	}
	if last < 0 {
		return nil
	}
	suffix := strings.ToLower(strings.Join(labels[last+1:], "."))
	if _, err := publicsuffix.EffectiveTLDPlusOne(suffix); suffix == "" || err != nil {
		return errors.New("registry key's wildcards reach beyond one domain (as *.com would): the kubelet would send this credential to any registry there; name the domain, e.g. *.example.com")
	}
	return nil
}

// isHostRune reports the characters of a host name label, globs included.
func isHostRune(r rune) bool {
	return r == '-' || r == '_' || r == '*' || r == '?' || r < unicode.MaxASCII && (unicode.IsLetter(r) || unicode.IsDigit(r))
}

// isPathRune reports the characters of a repository path (and its '/').
func isPathRune(r rune) bool {
	return r == '-' || r == '_' || r == '.' || r == '/' || r < unicode.MaxASCII && (unicode.IsLetter(r) || unicode.IsDigit(r))
}

// errUserInfo is returned for a key holding user-info (user:password@host),
// or any '@'. It never echoes the key: the user-info may be a password.
var errUserInfo = errors.New("registry key holds user-info (user:password@host) or an '@'; credentials belong in the entry's auth, not in its key")

// DockerHubKey is the key the docker CLI reads Docker Hub's credentials
// from. The kubelet reads it too, but as its fallback for every image whose
// first path part has no dot or colon, localhost/... included; so it is
// written only to files the docker CLI reads.
const DockerHubKey = "https://index.docker.io/v1/"

// Normalize returns the form under which two keys name the same registry:
// no scheme, Docker Hub aliases folded to docker.io, a leading /v1/ or /v2/
// dropped and a path of "/" none (as the kubelet files keys). Host names keep their
// case: the kubelet matches them case-sensitively, so R.TEST and r.test are
// two registries to it. Keys that normalise alike are one registry for
// precedence between sources and for displacing a node file's foreign
// entries; a file the kubelet reads still gets every spelling one source
// has (see View).
func Normalize(key string) string {
	// As the kubelet files a key (credentialprovider's BasicDockerKeyring.Add:
	// url.Parse of it, with https:// put in front unless it starts with a
	// lower-case scheme): user-info is no part of it, a leading /v1/ or /v2/
	// is dropped, a path of "/" is none, any other trailing slash stays.
	if strings.ContainsAny(key, "@%?#\\") {
		return normalizeParsed(key) // what only url.Parse reads right
	}
	rest := key
	if r, ok := strings.CutPrefix(rest, "https://"); ok {
		rest = r
	} else if r, ok := strings.CutPrefix(rest, "http://"); ok {
		rest = r
	}
	host, path, _ := strings.Cut(rest, "/")
	return registryOf(host, path)
}

// normalizeParsed is Normalize through url.Parse, as the kubelet parses
// keys; a key the kubelet cannot parse (and ignores) is a registry of its
// own.
func normalizeParsed(key string) string {
	repo := key
	if !strings.HasPrefix(repo, "https://") && !strings.HasPrefix(repo, "http://") {
		repo = "https://" + repo
	}
	u, err := url.Parse(repo)
	if err != nil {
		return key
	}
	return registryOf(u.Host, strings.TrimPrefix(u.Path, "/"))
}

// registryOf is a key's host (Docker Hub aliases folded) and path (without
// its first slash) as Normalize returns them.
func registryOf(host, path string) string {
	if isDockerHub(host) {
		host = "docker.io"
	}
	if path == "" {
		return host // nearly every key: no allocation
	}
	path = "/" + path
	if strings.HasPrefix(path, "/v1/") || strings.HasPrefix(path, "/v2/") {
		path = path[3:]
	}
	if path == "/" {
		return host
	}
	return host + path
}
