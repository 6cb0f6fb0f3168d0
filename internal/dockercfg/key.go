package dockercfg

import (
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"unicode"
)

// dockerHubAliases are the hosts the kubelet and the docker CLI both treat
// as Docker Hub.
var dockerHubAliases = map[string]bool{
	"docker.io":            true,
	"index.docker.io":      true,
	"registry-1.docker.io": true,
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
		if scheme != "http" && scheme != "https" {
			return fmt.Errorf("registry key has scheme %q; only http and https are allowed", rest[:i])
		}
		rest = rest[i+3:]
	}
	hostport, _, _ := strings.Cut(rest, "/")
	if hostport == "" {
		return errors.New("registry key has no host")
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
			return fmt.Errorf("registry key has port %q, not a number from 1 to 65535", port)
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
	// The kubelet parses keys as URLs and silently skips those that fail.
	if _, err := url.Parse("https://" + rest); err != nil {
		return errors.New("registry key is not a valid URL")
	}
	return nil
}

// Normalize returns the form under which two keys name the same registry:
// no scheme, lower-case host, Docker Hub aliases folded to docker.io, a
// leading /v1/ or /v2/ dropped (as the kubelet does) and no trailing slash.
func Normalize(key string) string {
	rest := key
	if i := strings.Index(rest, "://"); i >= 0 {
		rest = rest[i+3:]
	}
	host, path, _ := strings.Cut(rest, "/")
	host = strings.ToLower(host)
	if dockerHubAliases[host] {
		host = "docker.io"
	}
	path = "/" + path
	if strings.HasPrefix(path, "/v1/") || strings.HasPrefix(path, "/v2/") || path == "/v1" || path == "/v2" {
		path = path[3:]
	}
	path = strings.TrimRight(path, "/")
	return host + path
}

// NamedSet is a source's entries with the source's name, for Union's
// precedence and clash reports.
type NamedSet struct {
	Name string
	Set  Set
}

// Clash is a registry that more than one key provides; the first wins.
type Clash struct {
	Registry  string // normalised
	WinnerKey string
	Winner    string // source name
	LoserKey  string
	Loser     string // source name
}

func (c Clash) String() string {
	return fmt.Sprintf("registry %q from %s (key %q) hides the one from %s (key %q)",
		c.Registry, c.Winner, c.WinnerKey, c.Loser, c.LoserKey)
}

// Union merges sets in precedence order: for each registry (compared after
// Normalize) the first entry wins and every later one is a Clash.
func Union(sets ...NamedSet) (Set, []Clash) {
	type winner struct{ key, source string }
	seen := map[string]winner{}
	var out Set
	var clashes []Clash
	for _, ns := range sets {
		for _, it := range ns.Set {
			n := Normalize(it.Key)
			if w, ok := seen[n]; ok {
				clashes = append(clashes, Clash{Registry: n, WinnerKey: w.key, Winner: w.source, LoserKey: it.Key, Loser: ns.Name})
				continue
			}
			seen[n] = winner{key: it.Key, source: ns.Name}
			out = append(out, it)
		}
	}
	return out, clashes
}
