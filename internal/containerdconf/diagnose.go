package containerdconf

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
)

// Problem is a reason containerd will not use the headers nodecreds
// writes. Reason is CamelCase (a Node condition's reason); Message and
// Fix are one sentence each and hold no secret.
type Problem struct {
	Reason  string `json:"reason"`
	Message string `json:"message"`
	Fix     string `json:"fix"`
}

// Reasons of the problems.
const (
	ReasonLegacyRegistryConfig      = "LegacyRegistryConfig"
	ReasonConfigPathUnset           = "ConfigPathUnset"
	ReasonConfigPathMultipleFolders = "ConfigPathMultipleFolders"
	ReasonConfigPathElsewhere       = "ConfigPathElsewhere"
	ReasonRuntimeVersionUnknown     = "RuntimeVersionUnknown"
	ReasonBearerNeedsContainerd21   = "BearerTokenNeedsContainerd21"
	ReasonChallengeNotBasic         = "ChallengeNotBasic"
)

// Diagnose says why containerd, of release v (versionKnown false when the
// Node does not say, or the runtime is not containerd), configured as c,
// would not read the hosts.toml files nodecreds writes under certsDir. The
// checks that need the release are not made without it: one
// RuntimeVersionUnknown problem names them, where they would matter.
func Diagnose(c Config, v Version, versionKnown bool, certsDir string) []Problem {
	certsDir = filepath.Clean(certsDir)
	d := diagnosis{c: c, v: v, known: versionKnown, certsDir: certsDir}
	if c.LegacyRegistry && !c.ConfigPathSet {
		return []Problem{d.legacy()}
	}
	paths := c.ConfigPaths
	if !c.ConfigPathSet {
		switch {
		case !versionKnown:
			return []Problem{d.unknown("config_path is not set (containerd 1.x then reads no hosts.toml, 2.x reads " + DefaultConfigPath2 + ")")}
		case v.Major < 2:
			return []Problem{d.unset()}
		}
		paths = filepath.SplitList(DefaultConfigPath2)
	}
	var out []Problem
	if len(paths) > 1 && !c.LocalPull {
		switch {
		case !versionKnown:
			out = append(out, d.unknown(fmt.Sprintf("config_path %q holds %d folders (containerd 2.1 and later then ignore every hosts.toml unless use_local_image_pull is set)", showPaths(paths), len(paths))))
		case v.AtLeast(2, 1):
			out = append(out, d.multiple(paths))
		}
	}
	if !slices.ContainsFunc(paths, func(p string) bool { return filepath.Clean(p) == certsDir }) {
		out = append(out, d.elsewhere(paths))
	}
	return out
}

// diagnosis is one Diagnose call's inputs.
type diagnosis struct {
	c        Config
	v        Version
	known    bool
	certsDir string
}

// file is the main configuration file, for messages.
func (d diagnosis) file() string {
	if d.c.Path != "" {
		return d.c.Path
	}
	return "/etc/containerd/config.toml"
}

// table is the registry table as the main file's version spells it, and
// for a node without a file, what to create.
func (d diagnosis) table() string {
	switch {
	case d.c.Version >= 3:
		return `[plugins."io.containerd.cri.v1.images".registry]`
	case d.c.Version == 2:
		return `[plugins."io.containerd.grpc.v1.cri".registry]`
	case len(d.c.Files) > 0:
		return `[plugins.cri.registry]` // a version 1 file
	case d.known && d.v.Major >= 2:
		return `version = 3 and [plugins."io.containerd.cri.v1.images".registry]`
	}
	return `version = 2 and [plugins."io.containerd.grpc.v1.cri".registry]`
}

// setPath is the fix that works on every release: one folder, the one
// nodecreds writes.
func (d diagnosis) setPath() string {
	return fmt.Sprintf("set config_path = %q under %s in %s and restart containerd", d.certsDir, d.table(), d.file())
}

func (d diagnosis) legacy() Problem {
	return Problem{
		Reason:  ReasonLegacyRegistryConfig,
		Message: fmt.Sprintf("%s configures registries inline (registry.mirrors, configs or auths, deprecated) and sets no config_path, so containerd reads no hosts.toml and ignores the headers nodecreds writes.", d.file()),
		Fix:     fmt.Sprintf("Move the mirrors into hosts.toml files under %s, remove registry.mirrors, registry.configs and registry.auths, and %s.", d.certsDir, d.setPath()),
	}
}

func (d diagnosis) unset() Problem {
	return Problem{
		Reason:  ReasonConfigPathUnset,
		Message: fmt.Sprintf("config_path is not set in %s, so containerd %s reads no hosts.toml and ignores the headers nodecreds writes.", d.file(), d.v),
		Fix:     capitalize(d.setPath()) + ".",
	}
}

func (d diagnosis) multiple(paths []string) Problem {
	what := fmt.Sprintf("config_path %q", showPaths(paths))
	if !d.c.ConfigPathSet {
		what = fmt.Sprintf("config_path is not set, so containerd uses its default %q, which", DefaultConfigPath2)
	}
	return Problem{
		Reason: ReasonConfigPathMultipleFolders,
		Message: fmt.Sprintf("%s holds %d folders, and containerd %s pulls CRI images with the transfer service, which takes config_path as one folder and so ignores every hosts.toml (containerd #12808).",
			what, len(paths), d.v),
		Fix: fmt.Sprintf("%s (one folder), or set use_local_image_pull = true under [plugins.\"io.containerd.cri.v1.images\"] in %s and restart containerd.", capitalize(strings.TrimSuffix(d.setPath(), " and restart containerd")), d.file()),
	}
}

func (d diagnosis) elsewhere(paths []string) Problem {
	p := Problem{
		Reason:  ReasonConfigPathElsewhere,
		Message: fmt.Sprintf("containerd reads hosts.toml from %q (config_path), not from %s where nodecreds writes them.", showPaths(paths), d.certsDir),
		Fix:     capitalize(d.setPath()) + ".",
	}
	if len(paths) == 1 && ShowPath(paths[0]) == paths[0] {
		p.Fix = fmt.Sprintf("Run nodecreds sync with --containerd-certs-dir %s, or %s.", paths[0], d.setPath())
	}
	return p
}

func (d diagnosis) unknown(what string) Problem {
	return Problem{
		Reason:  ReasonRuntimeVersionUnknown,
		Message: fmt.Sprintf("The container runtime's version is not known (containerd's is read from the Node's status.nodeInfo.containerRuntimeVersion), and %s: whether containerd reads the hosts.toml files was not checked.", what),
		Fix:     fmt.Sprintf("Set config_path = %q (one folder, which every containerd release reads) under %s in %s and restart containerd.", d.certsDir, d.table(), d.file()),
	}
}

// ChallengeProblem says whether a static Basic Authorization header in
// hosts.toml can authenticate to registry, whose /v2/ answers an
// unauthenticated request with a challenge of scheme ("basic", "bearer",
// anything else; "" for none), on containerd v. nil when it can.
func ChallengeProblem(registry, scheme string, v Version, versionKnown bool) *Problem {
	switch strings.ToLower(scheme) {
	case "", "basic":
		return nil
	case "bearer":
		switch {
		case !versionKnown:
			return &Problem{
				Reason:  ReasonRuntimeVersionUnknown,
				Message: fmt.Sprintf("%s asks for a Bearer token, which containerd requests with the hosts.toml header only from 2.1, and the runtime's version is not known: whether the header authenticates there was not checked.", registry),
				Fix:     "Make sure the node runs containerd 2.1 or later, or leave this registry to the kubelet's credentials (config.json or the credential-provider plugin).",
			}
		case v.AtLeast(2, 1):
			return nil
		}
		return &Problem{
			Reason:  ReasonBearerNeedsContainerd21,
			Message: fmt.Sprintf("%s asks for a Bearer token, and containerd %s does not send hosts.toml headers with the token request (from 2.1 it does), so the header nodecreds writes does not authenticate there.", registry, v),
			Fix:     "Upgrade containerd to 2.1 or later, or leave this registry to the kubelet's credentials (config.json or the credential-provider plugin; the sandbox image then needs CRI-O's pause_image_auth_file or a registry with Basic authentication).",
		}
	}
	return &Problem{
		Reason:  ReasonChallengeNotBasic,
		Message: fmt.Sprintf("%s answers with a challenge that is neither Basic nor Bearer, which a static Basic Authorization header does not answer.", registry),
		Fix:     "Leave this registry to the kubelet's credentials (config.json or the credential-provider plugin), or serve its images through a mirror that takes Basic authentication.",
	}
}

// showPaths is config_path's folders for a message, each through ShowPath.
func showPaths(paths []string) string {
	shown := make([]string, len(paths))
	for i, p := range paths {
		shown[i] = ShowPath(p)
	}
	return strings.Join(shown, ":")
}

func capitalize(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}
