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

// fileName is the file containerd reads in each host folder.
const fileName = "hosts.toml"

// tempPrefix names the staged file next to a hosts.toml; containerd reads
// only hosts.toml in a folder, so a crash's leftover is inert.
const tempPrefix = ".hosts.toml.nodecreds-"

// Store is the state the records live in (nodefile.Engine).
type Store interface {
	WithHostsTOML(ctx context.Context, f func(root *hostfs.Root, recs *nodefile.HostsTOMLRecords) error) error
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
	value  string
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
// path or a glob cannot be a per-host header, and entries without a
// username and password (tokens only) are no Basic header. skipped names
// the keys left out (safe to log), with why.
func (d Desired) Registries() (regs []Registry, skipped []string) {
	view, _ := dockercfg.View(dockercfg.Kubelet, d.Sources...)
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
		case it.Entry.Username == "" && it.Entry.Password == "":
			skipped = append(skipped, dockercfg.SafeKey(it.Key)+": no username and password for a Basic header")
			continue
		}
		if seen[n] {
			continue
		}
		seen[n] = true
		r := Registry{Folder: n, Host: n, value: "Basic " + it.Entry.Auth()}
		if n == "docker.io" {
			r.Host = "registry-1.docker.io"
		}
		switch {
		case strings.HasPrefix(it.Key, "http://"):
			r.Scheme = "http"
		case strings.HasPrefix(it.Key, "https://"):
			r.Scheme = "https"
		}
		regs = append(regs, r)
	}
	return regs, skipped
}

// Result is the outcome for one hosts.toml.
type Result struct {
	Path    string // node path
	Changed bool   // written or removed
	Removed bool   // removed: nodecreds had created it and it holds nothing else
	// Warning is something left alone that an operator should know (a
	// file that is not valid TOML, one containerd 1.6 ignores); never a
	// value.
	Warning string
	Err     error
}

// Writer keeps the hosts.toml files under one certs.d folder.
type Writer struct {
	dir   string // node path of containerd's config_path
	store Store
}

// New returns a Writer for the certs.d folder dir (a node path).
func New(dir string, store Store) *Writer { return &Writer{dir: path.Clean(dir), store: store} }

// Sync brings every hosts.toml in line with d: the header of each held
// registry in its own folder's file (created where none exists), in every
// mirror section naming a host held, and what left d restored. The error
// is about the state or its lock.
func (w *Writer) Sync(ctx context.Context, d Desired) ([]Result, []string, error) {
	regs, skipped := d.Registries()
	headers := map[string]string{}
	schemes := map[string]string{}
	for _, r := range regs {
		headers[r.Host] = r.value
		schemes[r.Folder] = r.Scheme
	}
	var results []Result
	err := w.store.WithHostsTOML(ctx, func(root *hostfs.Root, recs *nodefile.HostsTOMLRecords) error {
		files := w.files(root, regs)
		for _, p := range recs.Paths() {
			if _, ok := files[p]; !ok {
				files[p] = false
			}
		}
		for _, p := range slices.Sorted(maps.Keys(files)) {
			h := headers
			if path.Dir(path.Dir(p)) != w.dir {
				h = nil // recorded under another certs.d folder: restore
			}
			if _, recorded := recs.Get(p); recorded && d.Hold {
				// A source's content is unknown and its headers may be
				// in this file: it stays as it is until it is known.
				continue
			}
			r := sync(root, recs, p, files[p], h, schemes[path.Base(path.Dir(p))])
			if r != (Result{Path: p}) {
				results = append(results, r)
			}
		}
		return nil
	})
	return results, skipped, err
}

// files lists the hosts.toml node paths under the certs.d folder to
// consider: each held registry's own (true: created if missing) and every
// existing one, whose mirror sections may name a held host. _default
// applies to every registry and is never written.
func (w *Writer) files(root *hostfs.Root, regs []Registry) map[string]bool {
	out := map[string]bool{}
	var names []string
	if d, err := root.OpenDir(w.dir, false, 0); err == nil {
		names, _ = d.Names()
		d.Close()
	}
	for _, n := range names {
		if n == hoststoml.DefaultFolder || strings.HasPrefix(n, ".") {
			continue
		}
		if d, err := root.OpenDir(path.Join(w.dir, n), false, 0); err == nil {
			if d.Exists(fileName) {
				out[path.Join(w.dir, n, fileName)] = false
			}
			d.Close()
		}
	}
	for _, r := range regs {
		folder := r.Folder
		// containerd looks for host_port_ before host:port.
		if h, p, ok := strings.Cut(folder, ":"); ok && !strings.Contains(p, ":") {
			if _, has := out[path.Join(w.dir, h+"_"+p+"_", fileName)]; has {
				folder = h + "_" + p + "_"
			}
		}
		out[path.Join(w.dir, folder, fileName)] = true
	}
	return out
}

// sync brings one file in line: what nodecreds changed before is put back
// (hoststoml.Restore) and the headers merged again on that, so that a
// header edited by someone else (drift) is rewritten, and one that left
// the sources goes.
func sync(root *hostfs.Root, recs *nodefile.HostsTOMLRecords, p string, create bool, headers map[string]string, scheme string) Result {
	res := Result{Path: p}
	folder := path.Base(path.Dir(p))
	old, had := recs.Get(p)
	if folder == hoststoml.DefaultFolder || !had && len(headers) == 0 {
		return res
	}
	d, name, err := root.OpenParent(p, create, 0o755)
	if errors.Is(err, fs.ErrNotExist) && !create {
		recs.Set(p, hoststoml.Record{}) // folder gone: nothing to restore
		return res
	}
	if err != nil {
		res.Err = fmt.Errorf("hosts.toml %s: %w", p, err)
		return res
	}
	defer d.Close()
	cur, exists, err := read(d, name)
	if err != nil {
		res.Err = fmt.Errorf("hosts.toml %s: %w", p, err)
		return res
	}
	base, chained := pristine(cur, exists, folder, old, had)
	m, err := hoststoml.Merge(base, folder, hoststoml.Options{Headers: headers, Scheme: scheme})
	if err != nil {
		res.Warning = fmt.Sprintf("%s left as it is: %v", d.Name(name), err)
		return res
	}
	rec := m.Record
	if chained {
		rec = old.Then(m.Record)
	} else if had && exists {
		rec.Created = rec.Created || old.Created
	}
	if m.NoHostTable && len(rec.Changes) > 0 {
		res.Warning = fmt.Sprintf("%s has no [host.\"…\"] table: containerd 1.6 ignores the whole file (\"invalid `host` tree\"), header included", d.Name(name))
	}
	want := m.Data
	if !create && !exists && base == nil {
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
	res.Changed, res.Removed, res.Err = commit(recs, p, d, name, cur, exists, want, old, rec)
	return res
}

// pristine is the file as it was before nodecreds: cur with the recorded
// changes undone (nil when nodecreds created it and it holds nothing
// else). chained: they cannot be undone as recorded (an edit moved them),
// so the merge goes on cur and the old record is kept first.
func pristine(cur []byte, exists bool, folder string, old hoststoml.Record, had bool) (base []byte, chained bool) {
	switch {
	case !had:
		return cur, false
	case !exists:
		return nil, false // the file went: what was there went with it
	}
	restored, remove, err := hoststoml.Restore(cur, folder, old)
	switch {
	case err != nil:
		return cur, true
	case remove:
		return nil, false
	}
	return restored, false
}

// commit records rec for p, then puts want (nil: no file) at name in d in
// place of cur; the record first, so a crash after the write still knows
// what was there. Not written, old is the record again.
func commit(recs *nodefile.HostsTOMLRecords, p string, d *hostfs.Dir, name string, cur []byte, exists bool, want []byte, old, rec hoststoml.Record) (changed, removed bool, err error) {
	recs.Set(p, rec)
	if err := recs.Save(); err != nil {
		return false, false, err
	}
	if want == nil {
		err = d.Remove(name)
		if err == nil {
			err = d.Sync()
		}
	} else {
		err = place(d, name, cur, exists, want)
	}
	if err != nil {
		recs.Set(p, old)
		return false, false, fmt.Errorf("hosts.toml %s: %w", d.Name(name), err)
	}
	return true, want == nil, nil
}

// read returns the file at name in d, refusing anything but a regular file.
func read(d *hostfs.Dir, name string) ([]byte, bool, error) {
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

// place puts want at name atomically, 0600, in place of cur (what was read,
// if it existed), as the node files are placed: staged, then exchanged
// with the file and the file taken out compared with what was read (put
// back if it is not that), or created where nothing may appear meanwhile.
func place(d *hostfs.Dir, name string, cur []byte, exists bool, want []byte) error {
	staged, err := d.Stage(tempPrefix, 0o600, func(f *os.File) error {
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
			results = append(results, sync(root, recs, p, false, nil, ""))
		}
		return nil
	})
	return results, err
}
