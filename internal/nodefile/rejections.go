package nodefile

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/nodecreds/nodecreds/internal/dockercfg"
	"github.com/nodecreds/nodecreds/internal/hostfs"
)

// withStateDir runs f with the host root and the state folder, holding
// the engine and the state lock.
func (e *Engine) withStateDir(ctx context.Context, f func(root *hostfs.Root, sd *hostfs.Dir) error) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	root, sd, done, err := e.open()
	if err != nil {
		return err
	}
	defer done()
	unlock, err := lock(ctx, sd)
	if err != nil {
		return err
	}
	defer unlock()
	return f(root, sd)
}

// rejectionsFileName keeps, next to the state file, the credentials a
// registry rejected (verifier), so that a restarted agent or a `sync
// --once` still holds them back until a login with them succeeds: an
// unreachable registry must not let them in because the process that saw
// the rejection is gone. It holds a SHA-256 digest per credential, never a
// value (the state folder is root's alone, 0700, and holds displaced
// entries as they are anyway).
const rejectionsFileName = "rejected.json"

// Rejection is one rejected credential: the registry host it was rejected
// by, the digest of username and password, and the answer.
type Rejection struct {
	Host   string `json:"host"`
	Digest string `json:"digest"`
	Status int    `json:"status"`
	Reason string `json:"reason,omitempty"`
}

type rejectionsFile struct {
	Version  int         `json:"version"`
	Rejected []Rejection `json:"rejected"`
}

// maxRejections bounds the file: as many entries as all sources together
// may hold (the engine refuses more), each rejected at most once.
const maxRejections = dockercfg.MaxEntries

// LoadRejections reads the rejected credentials recorded (none when the
// file is missing).
func (e *Engine) LoadRejections(ctx context.Context) ([]Rejection, error) {
	var out []Rejection
	err := e.withStateDir(ctx, func(_ *hostfs.Root, d *hostfs.Dir) error {
		data, err := readOwnFile(d, rejectionsFileName, "the rejected credentials")
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		var f rejectionsFile
		if err := json.Unmarshal(data, &f); err != nil || !readsStateVersion(f.Version) {
			// Only ever a cache of verdicts: a file that cannot be read
			// is dropped, and the credentials are logged in with again.
			return d.Remove(rejectionsFileName)
		}
		out = f.Rejected
		return nil
	})
	return out, err
}

// SaveRejections records the rejected credentials (removing the file when
// there are none), atomically, 0600.
func (e *Engine) SaveRejections(ctx context.Context, rs []Rejection) error {
	if len(rs) > maxRejections {
		rs = rs[:maxRejections]
	}
	return e.withStateDir(ctx, func(_ *hostfs.Root, d *hostfs.Dir) error {
		if len(rs) == 0 {
			return d.Remove(rejectionsFileName)
		}
		data, err := json.Marshal(rejectionsFile{Version: stateVersion, Rejected: rs})
		if err != nil {
			return err
		}
		if err := d.WriteFile(rejectionsFileName, 0o600, func(f *os.File) error {
			_, err := f.Write(append(data, '\n'))
			return err
		}); err != nil {
			return fmt.Errorf("writing %s: %w", d.Name(rejectionsFileName), err)
		}
		return nil
	})
}
