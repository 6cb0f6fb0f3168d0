package main

import (
	"io"
	"os"
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

// TestREADMEFlagsMatchTheCommands: every flag and default the README
// documents — the sync table and the `[--flag default]` synopses of the
// other commands — is the command's real flag with that default, and every
// flag of sync is in its table. Docs cannot drift from the code unnoticed.
func TestREADMEFlagsMatchTheCommands(t *testing.T) {
	data, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(data)
	root := newRoot(io.Discard, io.Discard)
	cmd := func(name string) *cobra.Command {
		c, _, err := root.Find([]string{name})
		if err != nil || c.Name() != name {
			t.Fatalf("no command %s", name)
		}
		return c
	}

	// The sync table: | `--flag VALUE` | default | meaning |
	syncCmd := cmd("sync")
	row := regexp.MustCompile("(?m)^\\| `(--[a-z-]+)[^`]*`(?:, `(--[a-z-]+)[^`]*`)? \\|([^|]*)\\|")
	documented := map[string]bool{}
	for _, m := range row.FindAllStringSubmatch(readme, -1) {
		names := []string{m[1]}
		if m[2] != "" {
			names = append(names, m[2])
		}
		defaults := strings.Split(m[3], ",")
		for i, name := range names {
			f := syncCmd.Flags().Lookup(strings.TrimPrefix(name, "--"))
			if f == nil {
				t.Errorf("README documents sync %s, which does not exist", name)
				continue
			}
			documented[f.Name] = true
			doc := m[3]
			if len(names) > 1 && i < len(defaults) {
				doc = defaults[i]
			}
			if want, literal := readmeDefault(doc); literal && !sameDefault(f, want) {
				t.Errorf("README: sync %s defaults to %q; the flag's default is %q", name, want, f.DefValue)
			}
		}
	}
	syncCmd.Flags().VisitAll(func(f *pflag.Flag) {
		if f.Name != "config" && f.Name != "help" && !documented[f.Name] {
			t.Errorf("sync --%s is not in the README's table", f.Name)
		}
	})

	// Synopses: nodecreds CMD [--flag default] ...
	synopsis := regexp.MustCompile(`(?m)^nodecreds ([a-z-]+) (.*\[--.*)$`)
	opt := regexp.MustCompile(`\[(--[a-z-]+) ([^\]|,…]+)\]`)
	for _, m := range synopsis.FindAllStringSubmatch(readme, -1) {
		c := cmd(m[1])
		for _, o := range opt.FindAllStringSubmatch(m[2], -1) {
			f := c.Flags().Lookup(strings.TrimPrefix(o[1], "--"))
			if f == nil {
				t.Errorf("README: %s %s does not exist", m[1], o[1])
				continue
			}
			// Only the synopses that show a default (not a placeholder).
			if v := o[2]; v != strings.ToUpper(v) && !sameDefault(f, v) {
				t.Errorf("README: %s %s shown as %q; the flag's default is %q", m[1], o[1], v, f.DefValue)
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
