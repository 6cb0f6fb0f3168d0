// Package benchdoc edits docs/benchmarks.md for the commands that measure:
// `make bench` writes the file, while `make bench-curve`, `make soak` and
// the memory test (test/memory_test.go, by hand) each own a section between
// markers, which `make bench` keeps.
package benchdoc

import (
	"os"
	"strings"
)

// Curve, Soak and Memory name the sections of make bench-curve, make soak
// and the memory test.
const (
	Curve  = "curve"
	Soak   = "soak"
	Memory = "memory"
)

func markers(name string) (begin, end string) {
	return "<!-- " + name + ":begin -->\n", "<!-- " + name + ":end -->\n"
}

// Replace puts section between name's markers in the file at path,
// appending it (with its markers) when they are not there yet.
func Replace(path, name, section string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	begin, end := markers(name)
	s := string(data)
	i, j := strings.Index(s, begin), strings.Index(s, end)
	if i < 0 || j < i {
		s = strings.TrimRight(s, "\n") + "\n\n" + begin + section + end
	} else {
		s = s[:i+len(begin)] + section + s[j:]
	}
	return os.WriteFile(path, []byte(s), 0o644)
}

// Keep appends to report, a new benchmarks.md, the sections that the file
// at path holds for the other commands (curve, soak, memory), markers
// included.
func Keep(report, path string) string {
	old, err := os.ReadFile(path)
	if err != nil {
		return report
	}
	for _, name := range []string{Curve, Soak, Memory} {
		begin, end := markers(name)
		i, j := strings.Index(string(old), begin), strings.Index(string(old), end)
		if i >= 0 && j > i {
			report = strings.TrimRight(report, "\n") + "\n\n" + string(old[i:j+len(end)])
		}
	}
	return report
}
