package jsonwalk

import (
	"bytes"
	"encoding/json"
	"testing"
)

// FuzzFormat: Compact, AppendIndent and IndentSize give what json.Compact
// and json.Indent give, byte for byte, for any valid JSON; AppendIndent
// stops past its limit.
func FuzzFormat(f *testing.F) {
	for _, s := range []string{`{}`, `[]`, ` { "a" : [ 1 , { } , [ ] , "x\" }" ] , "b":{"c":null} } `, `"\u00e9 \\ "`, `[[[[[]]]]]`, "\t3.5e+2\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if !json.Valid(data) {
			return
		}
		var want bytes.Buffer
		_ = json.Compact(&want, data)
		if got := Compact(data); !bytes.Equal(got, want.Bytes()) {
			t.Fatalf("Compact(%q) = %q, json.Compact: %q", data, got, want.Bytes())
		}
		want.Reset()
		_ = json.Indent(&want, bytes.TrimSpace(data), ">", "  ")
		if got := AppendIndent([]byte("x"), data, ">", "  ", 1<<20); !bytes.Equal(got[1:], want.Bytes()) {
			t.Fatalf("AppendIndent(%q) = %q, json.Indent: %q", data, got[1:], want.Bytes())
		}
		if got := IndentSize(data, 1, 2, 1<<20); got != want.Len() {
			t.Fatalf("IndentSize(%q) = %d, json.Indent wrote %d bytes", data, got, want.Len())
		}
		if limit := want.Len() / 2; limit > 0 {
			if got := AppendIndent(nil, data, ">", "  ", limit); len(got) > limit+3*len(data)+64 {
				t.Fatalf("AppendIndent past a limit of %d wrote %d bytes", limit, len(got))
			}
		}
	})
}
