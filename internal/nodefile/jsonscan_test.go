package nodefile

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"testing"
)

// referenceParse is parseDocument as encoding/json alone does it (the
// implementation before the one-pass walk): the walk must agree with it on
// every input.
func referenceParse(data []byte) (top, auths map[string]json.RawMessage, err error) {
	top, auths = map[string]json.RawMessage{}, map[string]json.RawMessage{}
	if len(bytes.TrimSpace(data)) == 0 {
		return top, auths, nil
	}
	bad := fmt.Errorf("corrupt")
	dec := json.NewDecoder(bytes.NewReader(data))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, nil, bad
	}
	for dec.More() {
		tok, err := dec.Token()
		key, isKey := tok.(string)
		if err != nil || !isKey {
			return nil, nil, bad
		}
		if key != "auths" {
			var raw json.RawMessage
			if err := dec.Decode(&raw); err != nil {
				return nil, nil, bad
			}
			top[key] = raw
			continue
		}
		var a map[string]json.RawMessage
		if err := dec.Decode(&a); err != nil {
			return nil, nil, bad
		}
		top[key] = json.RawMessage("{}")
		if a != nil {
			auths = a
		}
	}
	if tok, err := dec.Token(); err != nil || tok != json.Delim('}') {
		return nil, nil, bad
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, nil, bad
	}
	for _, v := range auths {
		if t := bytes.TrimSpace(v); len(t) == 0 || t[0] != '{' {
			return nil, nil, bad
		}
	}
	return top, auths, nil
}

// referenceEncode is json.MarshalIndent's layout built with json.Indent.
func referenceEncode(top, auths map[string]json.RawMessage) []byte {
	top = maps.Clone(top)
	if _, ok := top["auths"]; ok || len(auths) > 0 {
		top["auths"] = referenceObject(auths)
	}
	var out bytes.Buffer
	if err := json.Indent(&out, referenceObject(top), "", "\t"); err != nil {
		panic(err)
	}
	out.WriteString("\n")
	return out.Bytes()
}

// referenceObject joins raw values into one compact object, keys sorted.
func referenceObject(m map[string]json.RawMessage) []byte {
	var b bytes.Buffer
	b.WriteString("{")
	for i, k := range slices.Sorted(maps.Keys(m)) {
		if i > 0 {
			b.WriteString(",")
		}
		q, _ := json.Marshal(k)
		b.Write(q)
		b.WriteString(":")
		b.Write(m[k])
	}
	b.WriteString("}")
	return b.Bytes()
}

// FuzzDocument checks the one-pass parse, compact and indent against
// encoding/json on any input: same verdict, same entries and fields, and
// byte for byte the same file written.
func FuzzDocument(f *testing.F) {
	for _, s := range []string{
		``, " \n", `{}`, `[]`, `null`, `{"auths":null}`, `{"auths":"x"}`, `{"auths":{"r":1}}`, `{"auths":{}}x`,
		`{"auths":{"b.io":{"auth":"dTpw"},"a.io":{"username":"u","password":"p","x":{"y":[1, 2,{"z":null}]}}},"HttpHeaders":{"User-Agent":"x"},"credHelpers":{},"z":[],"n":1.5e3}`,
		"{\n\t\"auths\": {\n\t\t\"r.io\": {\n\t\t\t\"auth\": \"dTpw\"\n\t\t}\n\t}\n}\n",
		`{"auths":{"a":{"x":"q\"u\\o,t{e:"}},"auths":{"b\u00e9\n":{ "y" : [ ] , "z":{ } }}}`,
		`{"auths":{"a":{}},"auths":null,"k":"<&>\u2028"}`,
		"{\"\xff\":\"\xfe\",\"auths\":{\"\\ud800\":{}}}",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := parseDocument(data)
		top, auths, rerr := referenceParse(data)
		if (err != nil) != (rerr != nil) {
			t.Fatalf("parseDocument(%q): error %v, encoding/json: %v", data, err, rerr)
		}
		if err != nil {
			return
		}
		if !maps.EqualFunc(d.top, top, sameBytes) || !maps.EqualFunc(d.auths, auths, sameBytes) {
			t.Fatalf("parseDocument(%q) = %q %q, encoding/json: %q %q", data, d.top, d.auths, top, auths)
		}
		got, _ := d.encode()
		if want := referenceEncode(top, auths); !bytes.Equal(got, want) {
			t.Fatalf("encode(%q) =\n%s\nwant\n%s", data, got, want)
		}
		for _, v := range append(slices.Collect(maps.Values(d.top)), slices.Collect(maps.Values(d.auths))...) {
			var want bytes.Buffer
			_ = json.Compact(&want, v)
			if got := compact(v); !bytes.Equal(got, want.Bytes()) {
				t.Fatalf("compact(%q) = %q, json.Compact: %q", v, got, want.Bytes())
			}
			want.Reset()
			_ = json.Indent(&want, v, ">", "  ")
			if got := appendIndent(nil, v, ">", "  "); !bytes.Equal(got, want.Bytes()) {
				t.Fatalf("appendIndent(%q) = %q, json.Indent: %q", v, got, want.Bytes())
			}
		}
	})
}

func sameBytes(a, b json.RawMessage) bool { return bytes.Equal(a, b) }
