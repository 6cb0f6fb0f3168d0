package nodefile

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nodecreds/nodecreds/internal/hostfs"
)

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

// remove deletes name in d (a file taken off the target, a held file, or
// ours back under a temp name after an undone exchange) and syncs the
// folder.
func remove(d *hostfs.Dir, name string) error {
	if err := d.Remove(name); err != nil {
		return err
	}
	return d.Sync()
}

// lockPoll is how often a held state lock is tried again.
const lockPoll = 20 * time.Millisecond

// lock takes an exclusive flock on the state folder's lock file, waiting
// for it until ctx ends (another nodecreds, such as `cleanup`, may hold
// it). The lock file is opened without following links and only if it is a
// regular file.
func lock(ctx context.Context, d *hostfs.Dir) (func(), error) {
	f, err := d.OpenLock("lock")
	if err != nil {
		return nil, fmt.Errorf("%w: lock: %w", ErrState, err)
	}
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { _ = unix.Flock(int(f.Fd()), unix.LOCK_UN); f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("%w: locking %s: %w", ErrState, f.Name(), err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("waiting for the state lock %s (held by another nodecreds process, such as cleanup): %w", f.Name(), ctx.Err())
		case <-time.After(lockPoll):
		}
	}
}
