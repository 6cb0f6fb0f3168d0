package nodefile

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nodecreds/nodecreds/internal/hostfs"
)

// ErrNotRegular means a target resolves to something that is not a file.
var ErrNotRegular = hostfs.ErrNotRegular

// ErrForeignOwner means a target belongs to another user and the agent may
// not give the new file that owner.
var ErrForeignOwner = errors.New("target is owned by another user")

// fileRead is a target as read: its bytes and the metadata we keep.
type fileRead struct {
	exists bool
	data   []byte
	mode   fs.FileMode
	uid    int
	gid    int
}

// readTarget reads the target name in d; a missing folder (d nil) or file
// is an empty fileRead. Anything but a regular file with one link is
// refused: a FIFO would block us, and replacing a hard-linked file would
// leave the old credentials under its other names.
func readTarget(d *hostfs.Dir, name string) (fileRead, error) {
	if d == nil {
		return fileRead{}, nil
	}
	data, info, err := d.ReadFile(name, hostfs.MaxFileSize)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fileRead{}, nil
	case errors.Is(err, unix.EACCES):
		return fileRead{}, fmt.Errorf("%w; the agent runs as root without capabilities, so it can read only files root may read: chown the file to root (0600), or remove it", err)
	case err != nil:
		return fileRead{}, err
	}
	if info.Nlink > 1 {
		return fileRead{}, fmt.Errorf("%s: %w (%d names); nodecreds replaces files by rename, which would leave the old content under the other names: keep one name and use a symlink for the others", d.Name(name), hostfs.ErrHardLinked, info.Nlink)
	}
	return fileRead{exists: true, data: data, mode: info.Mode.Perm(), uid: info.UID, gid: info.GID}, nil
}

// tempPrefix marks our temporary files so a crash's leftovers can be swept.
func tempPrefix(name string) string {
	return "." + name + ".nodecreds-"
}

// replace puts data at name in d atomically and returns what was there at
// the instant of the swap (nil when there was no file).
//
// It writes a temp file in the same folder, fsyncs it, then swaps it with
// the target using renameat2(RENAME_EXCHANGE), and fsyncs the folder. The
// exchange hands back the exact file we replaced, so if another writer (a
// `docker login` on the node) renamed its own file in after we read, the
// caller sees that and merges again instead of losing its change; a plain
// rename (as renameio does) cannot tell. A crash at any point leaves the old
// or the new file at name, both whole. Every step is relative to the folder
// handle d, by name, so nothing can be redirected outside the host root.
func replace(d *hostfs.Dir, name string, data []byte, prev fileRead) (old []byte, existed bool, id FileID, err error) {
	if len(data) > hostfs.MaxFileSize {
		// Never write what nodecreds (and check, and the plugin) would
		// refuse to read back: a compact file near the limit grows when
		// re-indented.
		return nil, false, id, fmt.Errorf("%s would be %d bytes, over the %d MiB limit; nothing written (remove entries from the file or the sources): %w",
			d.Name(name), len(data), hostfs.MaxFileSize>>20, hostfs.ErrTooLarge)
	}
	mode := fs.FileMode(0o600)
	if prev.exists {
		// Keep an existing stricter mode; never loosen to more than 0600.
		mode = prev.mode & 0o600
	}
	f, tmp, err := d.CreateTemp(tempPrefix(name), mode)
	if err != nil {
		return nil, false, id, fmt.Errorf("creating temp file for %s: %w", d.Name(name), err)
	}
	swapped := false
	defer func() {
		if !swapped {
			_ = d.Remove(tmp) // after an exchange it holds the old file, which we have read
		}
	}()
	werr := func() error {
		if _, err := f.Write(data); err != nil {
			return err
		}
		if prev.exists && (prev.uid != os.Geteuid() || prev.gid != os.Getegid()) {
			if err := f.Chown(prev.uid, prev.gid); err != nil {
				if errors.Is(err, unix.EPERM) {
					return fmt.Errorf("%w (uid %d, gid %d): nodecreds keeps the owner of a file it replaces, which needs the CHOWN capability (the DaemonSet drops all capabilities); chown the file to root, or add CHOWN to the container's capabilities", ErrForeignOwner, prev.uid, prev.gid)
				}
				return err
			}
		}
		if err := f.Sync(); err != nil {
			return err
		}
		info, err := f.Stat()
		if err == nil {
			id = idOf(info)
		}
		return err
	}()
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		return nil, false, id, fmt.Errorf("writing %s: %w", d.Name(name), werr)
	}

	err = d.Exchange(tmp, name)
	switch {
	case err == nil:
		old, _, rerr := d.ReadFile(tmp, hostfs.MaxFileSize)
		if rerr != nil {
			return nil, false, id, fmt.Errorf("reading back the replaced %s: %w", d.Name(name), rerr)
		}
		if err := d.Sync(); err != nil {
			return nil, false, id, err
		}
		return old, true, id, nil
	case errors.Is(err, fs.ErrNotExist):
		// No target: create it, but not over one that appeared meanwhile.
		err = d.RenameNoReplace(tmp, name)
		if errors.Is(err, fs.ErrExist) {
			return nil, false, id, errRaced
		}
	case errors.Is(err, hostfs.ErrNoExchange):
		// The file system cannot exchange: check, then rename. The window
		// left is between the check and the rename.
		cur, rerr := readTarget(d, name)
		if rerr != nil {
			return nil, false, id, rerr
		}
		if cur.exists != prev.exists || !bytes.Equal(cur.data, prev.data) {
			return nil, false, id, errRaced
		}
		err = d.Rename(tmp, name)
	}
	if err != nil {
		return nil, false, id, fmt.Errorf("replacing %s: %w", d.Name(name), err)
	}
	swapped = true // renamed: nothing left at tmp
	if err := d.Sync(); err != nil {
		return nil, false, id, err
	}
	return nil, false, id, nil
}

// FileID identifies a file as nodecreds left it: the inode and what any
// write to it changes. A rename does not change it (it moves the inode and
// touches only its ctime), so the file nodecreds swapped in keeps the ID
// it had as a temp file until someone writes to it or replaces it.
type FileID struct {
	Dev, Ino    uint64
	Size, Mtime int64
}

func idOf(info fs.FileInfo) FileID {
	id := FileID{Size: info.Size(), Mtime: info.ModTime().UnixNano()}
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		id.Dev, id.Ino = uint64(st.Dev), st.Ino
	}
	return id
}

// StatID returns the ID of the file at path (following links), or false
// when there is none.
func StatID(path string) (FileID, bool) {
	info, err := os.Stat(path)
	if err != nil {
		return FileID{}, false
	}
	return idOf(info), true
}

// errRaced means the target changed under us and must be read again.
var errRaced = errors.New("target changed while being written")

// setAside keeps a copy of a target that does not parse, next to it, as
// <name>.corrupt-<UTC time>, mode 0600, before it is replaced. It returns
// the copy's host path.
func setAside(d *hostfs.Dir, name string, data []byte, now time.Time) (string, error) {
	base := name + ".corrupt-" + now.UTC().Format("20060102T150405Z")
	cname := base
	for i := 1; ; i++ {
		f, err := d.CreateExcl(cname, 0o600)
		if errors.Is(err, fs.ErrExist) && i < 100 {
			cname = fmt.Sprintf("%s.%d", base, i)
			continue
		}
		if err != nil {
			return "", fmt.Errorf("setting aside corrupt %s: %w", d.Name(name), err)
		}
		_, werr := f.Write(data)
		if werr == nil {
			werr = f.Sync()
		}
		if cerr := f.Close(); werr == nil {
			werr = cerr
		}
		if werr != nil {
			_ = d.Remove(cname)
			return "", fmt.Errorf("setting aside corrupt %s: %w", d.Name(name), werr)
		}
		return d.Name(cname), nil
	}
}

// remove deletes a target nodecreds created once nothing is left in it.
func remove(d *hostfs.Dir, name string) error {
	if err := d.Remove(name); err != nil {
		return err
	}
	return d.Sync()
}
