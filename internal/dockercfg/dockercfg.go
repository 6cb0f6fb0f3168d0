// Package dockercfg parses, validates, normalises and encodes registry
// credentials in the two formats Kubernetes Secrets carry them in:
// kubernetes.io/dockerconfigjson ({"auths":{...}}) and the legacy
// kubernetes.io/dockercfg (the bare map).
//
// Nothing in this package ever puts a credential into an error or a
// String(): errors name the registry key and what is wrong, never the value.
package dockercfg

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/nodecreds/nodecreds/internal/jsonwalk"
)

// Format is the shape of a credentials document.
type Format int

const (
	// ConfigJSON is {"auths": {"<registry>": {...}}}, as in .dockerconfigjson
	// and config.json.
	ConfigJSON Format = iota
	// Legacy is {"<registry>": {...}}, as in .dockercfg.
	Legacy
)

// Secret data keys of the two Secret types, which are also the file names in
// a mounted Secret folder.
const (
	KeyConfigJSON = ".dockerconfigjson"
	KeyLegacy     = ".dockercfg"
)

// MaxSize is the largest document accepted: the API server refuses Secrets
// over 1 MiB, so anything bigger is not a Secret we should trust.
const MaxSize = 1 << 20

// ErrInvalid is wrapped by every validation error.
var ErrInvalid = errors.New("invalid registry credentials")

// Entry is one registry's validated credentials.
type Entry struct {
	Username      string
	Password      string
	Email         string
	IdentityToken string
	RegistryToken string
}

// String never shows the password, the auth string or tokens, so an Entry
// that slips into a log line or error leaks nothing.
func (e Entry) String() string {
	return fmt.Sprintf("Entry{username=%q}", SafeUsername(e.Username, e.Password))
}

// GoString keeps %#v as safe as %v.
func (e Entry) GoString() string { return e.String() }

// Auth is the padded base64 of user:password that the docker CLI requires
// (it rebuilds username and password from it) and the kubelet accepts.
func (e Entry) Auth() string {
	return base64.StdEncoding.EncodeToString([]byte(e.Username + ":" + e.Password))
}

// wireEntry is the on-disk shape of an entry, shared by both consumers.
type wireEntry struct {
	Auth          string `json:"auth,omitempty"`
	Username      string `json:"username,omitempty"`
	Password      string `json:"password,omitempty"`
	Email         string `json:"email,omitempty"`
	IdentityToken string `json:"identitytoken,omitempty"`
	RegistryToken string `json:"registrytoken,omitempty"`
}

// MarshalJSON writes the entry as nodecreds puts it in a target: auth only
// (username and password are derived from it by both consumers), plus the
// optional fields carried through from the source.
// The output is compact with its keys sorted (auth, email, identitytoken,
// registrytoken), which nodefile relies on to fingerprint it cheaply. It is
// built by hand because files can hold thousands of entries.
func (e Entry) MarshalJSON() ([]byte, error) {
	// Sized for the usual entry, auth alone: a sync holds thousands.
	size := len(`{"auth":""}`) + base64.StdEncoding.EncodedLen(len(e.Username)+1+len(e.Password))
	for _, v := range []string{e.Email, e.IdentityToken, e.RegistryToken} {
		if v != "" {
			size += len(`,"identitytoken":""`) + len(v)
		}
	}
	b := make([]byte, 0, size)
	b = append(b, `{"auth":"`...)
	b = base64.StdEncoding.AppendEncode(b, []byte(e.Username+":"+e.Password))
	b = append(b, '"')
	for _, f := range []struct{ name, value string }{
		{"email", e.Email}, {"identitytoken", e.IdentityToken}, {"registrytoken", e.RegistryToken},
	} {
		if f.value == "" {
			continue
		}
		q, err := json.Marshal(f.value)
		if err != nil {
			return nil, err
		}
		b = append(b, `,"`+f.name+`":`...)
		b = append(b, q...)
	}
	return append(b, '}'), nil
}

// Item is one registry key with its entry. Key is kept as the source spelled
// it, because that is what the kubelet's file gets. Source names the source
// it came from (set by View).
type Item struct {
	Key    string
	Entry  Entry
	Source string
}

// Set is an ordered list of entries with unique keys; earlier items take
// precedence.
type Set []Item

// Keys returns the keys in order.
func (s Set) Keys() []string {
	keys := make([]string, len(s))
	for i, it := range s {
		keys[i] = it.Key
	}
	return keys
}

// Problem is one thing wrong with a document. It never holds a value.
type Problem struct {
	Key    string // registry key, empty for document-level problems
	Reason string
}

func (p Problem) String() string {
	if p.Key == "" {
		return p.Reason
	}
	return fmt.Sprintf("registry %q: %s", SafeKey(p.Key), p.Reason)
}

// ValidationError lists every problem of a document, so one report names all
// of them instead of the first.
type ValidationError struct {
	Problems []Problem
}

func (e *ValidationError) Error() string {
	parts := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		parts[i] = p.String()
	}
	return strings.Join(parts, "; ")
}

func (e *ValidationError) Unwrap() error { return ErrInvalid }

func invalid(key, format string, args ...any) *ValidationError {
	return &ValidationError{Problems: []Problem{{Key: key, Reason: fmt.Sprintf(format, args...)}}}
}

// MaxEntries is the most registry entries one source document may hold:
// the largest registry list measured here (docs/benchmarks.md). Each entry
// is held several times on its way to two node files (decoded, prepared,
// in each file's documents and fingerprints), about 1 KiB in all, so the
// 1 MiB the API server allows (some 50,000 tiny entries) would take the
// agent past its memory limit. The entries are counted before any is
// decoded, and a document with more is refused like any invalid one (the
// last good credentials stay in force). Measured in docs/benchmarks.md,
// "Memory: the largest inputs".
const MaxEntries = 10_000

// Parse validates a whole document and returns its entries sorted by key,
// each key as spelled. Either every entry is good and the Set is returned,
// or a *ValidationError names each bad one. Two keys of one document that
// name the same registry are not an error (the kubelet tries both); they
// are returned as clashes, with the one the docker CLI's file gets as the
// winner.
func Parse(data []byte, format Format) (Set, []Clash, error) {
	set, problems, err := decode(data, format)
	if err != nil {
		return nil, nil, err
	}
	if len(problems) > 0 {
		return nil, nil, &ValidationError{Problems: problems}
	}
	return set, inSourceClashes(set), nil
}

// decode reads a document as the kubelet reads a Secret of its format
// (credentialprovider/secrets: encoding/json into DockerConfigJSON or
// DockerConfig): every member naming the "auths" field, in any case,
// merged in order with a null starting afresh, the later of two equal keys
// winning, entry fields matched case-insensitively with a null leaving the
// field as it was. Whatever the kubelet would refuse (an entry of the wrong
// type, even one a later key replaces) is a problem, and so is whatever
// nodecreds cannot write faithfully. It walks the document in place
// (jsonwalk) rather than decoding it into map[string]any, which costs some
// 400 bytes per entry, and counts the entries before it builds any.
// Entries are returned sorted by key; problems in key order.
func decode(data []byte, format Format) (Set, []Problem, error) {
	if len(data) > MaxSize {
		return nil, nil, invalid("", "document is %d bytes, larger than the 1 MiB a Secret may hold", len(data))
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, nil, invalid("", "document is empty")
	}
	if !json.Valid(data) {
		return nil, nil, invalid("", "not valid JSON (%s)", describeJSONError(json.Unmarshal(data, &struct{}{})))
	}
	start := jsonwalk.SkipSpace(data, 0)
	if data[start] != '{' {
		return nil, nil, invalid("", "not a JSON object but %s", jsonwalk.Kind(data[start]))
	}
	var d decoder
	switch format {
	case ConfigJSON:
		if err := d.configJSON(data, start); err != nil {
			return nil, nil, err
		}
	case Legacy:
		if err := d.legacy(data, start); err != nil {
			return nil, nil, err
		}
	default:
		return nil, nil, fmt.Errorf("unknown format %d", format)
	}
	return d.result()
}

// decoder collects a document's entries as decode walks it.
type decoder struct {
	entries  []occurrence // of the auths field as it stands
	problems []Problem
}

// occurrence is one key of the document with its entry, where it stands.
type occurrence struct {
	key   string
	entry Entry
}

func (d *decoder) configJSON(data []byte, start int) error {
	n := 0
	jsonwalk.EachMember(data, start, func(key, value []byte) {
		if value[0] == '{' && jsonwalk.Names(key, "auths") {
			n += jsonwalk.CountMembers(value, 0)
		}
	})
	if n > MaxEntries {
		return tooMany(n)
	}
	var auths, null bool
	var kind string // of an "auths" that is neither an object nor null
	jsonwalk.EachMember(data, start, func(key, value []byte) {
		switch {
		case jsonwalk.Names(key, "auths"):
			auths = true
			switch value[0] {
			case 'n':
				d.entries, null = d.entries[:0], true
			case '{':
				if d.entries == nil {
					d.entries = make([]occurrence, 0, n)
				}
				d.collect(value)
				null = false
			default:
				kind = jsonwalk.Kind(value[0])
			}
		case jsonwalk.Names(key, "HttpHeaders"):
			// The kubelet decodes it too: a wrong type fails the Secret.
			if !stringObject(value) {
				kind = "HttpHeaders"
			}
		}
	})
	switch {
	case kind == "HttpHeaders":
		return invalid("", `"HttpHeaders" is not an object of strings, which the kubelet refuses`)
	case kind != "":
		return invalid("", `"auths" is %s, not an object`, kind)
	case !auths && looksLegacy(data, start):
		return invalid("", `no "auths" object; this looks like legacy .dockercfg content, which belongs in a kubernetes.io/dockercfg Secret`)
	case !auths:
		return invalid("", `no "auths" object`)
	case null:
		return invalid("", `"auths" is null, not an object`)
	}
	return nil
}

func (d *decoder) legacy(data []byte, start int) error {
	if n := jsonwalk.CountMembers(data, start); n > MaxEntries {
		return tooMany(n)
	}
	var wrapped bool
	jsonwalk.EachMember(data, start, func(key, value []byte) {
		if value[0] == '{' && jsonwalk.Unquote(key) == "auths" && looksLegacy(value, 0) {
			wrapped = true
		}
	})
	if wrapped {
		return invalid("", `has an "auths" object; this is .dockerconfigjson content, which belongs in a kubernetes.io/dockerconfigjson Secret`)
	}
	d.collect(data[start:])
	return nil
}

func tooMany(n int) error {
	return invalid("", "holds %d registry entries, more than the %d nodecreds accepts in one Secret (each agent holds them all in its memory)", n, MaxEntries)
}

// collect adds the members of the object obj as entries. Every one is
// checked, also one a later key replaces: the kubelet refuses the whole
// document for it.
func (d *decoder) collect(obj []byte) {
	jsonwalk.EachMember(obj, 0, func(key, value []byte) {
		k := jsonwalk.Unquote(key)
		e, reason := parseEntry(value)
		if reason != "" {
			d.problems = append(d.problems, Problem{Key: k, Reason: reason})
		}
		d.entries = append(d.entries, occurrence{key: k, entry: e})
	})
}

// result keeps the last entry of each key, in key order, and checks each
// key.
func (d *decoder) result() (Set, []Problem, error) {
	slices.SortStableFunc(d.entries, func(a, b occurrence) int { return strings.Compare(a.key, b.key) })
	set := make(Set, 0, len(d.entries))
	for i, o := range d.entries {
		if i+1 < len(d.entries) && d.entries[i+1].key == o.key {
			continue // a later one wins
		}
		if err := ValidateKey(o.key); err != nil {
			d.problems = append(d.problems, Problem{Key: o.key, Reason: err.Error()})
			continue
		}
		set = append(set, Item{Key: o.key, Entry: o.entry})
	}
	if len(d.problems) == 0 {
		return set, nil, nil
	}
	// One problem per key, in key order.
	slices.SortStableFunc(d.problems, func(a, b Problem) int { return strings.Compare(a.Key, b.Key) })
	problems := slices.CompactFunc(d.problems, func(a, b Problem) bool { return a.Key == b.Key })
	return nil, problems, nil
}

// looksLegacy reports whether every member of the object at data[start] is
// an object carrying a credential field: the shape of a registry map.
func looksLegacy(data []byte, start int) bool {
	n, creds := 0, 0
	jsonwalk.EachMember(data, start, func(_, value []byte) {
		n++
		if value[0] != '{' {
			return
		}
		found := false
		jsonwalk.EachMember(value, 0, func(key, _ []byte) {
			found = found || jsonwalk.Names(key, "auth") || jsonwalk.Names(key, "username")
		})
		if found {
			creds++
		}
	})
	return n > 0 && creds == n
}

// stringObject reports whether v is null or an object of strings and
// nulls: what encoding/json decodes into a map[string]string.
func stringObject(v []byte) bool {
	if v[0] == 'n' {
		return true
	}
	if v[0] != '{' {
		return false
	}
	ok := true
	jsonwalk.EachMember(v, 0, func(_, value []byte) {
		ok = ok && (value[0] == '"' || value[0] == 'n')
	})
	return ok
}

func parseEntry(v []byte) (Entry, string) {
	if v[0] != '{' {
		return Entry{}, fmt.Sprintf("entry is %s, not an object", jsonwalk.Kind(v[0]))
	}
	// The kubelet's fields (auth, username, password, email) and the docker
	// CLI's tokens.
	entryFields := [...]string{"auth", "username", "password", "email", "identitytoken", "registrytoken"}
	var values [len(entryFields)]string
	var reason string
	jsonwalk.EachMember(v, 0, func(key, value []byte) {
		for i, name := range entryFields {
			if !jsonwalk.Names(key, name) {
				continue
			}
			switch value[0] {
			case 'n': // encoding/json leaves the field as it was
			case '"':
				values[i] = jsonwalk.Unquote(value)
			default:
				if reason == "" {
					reason = fmt.Sprintf("%q is %s, not a string", name, jsonwalk.Kind(value[0]))
				}
			}
			return
		}
	})
	if reason != "" {
		return Entry{}, reason
	}
	w := wireEntry{Auth: values[0], Username: values[1], Password: values[2], Email: values[3], IdentityToken: values[4], RegistryToken: values[5]}

	e := Entry{Email: w.Email, IdentityToken: w.IdentityToken, RegistryToken: w.RegistryToken}
	switch {
	case w.Auth != "":
		// Both consumers let auth win over username/password.
		user, pass, reason := DecodeAuth(w.Auth)
		if reason != "" {
			return Entry{}, reason
		}
		e.Username, e.Password = user, pass
	case w.Username != "" || w.Password != "":
		if w.Username == "" {
			return Entry{}, `"username" is empty`
		}
		if strings.Contains(w.Username, ":") {
			return Entry{}, `"username" contains ':', which cannot be encoded in auth`
		}
		if w.Password == "" {
			return Entry{}, `"password" is missing or empty`
		}
		e.Username, e.Password = w.Username, w.Password
	default:
		return Entry{}, `no credentials: needs "auth" or "username" and "password"`
	}
	return e, ""
}

// DecodeAuth decodes an auth field the way the kubelet does (padded or
// unpadded standard base64) and applies the docker CLI's extra rule that the
// user is not empty. The reason it returns never contains the value.
func DecodeAuth(auth string) (user, pass, reason string) {
	var (
		decoded []byte
		err     error
	)
	// As the kubelet: white space decides the padding, and is then
	// decoded with the rest (base64 skips line breaks, refuses the rest).
	if strings.HasSuffix(strings.TrimSpace(auth), "=") {
		decoded, err = base64.StdEncoding.DecodeString(auth)
	} else {
		decoded, err = base64.RawStdEncoding.DecodeString(auth)
	}
	if err != nil {
		return "", "", `"auth" is not valid base64`
	}
	user, pass, ok := strings.Cut(string(decoded), ":")
	if !ok {
		return "", "", `"auth" does not decode to user:password (no ':')`
	}
	if user == "" {
		return "", "", `"auth" has an empty user name`
	}
	return user, pass, ""
}

func describeJSONError(err error) string {
	var syn *json.SyntaxError
	if !errors.As(err, &syn) {
		return "cannot decode"
	}
	// The syntax error's own text may quote the offending character, which
	// could be part of a secret; the offset is enough to find it.
	if strings.Contains(syn.Error(), "unexpected end") {
		return fmt.Sprintf("unexpected end of input at byte %d", syn.Offset)
	}
	return fmt.Sprintf("syntax error at byte %d", syn.Offset)
}
