package check

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"unicode"
	"unicode/utf8"

	"github.com/nodecreds/nodecreds/internal/dockercfg"
	"github.com/nodecreds/nodecreds/internal/kubeletcred"
)

// Options configures a check.
type Options struct {
	HostRoot       string
	KubeletRootDir string
	Images         []string
	Registries     []string
	// Prober, when set, logs in to each matched registry.
	Prober Prober
	// Runtime, when set, also answers for containerd's own pulls (its
	// hosts.toml headers).
	Runtime *RuntimeOptions
}

// Prober logs in to a registry with a credential.
type Prober interface {
	Probe(ctx context.Context, registry, repository string, c kubeletcred.Cred) ProbeResult
}

// ProbeResult is a login's outcome. Nothing in it is text a registry
// chose: Error is one of a fixed set of descriptions, or the registry's
// Codes.
type ProbeResult struct {
	// OK: the registry let the probe in (its /v2/ answered 200).
	OK     bool `json:"ok"`
	Status int  `json:"status"`
	// Anonymous: the registry answered without asking for credentials, so
	// it never checked the credential: OK does not say that it works.
	Anonymous bool `json:"anonymous,omitempty"`
	// NotSent: the probe did not send the credential (see Error).
	NotSent bool `json:"not_sent,omitempty"`
	// Codes are the registry's error codes, only those the distribution
	// spec defines.
	Codes []string `json:"codes,omitempty"`
	Error string   `json:"error"`
}

// Result is the answer for one image or registry.
type Result struct {
	Ref   string `json:"ref"`
	Found bool   `json:"found"`
	// Entry is the auths key the kubelet tries first, Username its user.
	Entry    string `json:"entry,omitempty"`
	Username string `json:"username,omitempty"`
	// Entries are all the auths keys the kubelet tries, in its order: more
	// specific keys first; two keys it files under one index key (such as
	// https://r.test/ and r.test) in an order it does not define, here in
	// key order.
	Entries []string     `json:"entries,omitempty"`
	Probe   *ProbeResult `json:"probe,omitempty"`
	Error   string       `json:"error,omitempty"`
}

// Report is the whole answer; it is what `check -o json` prints.
type Report struct {
	OK       bool     `json:"ok"`
	File     string   `json:"file"`
	Results  []Result `json:"results"`
	Warnings []string `json:"warnings"`
	// Runtime is there with --runtime.
	Runtime *RuntimeReport `json:"runtime,omitempty"`
	// ServiceAccount is there with --service-account: the plugin's answer
	// for that ServiceAccount's Pods. File is then empty (the node's files
	// are not read) and Results say the same per image.
	ServiceAccount *ServiceAccountReport `json:"serviceAccount,omitempty"`
}

// Run resolves credentials for every image and registry as the kubelet
// would. It never puts a password or auth string in the report.
func Run(ctx context.Context, o Options) Report {
	rep := Report{OK: true, Results: []Result{}, Warnings: []string{}}
	l := lookup{prober: o.Prober, states: kubeletcred.ReadAll(o.HostRoot, kubeletcred.SearchOrder(o.KubeletRootDir))}
	l.used = usedFile(l.states)
	rep.Warnings = append(rep.Warnings, warnFiles(l.states, l.used)...)
	for _, s := range l.states {
		if s.Unread {
			rep.OK = false
		}
	}
	if l.used != nil {
		rep.File = l.used.Path
		l.ring = kubeletcred.NewKeyring(l.used.Creds)
	} else {
		l.ring = kubeletcred.NewKeyring(nil)
	}
	for _, r := range refsOf(o) {
		res, ok, warnings := l.resolve(ctx, r)
		rep.Results = append(rep.Results, res)
		rep.Warnings = append(rep.Warnings, warnings...)
		rep.OK = rep.OK && ok
	}
	if o.Runtime != nil {
		var ok bool
		rep.Runtime, ok = runRuntime(ctx, o)
		rep.OK = rep.OK && ok
	}
	return rep
}

// usedFile is the file the kubelet reads: the first that parses; a legacy
// .dockercfg only when no config.json before it parsed. nil when none.
func usedFile(states []kubeletcred.File) *kubeletcred.File {
	for i, st := range states {
		if st.Exists && st.Err == nil && (!st.Legacy || !anyConfigJSONParsed(states[:i+1])) {
			return &states[i]
		}
	}
	return nil
}

// ref is an image, or a registry (registry set), to check.
type ref struct {
	ref      string
	registry bool
}

// refsOf are the images, then the registries, of o.
func refsOf(o Options) []ref {
	refs := make([]ref, 0, len(o.Images)+len(o.Registries))
	for _, i := range o.Images {
		refs = append(refs, ref{i, false})
	}
	for _, r := range o.Registries {
		refs = append(refs, ref{r, true})
	}
	return refs
}

// lookup is the kubelet's view of the node's files.
type lookup struct {
	prober Prober // nil: no probe
	states []kubeletcred.File
	used   *kubeletcred.File
	ring   *kubeletcred.Keyring
}

// resolve answers for r: its result, whether it is fine, and warnings.
func (l lookup) resolve(ctx context.Context, r ref) (Result, bool, []string) {
	repo, err := kubeletcred.RepoOf(r.ref, false)
	if r.registry {
		repo, err = registryRepo(r.ref)
	}
	// From here on the ref is named as outputs print it.
	r.ref = kubeletcred.SafeRef(r.ref, r.registry)
	res := Result{Ref: r.ref}
	if err != nil {
		res.Error = err.Error()
		return res, false, nil
	}
	creds := l.ring.Lookup(repo)
	if len(creds) == 0 {
		res.Error = "no credentials the kubelet would use"
		if w := elsewhere(l.states, l.used, repo); w != "" {
			return res, false, []string{fmt.Sprintf("%s: %s", r.ref, w)}
		}
		return res, false, nil
	}
	res.Found = true
	res.Entry, res.Username = dockercfg.SafeKey(creds[0].Key), dockercfg.SafeUsername(creds[0].Username, creds[0].Password)
	for _, c := range creds {
		res.Entries = append(res.Entries, dockercfg.SafeKey(c.Key))
	}
	warnings := unordered(r.ref, creds)
	// The registry host as written (with port, if any), and for an image
	// the repository in it.
	host, path, _ := strings.Cut(repo, "/")
	key := dockercfg.SafeKey(creds[0].Key)
	hubElsewhere := isDockerHub(hostOf(creds[0].Pattern)) && !isDockerHub(host)
	if hubElsewhere {
		warnings = append(warnings, fmt.Sprintf("%s: no entry names %s, so the kubelet falls back to Docker Hub's (%q) and the container runtime sends Docker Hub's password to %s; give %s an entry of its own. check does not send it there", r.ref, host, key, host, host))
	}
	switch {
	case l.prober == nil:
		return res, true, warnings
	case hubElsewhere:
		res.Probe = &ProbeResult{NotSent: true, Error: descNotSent}
		return res, false, warnings
	}
	p := l.prober.Probe(ctx, host, path, creds[0].Cred)
	res.Probe = &p
	switch {
	case !p.OK:
		warnings = append(warnings, fmt.Sprintf("%s: the registry refused entry %q; the kubelet sends it on every pull from there, so a wrong entry also breaks anonymous pulls", r.ref, key))
		return res, false, warnings
	case p.Anonymous:
		warnings = append(warnings, fmt.Sprintf("%s: the registry let the probe in without asking for credentials, so entry %q is not verified: registry clients send it only when a registry asks, and a wrong one fails only there", r.ref, key))
	}
	return res, true, warnings
}

// registryRepo is what the kubelet looks up for an image of registry ref
// with no path of its own ("host/", so its Docker Hub fallback applies
// where it does for images: docker.io, index.docker.io and localhost). A
// name with neither a dot nor a colon is no registry host to the kubelet,
// localhost aside: it pulls myregistry/app from Docker Hub
// (docker.io/myregistry/app), never from a host myregistry.
func registryRepo(ref string) (string, error) {
	host, err := kubeletcred.RepoOf(ref, true)
	if err != nil {
		return "", err
	}
	if host != "localhost" && !strings.ContainsAny(host, ".:") {
		return "", fmt.Errorf("%q is not a registry host: the kubelet pulls %s/... from Docker Hub (docker.io/%s/...), never from a host %s; check --registry docker.io, --image %s/IMAGE, or the registry's name with its domain or port", ref, host, host, host, host)
	}
	return host + "/", nil
}

// isDockerHub: host is a name of Docker Hub's registry, whose credential
// the kubelet files under index.docker.io.
func isDockerHub(host string) bool {
	return host == "docker.io" || host == "index.docker.io"
}

// hostOf is an index key's host[:port].
func hostOf(idx string) string {
	host, _, _ := strings.Cut(idx, "/")
	return host
}

// unordered names the index keys under which the kubelet files two or more
// entries: it tries them in no defined order, and a credential provider,
// whose answer holds one credential per key, hands it only the first.
func unordered(ref string, creds []kubeletcred.Match) []string {
	var out []string
	for i := 0; i < len(creds); {
		j := i + 1
		for j < len(creds) && creds[j].Pattern == creds[i].Pattern {
			j++
		}
		if j-i > 1 {
			keys := make([]string, 0, j-i)
			for _, c := range creds[i:j] {
				keys = append(keys, fmt.Sprintf("%q", dockercfg.SafeKey(c.Key)))
			}
			out = append(out, fmt.Sprintf("%s: the kubelet files %s under one key (%s) and tries them in no defined order; the credential-provider plugin answers with %q only", ref, strings.Join(keys, " and "), dockercfg.SafeKey(creds[i].Pattern), dockercfg.SafeKey(creds[i].Key)))
		}
		i = j
	}
	return out
}

func anyConfigJSONParsed(states []kubeletcred.File) bool {
	for _, s := range states {
		if !s.Legacy && s.Exists && s.Err == nil {
			return true
		}
	}
	return false
}

// warnFiles names the traps: a file the kubelet silently skips, and a file
// without credentials that hides a later one that has them.
func warnFiles(states []kubeletcred.File, used *kubeletcred.File) []string {
	var out []string
	for _, s := range states {
		switch {
		case s.Unread:
			out = append(out, fmt.Sprintf("%s was not read (%v); fix or remove it: what the kubelet makes of it is not checked", s.Path, s.Err))
		case s.Exists && s.Err != nil:
			out = append(out, fmt.Sprintf("%s exists but the kubelet cannot read it (%v), so it skips it silently", s.Path, s.Err))
		}
	}
	if used != nil && len(used.Creds) == 0 {
		for _, s := range states {
			if s.Path != used.Path && s.Exists && s.Err == nil && len(s.Creds) > 0 {
				out = append(out, fmt.Sprintf("%s has no credentials but parses, so the kubelet stops there and never reads %s", used.Path, s.Path))
				break
			}
		}
	}
	return out
}

// elsewhere says where else a credential for repo sits that the kubelet
// will not read.
func elsewhere(states []kubeletcred.File, used *kubeletcred.File, repo string) string {
	for _, s := range states {
		if used != nil && s.Path == used.Path || !s.Exists || s.Err != nil {
			continue
		}
		if creds := kubeletcred.NewKeyring(s.Creds).Lookup(repo); len(creds) > 0 {
			if used != nil {
				return fmt.Sprintf("%s has an entry (%q) but the kubelet reads only %s", s.Path, dockercfg.SafeKey(creds[0].Key), used.Path)
			}
			return fmt.Sprintf("%s has an entry (%q)", s.Path, dockercfg.SafeKey(creds[0].Key))
		}
	}
	return ""
}

// WriteTable prints the report for people.
func (r Report) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if r.ServiceAccount != nil {
		r.ServiceAccount.writeTable(tw)
	} else {
		r.writeFiles(tw)
	}
	for _, warn := range r.Warnings {
		fmt.Fprintf(tw, "warning: %s\n", text(warn))
	}
	if r.Runtime != nil {
		r.Runtime.writeTable(tw)
	}
	if r.OK {
		fmt.Fprintln(tw, "\nOK")
	} else {
		fmt.Fprintln(tw, "\nNOT OK")
	}
	return tw.Flush()
}

// writeFiles prints the node files' answer.
func (r Report) writeFiles(tw *tabwriter.Writer) {
	file := r.File
	if file == "" {
		file = "(none: the kubelet finds no credentials file)"
	}
	fmt.Fprintf(tw, "kubelet reads:\t%s\n\n", text(file))
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
		entry := res.Entry
		if len(res.Entries) > 1 {
			entry = strings.Join(res.Entries, ",")
		}
		line := []string{text(res.Ref), found, text(orDash(entry)), text(orDash(res.Username))}
		if probe {
			line = append(line, text(probeText(res.Probe)))
		}
		if res.Error != "" && res.Found {
			line = append(line, text(res.Error))
		}
		fmt.Fprintln(tw, strings.Join(line, "\t"))
		if res.Error != "" && !res.Found {
			fmt.Fprintf(tw, "  %s\n", text(res.Error))
		}
	}
}

// probeText is the PROBE column.
func probeText(p *ProbeResult) string {
	switch {
	case p == nil:
		return "-"
	case p.OK && p.Anonymous:
		return fmt.Sprintf("ok (%d) without credentials: not verified", p.Status)
	case p.OK:
		return fmt.Sprintf("ok (%d)", p.Status)
	case p.NotSent:
		return p.Error
	case p.Status == 0:
		return "failed: " + p.Error
	}
	return fmt.Sprintf("failed (%d) %s", p.Status, p.Error)
}

// text is s as the table prints it: as it is when every rune is graphic
// (spaces included), else Go-quoted (strconv.QuoteToGraphic), so that
// text from the node's files — a username, a host, a path — holding a
// newline, a tab, a carriage return, an escape sequence, a bidirectional
// override or bytes that are not UTF-8 can neither forge a row nor drive
// the terminal. Every value printed in the table goes through it.
func text(s string) string {
	if utf8.ValidString(s) && strings.IndexFunc(s, func(r rune) bool { return !unicode.IsGraphic(r) }) < 0 {
		return s
	}
	return strconv.QuoteToGraphic(s)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
