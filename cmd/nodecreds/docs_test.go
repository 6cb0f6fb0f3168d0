package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"unicode"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"sigs.k8s.io/yaml"
)

// update rewrites docs/reference.md from the commands:
// go test ./cmd/nodecreds -run TestReferenceIsGenerated -update
var update = flag.Bool("update", false, "rewrite docs/reference.md from the cobra commands")

const (
	repoRoot      = "../.."
	referencePath = "docs/reference.md"
	chartDir      = "deploy/helm/nodecreds"
)

// docFiles are the documents whose links and commands are checked.
func docFiles(t *testing.T) []string {
	t.Helper()
	files := []string{"README.md", "CHANGELOG.md", "CONTRIBUTING.md", "SECURITY.md", chartDir + "/README.md"}
	docs, err := filepath.Glob(filepath.Join(repoRoot, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range docs {
		rel, _ := filepath.Rel(repoRoot, d)
		files = append(files, filepath.ToSlash(rel))
	}
	return files
}

func readDoc(t *testing.T, rel string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot, rel))
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// renderReference writes the command reference: every command of root but
// help and completion, its help text and a table of its flags in the form
// TestREADMEFlagsMatchTheCommands reads.
func renderReference(root *cobra.Command) string {
	var b strings.Builder
	b.WriteString("# Command reference\n\n")
	b.WriteString("<!-- Generated from the commands: go test ./cmd/nodecreds -run TestReferenceIsGenerated -update. Do not edit. -->\n\n")
	b.WriteString(escapeMarkdown(root.Long) + "\n\n")
	b.WriteString("Every flag can also be set as `NODECREDS_<FLAG>` (dashes as underscores, e.g.\n" +
		"`NODECREDS_SECRET_DIR=/s1,/s2`) or in a YAML file given with `--config` whose\n" +
		"keys are the flag names; unknown keys are refused. Precedence: flag,\n" +
		"environment, file, default. Exit codes: 0 fine, 1 failed (what failed is\n" +
		"said), 2 bad usage. `nodecreds completion SHELL` (bash, zsh, fish,\n" +
		"powershell) prints a shell completion script.\n\n")
	b.WriteString("| command | what it does |\n| --- | --- |\n")
	cmds := referenceCommands(root)
	for _, c := range cmds {
		fmt.Fprintf(&b, "| [`%s`](#%s) | %s |\n", c.CommandPath(), slug(c.CommandPath()), c.Short)
	}
	for _, c := range cmds {
		fmt.Fprintf(&b, "\n## `%s`\n\n%s\n\n```\n%s\n```\n", c.CommandPath(), c.Short, c.UseLine())
		if c.Long != "" {
			b.WriteString("\n" + longText(c.Long) + "\n")
		}
		var rows []string
		c.Flags().VisitAll(func(f *pflag.Flag) {
			if f.Hidden || f.Name == "help" {
				return
			}
			name, usage := pflag.UnquoteUsage(f)
			flagCol := "--" + f.Name
			if name != "" {
				flagCol += " " + name
			}
			if f.Shorthand != "" {
				usage += fmt.Sprintf(" (short: `-%s`)", f.Shorthand)
			}
			rows = append(rows, fmt.Sprintf("| `%s` | %s | %s |", flagCol, referenceDefault(f), escapeMarkdown(usage)))
		})
		if len(rows) > 0 {
			b.WriteString("\n| flag | default | meaning |\n| --- | --- | --- |\n" + strings.Join(rows, "\n") + "\n")
		}
	}
	return b.String()
}

// referenceCommands lists the commands of root the reference documents.
func referenceCommands(root *cobra.Command) []*cobra.Command {
	var out []*cobra.Command
	for _, c := range root.Commands() {
		if c.IsAvailableCommand() && c.Name() != "help" && c.Name() != "completion" {
			out = append(out, c)
		}
	}
	return out
}

// referenceDefault shows a flag's default as readmeDefault and sameDefault
// read it: a literal in backticks, a list without its brackets.
func referenceDefault(f *pflag.Flag) string {
	v := f.DefValue
	if f.Value.Type() == "stringSlice" {
		v = strings.TrimSuffix(strings.TrimPrefix(v, "["), "]")
	}
	if v == "" {
		return ""
	}
	return "`" + v + "`"
}

// longText is a command's help as markdown: lines indented in the help
// (an example command) become a code block.
func longText(long string) string {
	var out []string
	code := false
	for _, line := range strings.Split(long, "\n") {
		indented := strings.HasPrefix(line, "  ")
		switch {
		case indented && !code:
			out = append(out, "", "```sh")
		case !indented && code:
			out = append(out, "```", "")
		}
		code = indented
		if indented {
			out = append(out, strings.TrimPrefix(line, "  "))
		} else {
			out = append(out, escapeMarkdown(line))
		}
	}
	if code {
		out = append(out, "```")
	}
	return strings.Join(out, "\n")
}

// escapeMarkdown keeps <FLAG> and | of help texts from being read as HTML
// or table cells.
func escapeMarkdown(s string) string {
	return strings.NewReplacer("<", `\<`, "|", `\|`).Replace(s)
}

// TestReferenceIsGenerated: docs/reference.md is what the commands say;
// -update rewrites it.
func TestReferenceIsGenerated(t *testing.T) {
	want := renderReference(newRoot("nodecreds", io.Discard, io.Discard))
	path := filepath.Join(repoRoot, referencePath)
	if *update {
		if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Errorf("%s differs from the commands; regenerate it: go test ./cmd/nodecreds -run TestReferenceIsGenerated -update", referencePath)
	}
}

// TestREADMEStaysShort: an operator finds what nodecreds is, how to try it
// and how to install it on the first screen; every further topic gets its
// page in docs/ and one line in the README.
func TestREADMEStaysShort(t *testing.T) {
	lines := strings.Split(strings.TrimRight(readDoc(t, "README.md"), "\n"), "\n")
	if len(lines) > 200 {
		t.Errorf("README.md has %d lines, more than 200: move the details to a page in docs/ and link it", len(lines))
	}
	first := func(pred func(string) bool) int {
		return slices.IndexFunc(lines, pred) + 1 // 0: not found
	}
	for _, tc := range []struct {
		what   string
		within int
		pred   func(string) bool
	}{
		{"`make demo`", 40, func(l string) bool { return strings.HasPrefix(l, "make demo") }},
		{"`make test`", 40, func(l string) bool { return strings.HasPrefix(l, "make test") }},
		{"the Install section", 60, func(l string) bool { return strings.HasPrefix(l, "## Install") }},
	} {
		if n := first(tc.pred); n == 0 || n > tc.within {
			t.Errorf("README.md: %s is at line %d, want it within the first %d lines", tc.what, n, tc.within)
		}
	}
}

var (
	fence    = regexp.MustCompile("(?ms)^\\s*```.*?^\\s*```[^\\n]*$")
	codeSpan = regexp.MustCompile("`[^`\n]*`")
	mdLink   = regexp.MustCompile(`\[[^\]]*\]\(([^)\s]+)\)`)
	heading  = regexp.MustCompile(`(?m)^#{1,6} +(.+?) *#*$`)
)

// slug is the anchor GitHub gives a heading.
func slug(h string) string {
	h = strings.ToLower(strings.ReplaceAll(h, "`", ""))
	var b strings.Builder
	for _, r := range h {
		switch {
		case unicode.IsLetter(r), unicode.IsDigit(r), r == '-', r == '_':
			b.WriteRune(r)
		case r == ' ':
			b.WriteByte('-')
		}
	}
	return b.String()
}

// anchors returns the anchors of a markdown document's headings.
func anchors(text string) map[string]bool {
	out := map[string]bool{}
	seen := map[string]int{}
	for _, m := range heading.FindAllStringSubmatch(fence.ReplaceAllString(text, ""), -1) {
		s := slug(m[1])
		if n := seen[s]; n > 0 {
			out[fmt.Sprintf("%s-%d", s, n)] = true
		} else {
			out[s] = true
		}
		seen[s]++
	}
	return out
}

// TestDocLinksResolve: every relative link of the documentation reaches a
// file of the repository, and a heading of it when it names one.
func TestDocLinksResolve(t *testing.T) {
	for _, doc := range docFiles(t) {
		text := readDoc(t, doc)
		prose := codeSpan.ReplaceAllString(fence.ReplaceAllString(text, ""), "``")
		for _, m := range mdLink.FindAllStringSubmatch(prose, -1) {
			target := strings.Trim(m[1], "<>")
			if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
				continue
			}
			path, anchor, _ := strings.Cut(target, "#")
			file := filepath.Join(repoRoot, filepath.Dir(doc), path)
			if path == "" {
				file = filepath.Join(repoRoot, doc)
			}
			info, err := os.Stat(file)
			if err != nil {
				t.Errorf("%s: link %s: %v", doc, target, err)
				continue
			}
			if anchor == "" || info.IsDir() || !strings.HasSuffix(file, ".md") {
				continue
			}
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			if !anchors(string(data))[anchor] {
				t.Errorf("%s: link %s: no heading #%s in %s", doc, target, anchor, path)
			}
		}
	}
}

var (
	// A nodecreds command line as the docs write it: at the start of a
	// line, in a code span, or after a path (/nodecreds in an image).
	docCommand = regexp.MustCompile("(?m)(?:^[ \\t]*|[`/(])nodecreds ([a-z][a-z-]*)([^`\\n]*)")
	docFlag    = regexp.MustCompile(`(?:^|[\s\[])--([a-z][a-z0-9-]*)`)
)

// TestDocCommandsExist: every `nodecreds COMMAND --flag` written in the
// documentation is a command with that flag.
func TestDocCommandsExist(t *testing.T) {
	root := newRoot("nodecreds", io.Discard, io.Discard)
	for _, doc := range docFiles(t) {
		for _, m := range docCommand.FindAllStringSubmatch(readDoc(t, doc), -1) {
			name, rest := m[1], m[2]
			// Up to where the shell or the prose goes on to something else.
			for _, sep := range []string{" | ", " && ", " || ", ";", " #", ")"} {
				rest, _, _ = strings.Cut(rest, sep)
			}
			c, _, err := root.Find([]string{name})
			if err != nil || c == root {
				if strings.HasPrefix(rest, " --") {
					t.Errorf("%s: nodecreds %s%s: no command %s", doc, name, rest, name)
				}
				continue
			}
			for _, f := range docFlag.FindAllStringSubmatch(rest, -1) {
				if c.Flags().Lookup(f[1]) == nil {
					t.Errorf("%s: nodecreds %s --%s: the command has no such flag", doc, name, f[1])
				}
			}
		}
	}
}

// TestChartValuesDocumented: the chart's README documents every value of
// values.yaml, and the keys of each setting that is not a free-form map.
func TestChartValuesDocumented(t *testing.T) {
	var values map[string]any
	if err := yaml.Unmarshal([]byte(readDoc(t, chartDir+"/values.yaml")), &values); err != nil {
		t.Fatal(err)
	}
	readme := readDoc(t, chartDir+"/README.md")
	freeForm := map[string]bool{"nodeSelector": true, "resources": true, "updateStrategy": true, "affinity": true, "podAnnotations": true, "podLabels": true}
	documented := func(key string) bool {
		return strings.Contains(readme, "\n| `"+key+"` |") || strings.Contains(readme, "\n| `"+key+".")
	}
	for key, v := range values {
		if !documented(key) {
			t.Errorf("%s/README.md does not document the value %s", chartDir, key)
		}
		sub, ok := v.(map[string]any)
		if !ok || freeForm[key] {
			continue
		}
		for k := range sub {
			if !documented(key + "." + k) {
				t.Errorf("%s/README.md does not document the value %s.%s", chartDir, key, k)
			}
		}
	}
}
