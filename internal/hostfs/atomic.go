package hostfs

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"
)

// Staged is the new version of a file, written whole and flushed to disk
// under a temp name in the folder of the file it is for, and not yet at
// that name. One rename puts it there (Replace, Create or Exchange), so a
// reader, and a crash at any instant, finds the old file or the new one,
// each whole; a crash before it leaves the temp file, which its prefix
// lets the caller sweep. Discard removes it when it was not put in place.
//
// Every step is relative to the folder handle, by a single name, never
// following a link: nothing can be redirected outside the host root.
type Staged struct {
	d      *Dir
	temp   string
	info   Info
	placed bool
}

// Stage writes a new file in d: it creates prefix + 16 random hex digits
// with exactly mode perm (never over anything that exists), lets fill
// write it (and, say, chown it), fsyncs it and closes it. On an error
// nothing is left behind.
func (d *Dir) Stage(prefix string, perm fs.FileMode, fill func(f *os.File) error) (*Staged, error) {
	f, temp, err := d.CreateTemp(prefix, perm)
	if err != nil {
		return nil, err
	}
	info, err := func() (Info, error) {
		if err := fill(f); err != nil {
			return Info{}, err
		}
		if err := f.Sync(); err != nil {
			return Info{}, fmt.Errorf("syncing %s: %w", f.Name(), err)
		}
		return Stat(f)
	}()
	if cerr := f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("closing %s: %w", f.Name(), cerr)
	}
	if err != nil {
		_ = d.Remove(temp)
		return nil, err
	}
	return &Staged{d: d, temp: temp, info: info}, nil
}

// Temp is the name the staged file is under in its folder; after
// Exchange, the name of the file it replaced.
func (s *Staged) Temp() string { return s.temp }

// Info describes the staged file as flushed (mode, owner, size, inode).
func (s *Staged) Info() Info { return s.info }

// Replace renames the file over name, replacing whatever is there (a
// link at name is replaced, never followed), and fsyncs the folder so
// the rename survives a crash.
func (s *Staged) Replace(name string) error {
	if err := s.d.Rename(s.temp, name); err != nil {
		return err
	}
	s.placed = true
	return s.d.Sync()
}

// Create puts the file at name unless something is there (fs.ErrExist),
// with RENAME_NOREPLACE or its link-and-unlink fallback (see
// RenameNoReplace, whose crash window leaves the file under the temp
// name too, for the caller's sweep), and fsyncs the folder.
func (s *Staged) Create(name string) error {
	if err := s.d.RenameNoReplace(s.temp, name); err != nil {
		return err
	}
	s.placed = true
	return s.d.Sync()
}

// Exchange swaps the file with the one at name atomically
// (RENAME_EXCHANGE): from then on Temp names the file it replaced, for
// the caller to compare with what it expected there and then remove or
// keep; the caller fsyncs the folder once it has. Nothing changes when
// there is no file at name (fs.ErrNotExist) or the file system cannot
// exchange (ErrNoExchange, as in every -tags noexchange build).
func (s *Staged) Exchange(name string) error {
	if err := s.d.Exchange(s.temp, name); err != nil {
		return err
	}
	s.placed = true
	return nil
}

// Keep leaves the file under its temp name, which is then its name, and
// fsyncs the folder so that name survives a crash.
func (s *Staged) Keep() error {
	if err := s.d.Sync(); err != nil {
		return err
	}
	s.placed = true
	return nil
}

// Discard removes the staged file unless it was put in place (for a
// defer).
func (s *Staged) Discard() {
	if !s.placed {
		_ = s.d.Remove(s.temp)
	}
}

// WriteFile puts a file of mode perm, written by fill, at name in d
// atomically: Stage it as "."+name+"."+random digits, Replace name. A
// failed write leaves the old file and no temp file; a crash leaves the
// old or the new file, whole, and at most a temp file for the caller's
// sweep.
func (d *Dir) WriteFile(name string, perm fs.FileMode, fill func(f *os.File) error) error {
	if err := checkName(name); err != nil {
		return err
	}
	s, err := d.Stage("."+name+".", perm, fill)
	if err != nil {
		return err
	}
	defer s.Discard()
	return s.Replace(name)
}

// WriteSymlink puts a symlink to target at name in d atomically: it is
// made under a temp name ("."+name+"."+random digits) and renamed over
// name, so whatever was there (a file, a link) is replaced in one step and
// a reader finds the old name or the new link, never neither. The link is
// never followed here; target is stored as given.
func (d *Dir) WriteSymlink(name, target string) error {
	if err := checkName(name); err != nil {
		return err
	}
	var buf [8]byte
	for range 100 {
		if _, err := io.ReadFull(rand.Reader, buf[:]); err != nil {
			return fmt.Errorf("random name: %w", err)
		}
		temp := fmt.Sprintf(".%s.%x", name, buf)
		err := unix.Symlinkat(target, d.fd(), temp)
		if errors.Is(err, unix.EEXIST) {
			continue
		}
		if err != nil {
			return fmt.Errorf("creating link %s: %w", d.Name(temp), err)
		}
		if err := d.Rename(temp, name); err != nil {
			_ = d.Remove(temp)
			return err
		}
		return d.Sync()
	}
	return fmt.Errorf("creating a temp link in %s: too many collisions", d.path)
}

// Readlink returns the target of the symlink at name in d; a name that is
// not a symlink is ErrNotLink, a missing one fs.ErrNotExist.
func (d *Dir) Readlink(name string) (string, error) {
	if err := checkName(name); err != nil {
		return "", err
	}
	t, err := readlinkat(d.f, name)
	switch {
	case err == nil:
		return t, nil
	case errors.Is(err, unix.ENOENT):
		return "", fmt.Errorf("reading link %s: %w", d.Name(name), fs.ErrNotExist)
	case errors.Is(err, unix.EINVAL):
		return "", fmt.Errorf("reading link %s: %w", d.Name(name), ErrNotLink)
	}
	return "", fmt.Errorf("reading link %s: %w", d.Name(name), err)
}

// ErrNotLink means a name that should be a symlink is something else.
var ErrNotLink = errors.New("not a symlink")
