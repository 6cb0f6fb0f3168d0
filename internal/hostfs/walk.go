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
	stack := []*frame{root}
	defer func() {
		for _, fr := range stack {
			fr.f.Close()
		}
	}()
	pop := func(to int) {
		for len(stack) > to {
			stack[len(stack)-1].f.Close()
			stack = stack[:len(stack)-1]
		}
	}
	way := &Way{}
	todo := split(nodePath)
	if len(todo) == 0 {
		return nil, fmt.Errorf("%w: %s names the host root, not a file", ErrWalk, nodePath)
	}
	links, retries := 0, 0
	for len(todo) > 0 {
		name, last := todo[0], len(todo) == 1
		todo = todo[1:]
		cur := stack[len(stack)-1]
		if name == ".." {
			if last {
				return nil, fmt.Errorf("%w: %s names a folder, not a file", ErrWalk, nodePath)
			}
			pop(max(len(stack)-1, 1))
			continue
		}
		lookup := Lookup{Folder: cur.path, Info: cur.info, Name: name}
		var st unix.Stat_t
		err := unix.Fstatat(int(cur.f.Fd()), name, &st, unix.AT_SYMLINK_NOFOLLOW)
		switch {
		case errors.Is(err, unix.ENOENT) && last:
			lookup.Kind = Final
		case errors.Is(err, unix.ENOENT):
			lookup.Kind = Create
		case err != nil:
			return nil, fmt.Errorf("looking up %s: %w", filepath.Join(cur.path, name), err)
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
				return nil, fmt.Errorf("opening folder %s: %w", filepath.Join(cur.path, name), unix.ENOTDIR)
			}
		}
		if check != nil {
			if err := check(lookup); err != nil {
				return nil, err
			}
		}
		switch lookup.Kind {
		case Final:
			way.Name, way.Path = name, filepath.Join(cur.path, name)
			way.Folder = cur.info
			d, err := pathrs.Reopen(cur.f, unix.O_RDONLY|unix.O_DIRECTORY)
			if err != nil {
				return nil, fmt.Errorf("opening folder %s: %w", cur.path, err)
			}
			way.Dir = &Dir{f: d, path: cur.path}
			return way, nil
		case Link:
			if links++; links > maxLinks {
				return nil, fmt.Errorf("resolving %s: %w", nodePath, unix.ELOOP)
			}
			target, err := readlinkat(cur.f, name)
			if err != nil {
				return nil, fmt.Errorf("reading link %s: %w", filepath.Join(cur.path, name), err)
			}
			way.Links = append(way.Links, filepath.Join(cur.path, name))
			if path.IsAbs(target) {
				pop(1)
			}
			todo = append(split(target), todo...)
			if len(todo) == 0 {
				return nil, fmt.Errorf("%w: %s leads to the host root, not a file", ErrWalk, nodePath)
			}
			continue
		case Create:
			if !create {
				way.Folder = cur.info
				way.Missing = path.Join(append([]string{name}, todo...)...)
				way.Path = filepath.Join(cur.path, way.Missing)
				return way, nil
			}
			err := unix.Mkdirat(int(cur.f.Fd()), name, uint32(mode.Perm()))
			if err != nil && !errors.Is(err, unix.EEXIST) {
				return nil, fmt.Errorf("creating folder %s: %w", filepath.Join(cur.path, name), err)
			}
			todo = append([]string{name}, todo...) // looked up again: it may be anything now
			continue
		}
		fd, err := unix.Openat(int(cur.f.Fd()), name, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			if (errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ENOENT)) && retries < maxLinks {
				// Replaced since the lookup: look it up again.
				retries++
				todo = append([]string{name}, todo...)
				continue
			}
			return nil, fmt.Errorf("opening folder %s: %w", filepath.Join(cur.path, name), err)
		}
		next := &frame{f: os.NewFile(uintptr(fd), filepath.Join(cur.path, name)), path: filepath.Join(cur.path, name)}
		if next.info, err = fstat(next.f); err != nil {
			next.f.Close()
			return nil, err
		}
		if next.info.Dev != lookup.Entry.Dev || next.info.Ino != lookup.Entry.Ino {
			// Replaced by another folder since the lookup, which is what
			// was checked: look it up again.
			next.f.Close()
			if retries++; retries > maxLinks {
				return nil, fmt.Errorf("opening folder %s: it keeps being replaced", next.path)
			}
			todo = append([]string{name}, todo...)
			continue
		}
		stack = append(stack, next)
	}
	return nil, fmt.Errorf("%w: %s names a folder, not a file", ErrWalk, nodePath)
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
