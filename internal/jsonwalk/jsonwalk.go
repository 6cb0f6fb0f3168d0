// Package jsonwalk takes apart JSON that json.Valid has accepted, in place
// and without encoding/json's per-value allocations, and answers the
// questions encoding/json answers when it decodes an object into a Go
// struct: which member a key names (case-insensitively) and what a quoted
// string decodes to. The credential documents nodecreds reads (Secrets of
// up to 1 MiB, node files of up to 4 MiB) can hold tens of thousands of
// entries; decoding them into map[string]any costs several hundred bytes per
// entry, walking them costs nothing beyond what is kept.
//
// Every function expects valid JSON; on anything else the results are
// meaningless (but never out of bounds).
package jsonwalk

import (
	"encoding/json"
	"unicode"
	"unicode/utf8"
)

// IsSpace reports JSON's insignificant white space.
func IsSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// SkipSpace returns the index of the first non-space byte at or after i.
func SkipSpace(b []byte, i int) int {
	for i < len(b) && IsSpace(b[i]) {
		i++
	}
	return i
}

// StringEnd returns the index just past the string starting at b[i] ('"').
func StringEnd(b []byte, i int) int {
	for i++; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return len(b)
}

// ValueEnd returns the index just past the value starting at b[i]. It
// counts brackets instead of recursing, so nesting costs nothing.
func ValueEnd(b []byte, i int) int {
	switch b[i] {
	case '"':
		return StringEnd(b, i)
	case '{', '[':
		depth := 0
		for ; i < len(b); i++ {
			switch b[i] {
			case '"':
				i = StringEnd(b, i) - 1
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return i + 1
				}
			}
		}
		return len(b)
	default: // number, true, false, null
		for i < len(b) && !IsSpace(b[i]) && b[i] != ',' && b[i] != '}' && b[i] != ']' {
			i++
		}
		return i
	}
}

// EachMember calls fn with the quoted key and the value (capped, so that
// appending to it can never write into b) of each member of the object
// starting at b[i] ('{'), in the order they are written, duplicates
// included.
func EachMember(b []byte, i int, fn func(key, value []byte)) {
	i = SkipSpace(b, i+1)
	for i < len(b) && b[i] == '"' {
		ke := StringEnd(b, i)
		key := b[i:ke]
		i = SkipSpace(b, SkipSpace(b, ke)+1) // past ':'
		if i >= len(b) {
			return
		}
		ve := ValueEnd(b, i)
		fn(key, b[i:ve:ve])
		i = SkipSpace(b, ve)
		if i < len(b) && b[i] == ',' {
			i = SkipSpace(b, i+1)
		}
	}
}

// CountMembers returns how many members the object starting at b[i] ('{')
// has, duplicates included, without allocating.
func CountMembers(b []byte, i int) int {
	n := 0
	EachMember(b, i, func(_, _ []byte) { n++ })
	return n
}

// Unquote decodes a quoted string as encoding/json does (invalid UTF-8 and
// lone surrogates become U+FFFD); plain ASCII without escapes, which is
// nearly every key and credential, needs no decoding.
func Unquote(q []byte) string {
	s := q[1 : len(q)-1]
	for _, c := range s {
		if c == '\\' || c >= utf8.RuneSelf {
			var out string
			_ = json.Unmarshal(q, &out) // valid JSON: cannot fail
			return out
		}
	}
	return string(s)
}

// Names reports whether the quoted key q selects the struct field called
// name when encoding/json decodes an object into a struct: the same name,
// or the same once both are case-folded the way encoding/json folds them
// (so "Auths", "AUTHS" and "auth\u017fs" all select "auths"). name is plain
// ASCII.
func Names(q []byte, name string) bool {
	s := q[1 : len(q)-1]
	plain := true
	for _, c := range s {
		if c == '\\' || c >= utf8.RuneSelf {
			plain = false
			break
		}
	}
	if plain {
		return equalFoldASCII(string(s), name)
	}
	return Fold(Unquote(q)) == Fold(name)
}

func equalFoldASCII(s, name string) bool {
	if len(s) != len(name) {
		return false
	}
	for i := 0; i < len(s); i++ {
		a, b := s[i], name[i]
		if 'a' <= a && a <= 'z' {
			a -= 'a' - 'A'
		}
		if 'a' <= b && b <= 'z' {
			b -= 'a' - 'A'
		}
		if a != b {
			return false
		}
	}
	return true
}

// Fold returns the form of a decoded key under which encoding/json matches
// it to a struct field: two keys select the same field when their Fold is
// equal (encoding/json's foldName: ASCII letters upper-cased, every other
// rune the smallest of its Unicode simple-fold orbit).
func Fold(s string) string {
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if 'a' <= c && c <= 'z' {
				c -= 'a' - 'A'
			}
			out = append(out, c)
			i++
			continue
		}
		r, n := utf8.DecodeRuneInString(s[i:])
		out = utf8.AppendRune(out, foldRune(r))
		i += n
	}
	return string(out)
}

func foldRune(r rune) rune {
	for {
		r2 := unicode.SimpleFold(r)
		if r2 <= r {
			return r2
		}
		r = r2
	}
}

// Kind names the type of the value starting with c, for messages.
func Kind(c byte) string {
	switch c {
	case 'n':
		return "null"
	case 't', 'f':
		return "a boolean"
	case '"':
		return "a string"
	case '[':
		return "an array"
	case '{':
		return "an object"
	}
	return "a number"
}
