package jsonwalk

// Compact, AppendIndent and IndentSize compact and indent JSON that
// json.Valid has accepted (or that the caller produced), in one pass
// without encoding/json's per-byte state machine: a node file can hold
// thousands of entries, and a sync compares and writes every one. They are
// checked byte for byte against encoding/json by FuzzFormat (and by
// nodefile's FuzzDocument).

// Compact returns raw without insignificant white space, as json.Compact
// does; raw itself when there is none.
func Compact(raw []byte) []byte {
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
		case !in && IsSpace(c):
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

// AppendIndent appends src indented as json.Indent(dst, src, prefix,
// indent) does: white space outside strings dropped, a newline, prefix and
// one indent per level before each member or element, empty objects and
// arrays kept as {} and [].
//
// It stops once dst is longer than limit, which the caller will not write:
// 20 KB of nested brackets would indent to some 100 MB.
func AppendIndent(dst, src []byte, prefix, indent string, limit int) []byte {
	depth := 0
	pending := false // an object or array opened; its first line not yet begun
	newline := func() {
		dst = append(dst, '\n')
		dst = append(dst, prefix...)
		for range depth {
			dst = append(dst, indent...)
		}
	}
	for i := 0; i < len(src) && len(dst) <= limit; i++ {
		c := src[i]
		if IsSpace(c) {
			continue
		}
		if pending && c != '}' && c != ']' {
			pending = false
			depth++
			newline()
		}
		switch c {
		case '"':
			e := StringEnd(src, i)
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

// IndentSize is len(AppendIndent(nil, src, prefix, indent, limit)) for a
// prefix and an indent of those lengths, counted without building
// anything; once over limit it stops counting.
func IndentSize(src []byte, prefix, indent, limit int) int {
	n, depth, pending := 0, 0, false
	newline := func() { n += 1 + prefix + depth*indent }
	for i := 0; i < len(src) && n <= limit; i++ {
		c := src[i]
		if IsSpace(c) {
			continue
		}
		if pending && c != '}' && c != ']' {
			pending = false
			depth++
			newline()
		}
		switch c {
		case '"':
			e := StringEnd(src, i)
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
