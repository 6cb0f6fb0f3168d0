package benchdoc

import (
	"os"
	"path/filepath"
	"testing"
)

// TestReplaceAndKeep: a section is appended, then replaced in place; a new
// report from make bench keeps the other commands' sections.
func TestReplaceAndKeep(t *testing.T) {
	p := filepath.Join(t.TempDir(), "benchmarks.md")
	if err := os.WriteFile(p, []byte("# bench\n\nold results\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		name, section, want string
	}{
		{Soak, "soak 1\n", "# bench\n\nold results\n\n<!-- soak:begin -->\nsoak 1\n<!-- soak:end -->\n"},
		{Curve, "curve 1\n", "# bench\n\nold results\n\n<!-- soak:begin -->\nsoak 1\n<!-- soak:end -->\n\n<!-- curve:begin -->\ncurve 1\n<!-- curve:end -->\n"},
		{Soak, "soak 2\n", "# bench\n\nold results\n\n<!-- soak:begin -->\nsoak 2\n<!-- soak:end -->\n\n<!-- curve:begin -->\ncurve 1\n<!-- curve:end -->\n"},
		{Memory, "memory 1\n", "# bench\n\nold results\n\n<!-- soak:begin -->\nsoak 2\n<!-- soak:end -->\n\n<!-- curve:begin -->\ncurve 1\n<!-- curve:end -->\n\n<!-- memory:begin -->\nmemory 1\n<!-- memory:end -->\n"},
	}
	for _, st := range steps {
		if err := Replace(p, st.name, st.section); err != nil {
			t.Fatal(err)
		}
		if got, _ := os.ReadFile(p); string(got) != st.want {
			t.Fatalf("after %s:\n%q\nwant\n%q", st.name, got, st.want)
		}
	}
	want := "# bench\n\nnew results\n\n<!-- curve:begin -->\ncurve 1\n<!-- curve:end -->\n\n<!-- soak:begin -->\nsoak 2\n<!-- soak:end -->\n\n<!-- memory:begin -->\nmemory 1\n<!-- memory:end -->\n"
	if got := Keep("# bench\n\nnew results\n", p); got != want {
		t.Errorf("Keep:\n%q\nwant\n%q", got, want)
	}
}
