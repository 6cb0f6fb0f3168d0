// Package runtimeauth keeps an Authorization header for the registries of
// Secrets annotated nodecreds.io/runtime-auth: "true" in containerd's
// hosts.toml files, for the pulls the kubelet does not make (the sandbox
// image, mirrors with credentials of their own).
//
// The edits themselves are internal/hoststoml's (only Authorization values
// change); this package decides which files, writes them atomically through
// the host root, and records what was there in nodecreds' state file so
// that a header that leaves the sources, and `nodecreds cleanup`, put back
// exactly what was there.
package runtimeauth

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path"
	"slices"
	"strings"

	"github.com/nodecreds/nodecreds/internal/dockercfg"
	"github.com/nodecreds/nodecreds/internal/hostfs"
	"github.com/nodecreds/nodecreds/internal/hoststoml"
	"github.com/nodecreds/nodecreds/internal/nodefile"
)

// tempPrefix names the staged file next to a hosts.toml; containerd reads
// only hosts.toml in a folder, so a crash's leftover is inert.
const tempPrefix = ".hosts.toml.nodecreds-"

// Store is the state the records live in (nodefile.Engine).
type Store interface {
	WithHostsTOML(ctx context.Context, f func(root *hostfs.Root, recs *nodefile.HostsTOMLRecords) error) error
	// HostsTOMLIdle: no record is kept (as of the last WithHostsTOML).
	HostsTOMLIdle() bool
}

// Registry is one registry a header is written for.
type Registry struct {
	// Folder is the certs.d folder containerd looks the registry up by
	// (docker.io for Docker Hub, host:port).
	Folder string
	// Host is where containerd sends the registry's requests
	// (registry-1.docker.io for Docker Hub).
	Host string
	// Scheme of a server written from nothing: "http" or "https" as the
	// Secret's key says, "" for containerd's default.
	Scheme string
	// PlainHTTP: the header may go into a plain-HTTP section.
	PlainHTTP bool
	value     string
}

// Desired is what the hosts.toml files are to carry.
type Desired struct {
	// Sources in precedence order, every source of the node files: a
	// registry goes to the first source that has it, as in the files,
	// and gets a header only if that source is annotated.
	Sources []dockercfg.NamedSet
	// Annotated names the sources that opted in
	// (source.AnnotationRuntimeAuth).
	Annotated map[string]bool
	// Hold: some source's content is unknown; nothing is restored or
	// removed this time (its headers may be among those written).
	Hold bool
}

// Registries returns the registries of d that get a header: keys with a
// path or a glob cannot be a per-host header, entries without a username
// and password (tokens only) are no Basic header, and a host that is not a
// DNS name or an IP address (an underscore, a `host_port_` spelling) has
// no one canonical folder. skipped names the keys left out (safe to log),
// with why.
func (d Desired) Registries() (regs []Registry, skipped []string) {
	view, _ := dockercfg.View(dockercfg.Kubelet, d.Sources...)
	winners := d.hostWinners(view)
	seen := map[string]bool{}
	for _, it := range view {
		if !d.Annotated[it.Source] {
			continue
		}
		n := dockercfg.Normalize(it.Key)
		switch {
		case strings.ContainsAny(n, "/*"):
			skipped = append(skipped, dockercfg.SafeKey(it.Key)+": a key with a path or a glob names no single host")
			continue
		case !hoststoml.ValidHost(n):
			skipped = append(skipped, dockercfg.SafeKey(it.Key)+": not a DNS name or IP address (with a port); containerd could read its folder for another host, so no hosts.toml is written for it")
			continue
		}
		host := hostOf(n)
		w := winners[host]
		switch {
		case !d.Annotated[w.Source]:
			skipped = append(skipped, fmt.Sprintf("%s: containerd sends it to %s, whose header comes from key %q of %s, which is not annotated: no header for %s", dockercfg.SafeKey(it.Key), host, dockercfg.SafeKey(w.Key), w.Source, host))
			continue
		case w.Entry.Username == "" && w.Entry.Password == "":
			skipped = append(skipped, fmt.Sprintf("%s: containerd sends it to %s, whose header would come from key %q of %s, which has no username and password for a Basic header", dockercfg.SafeKey(it.Key), host, dockercfg.SafeKey(w.Key), w.Source))
			continue
		}
		if seen[n] {
			continue
		}
		seen[n] = true
		r := Registry{Folder: n, Host: host, value: "Basic " + w.Entry.Auth()}
		switch {
		case strings.HasPrefix(w.Key, "http://"):
			r.Scheme = "http"
		case strings.HasPrefix(w.Key, "https://"):
			r.Scheme = "https"
		}
		// A Basic header goes into a plain-HTTP section only when the key
		// says http://, or names a loopback host without a scheme (the
		// traffic never leaves the node; docs/security.md).
		r.PlainHTTP = r.Scheme == "http" || r.Scheme == "" && hoststoml.IsLocalhost(r.Host)
		regs = append(regs, r)
	}
	return regs, skipped
}

// hostOf is the host containerd sends the requests of registry n to.
func hostOf(n string) string {
	if n == "docker.io" {
		return "registry-1.docker.io"
	}
	return n
}

// hostWinners returns, for each host containerd sends requests to, the key
// its header comes from: headers are per host, and several registries of
// the node files reach one host (docker.io and registry-1.docker.io; the
// spellings of a key that normalise alike). The winner is the key of the
// first source in precedence holding any key of that host, and within that
// source the key first in byte order, whether or not the source is
// annotated: a source after it never supplies the host's header.
func (d Desired) hostWinners(view dockercfg.Set) map[string]dockercfg.Item {
	rank := map[string]int{}
	for i, s := range d.Sources {
		if _, ok := rank[s.Name]; !ok {
			rank[s.Name] = i
		}
	}
	winners := map[string]dockercfg.Item{}
	for _, it := range view {
		n := dockercfg.Normalize(it.Key)
		if strings.ContainsAny(n, "/*") || !hoststoml.ValidHost(n) {
			continue
		}
		h := hostOf(n)
		w, ok := winners[h]
		if !ok || rank[it.Source] < rank[w.Source] || rank[it.Source] == rank[w.Source] && it.Key < w.Key {
			winners[h] = it
		}
	}
	return winners
}

// Result is the outcome for one hosts.toml (or a folder of DIR).
type Result struct {
	Path    string // node path
	Changed bool   // written or removed
	Removed bool   // removed: nodecreds had created it and it holds nothing else
	// Warning is something left alone that an operator should know (a
	// file that is not valid TOML, one containerd 1.6 ignores, a file not
	// created because it would change routing), with the fix; never a
	// value.
	Warning string
	// Note is for the log only: a header someone else put where nodecreds
	// had written one, left as it is.
	Note string
	// Err: the file could not be brought in line; with a record, it may
	// still hold a header nodecreds wrote (cleanup fails on it).
	Err error
}

// Writer keeps the hosts.toml files under one certs.d folder.
type Writer struct {
	dir   string // node path of containerd's config_path
	store Store
}

// New returns a Writer for the certs.d folder dir (a node path).
func New(dir string, store Store) *Writer { return &Writer{dir: path.Clean(dir), store: store} }

// Dir is the node path of the certs folder.
func (w *Writer) Dir() string { return w.dir }

// plan is one hosts.toml to bring in line.
type plan struct {
	create bool   // the registry's own file, created where none exists
	host   string // the registry whose own file it is ("" for none)
	scheme string // of a created file's server
}

// Sync brings every hosts.toml in line with d: the header of each held
// registry in the file containerd reads for it (created only where
// containerd would otherwise read no configuration for it at all), in
// every mirror section naming a host held, and what left d restored. The
// error is about the state or its lock; skipped are the keys no header
// can be written for (Desired.Registries).
func (w *Writer) Sync(ctx context.Context, d Desired) (results []Result, skipped []string, err error) {
	regs, skipped := d.Registries()
	results, err = w.SyncRegistries(ctx, regs, d.Hold)
	return results, skipped, err
}

// SyncRegistries is Sync for the registries Desired.Registries returned,
// for a caller that needs them too (the agent's containerd diagnosis):
// they are worked out once per sync. hold is Desired.Hold.
func (w *Writer) SyncRegistries(ctx context.Context, regs []Registry, hold bool) ([]Result, error) {
	if len(regs) == 0 && w.store.HostsTOMLIdle() {
		// No header to write and none recorded to restore: every sync of a
		// node whose Secrets are not annotated (yet) costs nothing here.
		return nil, nil
	}
	opts := hoststoml.Options{Headers: map[string]string{}, PlainHTTP: map[string]bool{}}
	for _, r := range regs {
		opts.Headers[r.Host] = r.value
		opts.PlainHTTP[r.Host] = r.PlainHTTP
	}
	var results []Result
	err := w.store.WithHostsTOML(ctx, func(root *hostfs.Root, recs *nodefile.HostsTOMLRecords) error {
		plans, warnings := w.plans(root, regs)
		results = append(results, warnings...)
		for _, p := range recs.Paths() {
			if _, ok := plans[p]; !ok {
				plans[p] = plan{}
			}
		}
		for _, p := range slices.Sorted(maps.Keys(plans)) {
			o := opts
			if path.Dir(path.Dir(p)) != w.dir {
				o = hoststoml.Options{} // recorded under another certs.d folder: restore
			}
			if _, recorded := recs.Get(p); recorded && hold {
				// A source's content is unknown and its headers may be
				// in this file: it stays as it is until it is known.
				continue
			}
			r := syncFile(root, recs, p, plans[p], o)
			if r != (Result{Path: p}) {
				results = append(results, r)
			}
		}
		return nil
	})
	return results, err
}

// plans lists the hosts.toml node paths under the certs.d folder to
// consider: the one containerd reads for each held registry, and every
// other one, whose mirror sections may name a held host. _default applies
// to every registry and is never written. A link in the folder is not
// followed (reported): the host root discipline reaches DIR as the node
// sees it, and nothing below it through a link.
func (w *Writer) plans(root *hostfs.Root, regs []Registry) (map[string]plan, []Result) {
	out := map[string]plan{}
	var warnings []Result
	dir, err := root.OpenDir(w.dir, false, 0)
	if err != nil {
		dir = nil // no certs.d folder: every registry's file is created
	} else {
		defer dir.Close()
	}
	var names []string
	if dir != nil {
		names, _ = dir.Names()
	}
	for _, n := range names {
		if n == hoststoml.DefaultFolder || strings.HasPrefix(n, ".") {
			continue
		}
		if dir.IsLink(n) {
			warnings = append(warnings, Result{Path: path.Join(w.dir, n), Warning: fmt.Sprintf("%s is a symlink: nodecreds does not follow links under %s, so no header is written through it (containerd follows it; the folder it points to is kept under its own name)", dir.Name(n), w.dir)})
			continue
		}
		if sub, err := dir.OpenSub(n, false, 0); err == nil {
			if _, err := sub.StatName(hoststoml.FileName); err == nil {
				out[path.Join(w.dir, n, hoststoml.FileName)] = plan{}
			}
			sub.Close()
		}
	}
	for _, r := range regs {
		folder, create, warning := route(dir, w.dir, r)
		if warning != "" {
			warnings = append(warnings, Result{Path: path.Join(w.dir, folder), Warning: warning})
			continue
		}
		out[path.Join(w.dir, folder, hoststoml.FileName)] = plan{create: create, host: r.Host, scheme: r.Scheme}
	}
	return out, warnings
}

// route is where containerd looks r up (hostPaths in containerd 1.6 and
// 2.x: `host_port_`, then `host:port` (or `host`), then `_default`; the
// first that exists in any form wins) and what nodecreds may do there:
// merge into the hosts.toml of the folder found, or create r's own file
// when containerd would otherwise read no configuration for r at all.
// Creating anything else would change what containerd reads for r (its
// mirrors, ca, client certificates): then nothing is written, and the
// warning says what to do.
func route(dir *hostfs.Dir, dirPath string, r Registry) (folder string, create bool, warning string) {
	scheme := "https"
	if r.Scheme == "http" {
		scheme = "http"
	}
	fix := fmt.Sprintf("add a [host.%q] section for %s to that file and nodecreds will keep its header", scheme+"://"+r.Host, r.Folder)
	if dir == nil {
		return r.Folder, true, ""
	}
	for _, name := range spellings(r.Folder) {
		if _, err := dir.StatName(name); err != nil {
			continue
		}
		switch sub, err := dir.OpenSub(name, false, 0); {
		case errors.Is(err, hostfs.ErrLink):
			return name, false, fmt.Sprintf("containerd reads %s for %s, a symlink nodecreds does not follow: no header written; make it a folder of its own with a hosts.toml, and %s", dir.Name(name), r.Folder, fix)
		case err != nil:
			return name, false, fmt.Sprintf("containerd reads %s for %s, which is not a folder: no header written", dir.Name(name), r.Folder)
		default:
			_, serr := sub.StatName(hoststoml.FileName)
			sub.Close()
			if serr == nil {
				return name, false, ""
			}
			return name, false, fmt.Sprintf("containerd reads %s for %s, which has no hosts.toml (its certificate files or containerd's defaults apply); nodecreds does not create one there, since containerd would then ignore those files: write a hosts.toml there (with ca/client for them), %s", dir.Name(name), r.Folder, fix)
		}
	}
	if _, err := dir.StatName(hoststoml.DefaultFolder); err == nil {
		return hoststoml.DefaultFolder, false, fmt.Sprintf("containerd reads %s for %s (it has no folder of its own); nodecreds does not create %s/%s/hosts.toml, since that would take %s off _default's configuration, and never writes _default: create %s/%s/hosts.toml with the settings %s should keep, %s",
			dir.Name(hoststoml.DefaultFolder), r.Folder, dirPath, r.Folder, r.Folder, dirPath, r.Folder, r.Folder, fix)
	}
	return r.Folder, true, ""
}

// spellings are the folder names containerd tries for a registry before
// _default (hoststoml.Spellings).
func spellings(folder string) []string { return hoststoml.Spellings(folder) }

// syncFile brings one file in line: what nodecreds changed before and is
// still there is put back (hoststoml.Restore) and the headers merged again
// on that, so that a header edited by someone else while it is held
// (drift) is rewritten, and one that left the sources goes. A value that
// is no longer the one nodecreds wrote is someone else's and stays when
// nodecreds lets go of it.
func syncFile(root *hostfs.Root, recs *nodefile.HostsTOMLRecords, p string, pl plan, opts hoststoml.Options) Result {
	res := Result{Path: p}
	folder := path.Base(path.Dir(p))
	old, had := recs.Get(p)
	release := len(opts.Headers) == 0
	if folder == hoststoml.DefaultFolder || !had && release {
		return res
	}
	fail := func(err error) Result {
		if had {
			res.Err = fmt.Errorf("hosts.toml %s: %w; it may still hold an Authorization header nodecreds wrote", p, err)
		} else {
			res.Warning = fmt.Sprintf("hosts.toml %s left as it is: %v", p, err)
		}
		return res
	}
	t, err := openTarget(root, p, folder, pl.create)
	if errors.Is(err, fs.ErrNotExist) {
		recs.Set(p, hoststoml.Record{}) // folder gone: nothing to restore
		return res
	}
	if err != nil {
		return fail(err)
	}
	defer t.close()
	cur, exists, name := t.cur, t.exists, t.name
	if had {
		old = hoststoml.Confirm(cur, old)
	}
	base, kept, ok := pristine(&res, cur, exists, folder, old, had, release)
	if !ok {
		return res
	}
	m, err := hoststoml.Merge(base, folder, opts)
	if err != nil {
		return mergeFailed(res, name, err, had && release)
	}
	if had && release && exists && stillOurs(&res, m.Data, old) {
		return res
	}
	rec := record(&res, m, old, had, exists, kept)
	warn(&res, name, m, pl, rec)
	want := m.Data
	if !pl.create && !exists && base == nil {
		want = nil // an admin's file that went is not written again
	}
	switch {
	case want == nil && !exists:
		recs.Set(p, hoststoml.Record{})
		return res
	case want != nil && exists && bytes.Equal(cur, want):
		recs.Set(p, rec)
		return res
	}
	t.place(&res, recs, p, folder, want, old, rec)
	if res.Removed && (old.Created || rec.Created) {
		removeFolder(root, p)
	}
	return res
}

// mergeFailed is the result for a file that does not merge: left as it
// is, an error when a header of nodecreds' may stay in it (ours), else a
// warning.
func mergeFailed(res Result, name string, err error, ours bool) Result {
	if ours {
		res.Err = fmt.Errorf("hosts.toml %s: %w; it may still hold an Authorization header nodecreds wrote", name, err)
	} else {
		res.Warning = fmt.Sprintf("%s left as it is: %v", name, err)
	}
	return res
}

// removeFolder removes the host folder of p, which was made with the
// created file just removed (a file is created only where no folder for
// the registry existed): left empty, it would still be the folder
// containerd reads for that registry, in place of _default, after
// nodecreds let go. A folder someone put something in since (Docker-style
// certificates) is not empty and stays, as does one that cannot be opened.
func removeFolder(root *hostfs.Root, p string) {
	dir, err := root.OpenDir(path.Dir(path.Dir(p)), false, 0)
	if err != nil {
		return
	}
	defer dir.Close()
	_ = dir.RemoveDir(path.Base(path.Dir(p)))
}

// target is one hosts.toml as syncFile opened it: its folder, or, when it
// is to be created, the certs folder the host folder goes in.
type target struct {
	parent, sub *hostfs.Dir
	cur         []byte
	exists      bool
	mode        fs.FileMode // of the file read, when it exists
	name        string      // for messages
}

func openTarget(root *hostfs.Root, p, folder string, create bool) (*target, error) {
	t := &target{}
	var err error
	if create {
		t.parent, err = openParent(root, p)
	} else {
		t.sub, t.cur, t.exists, err = open(root, p)
	}
	if err != nil {
		return nil, err
	}
	if t.exists {
		if info, err := t.sub.StatName(hoststoml.FileName); err == nil {
			t.mode = info.Mode
		}
	}
	if t.parent != nil {
		t.name = t.parent.Name(path.Join(folder, hoststoml.FileName))
	} else {
		t.name = t.sub.Name(hoststoml.FileName)
	}
	return t, nil
}

func (t *target) close() {
	if t.parent != nil {
		t.parent.Close()
	}
	if t.sub != nil {
		t.sub.Close()
	}
}

// place writes want (nil: removes the file), making the host folder first
// when the file is created, and removing that folder again if nothing was
// written in it.
func (t *target) place(res *Result, recs *nodefile.HostsTOMLRecords, p, folder string, want []byte, old, rec hoststoml.Record) {
	if t.parent != nil {
		sub, err := makeFolder(t.parent, folder)
		if err != nil {
			res.Warning = fmt.Sprintf("%s not created: %v", t.name, err)
			return
		}
		t.sub = sub
	}
	res.Changed, res.Removed, res.Err = commit(recs, p, t.sub, hoststoml.FileName, t.cur, t.exists, want, old, rec, t.perm(recs, p, want, old, rec))
	if t.parent != nil && !res.Changed {
		_ = t.parent.RemoveDir(folder) // the folder made for it, empty again
	}
}

// perm is the mode to write want with: 0600 while it holds a header of
// nodecreds' (a credential); once none is left, the mode someone else's
// file had before nodecreds first wrote it, kept for that now. "None left"
// is judged on the bytes written, against every value old recorded,
// wherever an edit may have moved one (hoststoml.Holding), not only on
// the record going empty.
func (t *target) perm(recs *nodefile.HostsTOMLRecords, p string, want []byte, old, rec hoststoml.Record) fs.FileMode {
	if _, had := recs.Get(p); !had && t.exists && t.mode != 0 {
		recs.KeepMode(p, t.mode)
	}
	m, ok := recs.Mode(p)
	if !ok || len(rec.Changes) > 0 || rec.Created {
		return 0o600
	}
	if held, err := hoststoml.Holding(want, old); err != nil || len(held) > 0 {
		return 0o600
	}
	return m
}

// errAppeared: something containerd reads for the registry appeared
// between the check (route) and the create.
var errAppeared = errors.New("appeared since nodecreds looked; containerd now reads it for this registry, so nothing is written (nodecreds looks again at its next sync)")

// makeFolder creates the registry's own folder in the certs.d folder
// parent, exclusively: every folder containerd would read for it instead
// (hostDirectory's spelling, the name, _default) is looked for again right
// before, and a folder made by anyone else meanwhile fails the mkdir, so
// the file is only ever created where containerd reads nothing else.
func makeFolder(parent *hostfs.Dir, folder string) (*hostfs.Dir, error) {
	for _, n := range append(spellings(folder), hoststoml.DefaultFolder) {
		if _, err := parent.StatName(n); err == nil {
			return nil, fmt.Errorf("%s %w", parent.Name(n), errAppeared)
		}
	}
	if err := parent.Mkdir(folder, 0o755); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("%s %w", parent.Name(folder), errAppeared)
		}
		return nil, err
	}
	return parent.OpenSub(folder, false, 0)
}

// stillOurs reports (in res.Err) whether the file released would still
// hold a value nodecreds wrote: an edit moved it where the record does not
// say, or made it impossible to take out. The record stays for a later try.
func stillOurs(res *Result, data []byte, old hoststoml.Record) bool {
	if data == nil {
		return false
	}
	sections, err := hoststoml.Holding(data, old)
	if err == nil && len(sections) == 0 {
		return false
	}
	res.Note = ""
	res.Err = fmt.Errorf("hosts.toml %s still holds an Authorization header nodecreds wrote (in %d section(s), moved there by an edit), which it cannot take out; remove it by hand", res.Path, len(sections))
	return true
}

// open opens the folder of the hosts.toml at p and reads the file. A
// missing folder is fs.ErrNotExist.
func open(root *hostfs.Root, p string) (*hostfs.Dir, []byte, bool, error) {
	dir, err := root.OpenDir(path.Dir(path.Dir(p)), false, 0)
	if err != nil {
		return nil, nil, false, err
	}
	defer dir.Close()
	sub, err := dir.OpenSub(path.Base(path.Dir(p)), false, 0)
	if err != nil {
		return nil, nil, false, err
	}
	cur, exists, err := read(sub, hoststoml.FileName)
	if err != nil {
		sub.Close()
		return nil, nil, false, err
	}
	return sub, cur, exists, nil
}

// openParent opens (creating it) the certs.d folder as the node sees it
// for a registry's own hosts.toml at p, whose folder must not exist yet:
// one that does appeared since the check (errAppeared).
func openParent(root *hostfs.Root, p string) (*hostfs.Dir, error) {
	dir, err := root.OpenDir(path.Dir(path.Dir(p)), true, 0o755)
	if err != nil {
		return nil, err
	}
	if _, err := dir.StatName(path.Base(path.Dir(p))); err == nil {
		dir.Close()
		return nil, fmt.Errorf("%s %w", dir.Name(path.Base(path.Dir(p))), errAppeared)
	}
	return dir, nil
}

// kept is what pristine carries over from the record: the changes still
// ours that could not be undone (chained), and those whose value someone
// else put there since (theirs).
type kept struct {
	chained hoststoml.Record
	theirs  hoststoml.Record
}

// pristine is the file as it was before nodecreds: cur with the recorded
// changes still ours undone (nil when nodecreds created it and it holds
// nothing else). ok false: res says why nothing is done.
func pristine(res *Result, cur []byte, exists bool, folder string, old hoststoml.Record, had, release bool) (base []byte, k kept, ok bool) {
	if !had || !exists {
		return cur, kept{}, true // no record, or the file went with what was there
	}
	ours, theirs, err := hoststoml.Split(cur, old)
	if err != nil {
		if release {
			res.Err = fmt.Errorf("hosts.toml %s is no longer valid TOML (%w) and may still hold an Authorization header nodecreds wrote; fix it, and nodecreds restores it at its next sync (or `nodecreds cleanup`)", res.Path, err)
			return nil, kept{}, false
		}
		return cur, kept{chained: old}, true // Merge refuses it and says why
	}
	k.theirs = theirs
	if len(ours.Changes) == 0 {
		return cur, k, true
	}
	restored, remove, err := hoststoml.Restore(cur, folder, ours)
	switch {
	case err != nil && release:
		res.Err = fmt.Errorf("hosts.toml %s still holds an Authorization header nodecreds wrote, which it cannot take out: %w; fix the line named, and nodecreds restores it at its next sync (or `nodecreds cleanup`)", res.Path, err)
		return nil, kept{}, false
	case err != nil:
		// The changes cannot be undone as recorded (an edit moved them):
		// the merge goes on cur and the record is kept first.
		k.chained = ours
		return cur, k, true
	case remove:
		return nil, k, true
	}
	return restored, k, true
}

// record is the record of the file after m: m's own, after what pristine
// kept. A change whose value someone else put there is rewritten while
// the host is held (drift: the record keeps what was there before
// nodecreds), and dropped, their value left, once it is not.
func record(res *Result, m hoststoml.Result, old hoststoml.Record, had, exists bool, k kept) hoststoml.Record {
	rec := m.Record
	for _, c := range k.theirs.Changes {
		i := slices.IndexFunc(rec.Changes, func(n hoststoml.Change) bool { return n.Section == c.Section })
		if i < 0 {
			res.Note = fmt.Sprintf("left an Authorization header in %s that is not the one nodecreds wrote (someone else's since)", res.Path)
			continue
		}
		c.Ours = rec.Changes[i].Ours
		rec.Changes[i] = c
	}
	switch {
	case len(k.chained.Changes) > 0:
		rec = k.chained.Then(rec)
	case had && exists:
		rec.Created = rec.Created || old.Created
	}
	return rec
}

// warn sets the warnings of a merged file: one containerd 1.6 ignores, a
// registry's own file that sends it no header, sections left without one.
func warn(res *Result, name string, m hoststoml.Result, pl plan, rec hoststoml.Record) {
	var w []string
	if m.NoHostTable && len(rec.Changes) > 0 {
		w = append(w, fmt.Sprintf("%s has no [host.\"…\"] table: containerd 1.6 ignores the whole file (\"invalid `host` tree\"), header included", name))
	}
	if pl.host != "" && m.Data != nil && !m.Hosts[pl.host] {
		scheme := "https"
		if pl.scheme == "http" {
			scheme = "http"
		}
		w = append(w, fmt.Sprintf("containerd reads %s for %s, and no section of it sends %s a header (without `server`, its top level goes to whichever name the folder is reached by): add a [host.%q] section for %s to that file and nodecreds will keep its header", name, pl.host, pl.host, scheme+"://"+pl.host, pl.host))
	}
	w = append(w, m.Notes...)
	res.Warning = strings.Join(w, "; ")
}

// commit records rec for p, then puts want (nil: no file) at name in d in
// place of cur; the record first, marked pending, so a crash after the
// write still knows what was there, and one before it does not take a
// header someone puts there meanwhile for ours. Not written, old is the
// record again.
func commit(recs *nodefile.HostsTOMLRecords, p string, d *hostfs.Dir, name string, cur []byte, exists bool, want []byte, old, rec hoststoml.Record, perm fs.FileMode) (changed, removed bool, err error) {
	mode, moded := recs.Mode(p)
	pending := rec
	pending.Pending = len(rec.Changes) > 0
	recs.Set(p, pending)
	if err := recs.Save(); err != nil {
		return false, false, err
	}
	if want == nil {
		err = d.Remove(name)
		if err == nil {
			err = d.Sync()
		}
	} else {
		err = place(d, name, cur, exists, want, perm)
	}
	if err != nil {
		recs.Set(p, old)
		if moded {
			recs.KeepMode(p, mode) // dropped with the record just above
		}
		return false, false, fmt.Errorf("hosts.toml %s: %w", d.Name(name), err)
	}
	recs.Set(p, rec) // saved with the others
	return true, want == nil, nil
}

// read returns the file at name in d, refusing anything but a regular file
// (a symlink is not followed).
func read(d *hostfs.Dir, name string) ([]byte, bool, error) {
	if d.IsLink(name) {
		return nil, false, fmt.Errorf("%s %w", d.Name(name), hostfs.ErrLink)
	}
	data, _, err := d.ReadFile(name, hostfs.MaxFileSize)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	return data, true, nil
}

// ErrRaced means the file changed between nodecreds reading and replacing
// it; the other writer's file stays and the next sync merges on it.
var ErrRaced = errors.New("hosts.toml changed while being written; left as the other writer put it, merged on the next sync")

// place puts want at name atomically, with mode perm, in place of cur (what was read,
// if it existed), as the node files are placed: staged, then exchanged
// with the file and the file taken out compared with what was read (put
// back if it is not that), or created where nothing may appear meanwhile.
func place(d *hostfs.Dir, name string, cur []byte, exists bool, want []byte, perm fs.FileMode) error {
	staged, err := d.Stage(tempPrefix, perm, func(f *os.File) error {
		_, err := f.Write(want)
		return err
	})
	if err != nil {
		return err
	}
	defer staged.Discard()
	if !exists {
		if err := staged.Create(name); err != nil {
			if errors.Is(err, fs.ErrExist) {
				return ErrRaced
			}
			return err
		}
		return nil
	}
	err = staged.Exchange(name)
	switch {
	case err == nil:
		// staged.Temp() now names the file that was at name.
		prev, _, rerr := d.ReadFile(staged.Temp(), hostfs.MaxFileSize)
		if rerr != nil || !bytes.Equal(prev, cur) {
			if xerr := d.Exchange(staged.Temp(), name); xerr != nil {
				return fmt.Errorf("putting back the file another writer replaced %s with (it is at %s): %w", d.Name(name), d.Name(staged.Temp()), xerr)
			}
			_ = d.Remove(staged.Temp())
			_ = d.Sync()
			return ErrRaced
		}
		if err := d.Remove(staged.Temp()); err != nil {
			return err
		}
		return d.Sync()
	case errors.Is(err, fs.ErrNotExist):
		return ErrRaced
	case errors.Is(err, hostfs.ErrNoExchange):
		now, stillThere, rerr := read(d, name)
		if rerr != nil {
			return rerr
		}
		if !stillThere || !bytes.Equal(now, cur) {
			return ErrRaced
		}
		return staged.Replace(name)
	}
	return err
}

// Cleanup puts back, in every hosts.toml nodecreds recorded, what was there
// before it, and removes the files it created that hold nothing else.
func Cleanup(ctx context.Context, store Store) ([]Result, error) {
	var results []Result
	err := store.WithHostsTOML(ctx, func(root *hostfs.Root, recs *nodefile.HostsTOMLRecords) error {
		for _, p := range recs.Paths() {
			results = append(results, syncFile(root, recs, p, plan{}, hoststoml.Options{}))
		}
		return nil
	})
	return results, err
}
