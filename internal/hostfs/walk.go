package hostfs

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	pathrs "github.com/cyphar/filepath-securejoin/pathrs-lite"
	"golang.org/x/sys/unix"
)

// maxLinks is how many symlinks one walk follows, as the kernel's
// MAXSYMLINKS.
const maxLinks = 40

// LookupKind says what a walk does with a name it looked up.
type LookupKind int

const (
	// Through: the name is a folder the walk goes into.
	Through LookupKind = iota
	// Link: the name is a symlink the walk follows.
	Link
	// Create: the name is missing and a folder is (or will be) created
	// there.
	Create
	// Final: the name is the file itself (there or not); the folder is
	// where it is written, next to its temp files and copies.
	Final
)

// Lookup is one name a walk looked up, in the folder it looked in.
type Lookup struct {
	Kind   LookupKind
	Folder string // host path of the folder, for messages
	Info   Info   // the folder
	Name   string
	Entry  *Info // the name as found, not followed; nil when missing
}

// Way is how a walk reached a node path's file.
type Way struct {
	// Dir is the folder holding the file; nil when a folder on the way is
	// missing (and was not to be created).
	Dir *Dir
	// Name is the file's name in Dir.
	Name string
	// Path is the host path of the file as resolved, for messages and
	// watches.
	Path string
	// Folder is Dir's folder, or when Dir is nil the deepest folder that
	// exists on the way, and Missing is what lies below it: the missing
	// folders and the file's name ("a/b/config.json").
	Folder  Info
	Missing string
	// Links are the host paths of the symlinks followed, in order.
	Links []string
}

// Close releases the folder, if one was opened.
func (w *Way) Close() {
	if w.Dir != nil {
		w.Dir.Close()
	}
}

// ErrWalk means a walk could not resolve a node path.
var ErrWalk = errors.New("cannot resolve path")

// frame is a folder the walk is in: an O_PATH handle, its host path and
// what it is.
type frame struct {
	f    *os.File
	path string
	info Info
}

// Walk resolves nodePath as the node sees it (symlinks followed under the
// root, ".." stopping at the root), one name at a time, each looked up in
// a handle of the folder before it and never through a link the walk has
// not read itself, so every folder it reports is one the result is reached
// through. check is called for every name looked up, before the walk acts
// on it (goes into it, follows it, creates a folder there, or returns it as
// the file); an error from check ends the walk. With create, missing
// folders are made with mode; without, a missing folder ends the walk with
// Dir nil.
func (r *Root) Walk(nodePath string, create bool, mode fs.FileMode, check func(Lookup) error) (*Way, error) {
	if !path.IsAbs(nodePath) {
		return nil, fmt.Errorf("%w: %q is not an absolute path", ErrWalk, nodePath)
	}
	rootFd, err := unix.Openat(int(r.fd.Fd()), ".", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening host root %s: %w", r.path, err)
	}
	root := &frame{f: os.NewFile(uintptr(rootFd), r.path), path: r.path}
	if root.info, err = fstat(root.f); err != nil {
		root.f.Close()
		return nil, err
	}
	w := &walker{nodePath: nodePath, create: create, mode: mode, check: check, stack: []*frame{root}, way: &Way{}}
	defer w.pop(0)
	w.todo = split(nodePath)
	if len(w.todo) == 0 {
		return nil, fmt.Errorf("%w: %s names the host root, not a file", ErrWalk, nodePath)
	}
	for len(w.todo) > 0 {
		way, err := w.next()
		if err != nil {
			return nil, err
		}
		if way != nil {
			return way, nil
		}
	}
	return nil, fmt.Errorf("%w: %s names a folder, not a file", ErrWalk, nodePath)
}

// walker is the state of one Walk: the folders it is in (the root first),
// the names still to look up, and what it found so far.
type walker struct {
	nodePath       string
	create         bool
	mode           fs.FileMode
	check          func(Lookup) error
	stack          []*frame
	todo           []string
	way            *Way
	links, retries int
}

// pop closes the folders above the first to.
func (w *walker) pop(to int) {
	for len(w.stack) > to {
		w.stack[len(w.stack)-1].f.Close()
		w.stack = w.stack[:len(w.stack)-1]
	}
}

// next looks up the next name and acts on it: it returns the way when
// the walk ends there, nil to go on.
func (w *walker) next() (*Way, error) {
	name, last := w.todo[0], len(w.todo) == 1
	w.todo = w.todo[1:]
	cur := w.stack[len(w.stack)-1]
	if name == ".." {
		if last {
			return nil, fmt.Errorf("%w: %s names a folder, not a file", ErrWalk, w.nodePath)
		}
		w.pop(max(len(w.stack)-1, 1))
		return nil, nil
	}
	lookup, err := lookUp(cur, name, last)
	if err != nil {
		return nil, err
	}
	if w.check != nil {
		if err := w.check(lookup); err != nil {
			return nil, err
		}
	}
	switch lookup.Kind {
	case Final:
		return w.final(cur, name)
	case Link:
		return nil, w.follow(cur, name)
	case Create:
		return w.missing(cur, name)
	}
	return nil, w.enter(cur, name, lookup)
}

// lookUp looks name up in the folder cur, without following a link.
func lookUp(cur *frame, name string, last bool) (Lookup, error) {
	lookup := Lookup{Folder: cur.path, Info: cur.info, Name: name}
	var st unix.Stat_t
	err := unix.Fstatat(int(cur.f.Fd()), name, &st, unix.AT_SYMLINK_NOFOLLOW)
	switch {
	case errors.Is(err, unix.ENOENT) && last:
		lookup.Kind = Final
	case errors.Is(err, unix.ENOENT):
		lookup.Kind = Create
	case err != nil:
		return lookup, fmt.Errorf("looking up %s: %w", filepath.Join(cur.path, name), err)
	default:
		info := infoOf(&st)
		lookup.Entry = &info
		switch {
		case st.Mode&unix.S_IFMT == unix.S_IFLNK:
			lookup.Kind = Link
		case last:
			lookup.Kind = Final
		case st.Mode&unix.S_IFMT == unix.S_IFDIR:
			lookup.Kind = Through
		default:
			return lookup, fmt.Errorf("opening folder %s: %w", filepath.Join(cur.path, name), unix.ENOTDIR)
		}
	}
	return lookup, nil
}

// final ends the walk at name, the file, in the folder cur.
func (w *walker) final(cur *frame, name string) (*Way, error) {
	w.way.Name, w.way.Path = name, filepath.Join(cur.path, name)
	w.way.Folder = cur.info
	d, err := pathrs.Reopen(cur.f, unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return nil, fmt.Errorf("opening folder %s: %w", cur.path, err)
	}
	w.way.Dir = &Dir{f: d, path: cur.path}
	return w.way, nil
}

// follow reads the symlink name in cur and goes on with its target: from
// the root when it is absolute, from cur otherwise.
func (w *walker) follow(cur *frame, name string) error {
	if w.links++; w.links > maxLinks {
		return fmt.Errorf("resolving %s: %w", w.nodePath, unix.ELOOP)
	}
	target, err := readlinkat(cur.f, name)
	if err != nil {
		return fmt.Errorf("reading link %s: %w", filepath.Join(cur.path, name), err)
	}
	w.way.Links = append(w.way.Links, filepath.Join(cur.path, name))
	if path.IsAbs(target) {
		w.pop(1)
	}
	w.todo = append(split(target), w.todo...)
	if len(w.todo) == 0 {
		return fmt.Errorf("%w: %s leads to the host root, not a file", ErrWalk, w.nodePath)
	}
	return nil
}

// missing ends the walk at name, a missing folder in cur, or, with
// create, makes it and looks it up again.
func (w *walker) missing(cur *frame, name string) (*Way, error) {
	if !w.create {
		w.way.Folder = cur.info
		w.way.Missing = path.Join(append([]string{name}, w.todo...)...)
		w.way.Path = filepath.Join(cur.path, w.way.Missing)
		return w.way, nil
	}
	err := unix.Mkdirat(int(cur.f.Fd()), name, uint32(w.mode.Perm()))
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return nil, fmt.Errorf("creating folder %s: %w", filepath.Join(cur.path, name), err)
	}
	w.todo = append([]string{name}, w.todo...) // looked up again: it may be anything now
	return nil, nil
}

// enter goes into the folder name in cur, which must still be the folder
// looked up (and checked); one replaced since is looked up again.
func (w *walker) enter(cur *frame, name string, lookup Lookup) error {
	fd, err := unix.Openat(int(cur.f.Fd()), name, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		if (errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ENOENT)) && w.retries < maxLinks {
			// Replaced since the lookup: look it up again.
			w.retries++
			w.todo = append([]string{name}, w.todo...)
			return nil
		}
		return fmt.Errorf("opening folder %s: %w", filepath.Join(cur.path, name), err)
	}
	next := &frame{f: os.NewFile(uintptr(fd), filepath.Join(cur.path, name)), path: filepath.Join(cur.path, name)}
	if next.info, err = fstat(next.f); err != nil {
		next.f.Close()
		return err
	}
	if next.info.Dev != lookup.Entry.Dev || next.info.Ino != lookup.Entry.Ino {
		// Replaced by another folder since the lookup, which is what
		// was checked: look it up again.
		next.f.Close()
		if w.retries++; w.retries > maxLinks {
			return fmt.Errorf("opening folder %s: it keeps being replaced", next.path)
		}
		w.todo = append([]string{name}, w.todo...)
		return nil
	}
	w.stack = append(w.stack, next)
	return nil
}

// split returns the names of a path, without empty ones and ".".
func split(p string) []string {
	var out []string
	for _, n := range strings.Split(p, "/") {
		if n != "" && n != "." {
			out = append(out, n)
		}
	}
	return out
}

func fstat(f *os.File) (Info, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return Info{}, fmt.Errorf("stat %s: %w", f.Name(), err)
	}
	return infoOf(&st), nil
}

// readlinkat reads the symlink name in the folder f.
func readlinkat(f *os.File, name string) (string, error) {
	for size := 256; size <= 64<<10; size *= 4 {
		buf := make([]byte, size)
		n, err := unix.Readlinkat(int(f.Fd()), name, buf)
		if err != nil {
			return "", err
		}
		if n < size {
			return string(buf[:n]), nil
		}
	}
	return "", unix.ENAMETOOLONG
}

// StatName describes name in the folder, without following a link there.
// A missing name is fs.ErrNotExist.
func (d *Dir) StatName(name string) (Info, error) {
	if err := checkName(name); err != nil {
		return Info{}, err
	}
	var st unix.Stat_t
	if err := unix.Fstatat(d.fd(), name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return Info{}, openError(d.Name(name), err)
	}
	return infoOf(&st), nil
}

// ErrLink means a name that must be a folder or a file is a symlink, which
// is not followed there.
var ErrLink = errors.New("is a symlink, not followed here")

// OpenSub opens the folder name in d, never following a link at name (one
// there is ErrLink). With create, a missing folder is made with mode first.
// A missing folder is fs.ErrNotExist.
func (d *Dir) OpenSub(name string, create bool, mode fs.FileMode) (*Dir, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	p := d.Name(name)
	if create {
		if err := unix.Mkdirat(d.fd(), name, uint32(mode.Perm())); err != nil && !errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("creating folder %s: %w", p, err)
		}
	}
	fd, err := unix.Openat(d.fd(), name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	switch {
	case err == nil:
		return &Dir{f: os.NewFile(uintptr(fd), p), path: p}, nil
	case errors.Is(err, unix.ENOENT):
		return nil, fmt.Errorf("opening folder %s: %w", p, fs.ErrNotExist)
	case errors.Is(err, unix.ELOOP):
		return nil, fmt.Errorf("opening folder %s: %w", p, ErrLink)
	case errors.Is(err, unix.ENOTDIR) && d.IsLink(name):
		// O_NOFOLLOW with O_DIRECTORY gives ENOTDIR for a symlink.
		return nil, fmt.Errorf("opening folder %s: %w", p, ErrLink)
	case errors.Is(err, unix.ENOTDIR):
		return nil, fmt.Errorf("opening folder %s: %w", p, unix.ENOTDIR)
	}
	return nil, fmt.Errorf("opening folder %s: %w", p, err)
}

// IsLink reports whether name in d is a symlink (not followed).
func (d *Dir) IsLink(name string) bool {
	if checkName(name) != nil {
		return false
	}
	var st unix.Stat_t
	return unix.Fstatat(d.fd(), name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK
}
