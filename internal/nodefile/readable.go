package nodefile

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"strings"

	"github.com/nodecreds/nodecreds/internal/dockercfg"
	"github.com/nodecreds/nodecreds/internal/jsonwalk"
)

// refusals is what in a parsed file the kubelet's decoding refuses
// (credentialprovider: encoding/json into DockerConfigJSON, whose entries
// decode auth as they are read and whose HttpHeaders are strings): one is
// enough for it to read none of the file, nodecreds' entries included. The
// docker CLI refuses the same, but for an earlier duplicate of a key, which
// it never decodes.
type refusals struct {
	entries map[string]string // key → why its entry (the last of that key) is refused
	headers string            // the HttpHeaders member, when it is not an object of strings
	// any is set when any entry read was refused, one a later entry of its
	// key (or a null "auths") replaced included: the kubelet decodes each
	// as it reads it, so the file as it is cannot be read even if the
	// document parsed from it could.
	any bool
}

// entryRefusal says why the kubelet refuses an auths entry ("" when it
// reads it): a field it decodes that is not a string, or an auth that does
// not decode to user:password.
func entryRefusal(raw []byte) string {
	if raw[0] != '{' {
		return "" // null: an empty entry
	}
	why, auth := "", ""
	jsonwalk.EachMember(raw, 0, func(key, value []byte) {
		for _, f := range []string{"auth", "username", "password", "email"} {
			if !jsonwalk.Names(key, f) {
				continue
			}
			switch value[0] {
			case 'n':
			case '"':
				if f == "auth" {
					auth = jsonwalk.Unquote(value)
				}
			default:
				why = fmt.Sprintf("has %q of the wrong type", f)
			}
		}
	})
	if why != "" || auth == "" {
		return why
	}
	dec := base64.RawStdEncoding
	if strings.HasSuffix(strings.TrimSpace(auth), "=") {
		dec = base64.StdEncoding
	}
	if b, err := dec.DecodeString(auth); err != nil || !bytes.Contains(b, []byte(":")) {
		return `has an "auth" that does not decode to user:password`
	}
	return ""
}

// headersRefusal reports whether an HttpHeaders value is one the kubelet
// refuses (anything but null or an object of strings).
func headersRefusal(value []byte) bool {
	switch value[0] {
	case 'n':
		return false
	case '{':
	default:
		return true
	}
	bad := false
	jsonwalk.EachMember(value, 0, func(_, v []byte) {
		bad = bad || v[0] != '"' && v[0] != 'n'
	})
	return bad
}

// note records the verdict on one auths entry as the file is read.
func (r *refusals) note(key string, raw []byte) {
	why := entryRefusal(raw)
	if why == "" && r.entries[key] == "" {
		return
	}
	if r.entries == nil {
		r.entries = map[string]string{}
	}
	r.entries[key] = why
	r.any = r.any || why != ""
}

// still says why the kubelet would refuse merged, a document merged from
// orig, the file read: a refused entry of orig still in it as it was, or
// its refused HttpHeaders; "" when it would read it.
func (orig *document) still(merged *document) string {
	for key, why := range orig.refused.entries {
		if why == "" {
			continue
		}
		if raw, ok := merged.auths[key]; ok && bytes.Equal(raw, orig.auths[key]) {
			return fmt.Sprintf("entry %q %s", dockercfg.SafeKey(key), why)
		}
	}
	if h := orig.refused.headers; h != "" {
		if _, ok := merged.top[h]; ok {
			return fmt.Sprintf("%q is not an object of strings", h)
		}
	}
	return ""
}
