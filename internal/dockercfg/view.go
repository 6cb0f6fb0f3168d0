package dockercfg

import (
	"fmt"
	"path/filepath"
)

// Reader is the program that reads a target file. Each is written in its
// reader's terms: the kubelet and the docker CLI look keys up differently.
type Reader int

const (
	// Kubelet reads its root folder's config.json (and $HOME/.docker's
	// when that is absent). It tries every key that matches an image, so
	// its file keeps each key as the source spells it: then it answers
	// exactly as the source would as an imagePullSecret.
	Kubelet Reader = iota
	// DockerCLI reads $HOME/.docker/config.json, looking a registry up by
	// one key: Docker Hub by DockerHubKey, others by host name.
	DockerCLI
)

func (r Reader) String() string {
	if r == DockerCLI {
		return "docker CLI"
	}
	return "kubelet"
}

// ReaderOf tells a target's reader from its node path: a config.json in a
// folder named .docker is the docker CLI's; every other target is the
// kubelet's.
func ReaderOf(nodePath string) Reader {
	if filepath.Base(nodePath) == "config.json" && filepath.Base(filepath.Dir(nodePath)) == ".docker" {
		return DockerCLI
	}
	return Kubelet
}

// NamedSet is a source's entries with the source's name, for View's
// precedence and clash reports.
type NamedSet struct {
	Name string
	Set  Set
}

// Clash is a registry that more than one source provides; the first wins.
type Clash struct {
	Registry  string // normalised
	WinnerKey string
	Winner    string // source name
	LoserKey  string
	Loser     string // source name
}

// Safe is the clash as outputs print it: the keys through SafeKey, and the
// registry (derived from them) only when both keys are valid.
func (c Clash) Safe() Clash {
	if ValidateKey(c.WinnerKey) != nil || ValidateKey(c.LoserKey) != nil {
		c.Registry = redacted
	}
	c.WinnerKey, c.LoserKey = SafeKey(c.WinnerKey), SafeKey(c.LoserKey)
	return c
}

func (c Clash) String() string {
	c = c.Safe()
	return fmt.Sprintf("registry %q from %s (key %q) hides the one from %s (key %q)",
		c.Registry, c.Winner, c.WinnerKey, c.Loser, c.LoserKey)
}

// View returns what a file read by r gets from sources, given in
// precedence order: each registry (keys compared after Normalize) comes
// from the first source that provides it, and every later source's keys
// for it are clashes. Each item's Source is its source's name.
//
// For the kubelet every key of that source is kept as spelled, duplicates
// of one registry included (https://r.test/ and r.test): the kubelet tries
// each, as with the Secret as an imagePullSecret. For the docker CLI there
// is one key per registry (see dockerKey), Docker Hub under DockerHubKey.
func View(r Reader, sources ...NamedSet) (Set, []Clash) {
	type winner struct{ key, source string }
	won := map[string]winner{}
	var out Set
	var clashes []Clash
	for _, ns := range sources {
		mine := map[string]int{} // registry → index in out, for the docker CLI's one key
		for _, it := range ns.Set {
			n := Normalize(it.Key)
			if w, ok := won[n]; ok && w.source != ns.Name {
				clashes = append(clashes, Clash{Registry: n, WinnerKey: w.key, Winner: w.source, LoserKey: it.Key, Loser: ns.Name})
				continue
			}
			if _, ok := won[n]; !ok {
				won[n] = winner{key: it.Key, source: ns.Name}
			}
			it.Source = ns.Name
			if r == DockerCLI {
				if i, ok := mine[n]; ok {
					if dockerPrefers(it.Key, out[i].Key, n) {
						out[i] = it
					}
					continue
				}
				mine[n] = len(out)
			}
			out = append(out, it)
		}
	}
	if r == DockerCLI {
		for i := range out {
			if Normalize(out[i].Key) == "docker.io" {
				out[i].Key = DockerHubKey
			}
		}
	}
	return out, clashes
}

// dockerPrefers reports whether key a beats key b for registry n in the
// docker CLI's file. The docker CLI looks a registry up by one key first
// (DockerHubKey for Docker Hub, the bare host name for others) and falls
// back to any key of the same host in map order, which is random; so the
// key it would find first wins, then the first in key order.
func dockerPrefers(a, b, n string) bool {
	exact := func(k string) bool {
		if n == "docker.io" {
			return k == DockerHubKey
		}
		return k == n
	}
	if exact(a) != exact(b) {
		return exact(a)
	}
	return a < b
}

// inSourceClashes lists the keys of one sorted set that name a registry
// an earlier key already names: the kubelet tries all of them, the docker
// CLI's file gets one (dockerPrefers).
func inSourceClashes(set Set) []Clash {
	first := map[string]string{}
	var out []Clash
	for _, it := range set {
		n := Normalize(it.Key)
		w, ok := first[n]
		if !ok {
			first[n] = it.Key
			continue
		}
		if dockerPrefers(it.Key, w, n) {
			out = append(out, Clash{Registry: n, WinnerKey: it.Key, LoserKey: w})
			first[n] = it.Key
			continue
		}
		out = append(out, Clash{Registry: n, WinnerKey: w, LoserKey: it.Key})
	}
	return out
}
