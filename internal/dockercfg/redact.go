package dockercfg

import (
	"net/netip"
	"strings"
)

// redacted stands for what SafeKey leaves out.
const redacted = "<redacted>"

// SafeKey is a registry key as every output prints it — logs, Events, the
// Node condition, errors, `check` — whether it comes from a Secret or from
// a file on the node. A valid key is printed as it is: ValidateKey refuses
// every key that could hold a password. An invalid key is reduced to what
// cannot be one: everything up to its last '@' (or "%40") becomes
// "<redacted>@", a scheme other than http(s) and a port that is not a
// number become "<redacted>" (with what follows such a port: "user:pa/ss"
// would go on in the path), so do a host with characters no host has and a
// path with characters no repository path has ("team/user:password"), and
// a query or fragment is dropped.
func SafeKey(key string) string {
	if ValidateKey(key) == nil {
		return key
	}
	return redactInvalid(key)
}

// SafeKeys is SafeKey of each key, for a list in a log field.
func SafeKeys(keys []string) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = SafeKey(k)
	}
	return out
}

func redactInvalid(key string) string {
	var out strings.Builder
	rest := key
	// An http(s) scheme at the start is not a secret; anything before a
	// later "://" may be ("user:password://host").
	if scheme, ok := httpScheme(rest); ok {
		out.WriteString(rest[:len(scheme)])
		rest = rest[len(scheme):]
	}
	if end := userInfoEnd(rest); end >= 0 {
		out.WriteString(redacted + "@")
		rest = rest[end:]
	}
	if i := strings.Index(rest, "://"); i >= 0 {
		switch scheme := rest[:i]; {
		case isHTTP(scheme):
			out.WriteString(scheme + "://")
		case isScheme(scheme):
			out.WriteString(redacted + "://")
		default:
			// Not a scheme at all: the user-info of a key whose '@' is
			// missing, perhaps with more of it after the "://".
			out.WriteString(redacted)
			return out.String()
		}
		rest = rest[i+3:]
	}
	if i := strings.IndexAny(rest, "?#"); i >= 0 {
		rest = rest[:i]
	}
	hostport, path, hasPath := strings.Cut(rest, "/")
	hp, keepPath := redactHostPort(hostport)
	out.WriteString(hp)
	switch {
	case !hasPath:
	case keepPath && strings.IndexFunc(path, func(r rune) bool { return !isPathRune(r) }) < 0:
		out.WriteString("/" + path)
	default:
		out.WriteString("/" + redacted)
	}
	return out.String()
}

// userInfoEnd returns the index just after the last '@' of s, or after
// its percent-encoding "%40", or -1 when s has neither.
func userInfoEnd(s string) int {
	end := -1
	if i := strings.LastIndex(s, "@"); i >= 0 {
		end = i + 1
	}
	if i := strings.LastIndex(s, "%40"); i >= 0 && i+3 > end {
		end = i + 3
	}
	return end
}

// redactHostPort prints a host[:port] of an invalid key, and says whether
// the path after it can be printed: not after a port that is not a number,
// as that is more likely "user:password" with the password going on.
func redactHostPort(hostport string) (string, bool) {
	host, port, hasPort := strings.Cut(hostport, ":")
	if strings.HasPrefix(hostport, "[") {
		end := strings.Index(hostport, "]")
		if end < 0 {
			return redacted, false
		}
		host = redacted
		if a, err := netip.ParseAddr(hostport[1:end]); err == nil && a.Is6() && a.Zone() == "" {
			host = hostport[:end+1]
		}
		after := hostport[end+1:]
		port, hasPort = strings.CutPrefix(after, ":")
		if after != "" && !hasPort {
			return host + redacted, false
		}
	}
	if !isHostName(host) {
		host = redacted
	}
	if !hasPort {
		return host, true
	}
	if port != "" && strings.Trim(port, "0123456789") == "" {
		return host + ":" + port, true
	}
	return host + ":" + redacted, false
}

// isHostName reports a host name as a key may spell it (globs included),
// or a bracketed IPv6 address already checked.
func isHostName(host string) bool {
	if strings.HasPrefix(host, "[") || host == redacted {
		return true
	}
	for _, r := range host {
		if r != '.' && !isHostRune(r) {
			return false
		}
	}
	return true
}

// httpScheme returns the http:// or https:// s starts with (any case).
func httpScheme(s string) (string, bool) {
	if i := strings.Index(s, "://"); i >= 0 && isHTTP(s[:i]) {
		return s[:i+3], true
	}
	return "", false
}

func isHTTP(scheme string) bool {
	return strings.EqualFold(scheme, "http") || strings.EqualFold(scheme, "https")
}

// isScheme reports a URL scheme's syntax (RFC 3986: a letter, then
// letters, digits, '+', '-' or '.'); "user:password" is not one.
func isScheme(s string) bool {
	if s == "" || !('a' <= s[0]|0x20 && s[0]|0x20 <= 'z') {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c|0x20 && c|0x20 <= 'z' || '0' <= c && c <= '9' || c == '+' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

// SafeUsername is a username as every output prints it: "<redacted>" when
// it may be the secret itself — it is the password or holds it, or there
// is no password (a token passed as the username) — else as it is.
func SafeUsername(user, password string) string {
	if user != "" && (password == "" || strings.Contains(user, password)) {
		return redacted
	}
	return user
}
