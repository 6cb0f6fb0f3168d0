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
	"sort"
	"strings"
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
func (e Entry) String() string { return fmt.Sprintf("Entry{username=%q}", e.Username) }

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
	b := make([]byte, 0, 64)
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

// Parse validates a whole document and returns its entries sorted by key,
// each key as spelled. Either every entry is good and the Set is returned,
// or a *ValidationError names each bad one. Two keys of one document that
// name the same registry are not an error (the kubelet tries both); they
// are returned as clashes, with the one the docker CLI's file gets as the
// winner.
func Parse(data []byte, format Format) (Set, []Clash, error) {
	if len(data) > MaxSize {
		return nil, nil, invalid("", "document is %d bytes, larger than the 1 MiB a Secret may hold", len(data))
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, nil, invalid("", "document is empty")
	}
	var top any
	if err := json.Unmarshal(data, &top); err != nil {
		return nil, nil, invalid("", "not valid JSON (%s)", describeJSONError(err))
	}
	obj, ok := top.(map[string]any)
	if !ok {
		return nil, nil, invalid("", "not a JSON object but %s", jsonKind(top))
	}

	var raw map[string]any
	switch format {
	case ConfigJSON:
		auths, present := obj["auths"]
		if !present {
			if looksLegacy(obj) {
				return nil, nil, invalid("", `no "auths" object; this looks like legacy .dockercfg content, which belongs in a kubernetes.io/dockercfg Secret`)
			}
			return nil, nil, invalid("", `no "auths" object`)
		}
		raw, ok = auths.(map[string]any)
		if !ok {
			return nil, nil, invalid("", `"auths" is %s, not an object`, jsonKind(auths))
		}
	case Legacy:
		if auths, isObj := obj["auths"].(map[string]any); isObj && looksLegacy(auths) {
			return nil, nil, invalid("", `has an "auths" object; this is .dockerconfigjson content, which belongs in a kubernetes.io/dockerconfigjson Secret`)
		}
		raw = obj
	default:
		return nil, nil, fmt.Errorf("unknown format %d", format)
	}

	keys := make([]string, 0, len(raw))
	for k := range raw {
		keys = append(keys, k)
	}
	sort.Strings(keys)

	var problems []Problem
	set := make(Set, 0, len(keys))
	for _, key := range keys {
		if err := ValidateKey(key); err != nil {
			problems = append(problems, Problem{Key: key, Reason: err.Error()})
			continue
		}
		entry, reason := parseEntry(raw[key])
		if reason != "" {
			problems = append(problems, Problem{Key: key, Reason: reason})
			continue
		}
		set = append(set, Item{Key: key, Entry: entry})
	}
	if len(problems) > 0 {
		return nil, nil, &ValidationError{Problems: problems}
	}
	return set, inSourceClashes(set), nil
}

// looksLegacy reports whether every value of obj is an object carrying a
// credential field: the shape of a registry map.
func looksLegacy(obj map[string]any) bool {
	if len(obj) == 0 {
		return false
	}
	for _, v := range obj {
		m, ok := v.(map[string]any)
		if !ok {
			return false
		}
		_, a := m["auth"]
		_, u := m["username"]
		if !a && !u {
			return false
		}
	}
	return true
}

func parseEntry(v any) (Entry, string) {
	m, ok := v.(map[string]any)
	if !ok {
		return Entry{}, fmt.Sprintf("entry is %s, not an object", jsonKind(v))
	}
	str := func(field string) (string, string) {
		fv, present := m[field]
		if !present || fv == nil {
			return "", ""
		}
		s, ok := fv.(string)
		if !ok {
			return "", fmt.Sprintf("%q is %s, not a string", field, jsonKind(fv))
		}
		return s, ""
	}
	var w wireEntry
	for _, f := range []struct {
		name string
		dst  *string
	}{
		{"auth", &w.Auth}, {"username", &w.Username}, {"password", &w.Password},
		{"email", &w.Email}, {"identitytoken", &w.IdentityToken}, {"registrytoken", &w.RegistryToken},
	} {
		s, reason := str(f.name)
		if reason != "" {
			return Entry{}, reason
		}
		*f.dst = s
	}

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
	s := strings.TrimSpace(auth)
	var (
		decoded []byte
		err     error
	)
	if strings.HasSuffix(s, "=") {
		decoded, err = base64.StdEncoding.DecodeString(s)
	} else {
		decoded, err = base64.RawStdEncoding.DecodeString(s)
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

func jsonKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		return "a boolean"
	case float64:
		return "a number"
	case string:
		return "a string"
	case []any:
		return "an array"
	case map[string]any:
		return "an object"
	}
	return "of an unknown type"
}
