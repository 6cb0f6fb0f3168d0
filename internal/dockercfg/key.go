package dockercfg

import (
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"unicode"
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
// numeric port, and an optional path.
func ValidateKey(key string) error {
	if key == "" {
		return errors.New("empty registry key")
	}
	for _, r := range key {
		if unicode.IsSpace(r) || unicode.IsControl(r) {
			return errors.New("registry key contains white space or control characters")
		}
	}
	rest := key
	if i := strings.Index(rest, "://"); i >= 0 {
		scheme := strings.ToLower(rest[:i])
		if strings.Contains(rest[:i], "@") {
			return errUserInfo
		}
		if scheme != "http" && scheme != "https" {
			return fmt.Errorf("registry key has scheme %q; only http and https are allowed", rest[:i])
		}
		rest = rest[i+3:]
	}
	hostport, _, _ := strings.Cut(rest, "/")
	if hostport == "" {
		return errors.New("registry key has no host")
	}
	if strings.Contains(hostport, "@") {
		return errUserInfo
	}
	host, port := hostport, ""
	if strings.HasPrefix(hostport, "[") {
		end := strings.Index(hostport, "]")
		if end < 0 {
			return errors.New("registry key has an unclosed IPv6 bracket")
		}
		host, port = hostport[1:end], strings.TrimPrefix(hostport[end+1:], ":")
		if hostport[end+1:] != "" && !strings.HasPrefix(hostport[end+1:], ":") {
			return errors.New("registry key has junk after the IPv6 address")
		}
	} else if h, p, ok := strings.Cut(hostport, ":"); ok {
		host, port = h, p
		if port == "" {
			return errors.New("registry key has an empty port")
		}
	}
	if host == "" {
		return errors.New("registry key has no host")
	}
	if port != "" {
		n, err := strconv.Atoi(port)
		if err != nil || n < 1 || n > 65535 {
			return errors.New("registry key's port is not a number from 1 to 65535")
		}
	}
	if !strings.HasPrefix(hostport, "[") {
		for _, label := range strings.Split(host, ".") {
			if label == "" {
				return errors.New("registry key has an empty host label")
			}
			for _, r := range label {
				if !(r == '-' || r == '_' || r == '*' || r == '?' || r < unicode.MaxASCII && (unicode.IsLetter(r) || unicode.IsDigit(r))) {
					return fmt.Errorf("registry key host has the character %q", r)
				}
			}
		}
	}
	if !strings.HasPrefix(hostport, "[") && strings.Trim(host, "*?.") == "" {
		// The kubelet would send this credential to any registry a Pod
		// names, including one an attacker runs.
		return errors.New("registry key matches every host (only wildcards); name the registry, e.g. *.example.com")
	}
	// The kubelet parses keys as URLs and silently skips those that fail.
	if _, err := url.Parse("https://" + rest); err != nil {
		return errors.New("registry key is not a valid URL")
	}
	return nil
}

// errUserInfo is returned for a key holding user-info (user:password@host).
// It never echoes the key: the user-info may be a password.
var errUserInfo = errors.New("registry key holds user-info (user:password@host); credentials belong in the entry's auth, not in its key")

// SafeKey is key fit for a log, an Event or an error: user-info (a key
// like user:password@host is refused, but is still named when refused) is
// replaced by <redacted>.
func SafeKey(key string) string {
	scheme, rest := "", key
	if i := strings.Index(rest, "://"); i >= 0 {
		scheme, rest = rest[:i+3], rest[i+3:]
	}
	if strings.Contains(scheme, "@") {
		return "<redacted>"
	}
	hostport, path, hasPath := strings.Cut(rest, "/")
	if i := strings.LastIndex(hostport, "@"); i >= 0 {
		hostport = "<redacted>@" + hostport[i+1:]
	}
	if hasPath {
		return scheme + hostport + "/" + path
	}
	return scheme + hostport
}

// DockerHubKey is the key the docker CLI reads Docker Hub's credentials
// from. The kubelet reads it too, but as its fallback for every image whose
// first path part has no dot or colon, localhost/... included; so it is
// written only to files the docker CLI reads.
const DockerHubKey = "https://index.docker.io/v1/"

// Normalize returns the form under which two keys name the same registry:
// no scheme, Docker Hub aliases folded to docker.io, a leading /v1/ or /v2/
// dropped (as the kubelet does) and no trailing slash. Host names keep their
// case: the kubelet matches them case-sensitively, so R.TEST and r.test are
// two registries to it. Keys that normalise alike are one registry for
// precedence between sources and for displacing a node file's foreign
// entries; a file the kubelet reads still gets every spelling one source
// has (see View).
func Normalize(key string) string {
	rest := key
	if i := strings.Index(rest, "://"); i >= 0 {
		rest = rest[i+3:]
	}
	host, path, _ := strings.Cut(rest, "/")
	if isDockerHub(host) {
		host = "docker.io"
	}
	if path == "" {
		return host // nearly every key: no allocation
	}
	path = "/" + path
	if strings.HasPrefix(path, "/v1/") || strings.HasPrefix(path, "/v2/") || path == "/v1" || path == "/v2" {
		path = path[3:]
	}
	path = strings.TrimRight(path, "/")
	return host + path
}
