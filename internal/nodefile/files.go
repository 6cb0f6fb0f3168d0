package nodefile

import (
	"bytes"
	"cmp"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nodecreds/nodecreds/internal/hostfs"
)

// ErrNotRegular means a target resolves to something that is not a file.
var ErrNotRegular = hostfs.ErrNotRegular

// ErrForeignOwner means a target belongs to another user and the agent may
// not give the new file that owner.
var ErrForeignOwner = errors.New("target is owned by another user")

// FileID is what nodecreds left at a target: the file's content, mode and
// owner (Exists false for no file). It says nothing of time stamps or
// inode, which another writer can restore or keep.
type FileID = hostfs.Stamp

// fileRead is a target as read: its bytes and the metadata we keep.
type fileRead struct {
	exists bool
	data   []byte
	mode   fs.FileMode // permission bits
	uid    int
	gid    int
	info   hostfs.Info
}

// stamp is the FileID of the file as read.
func (f fileRead) stamp() FileID {
	if !f.exists {
		return FileID{}
	}
	return hostfs.StampOf(f.data, f.info)
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
	return fileRead{exists: true, data: data, mode: info.Mode.Perm(), uid: info.UID, gid: info.GID, info: info}, nil
}

// tempPrefix marks our temporary files so a crash's leftovers can be swept.
// Such a file holds nodecreds' next version of the target before the swap,
// and the version it replaced (merged into the next one) after it.
func tempPrefix(name string) string {
	return "." + name + ".nodecreds-"
}

// heldPrefix marks a file nodecreds took off the target's name that is not
// the one it read (another writer's, renamed over the target in the
// meantime). It is kept under that name until its content is merged into
// the target, by this process or, after a crash, by the next one: a held
// file is never swept.
func heldPrefix(name string) string {
	return tempPrefix(name) + "held-"
}

// swap is what replace found at the target when it put ours in place.
type swap struct {
	existed bool   // a file was at the name
	old     []byte // its content, as far as it could be read
	held    string // when it was not the file read: the name it is kept under
	left    FileID // ours, as now at the name
}

// replace puts data at name in d atomically, in place of prev (the file
// read, which may be none), and says what it replaced.
//
// It writes a temp file in the same folder, fsyncs it, then swaps it with
// the target using renameat2(RENAME_EXCHANGE), and fsyncs the folder. The
// exchange hands back the exact file we replaced, so if another writer (a
// `docker login` on the node) renamed its own file in after we read, the
// caller sees that and merges again instead of losing its change; a plain
// rename (as renameio does) cannot tell. That file is kept under a held
// name until then. A crash at any point leaves the old or the new file at
// name, both whole. Every step is relative to the folder handle d, by name,
// so nothing can be redirected outside the host root.
//
// Where the file system cannot exchange, prev is compared with what is
// there just before a plain rename: a writer renaming its file in between
// the two is not seen, and its change is lost. Where there was no file, the
// new one is created without replacing one that appeared meanwhile
// (RENAME_NOREPLACE, or link(2) where that is missing too): errRaced.
func replace(d *hostfs.Dir, name string, data []byte, prev fileRead) (swap, error) {
	if len(data) > hostfs.MaxFileSize {
		// Never write what nodecreds (and check, and the plugin) would
		// refuse to read back: a compact file near the limit grows when
		// re-indented.
		return swap{}, fmt.Errorf("%s would be %d bytes, over the %d MiB limit; nothing written (remove entries from the file or the sources): %w",
			d.Name(name), len(data), hostfs.MaxFileSize>>20, hostfs.ErrTooLarge)
	}
	mode := fs.FileMode(0o600)
	if prev.exists {
		// Keep an existing stricter mode; never loosen to more than 0600.
		mode = prev.mode & 0o600
	}
	f, tmp, err := d.CreateTemp(tempPrefix(name), mode)
	if err != nil {
		return swap{}, fmt.Errorf("creating temp file for %s: %w", d.Name(name), err)
	}
	placed := false
	defer func() {
		if !placed {
			_ = d.Remove(tmp)
		}
	}()
	var left FileID
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
		info, err := hostfs.Stat(f)
		left = hostfs.StampOf(data, info)
		return err
	}()
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		return swap{}, fmt.Errorf("writing %s: %w", d.Name(name), werr)
	}

	err = d.Exchange(tmp, name)
	switch {
	case err == nil:
		placed = true // tmp now holds the file replaced
		return settle(d, name, tmp, prev, data, left)
	case errors.Is(err, fs.ErrNotExist):
		// No target: create it, but not over one that appeared meanwhile.
		err = d.RenameNoReplace(tmp, name)
	case errors.Is(err, hostfs.ErrNoExchange) && !prev.exists:
		err = d.RenameNoReplace(tmp, name)
	case errors.Is(err, hostfs.ErrNoExchange):
		// Check, then rename: a writer renaming its file in between the
		// two is not seen (docs/security.md says so).
		cur, rerr := readTarget(d, name)
		if rerr != nil {
			return swap{}, rerr
		}
		if !cur.exists || !bytes.Equal(cur.data, prev.data) {
			return swap{}, errRaced
		}
		if err = d.Rename(tmp, name); err == nil {
			placed = true
			if err := d.Sync(); err != nil {
				return swap{}, err
			}
			return swap{existed: true, old: prev.data, left: left}, nil
		}
	}
	if errors.Is(err, fs.ErrExist) {
		return swap{}, errRaced
	}
	if err != nil {
		return swap{}, fmt.Errorf("replacing %s: %w", d.Name(name), err)
	}
	placed = true
	if err := d.Sync(); err != nil {
		return swap{}, err
	}
	return swap{left: left}, nil
}

// settle deals with what an exchange put at tmp: the file read, which is
// merged into ours and goes; or another writer's, which is held until it
// is merged too. When it cannot be held (a disk out of space, on which a
// rename to a new name can still need a block), the exchange is undone:
// their file goes back to the target, untouched, and ours, now at tmp,
// goes (errRaced: the next attempt reads theirs). Never is their file
// left under the temp name, which the next start would sweep.
func settle(d *hostfs.Dir, name, tmp string, prev fileRead, data []byte, left FileID) (swap, error) {
	old, _, err := d.ReadFile(tmp, hostfs.MaxFileSize)
	if err == nil && prev.exists && bytes.Equal(old, prev.data) {
		if err := d.Remove(tmp); err != nil {
			return swap{}, err
		}
		return swap{existed: true, old: old, left: left}, d.Sync()
	}
	held, herr := holdTemp(d, name, tmp)
	if herr == nil {
		return swap{existed: true, old: old, held: held, left: left}, d.Sync()
	}
	// Undo: exchange again (needs no space at all), and check that what
	// came back is ours, not a third writer's put at the name meanwhile.
	if xerr := d.Exchange(tmp, name); xerr == nil {
		back, _, rerr := d.ReadFile(tmp, hostfs.MaxFileSize)
		if rerr == nil && bytes.Equal(back, data) {
			if err := remove(d, tmp); err != nil {
				return swap{}, err
			}
			return swap{}, errRaced
		}
	}
	return swap{}, fmt.Errorf("%s: ours is in place, but the file another writer put there just before is left as %s (merge it into the target by hand: the next start removes it): %w", d.Name(name), d.Name(tmp), herr)
}

// holdTemp renames tmp, a temp file of ours that now holds another
// writer's file, to a new held name. A rename needs no new inode, so a
// file system out of inodes can still hold it.
func holdTemp(d *hostfs.Dir, name, tmp string) (string, error) {
	var buf [8]byte
	for range 100 {
		if _, err := io.ReadFull(rand.Reader, buf[:]); err != nil {
			return "", fmt.Errorf("random name: %w", err)
		}
		held := fmt.Sprintf("%s%x", heldPrefix(name), buf)
		err := d.RenameNoReplace(tmp, held)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		return held, err
	}
	return "", fmt.Errorf("holding %s: too many collisions", d.Name(tmp))
}

// hold renames the file at from to a new held name, never over anything
// but the empty placeholder it creates for that name.
func hold(d *hostfs.Dir, name, from string) (string, error) {
	f, held, err := d.CreateTemp(heldPrefix(name), 0o600)
	if err != nil {
		return "", err
	}
	f.Close()
	if err := d.Rename(from, held); err != nil {
		_ = d.Remove(held)
		return "", err
	}
	return held, nil
}

// take moves the target off its name, atomically, to a new held name:
// whatever another writer renames over the name afterwards is never
// touched, and what was taken is looked at before anything is removed.
// A missing target is fs.ErrNotExist.
func take(d *hostfs.Dir, name string) (string, error) {
	return hold(d, name, name)
}

// sameFile reports whether names a and b in d are one regular file.
func sameFile(d *hostfs.Dir, a, b string) bool {
	fa, ia, err := d.Open(a)
	if err != nil {
		return false
	}
	defer fa.Close()
	fb, ib, err := d.Open(b)
	if err != nil {
		return false
	}
	defer fb.Close()
	return ia.Dev == ib.Dev && ia.Ino == ib.Ino
}

// tighten removes the group and other bits of the target, which must still
// be the file read (same inode, same bytes; otherwise errRaced), through a
// handle on it, and returns the new mode. A chmod leaves the content, the
// inode and the modification time alone, so readers see no change at all
// and, unlike a rewrite, it works the same where renameat2 cannot exchange.
func tighten(d *hostfs.Dir, name string, cur fileRead) (fs.FileMode, error) {
	f, info, err := d.Open(name)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, errRaced
	}
	if err != nil {
		return 0, err
	}
	defer f.Close()
	if info.Dev != cur.info.Dev || info.Ino != cur.info.Ino {
		return 0, errRaced
	}
	data, err := io.ReadAll(io.LimitReader(f, hostfs.MaxFileSize+1))
	if err != nil {
		return 0, fmt.Errorf("reading %s: %w", d.Name(name), err)
	}
	if !bytes.Equal(data, cur.data) {
		return 0, errRaced
	}
	mode := info.Mode.Perm() & 0o600
	if err := f.Chmod(mode); err != nil {
		if errors.Is(err, unix.EPERM) {
			return 0, fmt.Errorf("%s is mode %04o, readable by group or others, and owned by uid %d: nodecreds cannot make it %04o without the FOWNER capability (the DaemonSet drops all capabilities); chown the file to root", d.Name(name), info.Mode.Perm(), info.UID, mode)
		}
		return 0, fmt.Errorf("setting the mode of %s: %w", d.Name(name), err)
	}
	return mode, nil
}

// loosened says whether mode lets anyone but the owner read or write.
func loosened(mode fs.FileMode) bool { return mode&0o077 != 0 }

// errRaced means the target changed under us and must be read again.
var errRaced = errors.New("target changed while being written")

// maxCorruptCopies is how many copies of corrupt files are kept next to
// each target; with each at most hostfs.MaxFileSize, a target's copies
// never take more than 12 MiB, however often garbage is put there.
const maxCorruptCopies = 3

const corruptInfix = ".corrupt-"

// copyName returns a name for a copy of name's corrupt content made at
// now, <name>.corrupt-<UTC time>, with .1, .2, ... after it when taken:
// free when it returns, though another process may take it before the
// copy is created (createCopy then says fs.ErrExist).
func copyName(d *hostfs.Dir, name string, now time.Time, skip int) (string, error) {
	base := name + corruptInfix + now.UTC().Format(copyTime)
	for i := 0; i < 1000; i++ {
		cname := base
		if i > 0 {
			cname = fmt.Sprintf("%s.%d", base, i)
		}
		if _, err := d.StatName(cname); errors.Is(err, fs.ErrNotExist) {
			if skip == 0 {
				return cname, nil
			}
			skip--
		}
	}
	return "", fmt.Errorf("setting aside corrupt %s: no free name for a copy", d.Name(name))
}

// createCopy keeps data, a target that does not parse, next to it as
// cname (a name copyName gave), mode 0600, never over an existing file
// (fs.ErrExist), and removes the oldest copies beyond maxCorruptCopies.
func createCopy(d *hostfs.Dir, name, cname string, data []byte) error {
	f, err := d.CreateExcl(cname, 0o600)
	if err != nil {
		return fmt.Errorf("setting aside corrupt %s: %w", d.Name(name), err)
	}
	_, werr := f.Write(data)
	if werr == nil {
		werr = f.Sync()
	}
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = d.Sync()
	}
	if werr != nil {
		_ = d.Remove(cname)
		return fmt.Errorf("setting aside corrupt %s: %w", d.Name(name), werr)
	}
	pruneCopies(d, name, cname)
	return nil
}

const copyTime = "20060102T150405Z"

// pruneCopies removes the oldest copies of name's corrupt files beyond
// maxCorruptCopies, keeping the one just made whatever the clock says.
// Only names setAside makes are counted; a failure to list or remove
// leaves copies, never anything else.
func pruneCopies(d *hostfs.Dir, name, keep string) {
	names, err := d.Names()
	if err != nil {
		return
	}
	type copyName struct {
		name string
		when string
		seq  int
	}
	var copies []copyName
	for _, n := range names {
		rest, ok := strings.CutPrefix(n, name+corruptInfix)
		if !ok || n == keep {
			continue
		}
		when, seq, _ := strings.Cut(rest, ".")
		if _, err := time.Parse(copyTime, when); err != nil {
			continue
		}
		i := 0
		if seq != "" {
			if i, err = strconv.Atoi(seq); err != nil || i < 1 {
				continue
			}
		}
		copies = append(copies, copyName{n, when, i})
	}
	slices.SortFunc(copies, func(a, b copyName) int {
		return cmp.Or(strings.Compare(a.when, b.when), cmp.Compare(a.seq, b.seq))
	})
	for len(copies) > maxCorruptCopies-1 {
		_ = d.Remove(copies[0].name)
		copies = copies[1:]
	}
}

// remove deletes a file nodecreds took off a target (see take).
func remove(d *hostfs.Dir, name string) error {
	if err := d.Remove(name); err != nil {
		return err
	}
	return d.Sync()
}
