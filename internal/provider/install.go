package provider

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/nodecreds/nodecreds/internal/hostfs"
)

// Installed says what Install did.
type Installed struct {
	Path    string // node path of the plugin binary
	Changed bool   // false when the same binary and links were already there
}

// Install keeps a copy of the running binary at dir/name on the node (dir is
// a node path under hostRoot), so the kubelet can exec it as a credential
// provider. The copy is streamed (the binary is larger than the agent's
// memory budget allows to hold) and replaces the old one with a rename: a
// kubelet exec never sees a half-written file. An identical file is left
// alone.
//
// Each of links becomes a relative symlink dir/link -> name beside it: the
// kubelet names a provider by its file in its bin dir and names must be
// unique, so a second mode of the same binary (the service-account-token
// mode, nodecreds-sa) needs a second name.
func Install(hostRoot, dir, name string, links ...string) (Installed, error) {
	self, err := os.Executable()
	if err != nil {
		return Installed{}, fmt.Errorf("finding the running binary: %w", err)
	}
	return install(self, hostRoot, dir, name, links...)
}

func install(src, hostRoot, dir, name string, links ...string) (Installed, error) {
	nodePath := filepath.Join(dir, name)
	res := Installed{Path: nodePath}
	root, err := hostfs.OpenRoot(hostRoot)
	if err != nil {
		return res, err
	}
	defer root.Close()
	// Every step below is relative to this folder handle, opened in the
	// root: a folder swapped for a link cannot redirect the binary.
	d, chain, err := root.OpenDirChain(dir, true, 0o755)
	if err != nil {
		return res, fmt.Errorf("creating the plugin folder %s: %w", dir, err)
	}
	defer d.Close()
	if err := onlyRootCanWrite(chain); err != nil {
		return res, fmt.Errorf("installing the plugin in %s: %w", dir, err)
	}
	in, err := os.Open(src)
	if err != nil {
		return res, fmt.Errorf("reading the running binary: %w", err)
	}
	defer in.Close()
	want, err := sha256Of(in)
	if err != nil {
		return res, fmt.Errorf("reading the running binary: %w", err)
	}
	cur, _, err := d.Open(name)
	switch {
	case err == nil:
		have, derr := sha256Of(cur)
		if derr == nil && bytes.Equal(have, want) {
			derr = cur.Chmod(0o755)
			cur.Close()
			if derr != nil {
				return res, fmt.Errorf("making %s executable: %w", nodePath, derr)
			}
			return linkAll(d, dir, name, links, res)
		}
		cur.Close()
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, hostfs.ErrNotRegular):
		// Nothing there, or a link or FIFO: replaced by the rename below
		// (renaming over a name never follows it).
	default:
		return res, fmt.Errorf("reading the installed plugin %s: %w", nodePath, err)
	}
	if _, err := in.Seek(0, io.SeekStart); err != nil {
		return res, fmt.Errorf("reading the running binary: %w", err)
	}
	if err := copyInto(d, name, in); err != nil {
		return res, fmt.Errorf("installing the plugin as %s: %w", nodePath, err)
	}
	res.Changed = true
	return linkAll(d, dir, name, links, res)
}

// linkAll makes each link in d a symlink to name, after the binary is in
// place (a kubelet that starts in between finds a link that works).
func linkAll(d *hostfs.Dir, dir, name string, links []string, res Installed) (Installed, error) {
	for _, l := range links {
		changed, err := ensureLink(d, l, name)
		if err != nil {
			return res, fmt.Errorf("linking the plugin as %s: %w", filepath.Join(dir, l), err)
		}
		res.Changed = res.Changed || changed
	}
	return res, nil
}

// ensureLink makes name in d a symlink to target (relative, so it holds
// wherever the node's folder is mounted), replacing a file, a FIFO or a
// link to elsewhere in one rename; a link that is already right is left
// alone. A folder there stays (the rename fails: it is not ours to
// remove).
func ensureLink(d *hostfs.Dir, name, target string) (bool, error) {
	have, err := d.Readlink(name)
	switch {
	case err == nil && have == target:
		return false, nil
	case err == nil, errors.Is(err, fs.ErrNotExist), errors.Is(err, hostfs.ErrNotLink):
	default:
		return false, err
	}
	return true, d.WriteSymlink(name, target)
}

// copyInto streams in to a temp file in d and renames it over name
// (hostfs.WriteFile), so a kubelet exec never sees a half-written file.
func copyInto(d *hostfs.Dir, name string, in io.Reader) error {
	return d.WriteFile(name, 0o755, func(out *os.File) error {
		_, err := io.Copy(out, in)
		return err
	})
}

// ErrUntrustedFolder means someone other than root could replace the
// plugin the kubelet runs as root.
var ErrUntrustedFolder = errors.New("the kubelet runs the plugin as root, so only root may be able to write where it lies")

// onlyRootCanWrite refuses the plugin folder, or any folder above it up to
// the host root, when another user can write in it: they could replace the
// plugin (or the folder). A sticky folder above (/tmp's 1777) lets nobody
// rename what is not theirs, so it is no way in; the plugin folder itself
// must be closed. The agent's own user stands for root where it is not
// root (tests).
func onlyRootCanWrite(chain []hostfs.Folder) error {
	self := os.Geteuid()
	for i, f := range chain {
		last := i == len(chain)-1
		switch {
		case f.UID != 0 && f.UID != self:
			return fmt.Errorf("%w: %s is owned by uid %d, who could replace it; fix: chown root %s", ErrUntrustedFolder, f.NodePath, f.UID, f.NodePath)
		case f.Mode&0o022 != 0 && (last || f.Mode&os.FileMode(0o1000) == 0):
			return fmt.Errorf("%w: %s is writable by group or others (mode %04o); fix: chmod go-w %s", ErrUntrustedFolder, f.NodePath, uint32(f.Mode), f.NodePath)
		}
	}
	return nil
}

// sha256Of is the SHA-256 of what r holds, to tell an identical binary.
func sha256Of(r io.Reader) ([]byte, error) {
	h := sha256.New()
	if _, err := io.Copy(h, r); err != nil {
		return nil, err
	}
	return h.Sum(nil), nil
}
