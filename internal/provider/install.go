package provider

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	securejoin "github.com/cyphar/filepath-securejoin"
	"github.com/google/renameio/v2"
)

// Installed says what Install did.
type Installed struct {
	Path    string // node path of the plugin binary
	Changed bool   // false when the same binary was already there
}

// Install keeps a copy of the running binary at dir/name on the node (dir is
// a node path under hostRoot), so the kubelet can exec it as a credential
// provider. The copy is streamed (the binary is larger than the agent's
// memory budget allows to hold) and replaces the old one with a rename: a
// kubelet exec never sees a half-written file. An identical file is left
// alone.
func Install(hostRoot, dir, name string) (Installed, error) {
	self, err := os.Executable()
	if err != nil {
		return Installed{}, fmt.Errorf("finding the running binary: %w", err)
	}
	return install(self, hostRoot, dir, name)
}

func install(src, hostRoot, dir, name string) (Installed, error) {
	nodePath := filepath.Join(dir, name)
	res := Installed{Path: nodePath}
	hostDir, err := securejoin.SecureJoin(hostRoot, dir)
	if err != nil {
		return res, fmt.Errorf("resolving %s under %s: %w", dir, hostRoot, err)
	}
	if err := os.MkdirAll(hostDir, 0o755); err != nil {
		return res, fmt.Errorf("creating the plugin folder %s: %w", dir, err)
	}
	// Resolve again: the folder may be a symlink only now that it exists.
	hostPath, err := securejoin.SecureJoin(hostRoot, nodePath)
	if err != nil {
		return res, fmt.Errorf("resolving %s under %s: %w", nodePath, hostRoot, err)
	}
	want, err := digest(src)
	if err != nil {
		return res, fmt.Errorf("reading the running binary: %w", err)
	}
	have, err := digest(hostPath)
	if err == nil && bytes.Equal(have, want) {
		if err := os.Chmod(hostPath, 0o755); err != nil {
			return res, fmt.Errorf("making %s executable: %w", nodePath, err)
		}
		return res, nil
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return res, fmt.Errorf("reading the installed plugin %s: %w", nodePath, err)
	}
	if err := copyFile(src, hostPath); err != nil {
		return res, fmt.Errorf("installing the plugin as %s: %w", nodePath, err)
	}
	res.Changed = true
	return res, nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := renameio.NewPendingFile(dst, renameio.WithStaticPermissions(0o755))
	if err != nil {
		return err
	}
	defer out.Cleanup()
	if _, err := io.Copy(out, in); err != nil {
		return err
	}
	return out.CloseAtomicallyReplace()
}

func digest(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return nil, err
	}
	return h.Sum(nil), nil
}
