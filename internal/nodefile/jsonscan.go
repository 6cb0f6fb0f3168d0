package nodefile

import (
	"encoding/json"
)

// The helpers below walk, compact and indent JSON that json.Valid has
// already accepted (or that nodecreds produced), in one pass without
// encoding/json's per-byte state machine: a node file can hold thousands of
// entries, and a sync reads, compares and writes every one. They are
// checked byte for byte against encoding/json by FuzzDocument.

// isSpace reports JSON's insignificant white space.
func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// skipSpace returns the index of the first non-space byte at or after i.
func skipSpace(b []byte, i int) int {
	for i < len(b) && isSpace(b[i]) {
		i++
	}
	return i
}

// stringEnd returns the index just past the string starting at b[i] ('"').
func stringEnd(b []byte, i int) int {
	for i++; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return i
}

// valueEnd returns the index just past the value starting at b[i].
func valueEnd(b []byte, i int) int {
	switch b[i] {
	case '"':
		return stringEnd(b, i)
	case '{', '[':
		depth := 0
		for ; i < len(b); i++ {
			switch b[i] {
			case '"':
				i = stringEnd(b, i) - 1
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return i + 1
				}
			}
		}
		return i
	default: // number, true, false, null
		for i < len(b) && !isSpace(b[i]) && b[i] != ',' && b[i] != '}' && b[i] != ']' {
			i++
		}
		return i
	}
}

// eachMember calls fn with the quoted key and the value (capped, so that
// appending to it can never write into b) of each member of the object
// starting at b[i] ('{').
func eachMember(b []byte, i int, fn func(key, value []byte)) {
	i = skipSpace(b, i+1)
	for i < len(b) && b[i] == '"' {
		ke := stringEnd(b, i)
		key := b[i:ke]
		i = skipSpace(b, skipSpace(b, ke)+1) // past ':'
		ve := valueEnd(b, i)
		fn(key, b[i:ve:ve])
		i = skipSpace(b, ve)
		if i < len(b) && b[i] == ',' {
			i = skipSpace(b, i+1)
		}
	}
}

// unquote decodes a quoted key as encoding/json does; plain ASCII without
// escapes, which is nearly every registry key, needs no decoding.
func unquote(q []byte) string {
	s := q[1 : len(q)-1]
	for _, c := range s {
		if c == '\\' || c >= 0x80 {
			var out string
			_ = json.Unmarshal(q, &out) // valid JSON: cannot fail
			return out
		}
	}
	return string(s)
}

// compact returns raw without insignificant white space, as json.Compact
// does; raw itself when there is none.
func compact(raw []byte) []byte {
	var out []byte
	in := false
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		switch {
		case in && c == '\\':
			if out != nil {
				out = append(out, c)
			}
			i++
			c = raw[i]
		case c == '"':
			in = !in
		case !in && isSpace(c):
			if out == nil {
				out = make([]byte, i, len(raw))
				copy(out, raw[:i])
			}
			continue
		}
		if out != nil {
			out = append(out, c)
		}
	}
	if out == nil {
		return raw
	}
	return out
}

// appendIndent appends src indented as json.Indent(dst, src, prefix,
// indent) does: white space outside strings dropped, a newline, prefix and
// one indent per level before each member or element, empty objects and
// arrays kept as {} and [].
func appendIndent(dst, src []byte, prefix, indent string) []byte {
	depth := 0
	pending := false // an object or array opened; its first line not yet begun
	newline := func() {
		dst = append(dst, '\n')
		dst = append(dst, prefix...)
		for range depth {
			dst = append(dst, indent...)
		}
	}
	for i := 0; i < len(src); i++ {
		c := src[i]
		if isSpace(c) {
			continue
		}
		if pending && c != '}' && c != ']' {
			pending = false
			depth++
			newline()
		}
		switch c {
		case '"':
			e := stringEnd(src, i)
			dst = append(dst, src[i:e]...)
			i = e - 1
		case '{', '[':
			pending = true
			dst = append(dst, c)
		case ',':
			dst = append(dst, c)
			newline()
		case ':':
			dst = append(dst, c, ' ')
		case '}', ']':
			if pending {
				pending = false
			} else {
				depth--
				newline()
			}
			dst = append(dst, c)
		default:
			dst = append(dst, c)
		}
	}
	return dst
}
