package check

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// Options configures a check.
type Options struct {
	HostRoot       string
	KubeletRootDir string
	Images         []string
	Registries     []string
	// Prober, when set, logs in to each matched registry.
	Prober Prober
}

// Prober logs in to a registry with a credential.
type Prober interface {
	Probe(ctx context.Context, registry, repository string, c Cred) ProbeResult
}

// ProbeResult is a login's outcome.
type ProbeResult struct {
	OK     bool   `json:"ok"`
	Status int    `json:"status"`
	Error  string `json:"error"`
}

// Result is the answer for one image or registry.
type Result struct {
	Ref      string       `json:"ref"`
	Found    bool         `json:"found"`
	Entry    string       `json:"entry,omitempty"`
	Username string       `json:"username,omitempty"`
	Probe    *ProbeResult `json:"probe,omitempty"`
	Error    string       `json:"error,omitempty"`
}

// Report is the whole answer; it is what `check -o json` prints.
type Report struct {
	OK       bool     `json:"ok"`
	File     string   `json:"file"`
	Results  []Result `json:"results"`
	Warnings []string `json:"warnings"`
}

// Run resolves credentials for every image and registry as the kubelet
// would. It never puts a password or auth string in the report.
func Run(ctx context.Context, o Options) Report {
	rep := Report{OK: true, Results: []Result{}, Warnings: []string{}}
	states := make([]fileState, 0, 8)
	var used *fileState
	for _, c := range searchOrder(o.KubeletRootDir) {
		st := readCandidate(o.HostRoot, c)
		states = append(states, st)
		if used == nil && st.exists && st.err == nil && (!c.legacy || !anyConfigJSONParsed(states)) {
			used = &states[len(states)-1]
		}
	}
	rep.Warnings = append(rep.Warnings, warnFiles(states, used)...)
	for _, s := range states {
		if s.unread {
			rep.OK = false
		}
	}
	var ring *keyring
	if used != nil {
		rep.File = used.path
		ring = newKeyring(used.creds)
	} else {
		ring = newKeyring(nil)
	}

	type ref struct {
		ref      string
		registry bool
	}
	refs := make([]ref, 0, len(o.Images)+len(o.Registries))
	for _, i := range o.Images {
		refs = append(refs, ref{i, false})
	}
	for _, r := range o.Registries {
		refs = append(refs, ref{r, true})
	}
	for _, r := range refs {
		res := Result{Ref: r.ref}
		repo, err := repoOf(r.ref, r.registry)
		if err != nil {
			res.Error = err.Error()
			rep.OK = false
			rep.Results = append(rep.Results, res)
			continue
		}
		creds := ring.lookup(repo)
		if len(creds) == 0 {
			rep.OK = false
			res.Error = "no credentials the kubelet would use"
			if w := elsewhere(states, used, repo); w != "" {
				rep.Warnings = append(rep.Warnings, fmt.Sprintf("%s: %s", r.ref, w))
			}
		} else {
			res.Found = true
			res.Entry, res.Username = creds[0].Key, creds[0].Username
			if o.Prober != nil {
				// The registry host as written (with port, if any), and for
				// an image the repository in it; never a default registry.
				host, path, _ := strings.Cut(repo, "/")
				p := o.Prober.Probe(ctx, host, path, creds[0].Cred)
				res.Probe = &p
				if !p.OK {
					rep.OK = false
					rep.Warnings = append(rep.Warnings, fmt.Sprintf("%s: the registry refused entry %q; the kubelet sends it on every pull from there, so a wrong entry also breaks anonymous pulls", r.ref, creds[0].Key))
				}
			}
		}
		rep.Results = append(rep.Results, res)
	}
	return rep
}

func anyConfigJSONParsed(states []fileState) bool {
	for _, s := range states {
		if !s.legacy && s.exists && s.err == nil {
			return true
		}
	}
	return false
}

// warnFiles names the traps: a file the kubelet silently skips, and a file
// without credentials that hides a later one that has them.
func warnFiles(states []fileState, used *fileState) []string {
	var out []string
	for _, s := range states {
		switch {
		case s.unread:
			out = append(out, fmt.Sprintf("%s was not read (%v); fix or remove it: what the kubelet makes of it is not checked", s.path, s.err))
		case s.exists && s.err != nil:
			out = append(out, fmt.Sprintf("%s exists but the kubelet cannot read it (%v), so it skips it silently", s.path, s.err))
		}
	}
	if used != nil && len(used.creds) == 0 {
		for _, s := range states {
			if s.path != used.path && s.exists && s.err == nil && len(s.creds) > 0 {
				out = append(out, fmt.Sprintf("%s has no credentials but parses, so the kubelet stops there and never reads %s", used.path, s.path))
				break
			}
		}
	}
	return out
}

// elsewhere says where else a credential for repo sits that the kubelet
// will not read.
func elsewhere(states []fileState, used *fileState, repo string) string {
	for _, s := range states {
		if used != nil && s.path == used.path || !s.exists || s.err != nil {
			continue
		}
		if creds := newKeyring(s.creds).lookup(repo); len(creds) > 0 {
			if used != nil {
				return fmt.Sprintf("%s has an entry (%q) but the kubelet reads only %s", s.path, creds[0].Key, used.path)
			}
			return fmt.Sprintf("%s has an entry (%q)", s.path, creds[0].Key)
		}
	}
	return ""
}

// WriteTable prints the report for people.
func (r Report) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	file := r.File
	if file == "" {
		file = "(none: the kubelet finds no credentials file)"
	}
	fmt.Fprintf(tw, "kubelet reads:\t%s\n\n", file)
	header := "REF\tFOUND\tENTRY\tUSERNAME"
	probe := false
	for _, res := range r.Results {
		probe = probe || res.Probe != nil
	}
	if probe {
		header += "\tPROBE"
	}
	fmt.Fprintln(tw, header)
	for _, res := range r.Results {
		found := "yes"
		if !res.Found {
			found = "no"
		}
		line := []string{res.Ref, found, orDash(res.Entry), orDash(res.Username)}
		if probe {
			switch {
			case res.Probe == nil:
				line = append(line, "-")
			case res.Probe.OK:
				line = append(line, fmt.Sprintf("ok (%d)", res.Probe.Status))
			default:
				line = append(line, fmt.Sprintf("failed (%d) %s", res.Probe.Status, res.Probe.Error))
			}
		}
		if res.Error != "" && res.Found {
			line = append(line, res.Error)
		}
		fmt.Fprintln(tw, strings.Join(line, "\t"))
		if res.Error != "" && !res.Found {
			fmt.Fprintf(tw, "  %s\n", res.Error)
		}
	}
	for _, warn := range r.Warnings {
		fmt.Fprintf(tw, "warning: %s\n", warn)
	}
	if r.OK {
		fmt.Fprintln(tw, "\nOK")
	} else {
		fmt.Fprintln(tw, "\nNOT OK")
	}
	return tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// Match is the credential the kubelet would try first for an image, read
// from one config.json, and the key under which the kubelet indexes it
// (scheme and /v1/ stripped: a pattern for the credential-provider cache).
type Match struct {
	Cred
	Pattern string
}

// LookupFile resolves image against a single config.json (node path under
// hostRoot) with the kubelet's parsing and matching: every matching entry,
// most specific first, as the kubelet would try them. A file that does not
// exist matches nothing.
func LookupFile(hostRoot, nodePath, image string) ([]Match, error) {
	st := readCandidate(hostRoot, candidate{path: nodePath})
	if st.err != nil {
		return nil, fmt.Errorf("%s: %w", nodePath, st.err)
	}
	repo, err := repoOf(image, false)
	if err != nil {
		return nil, err
	}
	return newKeyring(st.creds).lookup(repo), nil
}
