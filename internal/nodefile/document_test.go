package nodefile

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/nodecreds/nodecreds/internal/hostfs"
	"github.com/nodecreds/nodecreds/internal/jsonwalk"
	"github.com/nodecreds/nodecreds/internal/testsupport/consumers"
)

// referenceParse is parseDocument as encoding/json does it: the first
// JSON value (json.Decoder, as the docker CLI reads a file; tail says that
// more followed), its auths fields decoded into one map as encoding/json
// decodes a struct's map field (every member naming it, in any case,
// merged in order, a null resetting it), and every other member in order.
func referenceParse(data []byte) (members []member, auths map[string]json.RawMessage, hasAuths, tail bool, err error) {
	auths = map[string]json.RawMessage{}
	bad := fmt.Errorf("corrupt")
	var first json.RawMessage
	switch err := json.NewDecoder(bytes.NewReader(data)).Decode(&first); {
	case err == io.EOF: // nothing but white space
		return nil, auths, false, false, nil
	case err != nil:
		return nil, nil, false, false, bad
	}
	tail = !json.Valid(data)
	if string(first) == "null" {
		return nil, auths, false, tail, nil
	}
	dec := json.NewDecoder(bytes.NewReader(first))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, nil, false, false, bad
	}
	for dec.More() {
		tok, err := dec.Token()
		key, isKey := tok.(string)
		if err != nil || !isKey {
			return nil, nil, false, false, bad
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, nil, false, false, bad
		}
		if !namesAuths(key) {
			members = append(members, member{key: key, value: raw})
			continue
		}
		hasAuths = true
		if err := json.Unmarshal(raw, &auths); err != nil {
			return nil, nil, false, false, bad
		}
		if !entriesAreObjects(raw) {
			return nil, nil, false, false, bad
		}
	}
	if auths == nil {
		auths = map[string]json.RawMessage{}
	}
	return members, auths, hasAuths, tail, nil
}

// namesAuths asks encoding/json whether key selects a struct field tagged
// "auths".
func namesAuths(key string) bool {
	q, _ := json.Marshal(key)
	var s struct {
		Auths *json.RawMessage `json:"auths"`
	}
	_ = json.Unmarshal([]byte(`{`+string(q)+`:0}`), &s)
	return s.Auths != nil
}

// entriesAreObjects reports whether every member of raw (an auths value),
// duplicates included, is an object or null.
func entriesAreObjects(raw json.RawMessage) bool {
	dec := json.NewDecoder(bytes.NewReader(raw))
	if tok, _ := dec.Token(); tok != json.Delim('{') {
		return true // null
	}
	for dec.More() {
		_, _ = dec.Token()
		var v json.RawMessage
		if dec.Decode(&v) != nil || v[0] != '{' && v[0] != 'n' {
			return false
		}
	}
	return true
}

// referenceFields splits members as a document files them: by field
// (jsonwalk.Fold, checked against encoding/json in jsonwalk), a field
// written once into top, the members of one written more than once into
// repeated, in order.
func referenceFields(members []member) (top map[string]json.RawMessage, repeated []member) {
	count := map[string]int{}
	for _, m := range members {
		count[jsonwalk.Fold(m.key)]++
	}
	top = map[string]json.RawMessage{}
	for _, m := range members {
		if count[jsonwalk.Fold(m.key)] > 1 {
			repeated = append(repeated, m)
		} else {
			top[m.key] = m.value
		}
	}
	return top, repeated
}

// referenceEncode is json.MarshalIndent's layout built with json.Indent:
// fields sorted by key, the members of one field together at the place of
// the smallest of their keys, in file order.
func referenceEncode(members []member, auths map[string]json.RawMessage, hasAuths bool) []byte {
	type group struct {
		key string
		ms  []member
	}
	var groups []*group
	byFold := map[string]*group{}
	for _, m := range members {
		f := jsonwalk.Fold(m.key)
		g := byFold[f]
		if g == nil {
			g = &group{key: m.key}
			byFold[f] = g
			groups = append(groups, g)
		}
		g.key = min(g.key, m.key)
		g.ms = append(g.ms, m)
	}
	if hasAuths || len(auths) > 0 {
		groups = append(groups, &group{key: "auths", ms: []member{{key: "auths", value: referenceObject(auths)}}})
	}
	slices.SortFunc(groups, func(a, b *group) int { return strings.Compare(a.key, b.key) })
	var b bytes.Buffer
	b.WriteString("{")
	for _, g := range groups {
		for _, m := range g.ms {
			if b.Len() > 1 {
				b.WriteString(",")
			}
			q, _ := json.Marshal(m.key)
			b.Write(q)
			b.WriteString(":")
			b.Write(m.value)
		}
	}
	b.WriteString("}")
	var out bytes.Buffer
	if err := json.Indent(&out, b.Bytes(), "", "\t"); err != nil {
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
// byte for byte the same file written. And it checks the reading against
// the consumers: whenever the kubelet (its struct shapes) or the docker
// CLI (its own code) reads the input, nodecreds reads the same entries, and
// the file it writes reads back, for that consumer, exactly as the input
// did: nothing either of them saw is lost or changed.
func FuzzDocument(f *testing.F) {
	for _, s := range []string{
		``, " \n", `{}`, `[]`, `null`, `{"auths":null}`, `{"auths":"x"}`, `{"auths":{"r":1}}`, `{"auths":{}}x`,
		`{"auths":{"b.io":{"auth":"dTpw"},"a.io":{"username":"u","password":"p","x":{"y":[1, 2,{"z":null}]}}},"HttpHeaders":{"User-Agent":"x"},"credHelpers":{},"z":[],"n":1.5e3}`,
		"{\n\t\"auths\": {\n\t\t\"r.io\": {\n\t\t\t\"auth\": \"dTpw\"\n\t\t}\n\t}\n}\n",
		`{"auths":{"a":{"x":"q\"u\\o,t{e:"}},"auths":{"b\u00e9\n":{ "y" : [ ] , "z":{ } }}}`,
		`{"auths":{"a":{}},"auths":null,"k":"<&>\u2028"}`,
		"{\"\xff\":\"\xfe\",\"auths\":{\"\\ud800\":{}}}",
		`{"auths":{"foreign.test":{"auth":"Zjpw"}},"auths":{"other.test":{"auth":"bzpw"}}}`,
		`{"Auths":{"a":{"auth":"dTpw"}},"auths":{"b":{"auth":"dTpw"}},"AUTHS":{"a":{"auth":"eDp5"}}}`,
		"{\"auth\u017f\":{\"a\":{}},\"\\u0061uths\":{\"b\":null}}",
		`{"auths":{"a":{"auth":"dTpw","Auth":"eDp5","auth":null}},"credHelpers":{"a":"x"},"credHelpers":{"b":"y"},"CredsStore":"p","credsStore":"q"}`,
		`{"auths":{"a":{"auth":"dTpw"}}} trailing`, `null{"auths":{"a":{}}}`, `{"auths":{"a":1,"a":{}}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := parseDocument(data)
		members, auths, hasAuths, tail, rerr := referenceParse(data)
		if (err != nil) != (rerr != nil || tail) || (d == nil) != (rerr != nil) || err != nil && !errors.Is(err, ErrCorrupt) {
			t.Fatalf("parseDocument(%q): %v, %v; encoding/json: %v, data after the value: %v", data, d != nil, err, rerr, tail)
		}
		if d == nil {
			return
		}
		top, repeated := referenceFields(members)
		if hasAuths {
			top["auths"] = json.RawMessage("{}")
		}
		if !maps.EqualFunc(d.top, top, sameBytes) || !maps.EqualFunc(d.auths, auths, sameBytes) || !slices.EqualFunc(d.repeated, repeated, sameMember) {
			t.Fatalf("parseDocument(%q) = %q %q %q, encoding/json: %q %q %q", data, d.top, d.repeated, d.auths, top, repeated, auths)
		}
		got, eerr := d.encode()
		if eerr != nil {
			if !errors.Is(eerr, hostfs.ErrTooLarge) {
				t.Fatalf("encode(%q): %v", data, eerr)
			}
			return // nested deep enough to indent past the limit
		}
		if want := referenceEncode(members, auths, hasAuths); !bytes.Equal(got, want) {
			t.Fatalf("encode(%q) =\n%s\nwant\n%s", data, got, want)
		}
		if len(got) != cap(got) {
			t.Fatalf("encode(%q) counted %d bytes and wrote %d", data, cap(got), len(got))
		}
		// What the memo keeps after a write: the same document, every value
		// a slice of the file written.
		c := d.clone()
		if !repoint(c, got) || !c.equal(d) || !maps.EqualFunc(d.auths, auths, sameBytes) {
			t.Fatalf("repoint(%q) failed or changed a value (or the original)", got)
		}
		for _, v := range slices.Concat(slices.Collect(maps.Values(c.auths)), slices.Collect(maps.Values(c.top))) {
			if len(v) > 0 && string(v) != "{}" && !bytes.Contains(got, v) {
				t.Fatalf("repoint left %q outside the file written", v)
			}
		}
		values := slices.Collect(maps.Values(d.top))
		for _, m := range d.repeated {
			values = append(values, m.value)
		}
		for _, v := range append(values, slices.Collect(maps.Values(d.auths))...) {
			var want bytes.Buffer
			_ = json.Compact(&want, v)
			if got := jsonwalk.Compact(v); !bytes.Equal(got, want.Bytes()) {
				t.Fatalf("jsonwalk.Compact(%q) = %q, json.Compact: %q", v, got, want.Bytes())
			}
			want.Reset()
			_ = json.Indent(&want, v, ">", "  ")
			if got := jsonwalk.AppendIndent(nil, v, ">", "  ", hostfs.MaxFileSize); !bytes.Equal(got, want.Bytes()) {
				t.Fatalf("jsonwalk.AppendIndent(%q) = %q, json.Indent: %q", v, got, want.Bytes())
			}
			if got := jsonwalk.IndentSize(v, 1, 2, hostfs.MaxFileSize); got != want.Len() {
				t.Fatalf("jsonwalk.IndentSize(%q) = %d, json.Indent wrote %d bytes", v, got, want.Len())
			}
		}
		checkConsumers(t, data, d, got)
	})
}

// checkConsumers: for each consumer that reads data, nodecreds read the
// same entries, and written (nodecreds' file from d) reads back the same.
func checkConsumers(t *testing.T, data []byte, d *document, written []byte) {
	t.Helper()
	// A null auths and an empty one are the same to both: no entries.
	if k, err := consumers.Kubelet(data); err == nil {
		k.Auths = orEmpty(k.Auths)
		if !slices.Equal(slices.Sorted(maps.Keys(d.auths)), slices.Sorted(maps.Keys(k.Auths))) {
			t.Fatalf("%q: nodecreds reads the entries %q, the kubelet %q", data, slices.Sorted(maps.Keys(d.auths)), slices.Sorted(maps.Keys(k.Auths)))
		}
		again, err := consumers.Kubelet(written)
		again.Auths = orEmpty(again.Auths)
		if err != nil || !reflect.DeepEqual(again, k) {
			t.Fatalf("%q: the kubelet reads %+v (%v) from the file written, %+v from the file read:\n%s", data, again, err, k, written)
		}
	}
	if c, err := consumers.DockerCLI(data); err == nil {
		c.AuthConfigs = orEmpty(c.AuthConfigs)
		if !slices.Equal(slices.Sorted(maps.Keys(d.auths)), slices.Sorted(maps.Keys(c.AuthConfigs))) {
			t.Fatalf("%q: nodecreds reads the entries %q, the docker CLI %q", data, slices.Sorted(maps.Keys(d.auths)), slices.Sorted(maps.Keys(c.AuthConfigs)))
		}
		again, err := consumers.DockerCLI(written)
		again.AuthConfigs = orEmpty(again.AuthConfigs)
		if err != nil || !reflect.DeepEqual(again, c) {
			t.Fatalf("%q: the docker CLI reads %+v (%v) from the file written, %+v from the file read:\n%s", data, again, err, c, written)
		}
	}
}

func sameBytes(a, b json.RawMessage) bool { return bytes.Equal(a, b) }

func sameMember(a, b member) bool { return a.key == b.key && bytes.Equal(a.value, b.value) }

func orEmpty[M ~map[K]V, K comparable, V any](m M) M {
	if m == nil {
		return M{}
	}
	return m
}
