package memo

import "testing"

// TestCache: a value is found only for the very content it was put with,
// under its name; Last finds it whatever the content; Forget drops it.
func TestCache(t *testing.T) {
	var c Cache[string]
	if _, ok := c.Get("a", nil); ok {
		t.Fatal("an empty cache found something")
	}
	c.Put("a", []byte(`{"auths":{}}`), "parsed a")
	c.Put("b", []byte(`{}`), "parsed b")
	tests := []struct {
		name, data string
		want       string // "" for a miss
	}{
		{"a", `{"auths":{}}`, "parsed a"},
		{"a", `{"auths":{} }`, ""}, // one byte more
		{"a", `{"auths":{]}`, ""},  // one byte changed
		{"a", `{}`, ""},            // b's content
		{"b", `{}`, "parsed b"},
		{"c", `{}`, ""},
	}
	for _, tt := range tests {
		got, ok := c.Get(tt.name, []byte(tt.data))
		if ok != (tt.want != "") || got != tt.want {
			t.Errorf("Get(%s, %s) = %q, %v; want %q", tt.name, tt.data, got, ok, tt.want)
		}
	}
	if v, ok := c.Last("a"); !ok || v != "parsed a" {
		t.Errorf("Last(a) = %q, %v", v, ok)
	}
	c.Forget("a")
	if _, ok := c.Last("a"); ok {
		t.Error("Last(a) found something after Forget")
	}
	if v, ok := c.Get("b", []byte(`{}`)); !ok || v != "parsed b" {
		t.Errorf("Forget(a) dropped b too: %q, %v", v, ok)
	}
}
