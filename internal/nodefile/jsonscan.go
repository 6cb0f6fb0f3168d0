package nodefile

import (
	"github.com/nodecreds/nodecreds/internal/hostfs"
	"github.com/nodecreds/nodecreds/internal/jsonwalk"
)

// The helpers below walk, compact and indent JSON that json.Valid has
// already accepted (or that nodecreds produced), in one pass without
// encoding/json's per-byte state machine: a node file can hold thousands of
// entries, and a sync reads, compares and writes every one. They are
// checked byte for byte against encoding/json by FuzzDocument.

// The walking itself is jsonwalk's, shared with dockercfg's reading of
// Secrets; these names keep this package's code short.

func isSpace(c byte) bool                              { return jsonwalk.IsSpace(c) }
func skipSpace(b []byte, i int) int                    { return jsonwalk.SkipSpace(b, i) }
func stringEnd(b []byte, i int) int                    { return jsonwalk.StringEnd(b, i) }
func eachMember(b []byte, i int, fn func(k, v []byte)) { jsonwalk.EachMember(b, i, fn) }
func unquote(q []byte) string                          { return jsonwalk.Unquote(q) }

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
//
// It stops once dst is longer than hostfs.MaxFileSize, which nothing
// writes: 20 KB of nested brackets would indent to some 100 MB.
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
	for i := 0; i < len(src) && len(dst) <= hostfs.MaxFileSize; i++ {
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

// indentSize is len(appendIndent(nil, src, prefix, indent)) for a prefix and
// an indent of those lengths, counted without building anything; once over
// hostfs.MaxFileSize it stops counting.
func indentSize(src []byte, prefix, indent int) int {
	n, depth, pending := 0, 0, false
	newline := func() { n += 1 + prefix + depth*indent }
	for i := 0; i < len(src) && n <= hostfs.MaxFileSize; i++ {
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
			n += e - i
			i = e - 1
		case '{', '[':
			pending = true
			n++
		case ',':
			n++
			newline()
		case ':':
			n += 2
		case '}', ']':
			if pending {
				pending = false
			} else {
				depth--
				newline()
			}
			n++
		default:
			n++
		}
	}
	return n
}
