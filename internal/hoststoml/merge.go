package hoststoml

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/url"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"
)

// FileName is the file containerd reads in each host folder.
const FileName = "hosts.toml"

// DefaultFolder is the folder whose hosts.toml applies to every registry
// without one of its own; nodecreds never writes it.
const DefaultFolder = "_default"

// ErrDefaultFolder is returned for the `_default` folder.
var ErrDefaultFolder = errors.New("hosts.toml in _default applies to every registry; nodecreds does not write it")

// Options says what nodecreds holds for one hosts.toml.
type Options struct {
	// Headers maps a host as containerd sends requests to it (host[:port],
	// the Host of the server or mirror URL; registry-1.docker.io for
	// docker.io) to the whole Authorization header value for it.
	Headers map[string]string
	// Scheme of the server in a file created here: "https" or "http" as the
	// credentials key says; empty means containerd's own default (http for
	// localhost and loopback addresses, https otherwise).
	Scheme string
	// PlainHTTP names the hosts of Headers whose header may go into a
	// plain-HTTP section (a `http://` host key or server), where it crosses
	// the network in clear: those whose credentials key itself says
	// http://, and loopback hosts of a key without a scheme (the traffic
	// never leaves the node). A file created here for Scheme "http", or ""
	// on a loopback host, counts its server as named.
	PlainHTTP map[string]bool
}

// Action is what was done to one host's Authorization.
type Action string

const (
	// Replaced means an Authorization value was there and was replaced.
	Replaced Action = "replaced"
	// AddedKey means the key was added to a header table that was there.
	AddedKey Action = "added-key"
	// AddedTable means a header table holding only the key was added.
	AddedTable Action = "added-table"
)

// Secret is text that may hold a credential: formatted as [redacted],
// marshalled (into the root-only state file) as itself.
type Secret string

// Format keeps the value out of every fmt verb.
func (Secret) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte("[redacted]")) }

// Change records one host's Authorization edit, so that Restore can put
// back what was there.
type Change struct {
	// Section is the key of the `[host."<Section>"]` table, or "" for the top level.
	Section string `json:"section"`
	Action  Action `json:"action"`
	// Previous is the value as it was written (TOML text), for Replaced.
	Previous Secret `json:"previous,omitempty"`
	// LeadingNewline: a newline was added before an added table because
	// the file did not end with one.
	LeadingNewline bool `json:"leadingNewline,omitempty"`
	// Ours is the Fingerprint of the value nodecreds wrote, so that a value
	// someone else put there since is told from ours and left alone.
	Ours string `json:"ours,omitempty"`
}

// Fingerprint is a digest of a header value as nodecreds wrote it; the
// state keeps it, never the value.
func Fingerprint(value string) string {
	sum := sha256.Sum256([]byte("nodecreds hosts.toml Authorization\x00" + value))
	return hex.EncodeToString(sum[:16])
}

// Record is what nodecreds changed in one hosts.toml since it first touched it.
type Record struct {
	// Created: there was no file; Restore removes it when nothing else was added.
	Created bool     `json:"created,omitempty"`
	Changes []Change `json:"changes,omitempty"`
	// Pending: recorded before the write, not yet seen in the file. After
	// a crash between the two, a change whose value is not ours in the
	// file never happened, and is dropped (Confirm).
	Pending bool `json:"pending,omitempty"`
}

// Then returns r followed by a later merge's record: per host the first
// change is kept, since that one knows what was there before nodecreds.
func (r Record) Then(later Record) Record {
	out := Record{Created: r.Created || later.Created, Changes: slices.Clone(r.Changes)}
	for _, c := range later.Changes {
		i := slices.IndexFunc(out.Changes, func(o Change) bool { return o.Section == c.Section })
		if i < 0 {
			out.Changes = append(out.Changes, c)
			continue
		}
		out.Changes[i].Ours = c.Ours // the value there now is the later one
	}
	return out
}

// Result is a merged hosts.toml.
type Result struct {
	// Data is the new file; nil when there was no file and none is needed.
	Data []byte
	// Changed reports whether Data differs from the input.
	Changed bool
	// Record of this merge's edits (combine with the stored one with Then).
	Record Record
	// NoHostTable: the file has no `[host."…"]` table, so containerd 1.6
	// ignores it ("invalid `host` tree"), headers included.
	NoHostTable bool
	// Hosts are the hosts of Headers that have their header in the file.
	Hosts map[string]bool
	// Notes say why a section naming a host held got no header (never a
	// value).
	Notes []string
}

// FolderHost returns the registry host a certs.d folder is for: `host_port_`
// and `host:port` both name host:port.
func FolderHost(folder string) (string, error) {
	if folder == DefaultFolder {
		return "", ErrDefaultFolder
	}
	if folder == "" || strings.ContainsAny(folder, "/\\") || folder == "." || folder == ".." {
		return "", fmt.Errorf("folder %q is not a registry host", folder)
	}
	if strings.HasSuffix(folder, "_") {
		body := folder[:len(folder)-1]
		if i := strings.LastIndex(body, "_"); i > 0 && isPort(body[i+1:]) {
			return body[:i] + ":" + body[i+1:], nil
		}
	}
	return folder, nil
}

func isPort(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}

// hostOf is the host containerd sends a server or host key's requests to
// (parseHostConfig: no "http" prefix → https://).
func hostOf(server string) (string, error) {
	if !strings.HasPrefix(server, "http") {
		server = "https://" + server
	}
	u, err := url.Parse(server)
	if err != nil {
		return "", err
	}
	return u.Host, nil
}

// defaultHost is the host containerd uses for a folder's top level without
// a server.
func defaultHost(folderHost string) string {
	if folderHost == "docker.io" {
		return "registry-1.docker.io"
	}
	return folderHost
}

// IsLocalhost reports whether host[:port] is localhost or a loopback
// address, which containerd talks plain HTTP to by default.
func IsLocalhost(host string) bool { return isLocalhost(host) }

func isLocalhost(host string) bool {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Skeleton is the file Merge creates for a registry before its header:
// the registry itself as server and a host table of its own (containerd
// 1.6 reads headers only from a host table).
func Skeleton(folder, scheme string) ([]byte, error) {
	fh, err := FolderHost(folder)
	if err != nil {
		return nil, err
	}
	host := defaultHost(fh)
	switch scheme {
	case "":
		scheme = "https"
		if isLocalhost(host) {
			scheme = "http"
		}
	case "http", "https":
	default:
		return nil, fmt.Errorf("scheme %q is neither http nor https", scheme)
	}
	server := scheme + "://" + host
	if h, err := hostOf(server); err != nil || h != host || !validHost.MatchString(host) {
		return nil, fmt.Errorf("folder %q does not name a registry host", folder)
	}
	q := quote(server)
	return []byte("# Written by nodecreds for the Authorization header of this registry.\n" +
		"server = " + q + "\n\n" +
		"[host." + q + "]\n" +
		"  capabilities = [\"pull\", \"resolve\"]\n"), nil
}

// validHost is what a registry host[:port] may be made of (a DNS name, an
// IPv4 or a bracketed IPv6 address), so that it is safe inside a quoted key.
var validHost = regexp.MustCompile(`^([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]+)?$`)

// dnsName is a DNS name: labels of letters, digits and inner hyphens.
var dnsName = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$`)

// ValidHost reports whether hostport is a registry host containerd can
// look up by exactly one canonical folder name: a DNS name, an IPv4
// address or a bracketed IPv6 address, with an optional port 1-65535.
// Anything else (an underscore, a `host_port_` spelling, a path) is
// refused: such a folder would shadow another host's configuration.
func ValidHost(hostport string) bool {
	host, port := hostport, ""
	if i := strings.LastIndex(hostport, ":"); i >= 0 && !strings.HasSuffix(hostport, "]") {
		host, port = hostport[:i], hostport[i+1:]
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 || !isPort(port) {
			return false
		}
	}
	if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
		ip := net.ParseIP(host[1 : len(host)-1])
		return ip != nil && ip.To4() == nil
	}
	return len(host) <= 253 && dnsName.MatchString(host)
}

// Merge sets the Authorization header of every host in opts.Headers that
// existing (nil: no file) routes to, and keeps everything else byte for byte.
// folder is the certs.d folder's name. Invalid TOML is refused, unchanged.
func Merge(existing []byte, folder string, opts Options) (Result, error) {
	fh, err := FolderHost(folder)
	if err != nil {
		return Result{}, err
	}
	for _, v := range opts.Headers {
		if err := validValue(v); err != nil {
			return Result{}, err
		}
	}
	if existing == nil {
		return create(fh, folder, opts)
	}
	d, err := parseDocument(existing)
	if err != nil {
		return Result{}, err
	}
	sections, notes, err := d.sections(opts)
	if err != nil {
		return Result{}, err
	}
	var edits []edit
	var rec Record
	hosts := map[string]bool{}
	for _, s := range sections {
		e, c, err := d.setAuthorization(s.key, opts.Headers[s.host])
		if err != nil {
			return Result{}, err
		}
		hosts[s.host] = true
		if e != nil {
			edits = append(edits, *e)
			rec.Changes = append(rec.Changes, c)
		}
	}
	out := splice(existing, edits)
	res := Result{Data: out, Changed: len(edits) > 0, Record: rec, NoHostTable: !hasHostTable(d.decoded), Hosts: hosts, Notes: notes}
	if !res.Changed {
		return res, nil
	}
	want := map[string]string{}
	for _, s := range sections {
		want[s.key] = opts.Headers[s.host]
	}
	if err := verify(d.decoded, out, want); err != nil {
		return Result{}, err
	}
	return res, nil
}

// create is Merge for no file: the registry's own file, when it is held
// and its header can go into the server's section.
func create(fh, folder string, opts Options) (Result, error) {
	if _, ok := opts.Headers[defaultHost(fh)]; !ok {
		return Result{}, nil
	}
	skel, err := Skeleton(folder, opts.Scheme)
	if err != nil {
		return Result{}, err
	}
	if host := defaultHost(fh); opts.Scheme == "http" || opts.Scheme == "" && isLocalhost(host) {
		// The server written is plain HTTP because the key says so,
		// or it is a loopback address containerd talks HTTP to.
		opts.PlainHTTP = maps.Clone(opts.PlainHTTP)
		if opts.PlainHTTP == nil {
			opts.PlainHTTP = map[string]bool{}
		}
		opts.PlainHTTP[host] = true
	}
	res, err := Merge(skel, folder, opts)
	if err != nil {
		return Result{}, err
	}
	if !res.Hosts[defaultHost(fh)] {
		// The server's own section took no header (plain HTTP for a
		// key that does not say so): a file without one is no use.
		return Result{Notes: res.Notes}, nil
	}
	res.Record.Created = true
	return res, nil
}

func hasHostTable(decoded map[string]any) bool {
	_, ok := decoded["host"].(map[string]any)
	return ok
}

// section is a place in the file that holds a host's headers: key "" is the
// top level, otherwise the key of [host."<key>"].
type section struct {
	key  string
	host string
}

// sections lists the sections that get a header: those whose host we hold
// one for, reached over a scheme the credentials allow. notes say why a
// section naming a held host gets none.
//
// The top level gets one only where `server` names the host: without it,
// containerd sends the top level's requests to whichever name the folder
// was reached by (a folder linked under another name, _default), so a
// header there would go to every such alias.
func (d *document) sections(opts Options) ([]section, []string, error) {
	rootHost, rootScheme, err := d.server()
	if err != nil {
		return nil, nil, err
	}
	g := gate{opts: opts}
	hosts, _ := d.decoded["host"].(map[string]any)
	keys := make([]string, 0, len(hosts))
	for k := range hosts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var out []section
	rootHasTable := false
	for _, k := range keys {
		u, err := hostURL(k)
		if err != nil {
			return nil, nil, fmt.Errorf("a host key is not a URL containerd can parse (line %d)", d.line(d.hostLine(k)))
		}
		rootHasTable = rootHasTable || u.Host == rootHost
		what := fmt.Sprintf("the section of line %d", d.line(d.hostLine(k)))
		table, _ := hosts[k].(map[string]any)
		if _, ok := opts.Headers[u.Host]; ok && g.allowed(what, u.Host, u.Scheme) && g.verified(what, u.Host, table) {
			out = append(out, section{key: k, host: u.Host})
		}
	}
	// The top level is the fallback host. When a host table for the same
	// host carries the header (the form a created file has), the top level
	// gets one only if it has a header table already. It comes last, so
	// that a [header] added at the end of the file follows any host's.
	if _, ok := opts.Headers[rootHost]; ok && rootHost != "" {
		if _, hasHeader := d.decoded["header"]; (hasHeader || !rootHasTable) && g.allowed("the server", rootHost, rootScheme) && g.verified("the server", rootHost, d.decoded) {
			out = append(out, section{key: "", host: rootHost})
		}
	}
	return out, g.notes, nil
}

// server is the host and scheme the top level's `server` names ("" for
// none).
func (d *document) server() (host, scheme string, err error) {
	s, ok := d.decoded["server"]
	if !ok {
		return "", "", nil
	}
	server, isString := s.(string)
	if !isString {
		return "", "", errors.New("server is not a string")
	}
	if server == "" {
		return "", "", nil
	}
	u, err := hostURL(server)
	if err != nil {
		return "", "", errors.New("server is not a URL containerd can parse")
	}
	return u.Host, u.Scheme, nil
}

// gate decides whether a section naming a held host may carry its header,
// and notes why not.
type gate struct {
	opts  Options
	notes []string
}

func (g *gate) allowed(what, host, scheme string) bool {
	switch {
	case scheme == "https":
		return true
	case scheme == "http" && g.opts.PlainHTTP[host]:
		return true
	case scheme == "http":
		g.notes = append(g.notes, fmt.Sprintf("%s is plain HTTP (http://%s): a Basic header there crosses the network in clear, so nodecreds writes it only for a Secret key that says http://%s", what, host, host))
	default:
		g.notes = append(g.notes, fmt.Sprintf("%s has the scheme %q: no header written", what, scheme))
	}
	return false
}

// verified: skip_verify applies to its own section only (parseHostConfig),
// the top level's to the server; containerd decodes keys without regard to
// case. TLS that is not verified is clear text to whoever answers on the
// path, so no header goes there. A custom ca still verifies.
func (g *gate) verified(what, host string, table map[string]any) bool {
	for k, v := range table {
		if strings.EqualFold(k, "skip_verify") && v != false {
			g.notes = append(g.notes, fmt.Sprintf("%s sets skip_verify: TLS to %s is not verified, so a Basic header there goes to whoever answers; nodecreds writes none (trust the registry's certificate with `ca = \"<file>\"` in that section instead of skip_verify)", what, host))
			return false
		}
	}
	return true
}

// hostURL is the URL containerd sends a server or host key's requests to
// (parseHostConfig: no "http" prefix → https://), scheme lower-cased.
func hostURL(server string) (*url.URL, error) {
	if !strings.HasPrefix(server, "http") {
		server = "https://" + server
	}
	u, err := url.Parse(server)
	if err != nil {
		return nil, err
	}
	return u, nil
}

// hostLine is the offset of the first table or key naming host k.
func (d *document) hostLine(k string) int {
	for _, t := range d.tables {
		if len(t.path) >= 2 && t.path[0] == "host" && t.path[1] == k {
			return t.lineStart
		}
	}
	for _, kv := range d.kvs {
		if len(kv.path) >= 2 && kv.path[0] == "host" && kv.path[1] == k {
			return kv.keyStart
		}
	}
	return 0
}

func sectionPath(key string) []string {
	if key == "" {
		return nil
	}
	return []string{"host", key}
}

func isAuthorization(k string) bool { return http.CanonicalHeaderKey(k) == "Authorization" }

func hasPrefix(path, prefix []string) bool {
	return len(path) >= len(prefix) && slices.Equal(path[:len(prefix)], prefix)
}

// edit replaces src[start:end] with text.
type edit struct {
	start, end int
	text       string
}

// splice applies edits, which do not overlap; texts inserted at one offset
// come out in the order of edits.
func splice(src []byte, edits []edit) []byte {
	edits = slices.Clone(edits)
	slices.Reverse(edits)
	sort.SliceStable(edits, func(i, j int) bool { return edits[i].start > edits[j].start })
	out := slices.Clone(src)
	for _, e := range edits {
		out = slices.Concat(out[:e.start], []byte(e.text), out[e.end:])
	}
	return out
}

// authorizations returns the key/values holding the Authorization of a section.
func (d *document) authorizations(key string) []int {
	hdr := append(sectionPath(key), "header")
	var out []int
	for i, kv := range d.kvs {
		if len(kv.path) == len(hdr)+1 && hasPrefix(kv.path, hdr) && isAuthorization(kv.path[len(hdr)]) {
			out = append(out, i)
		}
	}
	return out
}

func where(key string) string {
	if key == "" {
		return "the top-level header"
	}
	return "the header of a host"
}

// setAuthorization plans the edit that makes the section's Authorization
// value; nil when it already is.
func (d *document) setAuthorization(key, value string) (*edit, Change, error) {
	q := quote(value)
	auths := d.authorizations(key)
	if len(auths) > 1 {
		return nil, Change{}, fmt.Errorf("%s has more than one Authorization key (line %d)", where(key), d.line(d.kvs[auths[1]].keyStart))
	}
	if len(auths) == 1 {
		kv := d.kvs[auths[0]]
		if kv.valueKind != unstable.String && kv.valueKind != unstable.Array {
			return nil, Change{}, fmt.Errorf("%s has an Authorization that is neither a string nor an array (line %d)", where(key), d.line(kv.keyStart))
		}
		prev := string(d.src[kv.valStart:kv.valEnd])
		if cur, ok := lookup(d.decoded, append(sectionPath(key), "header", kv.path[len(kv.path)-1])).(string); ok && cur == value {
			return nil, Change{}, nil
		}
		return &edit{kv.valStart, kv.valEnd, q}, Change{Section: key, Action: Replaced, Previous: Secret(prev), Ours: Fingerprint(value)}, nil
	}
	e, c, err := d.addAuthorization(key, q)
	c.Ours = Fingerprint(value)
	return e, c, err
}

// addAuthorization plans adding the key (quoted value q) to a section
// that has none.
func (d *document) addAuthorization(key, q string) (*edit, Change, error) {
	hdr := append(sectionPath(key), "header")
	// A header table of its own: add the key after its last line.
	for _, t := range d.tables {
		if !t.array && slices.Equal(t.path, hdr) {
			in := d.lineIndent(t.lineStart) + "  "
			if t.lastKV >= 0 {
				kv := d.kvs[t.lastKV]
				in = d.indent(kv.lineStart, kv.keyStart)
			}
			return d.insertLine(t.bodyEnd, in+"Authorization = "+q, key, AddedKey)
		}
	}
	// Headers given as dotted keys (header.X = ...): add header.Authorization
	// after the last of them, in the same table.
	if last := d.lastKV(func(kv keyValue) bool {
		return len(kv.path) == len(hdr)+1 && hasPrefix(kv.path, hdr) && len(kv.keyRaw) >= 2
	}); last >= 0 {
		kv := d.kvs[last]
		if kv.inline {
			return nil, Change{}, fmt.Errorf("%s is written inside an inline table (line %d); add an Authorization key there by hand", where(key), d.line(kv.keyStart))
		}
		k := strings.Join(kv.keyRaw[:len(kv.keyRaw)-1], ".") + ".Authorization"
		return d.insertLine(kv.lineEnd, d.indent(kv.lineStart, kv.keyStart)+k+" = "+q, key, AddedKey)
	}
	// Anything else already defining this header table (an inline table, a
	// sub-table) is not edited.
	for _, kv := range d.kvs {
		if hasPrefix(kv.path, hdr) {
			return nil, Change{}, fmt.Errorf("%s is written in a form nodecreds does not edit (line %d): write it as a [… .header] table", where(key), d.line(kv.keyStart))
		}
	}
	for _, t := range d.tables {
		if hasPrefix(t.path, hdr) {
			return nil, Change{}, fmt.Errorf("%s is written in a form nodecreds does not edit (line %d)", where(key), d.line(t.lineStart))
		}
	}
	// No header yet: add a header table.
	if key == "" {
		return d.insertTable(len(d.src), "", "[header]", q, key)
	}
	for _, t := range d.tables {
		if !t.array && slices.Equal(t.path, sectionPath(key)) {
			return d.insertTable(t.bodyEnd, d.lineIndent(t.lineStart), "["+strings.Join(t.keyRaw, ".")+".header]", q, key)
		}
	}
	return nil, Change{}, fmt.Errorf("a host we hold credentials for has no [host.\"…\"] table of its own (line %d); nodecreds adds headers only there", d.line(d.hostLine(key)))
}

func (d *document) lastKV(match func(keyValue) bool) int {
	last := -1
	for i, kv := range d.kvs {
		if match(kv) {
			last = i
		}
	}
	return last
}

// insertLine adds line at offset, which is the start of a line or the end
// of a file that may lack its last newline.
func (d *document) insertLine(offset int, line, key string, action Action) (*edit, Change, error) {
	nl := d.newline()
	text := line + nl
	c := Change{Section: key, Action: action}
	if offset > 0 && offset == len(d.src) && d.src[offset-1] != '\n' && !d.eofNewline {
		text = nl + text
		c.LeadingNewline = true
		d.eofNewline = true
	}
	return &edit{offset, offset, text}, c, nil
}

func (d *document) insertTable(offset int, indent, header, q, key string) (*edit, Change, error) {
	return d.insertLine(offset, indent+header+d.newline()+indent+"  Authorization = "+q, key, AddedTable)
}

// lookup walks a decoded document.
func lookup(m map[string]any, path []string) any {
	var cur any = m
	for _, p := range path {
		mm, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = mm[p]
	}
	return cur
}

// validValue accepts what can be an HTTP header value and a TOML basic
// string: no control characters but tab, valid UTF-8.
func validValue(v string) error {
	if v == "" || !utf8.ValidString(v) {
		return errors.New("an Authorization value is empty or not UTF-8")
	}
	for _, r := range v {
		if (r < 0x20 && r != '\t') || r == 0x7f {
			return errors.New("an Authorization value holds a control character")
		}
	}
	return nil
}

// quote writes v as a TOML basic string (validValue has run).
func quote(v string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range v {
		switch r {
		case '"', '\\':
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	b.WriteByte('"')
	return b.String()
}

// verify decodes out and compares it with the input: equal once every
// section's Authorization is taken out of both, and each is the value
// wanted (nil want: restored, so only the equality is checked).
func verify(in map[string]any, out []byte, want map[string]string) error {
	var got map[string]any
	if err := toml.Unmarshal(out, &got); err != nil {
		return errors.New("the edited file would not be valid TOML; left unchanged")
	}
	a, b := deepClone(in), deepClone(got)
	for key, value := range want {
		hdr := append(sectionPath(key), "header")
		if value != "" {
			h, _ := lookup(b, hdr).(map[string]any)
			n := 0
			for k, v := range h {
				if isAuthorization(k) {
					n++
					if s, ok := v.(string); !ok || s != value {
						return errors.New("the edited file does not hold the Authorization wanted; left unchanged")
					}
				}
			}
			if n != 1 {
				return errors.New("the edited file does not hold exactly one Authorization; left unchanged")
			}
		}
		stripAuthorization(a, hdr)
		stripAuthorization(b, hdr)
	}
	if !reflect.DeepEqual(a, b) {
		return errors.New("the edit would change more than the Authorization header; left unchanged")
	}
	return nil
}

// stripAuthorization removes the Authorization key from the header table at
// path, and the table when that leaves it empty.
func stripAuthorization(m map[string]any, path []string) {
	parent, _ := lookup(m, path[:len(path)-1]).(map[string]any)
	if parent == nil {
		return
	}
	h, ok := parent[path[len(path)-1]].(map[string]any)
	if !ok {
		return
	}
	for k := range h {
		if isAuthorization(k) {
			delete(h, k)
		}
	}
	if len(h) == 0 {
		delete(parent, path[len(path)-1])
	}
}

func deepClone(v map[string]any) map[string]any {
	out := make(map[string]any, len(v))
	for k, x := range v {
		out[k] = cloneValue(x)
	}
	return out
}

func cloneValue(x any) any {
	switch t := x.(type) {
	case map[string]any:
		return deepClone(t)
	case []any:
		s := make([]any, len(t))
		for i, e := range t {
			s[i] = cloneValue(e)
		}
		return s
	default:
		return x
	}
}
