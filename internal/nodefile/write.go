package nodefile

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	securejoin "github.com/cyphar/filepath-securejoin"
	"golang.org/x/sys/unix"
)

// maxTargetSize bounds what we read of a target; a config.json with 10,000
// entries is about 1 MiB.
const maxTargetSize = 64 << 20

// ErrNotRegular means a target resolves to something that is not a file.
var ErrNotRegular = errors.New("not a regular file")

// resolve maps a node path to the host path where it lives, following
// symlinks as the node sees them: an absolute link target is taken under
// root and ".." cannot climb above root. Nothing outside root is ever named.
func resolve(root, nodePath string) (string, error) {
	p, err := securejoin.SecureJoin(root, nodePath)
	if err != nil {
		return "", fmt.Errorf("resolving %s under %s: %w", nodePath, root, err)
	}
	return p, nil
}

// snapshot is a target as read: its bytes and the metadata we keep.
type snapshot struct {
	exists bool
	data   []byte
	mode   fs.FileMode
	uid    int
	gid    int
}

func readTarget(path string) (snapshot, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return snapshot{}, nil
	}
	if err != nil {
		return snapshot{}, fmt.Errorf("opening %s: %w", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return snapshot{}, fmt.Errorf("stat %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return snapshot{}, fmt.Errorf("%s: %w (it is a %s)", path, ErrNotRegular, describeMode(fi.Mode()))
	}
	data, err := io.ReadAll(io.LimitReader(f, maxTargetSize+1))
	if err != nil {
		return snapshot{}, fmt.Errorf("reading %s: %w", path, err)
	}
	if len(data) > maxTargetSize {
		return snapshot{}, fmt.Errorf("%s is larger than %d MiB", path, maxTargetSize>>20)
	}
	s := snapshot{exists: true, data: data, mode: fi.Mode().Perm(), uid: -1, gid: -1}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		s.uid, s.gid = int(st.Uid), int(st.Gid)
	}
	return s, nil
}

func describeMode(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "directory"
	case m&fs.ModeSymlink != 0:
		return "symlink"
	case m&fs.ModeNamedPipe != 0:
		return "named pipe"
	case m&fs.ModeSocket != 0:
		return "socket"
	case m&fs.ModeDevice != 0:
		return "device"
	}
	return "special file"
}

// tempPrefix marks our temporary files so a crash's leftovers can be swept.
func tempPrefix(path string) string {
	return "." + filepath.Base(path) + ".nodecreds-"
}

// replace puts data at path atomically and returns what was at path at the
// instant of the swap (nil when there was no file).
//
// It writes a temp file in the same folder, fsyncs it, then swaps it with
// the target using renameat2(RENAME_EXCHANGE), and fsyncs the folder. The
// exchange hands back the exact file we replaced, so if another writer (a
// `docker login` on the node) renamed its own file in after we read, the
// caller sees that and merges again instead of losing its change; a plain
// rename (as renameio does) cannot tell. A crash at any point leaves the old
// or the new file at path, both whole.
func replace(path string, data []byte, prev snapshot) (old []byte, existed bool, err error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, false, fmt.Errorf("creating folder %s: %w", dir, err)
	}
	sweepTemps(path)
	f, err := os.CreateTemp(dir, tempPrefix(path)+"*")
	if err != nil {
		return nil, false, fmt.Errorf("creating temp file in %s: %w", dir, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after the swap it holds the old file, which we have read
	mode := fs.FileMode(0o600)
	if prev.exists {
		// Keep an existing stricter mode; never loosen to more than 0600.
		mode = prev.mode & 0o600
	}
	werr := func() error {
		if _, err := f.Write(data); err != nil {
			return err
		}
		if err := f.Chmod(mode); err != nil {
			return err
		}
		if prev.exists && prev.uid >= 0 && (prev.uid != os.Geteuid() || prev.gid != os.Getegid()) {
			if err := f.Chown(prev.uid, prev.gid); err != nil {
				return err
			}
		}
		return f.Sync()
	}()
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		return nil, false, fmt.Errorf("writing temp file for %s: %w", path, werr)
	}

	err = unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, path, unix.RENAME_EXCHANGE)
	switch {
	case err == nil:
		old, rerr := os.ReadFile(tmp)
		if rerr != nil {
			return nil, false, fmt.Errorf("reading back the replaced %s: %w", path, rerr)
		}
		if err := syncDir(dir); err != nil {
			return nil, false, err
		}
		return old, true, nil
	case errors.Is(err, unix.ENOENT):
		// No target: create it, but not over one that appeared meanwhile.
		err = unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, path, unix.RENAME_NOREPLACE)
		if errors.Is(err, unix.EEXIST) {
			return nil, false, errRaced
		}
	case errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOSYS):
		// The file system cannot exchange: check, then rename. The window
		// left is between the check and the rename.
		cur, rerr := readTarget(path)
		if rerr != nil {
			return nil, false, rerr
		}
		if cur.exists != prev.exists || !bytes.Equal(cur.data, prev.data) {
			return nil, false, errRaced
		}
		err = os.Rename(tmp, path)
	}
	if err != nil {
		return nil, false, fmt.Errorf("replacing %s: %w", path, err)
	}
	if err := syncDir(dir); err != nil {
		return nil, false, err
	}
	return nil, false, nil
}

// errRaced means the target changed under us and must be read again.
var errRaced = errors.New("target changed while being written")

// sweepTemps removes temp files a crash left next to path.
func sweepTemps(path string) {
	matches, _ := filepath.Glob(filepath.Join(filepath.Dir(path), globEscape(tempPrefix(path))+"*"))
	for _, m := range matches {
		_ = os.Remove(m)
	}
}

func globEscape(s string) string {
	r := strings.NewReplacer(`*`, `\*`, `?`, `\?`, `[`, `\[`, `\`, `\\`)
	return r.Replace(s)
}

// setAside keeps a copy of a target that does not parse, next to it, as
// <name>.corrupt-<UTC time>, mode 0600, before it is replaced.
func setAside(path string, data []byte, now time.Time) (string, error) {
	base := path + ".corrupt-" + now.UTC().Format("20060102T150405Z")
	name := base
	for i := 1; ; i++ {
		f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if errors.Is(err, fs.ErrExist) && i < 100 {
			name = fmt.Sprintf("%s.%d", base, i)
			continue
		}
		if err != nil {
			return "", fmt.Errorf("setting aside corrupt %s: %w", path, err)
		}
		_, werr := f.Write(data)
		if werr == nil {
			werr = f.Sync()
		}
		if cerr := f.Close(); werr == nil {
			werr = cerr
		}
		if werr != nil {
			_ = os.Remove(name)
			return "", fmt.Errorf("setting aside corrupt %s: %w", path, werr)
		}
		return name, nil
	}
}

// remove deletes a target nodecreds created once nothing is left in it.
func remove(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing %s: %w", path, err)
	}
	return syncDir(filepath.Dir(path))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("opening folder %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("syncing folder %s: %w", dir, err)
	}
	return nil
}
