package check

import (
	"fmt"
	"io"
	"strings"

	"github.com/nodecreds/nodecreds/internal/containerdconf"
)

// writeTable prints the runtime part for people (into the report's
// tabwriter).
func (r *RuntimeReport) writeTable(w io.Writer) {
	version := r.Version
	if version == "" {
		version = "version not known (--runtime-version)"
	}
	fmt.Fprintf(w, "\ncontainerd:\t%s\n", text(version))
	if r.Error != "" {
		fmt.Fprintf(w, "  error: %s\n", text(r.Error))
	}
	files := strings.Join(r.ConfigFiles, ", ")
	if files == "" {
		files = "(none: containerd's defaults)"
	}
	fmt.Fprintf(w, "config:\t%s\n", text(files))
	fmt.Fprintf(w, "config_path:\t%s\n", text(orDash(strings.Join(r.ConfigPath, ":"))))
	fmt.Fprintf(w, "nodecreds writes:\t%s\n", text(r.CertsDir))
	writeProblems(w, "", r.Problems)
	if len(r.Results) == 0 {
		return
	}
	fmt.Fprintln(w, "\nRUNTIME REF\tREGISTRY\tHOSTS.TOML\tHOST (in order)\tHEADER\tCHALLENGE")
	for _, res := range r.Results {
		ref := res.Ref
		if res.Sandbox {
			ref = "sandbox: " + ref
		}
		lead := []string{text(ref), text(orDash(res.Registry)), text(orDash(res.File))}
		if len(res.Hosts) == 0 {
			fmt.Fprintln(w, strings.Join(append(lead, "-", "-", "-"), "\t"))
		}
		for i, h := range res.Hosts {
			if i > 0 {
				lead = []string{"", "", ""}
			}
			fmt.Fprintln(w, strings.Join(append(lead, text(h.URL), text(headerText(h)), text(challengeText(h))), "\t"))
		}
		if res.Note != "" {
			fmt.Fprintf(w, "  note: %s\n", text(res.Note))
		}
		writeProblems(w, "  ", res.Problems)
	}
}

func headerText(h RuntimeHost) string {
	if !h.Header {
		return "none"
	}
	s := "yes"
	if h.Username != "" {
		s = "basic, user " + h.Username
	}
	return s + " (" + h.WrittenBy + ")"
}

func challengeText(h RuntimeHost) string {
	switch {
	case h.ProbeErr != "":
		return "failed: " + h.ProbeErr
	case h.Challenge == "":
		return "-"
	case h.Status != 0:
		return fmt.Sprintf("%s (%d)", h.Challenge, h.Status)
	}
	return h.Challenge
}

func writeProblems(w io.Writer, indent string, ps []containerdconf.Problem) {
	for _, p := range ps {
		fmt.Fprintf(w, "%sproblem (%s): %s\n%s  fix: %s\n", indent, text(p.Reason), text(p.Message), indent, text(p.Fix))
	}
}
