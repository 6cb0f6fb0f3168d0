// Package hostfs does every file operation nodecreds makes on a node path,
// anchored to a handle of the host root.
//
// Node paths are resolved as the node sees them (an absolute symlink target
// is taken under the root, ".." cannot climb above it), but a path string is
// never handed to the kernel on its own: folders are opened in the root
// (openat2 RESOLVE_IN_ROOT where the kernel has it, securejoin's checked walk
// where it does not), and files are then opened, created, renamed and
// removed relative to that folder handle, by a single name, without following
// a link and without blocking on a FIFO or device. A folder swapped for a
// symlink at any instant can therefore redirect nothing outside the root.
// OpenRegular alone takes a path string, for reads only. A file is
// replaced in one way only, Staged (atomic.go): a temp file in the same
// folder, written, fsynced, renamed or exchanged into place, the folder
// fsynced.
package hostfs

import (
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	securejoin "github.com/cyphar/filepath-securejoin"
	pathrs "github.com/cyphar/filepath-securejoin/pathrs-lite"
	"golang.org/x/sys/unix"
)

// MaxFileSize is the largest credentials or state file nodecreds reads. A
// config.json with 10,000 registries is about 1 MiB; 4 MiB leaves room while
// a merge of two such files stays inside the DaemonSet's memory limit
// (docs/benchmarks.md, "Memory: the largest inputs"; the number of entries
// is bounded too, by nodefile.MaxEntries).
const MaxFileSize = 4 << 20

var (
	// ErrNotRegular means a path that must be a regular file is something
	// else (a FIFO, device, socket, folder or symlink).
	ErrNotRegular = errors.New("not a regular file")
	// ErrTooLarge means a file is larger than MaxFileSize.
	ErrTooLarge = errors.New("file too large")
	// ErrHardLinked means a file has more than one name, so replacing it
	// would leave the old content (and owner) reachable under another name.
	ErrHardLinked = errors.New("file has other hard links")
)

// Root is the node's file system as mounted in this process.
type Root struct {
	path string
	fd   *os.File // O_PATH handle of path
}

// OpenRoot opens the host root.
func OpenRoot(root string) (*Root, error) {
	if root == "" {
		root = "/"
	}
	root = filepath.Clean(root)
	fd, err := os.OpenFile(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening host root %s: %w", root, err)
	}
	return &Root{path: root, fd: fd}, nil
}

// Close releases the root handle.
func (r *Root) Close() error { return r.fd.Close() }

// Join returns the host path where nodePath lives now, symlinks resolved
// under the root. It is a name for messages and watches only: by the time
// it is used, a link may point elsewhere, so nothing is opened through it.
func (r *Root) Join(nodePath string) (string, error) {
	p, err := securejoin.SecureJoin(r.path, nodePath)
	if err != nil {
		return "", fmt.Errorf("resolving %s under %s: %w", nodePath, r.path, err)
	}
	return p, nil
}

// rel returns a host path under the root relative to it ("" for the root).
func (r *Root) rel(hostPath string) string {
	if r.path == "/" {
		return strings.TrimPrefix(hostPath, "/")
	}
	return strings.TrimPrefix(strings.TrimPrefix(hostPath, r.path), "/")
}

// OpenDir opens the folder at nodePath. With create, missing folders are
// made with mode (each new one; existing ones are left as they are).
func (r *Root) OpenDir(nodePath string, create bool, mode fs.FileMode) (*Dir, error) {
	hostPath, err := r.Join(nodePath)
	if err != nil {
		return nil, err
	}
	return r.openRel(r.rel(hostPath), hostPath, create, mode)
}

// openRel opens the folder at rel (relative to the root; "" is the root
// itself) in the root; hostPath names it in messages.
func (r *Root) openRel(rel, hostPath string, create bool, mode fs.FileMode) (*Dir, error) {
	var (
		h   *os.File
		err error
	)
	switch {
	case rel == "":
		h, err = pathrs.Reopen(r.fd, unix.O_PATH|unix.O_DIRECTORY)
	case create:
		h, err = pathrs.MkdirAllHandle(r.fd, rel, mode)
	default:
		h, err = pathrs.OpenatInRoot(r.fd, rel)
	}
	if err != nil {
		return nil, fmt.Errorf("opening folder %s: %w", hostPath, err)
	}
	defer h.Close()
	d, err := pathrs.Reopen(h, unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return nil, fmt.Errorf("opening folder %s: %w", hostPath, err)
	}
	return &Dir{f: d, path: hostPath}, nil
}

// Folder is one folder on the way to another, as OpenDirChain saw it.
type Folder struct {
	NodePath string
	Info
}

// OpenDirChain is OpenDir, and it also describes every folder the result
// hangs from, the root first and the folder itself last. Each is opened
// relative to the one before it, by one name and without following a
// link, so the folders described are the ones the returned folder is
// reached through (a link swapped in meanwhile fails the walk).
func (r *Root) OpenDirChain(nodePath string, create bool, mode fs.FileMode) (*Dir, []Folder, error) {
	d, err := r.OpenDir(nodePath, create, mode)
	if err != nil {
		return nil, nil, err
	}
	d.Close() // created and resolved; walked again below, link-free
	hostPath, err := r.Join(nodePath)
	if err != nil {
		return nil, nil, err
	}
	cur, err := pathrs.Reopen(r.fd, unix.O_PATH|unix.O_DIRECTORY)
	if err != nil {
		return nil, nil, fmt.Errorf("opening host root %s: %w", r.path, err)
	}
	defer func() { cur.Close() }()
	var chain []Folder
	node := "/"
	describe := func() error {
		var st unix.Stat_t
		if err := unix.Fstat(int(cur.Fd()), &st); err != nil {
			return fmt.Errorf("stat %s: %w", node, err)
		}
		chain = append(chain, Folder{NodePath: node, Info: infoOf(&st)})
		return nil
	}
	if err := describe(); err != nil {
		return nil, nil, err
	}
	if rel := r.rel(hostPath); rel != "" {
		for _, name := range strings.Split(rel, "/") {
			fd, err := unix.Openat(int(cur.Fd()), name, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			node = path.Join(node, name)
			if err != nil {
				return nil, nil, fmt.Errorf("opening folder %s: %w", node, err)
			}
			cur.Close()
			cur = os.NewFile(uintptr(fd), filepath.Join(r.path, node))
			if err := describe(); err != nil {
				return nil, nil, err
			}
		}
	}
	f, err := pathrs.Reopen(cur, unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return nil, nil, fmt.Errorf("opening folder %s: %w", hostPath, err)
	}
	return &Dir{f: f, path: hostPath}, chain, nil
}

// OpenParent resolves nodePath (following a symlink at the end too, so a
// linked target is written through and the link kept) and opens the folder
// that holds the file it names. It returns that folder and the file's name.
func (r *Root) OpenParent(nodePath string, create bool, mode fs.FileMode) (*Dir, string, error) {
	hostPath, err := r.Join(nodePath)
	if err != nil {
		return nil, "", err
	}
	rel := r.rel(hostPath)
	if rel == "" {
		return nil, "", fmt.Errorf("%s names the host root, not a file", nodePath)
	}
	// The path is resolved already: open its folder in the root as it is.
	parent, name := path.Split(rel)
	d, err := r.openRel(strings.TrimSuffix(parent, "/"), filepath.Dir(hostPath), create, mode)
	if err != nil {
		return nil, "", err
	}
	return d, name, nil
}

// Dir is an open folder under the root. Every method takes a single name
// (no slash) and never follows a symlink at that name.
type Dir struct {
	f    *os.File
	path string // host path when opened, for messages
}

// Close releases the folder.
func (d *Dir) Close() error { return d.f.Close() }

// Name returns the host path of name in the folder, for messages.
func (d *Dir) Name(name string) string { return filepath.Join(d.path, name) }

func (d *Dir) fd() int { return int(d.f.Fd()) }

func checkName(name string) error {
	if name == "" || name == "." || name == ".." || strings.Contains(name, "/") {
		return fmt.Errorf("%q is not a single file name", name)
	}
	return nil
}

// Info is what nodecreds needs to know of a file.
type Info struct {
	Mode  fs.FileMode // permission bits (with setuid, setgid, sticky)
	UID   int
	GID   int
	Nlink uint64
	Size  int64
	// Dev and Ino name the file; Mtime and Ctime are its modification and
	// change times (ns since the epoch). A writer can set the first but
	// not the second: every write, chmod, chown or rename moves it to the
	// current time.
	Dev, Ino     uint64
	Mtime, Ctime int64
}

func infoOf(st *unix.Stat_t) Info {
	return Info{
		Mode:  fs.FileMode(st.Mode & 0o7777),
		UID:   int(st.Uid),
		GID:   int(st.Gid),
		Nlink: uint64(st.Nlink),
		Size:  st.Size,
		Dev:   uint64(st.Dev),
		Ino:   st.Ino,
		Mtime: st.Mtim.Nano(),
		Ctime: st.Ctim.Nano(),
	}
}

// Stamp is what a file holds and who may read it: the SHA-256 of its
// bytes, its mode and owner. Two stamps are equal only if the files are,
// whatever time stamps or inode either has.
type Stamp struct {
	Exists bool
	Sum    [sha256.Size]byte // zero when the file could not be read whole
	Mode   fs.FileMode
	UID    int
	GID    int
}

// StampOf returns the stamp of a file holding data with info's mode and
// owner.
func StampOf(data []byte, info Info) Stamp {
	return Stamp{Exists: true, Sum: sha256.Sum256(data), Mode: info.Mode, UID: info.UID, GID: info.GID}
}

// kind names a stat mode's file type for messages.
func kind(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFDIR:
		return "directory"
	case unix.S_IFLNK:
		return "symlink"
	case unix.S_IFIFO:
		return "named pipe (FIFO)"
	case unix.S_IFSOCK:
		return "socket"
	case unix.S_IFCHR, unix.S_IFBLK:
		return "device"
	}
	return "special file"
}

// Open opens a regular file for reading. It never blocks (a FIFO or device
// at name is refused, not opened for I/O, and so is a file of a kernel
// pseudo file system, whose reads may never return) and never follows a
// symlink at name. A missing file is fs.ErrNotExist.
func (d *Dir) Open(name string) (*os.File, Info, error) {
	return d.open(name, unix.O_RDONLY, 0)
}

// OpenLock opens (creating it if needed) a regular file for locking.
func (d *Dir) OpenLock(name string) (*os.File, error) {
	f, _, err := d.open(name, unix.O_RDWR|unix.O_CREAT, 0o600)
	return f, err
}

func (d *Dir) open(name string, flags int, perm uint32) (*os.File, Info, error) {
	if err := checkName(name); err != nil {
		return nil, Info{}, err
	}
	p := d.Name(name)
	fd, err := unix.Openat(d.fd(), name, flags|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, perm)
	if errors.Is(err, unix.ELOOP) {
		return nil, Info{}, fmt.Errorf("%s: %w (it is a symlink, not followed here)", p, ErrNotRegular)
	}
	if err != nil {
		return nil, Info{}, openError(p, err)
	}
	return regularFile(fd, p)
}

// openError says why name could not be opened: fs.ErrNotExist, or
// ErrNotRegular for a socket or FIFO (O_NONBLOCK opens give ENXIO there).
func openError(name string, err error) error {
	switch {
	case errors.Is(err, unix.ENOENT):
		return fmt.Errorf("opening %s: %w", name, fs.ErrNotExist)
	case errors.Is(err, unix.ENXIO):
		return fmt.Errorf("%s: %w (it is a socket or FIFO)", name, ErrNotRegular)
	}
	return fmt.Errorf("opening %s: %w", name, err)
}

// regularFile wraps an fd opened with O_NONBLOCK: anything but a regular
// file is refused (and closed); for a regular file O_NONBLOCK is cleared so
// reads block normally.
func regularFile(fd int, name string) (*os.File, Info, error) {
	f := os.NewFile(uintptr(fd), name)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		f.Close()
		return nil, Info{}, fmt.Errorf("stat %s: %w", name, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		f.Close()
		return nil, Info{}, fmt.Errorf("%s: %w (it is a %s)", name, ErrNotRegular, kind(st.Mode))
	}
	if fsName, err := pseudoFS(fd); err != nil || fsName != "" {
		f.Close()
		if err != nil {
			return nil, Info{}, fmt.Errorf("statfs %s: %w", name, err)
		}
		return nil, Info{}, fmt.Errorf("%s: %w (it is a file of %s, a kernel file system whose reads can wait for ever)", name, ErrNotRegular, fsName)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFL, 0); err != nil {
		f.Close()
		return nil, Info{}, fmt.Errorf("opening %s: %w", name, err)
	}
	return f, infoOf(&st), nil
}

// pseudoFileSystems are the kernel's own file systems: their "regular"
// files are views of kernel state, and a read of some of them waits for
// an event (tracefs' trace_pipe, debugfs' and procfs' message queues, a
// cgroup's event files) with no end in sight. No credentials file lives
// on one, so any file found there is refused before it is read.
var pseudoFileSystems = map[int64]string{
	unix.PROC_SUPER_MAGIC:     "procfs",
	unix.SYSFS_MAGIC:          "sysfs",
	unix.TRACEFS_MAGIC:        "tracefs",
	unix.DEBUGFS_MAGIC:        "debugfs",
	unix.SECURITYFS_MAGIC:     "securityfs",
	unix.CGROUP_SUPER_MAGIC:   "cgroup",
	unix.CGROUP2_SUPER_MAGIC:  "cgroup2",
	unix.BPF_FS_MAGIC:         "bpf",
	unix.PSTOREFS_MAGIC:       "pstore",
	unix.EFIVARFS_MAGIC:       "efivarfs",
	unix.SELINUX_MAGIC:        "selinuxfs",
	unix.SMACK_MAGIC:          "smackfs",
	unix.BINFMTFS_MAGIC:       "binfmt_misc",
	unix.DEVPTS_SUPER_MAGIC:   "devpts",
	unix.RDTGROUP_SUPER_MAGIC: "resctrl",
	unix.NSFS_MAGIC:           "nsfs",
	unix.PIPEFS_MAGIC:         "pipefs",
	unix.SOCKFS_MAGIC:         "sockfs",
	unix.ANON_INODE_FS_MAGIC:  "anon_inodefs",
	unix.AUTOFS_SUPER_MAGIC:   "autofs",
	unix.OPENPROM_SUPER_MAGIC: "openpromfs",
	configfsMagic:             "configfs",
	fusectlMagic:              "fusectl",
	mqueueMagic:               "mqueue",
	rpcPipefsMagic:            "rpc_pipefs",
}

// Magic numbers golang.org/x/sys does not name (linux/magic.h, fs/*).
const (
	configfsMagic  = 0x62656570
	fusectlMagic   = 0x65735543
	mqueueMagic    = 0x19800202
	rpcPipefsMagic = 0x67596969
)

// pseudoFS names the kernel pseudo file system the open file fd is on, or
// "" for any other.
func pseudoFS(fd int) (string, error) {
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(fd, &sfs); err != nil {
		return "", err
	}
	return pseudoFileSystems[int64(sfs.Type)], nil
}

// ReadFile reads a regular file of at most limit bytes. A missing file is
// fs.ErrNotExist.
func (d *Dir) ReadFile(name string, limit int64) ([]byte, Info, error) {
	f, info, err := d.Open(name)
	if err != nil {
		return nil, Info{}, err
	}
	defer f.Close()
	data, err := readAll(f, info.Size, limit)
	if err != nil {
		return nil, Info{}, err
	}
	return data, info, nil
}

func readAll(f *os.File, size, limit int64) ([]byte, error) {
	if size > limit {
		return nil, fmt.Errorf("%s is %d bytes: %w (the limit is %d MiB)", f.Name(), size, ErrTooLarge, limit>>20)
	}
	// Sized by the stat, so a file of several MiB is read into one buffer
	// of its size rather than grown by doubling (twice its size at the
	// end, and more than that in garbage on the way).
	data := make([]byte, 0, min(size, limit)+1)
	for int64(len(data)) <= limit {
		if len(data) == cap(data) {
			data = slices.Grow(data, 4096)
		}
		n, err := f.Read(data[len(data):cap(data)])
		data = data[:len(data)+n]
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", f.Name(), err)
		}
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%s: %w (the limit is %d MiB)", f.Name(), ErrTooLarge, limit>>20)
	}
	return data, nil
}

// CreateTemp creates a new file named prefix + random digits with mode perm,
// never over anything that exists.
func (d *Dir) CreateTemp(prefix string, perm fs.FileMode) (*os.File, string, error) {
	var buf [8]byte
	for range 100 {
		if _, err := io.ReadFull(rand.Reader, buf[:]); err != nil {
			return nil, "", fmt.Errorf("random name: %w", err)
		}
		name := fmt.Sprintf("%s%x", prefix, buf)
		f, err := d.CreateExcl(name, perm)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		return f, name, err
	}
	return nil, "", fmt.Errorf("creating a temp file in %s: too many collisions", d.path)
}

// SweepTemps removes files a crash left in d named prefix and the 16 hex
// digits CreateTemp adds, except those named so after held (when not
// empty), whose names it returns. A name that merely starts alike (an
// admin's ".config.json.nodecreds-backup") is not nodecreds' and is left.
func (d *Dir) SweepTemps(prefix, held string) []string {
	names, err := d.Names()
	if err != nil {
		return nil
	}
	var found []string
	for _, n := range names {
		switch {
		case held != "" && isTempName(n, held):
			found = append(found, n)
		case isTempName(n, prefix):
			_ = d.Remove(n)
		}
	}
	return found
}

// isTempName reports whether n is prefix and the 16 lowercase hex digits
// CreateTemp adds: the names nodecreds' temp and held files have had from
// the start.
func isTempName(n, prefix string) bool {
	rest, ok := strings.CutPrefix(n, prefix)
	if !ok || len(rest) != 16 {
		return false
	}
	for _, c := range rest {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// CreateExcl creates name, which must not exist, with mode perm.
func (d *Dir) CreateExcl(name string, perm fs.FileMode) (*os.File, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	fd, err := unix.Openat(d.fd(), name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, uint32(perm.Perm()))
	if errors.Is(err, unix.EEXIST) {
		return nil, fmt.Errorf("creating %s: %w", d.Name(name), fs.ErrExist)
	}
	if err != nil {
		return nil, fmt.Errorf("creating %s: %w", d.Name(name), err)
	}
	f := os.NewFile(uintptr(fd), d.Name(name))
	// The umask may have narrowed perm; set exactly what was asked.
	if err := f.Chmod(perm.Perm()); err != nil {
		f.Close()
		_ = d.Remove(name)
		return nil, fmt.Errorf("setting mode of %s: %w", d.Name(name), err)
	}
	return f, nil
}

// Exchange swaps names a and b atomically (renameat2 RENAME_EXCHANGE).
func (d *Dir) Exchange(a, b string) error {
	return d.renameat2(a, b, unix.RENAME_EXCHANGE)
}

// RenameNoReplace renames a to b unless b exists (fs.ErrExist). Where the
// file system lacks RENAME_NOREPLACE it links b to a's file (link(2)
// never replaces either) and then removes the name a: readers see b
// appear whole just the same, but a crash between the two leaves the file
// under both names, so a must be a name the caller sweeps.
func (d *Dir) RenameNoReplace(a, b string) error {
	err := d.renameat2(a, b, unix.RENAME_NOREPLACE)
	if errors.Is(err, ErrNoExchange) {
		if err := d.Link(a, b); err != nil {
			return err
		}
		return d.Remove(a)
	}
	if errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("renaming to %s: %w", d.Name(b), fs.ErrExist)
	}
	return err
}

// Link gives the file at a (a symlink itself, never followed) the second
// name b, unless b exists (fs.ErrExist).
func (d *Dir) Link(a, b string) error {
	if err := checkName(a); err != nil {
		return err
	}
	if err := checkName(b); err != nil {
		return err
	}
	err := unix.Linkat(d.fd(), a, d.fd(), b, 0)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.EEXIST):
		return fmt.Errorf("linking %s to %s: %w", d.Name(a), d.Name(b), fs.ErrExist)
	case errors.Is(err, unix.ENOENT):
		return fmt.Errorf("linking %s to %s: %w", d.Name(a), d.Name(b), fs.ErrNotExist)
	}
	return fmt.Errorf("linking %s to %s: %w", d.Name(a), d.Name(b), err)
}

// Rename renames a to b, replacing b.
func (d *Dir) Rename(a, b string) error { return d.renameat2(a, b, 0) }

// ErrNoExchange means the file system cannot swap or create-exclusive by
// rename (renameat2 flags unsupported).
var ErrNoExchange = errors.New("renameat2 flags not supported by this file system")

func (d *Dir) renameat2(a, b string, flags uint) error {
	if err := checkName(a); err != nil {
		return err
	}
	if err := checkName(b); err != nil {
		return err
	}
	if flags != 0 && RenameFlagsOff {
		return fmt.Errorf("renaming %s to %s: %w (built with -tags noexchange)", d.Name(a), d.Name(b), ErrNoExchange)
	}
	err := unix.Renameat2(d.fd(), a, d.fd(), b, flags)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.ENOENT):
		return fmt.Errorf("renaming %s to %s: %w", d.Name(a), d.Name(b), fs.ErrNotExist)
	case flags != 0 && (errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS)):
		return fmt.Errorf("renaming %s to %s: %w", d.Name(a), d.Name(b), ErrNoExchange)
	}
	return fmt.Errorf("renaming %s to %s: %w", d.Name(a), d.Name(b), err)
}

// Remove deletes the file (never a folder) at name; nothing there is fine.
func (d *Dir) Remove(name string) error {
	if err := checkName(name); err != nil {
		return err
	}
	err := unix.Unlinkat(d.fd(), name, 0)
	if err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("removing %s: %w", d.Name(name), err)
	}
	return nil
}

// Exists reports whether name in the folder is a regular file (never
// following a link at name).
func (d *Dir) Exists(name string) bool {
	if checkName(name) != nil {
		return false
	}
	var st unix.Stat_t
	err := unix.Fstatat(d.fd(), name, &st, unix.AT_SYMLINK_NOFOLLOW)
	return err == nil && st.Mode&unix.S_IFMT == unix.S_IFREG
}

// Names lists the folder's entries.
func (d *Dir) Names() ([]string, error) {
	// A fresh handle: reading the directory moves its offset.
	f, err := pathrs.Reopen(d.f, unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", d.path, err)
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", d.path, err)
	}
	return names, nil
}

// Sync flushes the folder, so renames in it survive a crash.
func (d *Dir) Sync() error {
	if err := d.f.Sync(); err != nil {
		return fmt.Errorf("syncing folder %s: %w", d.path, err)
	}
	return nil
}

// Stat describes the folder itself.
func (d *Dir) Stat() (Info, error) {
	var st unix.Stat_t
	if err := unix.Fstat(d.fd(), &st); err != nil {
		return Info{}, fmt.Errorf("stat %s: %w", d.path, err)
	}
	return infoOf(&st), nil
}

// Chmod sets the folder's permission bits.
func (d *Dir) Chmod(mode fs.FileMode) error {
	if err := unix.Fchmod(d.fd(), uint32(mode.Perm())); err != nil {
		return fmt.Errorf("setting mode of %s: %w", d.path, err)
	}
	return nil
}

// OpenRegular opens a file by path, following links as the kernel finds
// them, but refusing, without blocking, anything that is not a regular
// file. It is for reading only: a mounted Secret, and the drift watch's
// hash of a host path already resolved under the root (a link re-pointed
// in between can make that a file outside the root, which is then hashed,
// never written). A missing file is fs.ErrNotExist.
func OpenRegular(name string) (*os.File, Info, error) {
	fd, err := unix.Open(name, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, Info{}, openError(name, err)
	}
	return regularFile(fd, name)
}

// Stat describes an open file.
func Stat(f *os.File) (Info, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return Info{}, fmt.Errorf("stat %s: %w", f.Name(), err)
	}
	return infoOf(&st), nil
}

// Mkdir creates the folder name with mode; one there already (of any
// kind, a link included) is fs.ErrExist, so the caller knows the folder
// is its own.
func (d *Dir) Mkdir(name string, mode fs.FileMode) error {
	if err := checkName(name); err != nil {
		return err
	}
	err := unix.Mkdirat(d.fd(), name, uint32(mode.Perm()))
	if errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("creating folder %s: %w", d.Name(name), fs.ErrExist)
	}
	if err != nil {
		return fmt.Errorf("creating folder %s: %w", d.Name(name), err)
	}
	return nil
}

// RemoveDir removes the folder name if it is empty (an entry in it is an
// error, and the folder stays); nothing there is fine.
func (d *Dir) RemoveDir(name string) error {
	if err := checkName(name); err != nil {
		return err
	}
	err := unix.Unlinkat(d.fd(), name, unix.AT_REMOVEDIR)
	if err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("removing folder %s: %w", d.Name(name), err)
	}
	return nil
}
