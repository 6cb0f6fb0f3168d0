package hoststoml

import (
	"fmt"
	"strings"
)

// Host is one host containerd tries for a registry, as a hosts.toml names
// it, with what `nodecreds check` reports of it.
type Host struct {
	// Section is the key of its `[host."<Section>"]` table; "" for the top
	// level (`server`, or the registry itself).
	Section string
	// Scheme and Host (host[:port]) are where containerd sends its
	// requests; Scheme is "" for a top level without `server`, whose
	// scheme containerd chooses (https, or http for a loopback host).
	Scheme, Host string
	// Authorization holds the values of its Authorization header, one per
	// header line sent (formatted as [redacted]); nil when it has none.
	Authorization []Secret
	// SkipVerify: TLS to it is not verified.
	SkipVerify bool
}

// Hosts lists the hosts containerd tries for registry (host[:port] as an
// image reference names it, docker.io for Docker Hub) when it reads data
// for it, in containerd's order (getSortedHosts, parseHostsFile
// in 2.x; 1.6 sorts by position too): each `[host."…"]` table as the file
// orders them, a host counted again where its tables are not adjacent, then
// the top level. noHostTable: containerd 1.6 ignores the file. An error
// names a line, never a value.
func Hosts(data []byte, registry string) (hosts []Host, noHostTable bool, err error) {
	d, err := parseDocument(data)
	if err != nil {
		return nil, false, err
	}
	prev := ""
	for _, t := range d.tables {
		if t.array || len(t.path) < 2 || t.path[0] != "host" || t.path[1] == prev {
			continue
		}
		prev = t.path[1]
		u, err := hostURL(prev)
		if err != nil {
			return nil, false, fmt.Errorf("a host key is not a URL containerd can parse (line %d)", d.line(t.lineStart))
		}
		table, _ := lookup(d.decoded, []string{"host", prev}).(map[string]any)
		if !pulls(table) {
			continue
		}
		hosts = append(hosts, describe(prev, u.Scheme, u.Host, table))
	}
	host, scheme, err := d.server()
	if err != nil {
		return nil, false, err
	}
	if host == "" {
		host = defaultHost(registry)
		if host == "registry-1.docker.io" {
			scheme = "https"
		}
	}
	if pulls(d.decoded) {
		hosts = append(hosts, describe("", scheme, host, d.decoded))
	}
	return hosts, !hasHostTable(d.decoded), nil
}

// pulls reports whether containerd tries a host for pulls: capabilities
// unset (every capability), or naming pull or resolve. A push-only host is
// skipped (hosts.go filters by HostCapabilityResolve and Pull).
func pulls(table map[string]any) bool {
	caps, ok := table["capabilities"].([]any)
	if !ok {
		return true
	}
	for _, c := range caps {
		if c == "pull" || c == "resolve" {
			return true
		}
	}
	return false
}

// describe reads a host's table: its Authorization values (any spelling
// of the key, as containerd sends each as written) and skip_verify.
func describe(section, scheme, host string, table map[string]any) Host {
	h := Host{Section: section, Scheme: scheme, Host: host}
	for k, v := range table {
		if strings.EqualFold(k, "skip_verify") && v != false {
			h.SkipVerify = true
		}
	}
	hdr, _ := table["header"].(map[string]any)
	for k, v := range hdr {
		if !isAuthorization(k) {
			continue
		}
		switch v := v.(type) {
		case string:
			h.Authorization = append(h.Authorization, Secret(v))
		case []any:
			for _, x := range v {
				if s, ok := x.(string); ok {
					h.Authorization = append(h.Authorization, Secret(s))
				}
			}
		}
	}
	return h
}

// Spellings are the folder names containerd tries for registry before
// _default, as hostPaths does (1.6.20 and 2.4): hostDirectory's form first
// when it differs, then the name itself. hostDirectory cuts at the last
// ':' whatever comes before it, so an IPv6 literal without a port has one
// too ("[2001:db8::5]" → "[2001:db8:_5]_").
func Spellings(registry string) []string {
	if i := strings.LastIndex(registry, ":"); i > 0 {
		return []string{registry[:i] + "_" + registry[i+1:] + "_", registry}
	}
	return []string{registry}
}
