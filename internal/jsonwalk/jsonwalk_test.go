package jsonwalk

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

// selects asks encoding/json whether the key (decoded) selects a struct
// field tagged name.
func selects(key, name string) bool {
	typ := reflect.StructOf([]reflect.StructField{{Name: "F", Type: reflect.TypeFor[*json.RawMessage](), Tag: reflect.StructTag(`json:"` + name + `"`)}})
	v := reflect.New(typ)
	q, _ := json.Marshal(key)
	_ = json.Unmarshal([]byte(`{`+string(q)+`:0}`), v.Interface())
	return !v.Elem().Field(0).IsNil()
}

// validTag is encoding/json's rule for a usable tag name.
func validTag(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		switch {
		case strings.ContainsRune("!#$%&()*+-./:;<=>?@[]^_{|}~ ", c):
		case !unicode.IsLetter(c) && !unicode.IsDigit(c):
			return false
		}
	}
	return true
}

// FuzzFold: two keys select the same struct field exactly when their Fold
// is equal, and Names agrees with encoding/json for the field names
// nodecreds looks for, whatever the key's spelling or escapes.
func FuzzFold(f *testing.F) {
	for _, s := range [][2]string{
		{"auths", "Auths"}, {"auths", "AUTHS"}, {"auths", "auth\u017f"}, {"kelvin", "\u212aelvin"}, {"auths", "auth"},
		{"credsStore", "CREDSSTORE"}, {"ß", "SS"}, {"é", "É"}, {"auths", "\xff"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, tag, key string) {
		for _, name := range []string{"auths", "auth", "username", "password", "email", "identitytoken", "registrytoken", "HttpHeaders"} {
			q, _ := json.Marshal(key)
			if got, want := Names(q, name), selects(key, name); got != want {
				t.Fatalf("Names(%q, %q) = %v, encoding/json selects: %v", q, name, got, want)
			}
			// The same key escaped differently is the same key.
			esc := []byte(strings.ReplaceAll(string(q), "a", `\u0061`))
			if got := Names(esc, name); got != selects(key, name) {
				t.Fatalf("Names(%q, %q) = %v", esc, name, got)
			}
		}
		if !validTag(tag) || !utf8.ValidString(tag) {
			return
		}
		if got, want := Fold(tag) == Fold(key), selects(key, tag); got != want {
			t.Fatalf("Fold(%q) == Fold(%q) is %v, encoding/json selects: %v", tag, key, got, want)
		}
	})
}

// FuzzWalk: EachMember and CountMembers see every member of an object,
// duplicates included, as json.Decoder does, and Unquote decodes keys as
// it does.
func FuzzWalk(f *testing.F) {
	for _, s := range []string{`{}`, `{"a":1,"a":[{"b":"}"}],"\u00e9\"":null}`, ` { "x" : { } , "y":"\\" } `, "{\"\xff\":true}"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		i := SkipSpace(data, 0)
		if !json.Valid(data) || data[i] != '{' {
			return
		}
		dec := json.NewDecoder(bytes.NewReader(data))
		_, _ = dec.Token()
		var keys []string
		var values []string
		for dec.More() {
			k, _ := dec.Token()
			var v json.RawMessage
			_ = dec.Decode(&v)
			keys = append(keys, k.(string))
			values = append(values, string(v))
		}
		n := 0
		EachMember(data, i, func(key, value []byte) {
			if n >= len(keys) || Unquote(key) != keys[n] || string(value) != values[n] {
				t.Fatalf("member %d: %q %q, json.Decoder: %q", n, key, value, keys)
			}
			n++
		})
		if n != len(keys) || CountMembers(data, i) != n {
			t.Fatalf("%d members walked, %d counted, json.Decoder: %d", n, CountMembers(data, i), len(keys))
		}
	})
}
