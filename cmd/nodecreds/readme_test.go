package main

import (
	"io"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// readmeDefault turns a documented default into the flag's DefValue, or
// reports that it is not a literal (an environment variable, "in-cluster").
func readmeDefault(doc string) (string, bool) {
	doc = strings.TrimSpace(doc)
	switch {
	case doc == "":
		return "", true
	case doc == "off":
		return "false", true
	case doc == "on":
		return "true", true
	case strings.ContainsAny(doc, "$") || !strings.HasPrefix(doc, "`"):
		return "", false
	}
	return strings.Trim(doc, "`"), true
}

// TestREADMEFlagsMatchTheCommands: every flag and default the docs
// document — each command's table in docs/reference.md (once the README's
// sync table) and the `[--flag default]` synopses of every document — is
// the command's real flag with that default, and every flag of every
// command is in its table. Docs cannot drift from the code unnoticed.
func TestREADMEFlagsMatchTheCommands(t *testing.T) {
	reference := readDoc(t, referencePath)
	root := newRoot("nodecreds", io.Discard, io.Discard)
	cmd := func(name string) *cobra.Command {
		c, _, err := root.Find([]string{name})
		if err != nil || c.Name() != name {
			t.Fatalf("no command %s", name)
		}
		return c
	}

	// Each command's table: | `--flag VALUE` | default | meaning |
	row := regexp.MustCompile("(?m)^\\| `(--[a-z-]+)[^`]*`(?:, `(--[a-z-]+)[^`]*`)? \\|([^|]*)\\|")
	sections := regexp.MustCompile("(?m)^## `nodecreds ([a-z-]+)`$").FindAllStringSubmatchIndex(reference, -1)
	tables := map[string]bool{}
	for i, s := range sections {
		name := reference[s[2]:s[3]]
		end := len(reference)
		if i+1 < len(sections) {
			end = sections[i+1][0]
		}
		c := cmd(name)
		tables[name] = true
		documented := map[string]bool{}
		for _, m := range row.FindAllStringSubmatch(reference[s[1]:end], -1) {
			names := []string{m[1]}
			if m[2] != "" {
				names = append(names, m[2])
			}
			defaults := strings.Split(m[3], ",")
			for i, flagName := range names {
				f := c.Flags().Lookup(strings.TrimPrefix(flagName, "--"))
				if f == nil {
					t.Errorf("%s documents %s %s, which does not exist", referencePath, name, flagName)
					continue
				}
				documented[f.Name] = true
				doc := m[3]
				if len(names) > 1 && i < len(defaults) {
					doc = defaults[i]
				}
				if want, literal := readmeDefault(doc); literal && !sameDefault(f, want) {
					t.Errorf("%s: %s %s defaults to %q; the flag's default is %q", referencePath, name, flagName, want, f.DefValue)
				}
			}
		}
		c.Flags().VisitAll(func(f *pflag.Flag) {
			if f.Name != "help" && !f.Hidden && !documented[f.Name] {
				t.Errorf("%s --%s is not in %s's table", name, f.Name, referencePath)
			}
		})
	}
	for _, c := range referenceCommands(root) {
		if !tables[c.Name()] {
			t.Errorf("%s has no section for %s", referencePath, c.CommandPath())
		}
	}

	// Synopses: nodecreds CMD [--flag default] ...
	synopsis := regexp.MustCompile(`(?m)^nodecreds ([a-z-]+) (.*\[--.*)$`)
	opt := regexp.MustCompile(`\[(--[a-z-]+) ([^\]|,…]+)\]`)
	for _, doc := range docFiles(t) {
		for _, m := range synopsis.FindAllStringSubmatch(readDoc(t, doc), -1) {
			c := cmd(m[1])
			for _, o := range opt.FindAllStringSubmatch(m[2], -1) {
				f := c.Flags().Lookup(strings.TrimPrefix(o[1], "--"))
				if f == nil {
					t.Errorf("%s: %s %s does not exist", doc, m[1], o[1])
					continue
				}
				// Only the synopses that show a default (not a placeholder).
				if v := o[2]; v != strings.ToUpper(v) && !sameDefault(f, v) {
					t.Errorf("%s: %s %s shown as %q; the flag's default is %q", doc, m[1], o[1], v, f.DefValue)
				}
			}
		}
	}
}

// sameDefault compares a documented default with the flag's, as values of
// the flag's type (5m is 5m0s; a list is shown without brackets).
func sameDefault(f *pflag.Flag, doc string) bool {
	switch f.Value.Type() {
	case "duration":
		a, err1 := time.ParseDuration(doc)
		b, err2 := time.ParseDuration(f.DefValue)
		return err1 == nil && err2 == nil && a == b
	case "stringSlice":
		return "["+doc+"]" == f.DefValue
	}
	return f.DefValue == doc
}
