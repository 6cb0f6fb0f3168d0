package check

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"path"
	"path/filepath"
	"strings"

	"github.com/distribution/reference"

	"github.com/nodecreds/nodecreds/internal/containerdconf"
	"github.com/nodecreds/nodecreds/internal/dockercfg"
	"github.com/nodecreds/nodecreds/internal/hostfs"
	"github.com/nodecreds/nodecreds/internal/hoststoml"
	"github.com/nodecreds/nodecreds/internal/kubeletcred"
	"github.com/nodecreds/nodecreds/internal/nodefile"
)

// RuntimeOptions asks what containerd itself would send for a pull: the
// Authorization headers of its hosts.toml files, which the sandbox image
// and mirrors with credentials of their own need.
type RuntimeOptions struct {
	// CertsDir is where nodecreds writes hosts.toml (sync
	// --containerd-certs-dir); ConfigFile containerd's configuration;
	// StateDir nodecreds' state folder (its records of what it wrote).
	// All node paths.
	CertsDir, ConfigFile, StateDir string
	// Version is the Node's status.nodeInfo.containerRuntimeVersion
	// ("containerd://2.1.4", or "2.1.4"); "" when not known: the checks
	// that need it are not made, and the report says so.
	Version string
	// Sandbox: also check the sandbox image containerd's configuration
	// names (or its default).
	Sandbox bool
	// Challenger, when set, asks each host how it challenges (--probe).
	Challenger Challenger
}

// Challenger asks a registry host, without credentials, how it
// challenges (RegistryProber.Challenge).
type Challenger interface {
	Challenge(ctx context.Context, scheme, host string) (challenge string, status int, errDesc string)
}

// RuntimeReport is the runtime part of the report.
type RuntimeReport struct {
	Runtime      string   `json:"runtime"`
	Version      string   `json:"version"` // "" when not known
	ConfigFiles  []string `json:"config_files"`
	ConfigPath   []string `json:"config_path"`
	CertsDir     string   `json:"certs_dir"`
	SandboxImage string   `json:"sandbox_image,omitempty"`
	// Problems are the reasons containerd would not use the headers at
	// all (containerdconf.Diagnose), each with its fix.
	Problems []containerdconf.Problem `json:"problems"`
	Results  []RuntimeResult          `json:"results"`
	Error    string                   `json:"error,omitempty"`
}

// RuntimeResult is what containerd would read and send for one image or
// registry.
type RuntimeResult struct {
	Ref      string `json:"ref"`
	Sandbox  bool   `json:"sandbox,omitempty"`
	Registry string `json:"registry"` // as containerd looks it up
	// File is the hosts.toml containerd reads for it; "" for none (Note
	// says why: then it tries the registry alone, with no header).
	File  string        `json:"file"`
	Note  string        `json:"note,omitempty"`
	Hosts []RuntimeHost `json:"hosts"`
	OK    bool          `json:"ok"`
	// Problems: headers that are missing where a host asks for
	// credentials, or that cannot answer its challenge.
	Problems []containerdconf.Problem `json:"problems,omitempty"`
}

// RuntimeHost is one host containerd tries, in its order. Header values
// are never in it: only whether there is one, and a Basic one's username.
type RuntimeHost struct {
	URL      string `json:"url"`
	Header   bool   `json:"header"`
	Username string `json:"username,omitempty"`
	// WrittenBy: "nodecreds" when the value is the one nodecreds wrote
	// there (its records), "other" otherwise; "" without a header.
	WrittenBy string `json:"written_by,omitempty"`
	// Challenge with --probe: "basic", "bearer", "other", or "none".
	Challenge string `json:"challenge,omitempty"`
	Status    int    `json:"status,omitempty"`
	ProbeErr  string `json:"probe_error,omitempty"`
}

// runtimeView is containerd's configuration as check reads it.
type runtimeView struct {
	root    *hostfs.Root
	opts    *RuntimeOptions
	conf    containerdconf.Config
	v       containerdconf.Version
	known   bool
	folders []string // the folders containerd looks hosts up in, in order
	note    string   // why folders is empty or uncertain
	records map[string]hoststoml.Record
	seen    map[string]RuntimeHost // challenge answers by URL
}

// runRuntime answers for o.Runtime; ok is false when a problem applies.
func runRuntime(ctx context.Context, o Options) (*RuntimeReport, bool) {
	ro := o.Runtime
	rep := &RuntimeReport{Runtime: "containerd", CertsDir: ro.CertsDir, Problems: []containerdconf.Problem{}, Results: []RuntimeResult{}}
	root, err := hostfs.OpenRoot(o.HostRoot)
	if err != nil {
		rep.Error = err.Error()
		return rep, false
	}
	defer root.Close()
	rv := &runtimeView{root: root, opts: ro, seen: map[string]RuntimeHost{}}
	if rv.conf, err = containerdconf.Load(root, ro.ConfigFile); err != nil {
		rep.Error = err.Error()
		return rep, false
	}
	rv.v, rv.known = versionOf(ro.Version)
	if rv.known {
		rep.Version = rv.v.String()
	}
	if rv.records, err = nodefile.ReadHostsTOMLRecords(root, ro.StateDir); err != nil {
		rep.Error = fmt.Sprintf("reading nodecreds' hosts.toml records: %v", err)
	}
	rep.ConfigFiles, rep.ConfigPath = rv.conf.Files, rv.conf.ConfigPaths
	if rv.conf.SandboxImage != "" {
		rep.SandboxImage = kubeletcred.SafeRef(rv.conf.SandboxImage, false)
	}
	rep.Problems = append(rep.Problems, containerdconf.Diagnose(rv.conf, rv.v, rv.known, ro.CertsDir)...)
	rv.folders, rv.note = rv.lookupFolders()
	ok := len(rep.Problems) == 0 && rep.Error == ""
	for _, r := range runtimeRefs(o, rv.conf) {
		res := rv.resolve(ctx, r)
		rep.Results = append(rep.Results, res)
		ok = ok && res.OK
	}
	return rep, ok
}

// versionOf reads --runtime-version: a containerRuntimeVersion, or a bare
// release taken as containerd's.
func versionOf(s string) (containerdconf.Version, bool) {
	if s == "" {
		return containerdconf.Version{}, false
	}
	if !strings.Contains(s, "://") {
		s = "containerd://" + s
	}
	rt, v, ok := containerdconf.RuntimeVersion(s)
	return v, ok && rt == "containerd"
}

// runtimeRef is an image or registry to answer for.
type runtimeRef struct {
	ref      string
	registry bool
	sandbox  bool
}

func runtimeRefs(o Options, c containerdconf.Config) []runtimeRef {
	var refs []runtimeRef
	if o.Runtime.Sandbox {
		img := c.SandboxImage
		if img == "" {
			img = containerdconf.DefaultSandboxRepository
		}
		refs = append(refs, runtimeRef{ref: img, sandbox: true})
	}
	for _, r := range refsOf(o) {
		refs = append(refs, runtimeRef{ref: r.ref, registry: r.registry})
	}
	return refs
}

// lookupFolders are the config_path folders containerd looks a registry
// up in, in its order, as far as the configuration and release tell.
func (rv *runtimeView) lookupFolders() ([]string, string) {
	c := rv.conf
	paths := c.ConfigPaths
	switch {
	case c.LegacyRegistry && !c.ConfigPathSet:
		return nil, "containerd uses its inline registry configuration and reads no hosts.toml"
	case !c.ConfigPathSet && !rv.known:
		return nil, "config_path is not set and containerd's version is not known: not determined (1.x reads no hosts.toml, 2.x " + containerdconf.DefaultConfigPath2 + ")"
	case !c.ConfigPathSet && rv.v.Major < 2:
		return nil, "config_path is not set: containerd 1.x reads no hosts.toml"
	case !c.ConfigPathSet:
		paths = filepath.SplitList(containerdconf.DefaultConfigPath2)
	}
	if len(paths) > 1 && !c.LocalPull {
		switch {
		case !rv.known:
			return paths, "as containerd before 2.1 (or with use_local_image_pull) reads them; from 2.1 the transfer service reads none of them (containerd #12808), and the version is not known"
		case rv.v.AtLeast(2, 1):
			// The transfer service takes the whole value as one folder.
			return []string{strings.Join(paths, ":")}, "containerd reads config_path as one folder (containerd #12808)"
		}
	}
	return paths, ""
}

// resolve answers for one ref.
func (rv *runtimeView) resolve(ctx context.Context, r runtimeRef) RuntimeResult {
	res := RuntimeResult{Ref: kubeletcred.SafeRef(r.ref, r.registry), Sandbox: r.sandbox, Hosts: []RuntimeHost{}}
	registry, err := registryOf(r)
	if err != nil {
		res.Note = err.Error()
		return res
	}
	res.Registry = registry
	file, data, note := rv.hostsFile(registry)
	res.File, res.Note = file, joinNotes(rv.note, note)
	if file != "" && data == nil {
		// containerd reads a file check cannot: what it sends is not
		// known, so the check does not pass.
		return res
	}
	var hosts []hoststoml.Host
	if data != nil {
		var noHostTable bool
		hosts, noHostTable, err = hoststoml.Hosts(data, registry)
		switch {
		case err != nil:
			res.Note = joinNotes(res.Note, fmt.Sprintf("%s cannot be read as containerd reads it (%v): containerd fails every pull of %s", file, err, registry))
			return res
		case noHostTable && (!rv.known || rv.v.Major < 2):
			res.Problems = append(res.Problems, containerdconf.Problem{Reason: "NoHostSection",
				Message: fmt.Sprintf("%s has no [host.\"…\"] section, so containerd 1.x ignores the whole file (\"invalid `host` tree\").", file),
				Fix:     "Put the server's settings and header in a [host.\"https://<server>\"] section of their own, the form every release reads."})
		}
	}
	if hosts == nil {
		// No file: containerd tries the registry alone, with no header.
		hosts, _, _ = hoststoml.Hosts(nil, registry)
	}
	for _, h := range hosts {
		res.Hosts = append(res.Hosts, rv.host(ctx, file, h))
	}
	res.Problems = append(res.Problems, rv.hostProblems(registry, res.Hosts)...)
	if rv.opts.Challenger != nil && !anyAnswered(res.Hosts) {
		res.Problems = append(res.Problems, containerdconf.Problem{Reason: ReasonNoHostAnswered,
			Message: fmt.Sprintf("No host containerd tries for %s answered /v2/ as a registry does (200, or 401 with a challenge): each could not be reached or answered another status, so containerd's pull fails.", registry),
			Fix:     "Check the hosts' names, addresses and certificates, and the node's network and proxy, against the CHALLENGE column."})
	}
	res.OK = len(res.Problems) == 0 && anyHeader(res.Hosts, rv.opts.Challenger != nil)
	return res
}

// ReasonNoHostAnswered: with --probe, no host containerd tries for a ref
// answered as a registry.
const ReasonNoHostAnswered = "NoHostAnswered"

// anyAnswered: some host answered the challenge request as a registry
// does: 200 (open), or 401 with a challenge (hostProblems says whether its
// header answers it). A host that could not be reached, or answered 403,
// 404, 5xx or a redirect, is one containerd's pull does not get through.
func anyAnswered(hosts []RuntimeHost) bool {
	for _, h := range hosts {
		if h.ProbeErr == "" && (h.Status == http.StatusOK || h.Status == http.StatusUnauthorized) {
			return true
		}
	}
	return false
}

// registryOf is the registry host containerd looks r up by (docker.io for
// Docker Hub's images).
func registryOf(r runtimeRef) (string, error) {
	if r.registry {
		return kubeletcred.RegistryHost(r.ref)
	}
	named, err := reference.ParseNormalizedNamed(r.ref)
	if err != nil {
		return "", kubeletcred.RefError(r.ref, err)
	}
	return reference.Domain(named), nil
}

// hostsFile finds the hosts.toml containerd reads for registry (hostPaths:
// in each folder in turn, the registry's spellings, then _default; the
// first that exists wins, with or without a hosts.toml) and reads it.
func (rv *runtimeView) hostsFile(registry string) (file string, data []byte, note string) {
	for _, folder := range rv.folders {
		for _, name := range append(hoststoml.Spellings(registry), hoststoml.DefaultFolder) {
			p := path.Join(folder, name, hoststoml.FileName)
			dir, err := rv.root.OpenDir(path.Join(folder, name), false, 0)
			switch {
			case errors.Is(err, fs.ErrNotExist):
				continue
			case err != nil:
				// It exists, so containerd uses it (hostPaths stats it)
				// and fails to read its hosts.toml.
				return p, nil, fmt.Sprintf("containerd reads %s, which check cannot open (%v)", path.Join(folder, name), err)
			}
			data, _, err := dir.ReadFile(hoststoml.FileName, hostfs.MaxFileSize)
			dir.Close()
			switch {
			case errors.Is(err, fs.ErrNotExist):
				return "", nil, fmt.Sprintf("containerd reads %s, which has no hosts.toml (its certificate files apply): the registry alone, no header", path.Join(folder, name))
			case err != nil:
				return p, nil, fmt.Sprintf("containerd reads %s, which check cannot read (%v)", p, err)
			}
			return p, data, ""
		}
	}
	if len(rv.folders) > 0 {
		return "", nil, fmt.Sprintf("no folder for %s under %s: the registry alone, no header", registry, strings.Join(rv.folders, ", "))
	}
	return "", nil, ""
}

// host describes h, and with a Challenger asks it how it challenges
// (once per URL).
func (rv *runtimeView) host(ctx context.Context, file string, h hoststoml.Host) RuntimeHost {
	scheme := h.Scheme
	if scheme == "" {
		scheme = "https"
		if hoststoml.IsLocalhost(h.Host) {
			scheme = "http"
		}
	}
	out := RuntimeHost{URL: scheme + "://" + h.Host, Header: len(h.Authorization) > 0}
	if out.Header {
		out.Username = basicUser(string(h.Authorization[0]))
		out.WrittenBy = "other"
		if rec, ok := rv.records[file]; ok && len(h.Authorization) == 1 {
			for _, c := range rec.Changes {
				if c.Section == h.Section && c.Ours == hoststoml.Fingerprint(string(h.Authorization[0])) {
					out.WrittenBy = "nodecreds"
				}
			}
		}
	}
	if rv.opts.Challenger == nil {
		return out
	}
	if seen, ok := rv.seen[out.URL]; ok {
		out.Challenge, out.Status, out.ProbeErr = seen.Challenge, seen.Status, seen.ProbeErr
		return out
	}
	out.Challenge, out.Status, out.ProbeErr = rv.opts.Challenger.Challenge(ctx, scheme, h.Host)
	if out.Challenge == "" && out.ProbeErr == "" {
		out.Challenge = "none"
	}
	rv.seen[out.URL] = out
	return out
}

// basicUser is the username of a Basic header value, as
// dockercfg.SafeUsername prints it; "" for another scheme or one that
// does not decode. Never the password.
func basicUser(v string) string {
	scheme, cred, ok := strings.Cut(strings.TrimSpace(v), " ")
	if !ok || !strings.EqualFold(scheme, "basic") {
		return ""
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(cred))
	if err != nil {
		return ""
	}
	user, password, found := strings.Cut(string(raw), ":")
	if !found {
		return ""
	}
	return dockercfg.SafeUsername(user, password)
}

// hostProblems: with the challenges known, a host that asks for
// credentials and gets no header, or one whose challenge a Basic header
// does not answer on this release. containerd goes on to the next host
// when one refuses, so such a mirror is skipped, not fatal; it is still
// reported, since its credentials are what the check is about.
func (rv *runtimeView) hostProblems(registry string, hosts []RuntimeHost) []containerdconf.Problem {
	var out []containerdconf.Problem
	tried := map[string]bool{}
	for _, h := range hosts {
		if h.Challenge == "" || h.Challenge == "none" || tried[h.URL] {
			// The top level naming a host already tried is a second
			// try of it, reached only when the first failed.
			continue
		}
		tried[h.URL] = true
		if !h.Header {
			out = append(out, containerdconf.Problem{Reason: "NoHeader",
				Message: fmt.Sprintf("%s asks for credentials and containerd sends it no Authorization header for %s.", h.URL, registry),
				Fix:     fmt.Sprintf("Give a Secret annotated nodecreds.io/runtime-auth: \"true\" an entry for %s, with sync --containerd-certs-dir %s.", strings.TrimPrefix(strings.TrimPrefix(h.URL, "https://"), "http://"), rv.opts.CertsDir)})
			continue
		}
		if p := containerdconf.ChallengeProblem(h.URL, h.Challenge, rv.v, rv.known); p != nil {
			out = append(out, *p)
		}
	}
	return out
}

// anyHeader: without challenges known, some host tried gets a header
// (else containerd authenticates nowhere for it); with them, hostProblems
// has said what is missing.
func anyHeader(hosts []RuntimeHost, probed bool) bool {
	if probed {
		return true
	}
	for _, h := range hosts {
		if h.Header {
			return true
		}
	}
	return false
}

func joinNotes(a, b string) string {
	switch {
	case a == "":
		return b
	case b == "":
		return a
	}
	return a + "; " + b
}
