// Package nodelock keeps one nodecreds agent at a time on a node's files: a
// lock on a file in the node's state folder, taken at start and held for
// the agent's whole life, that records who holds it.
//
// Two agents can meet on one node: a rollout's new Pod starts while the old
// one terminates (the DaemonSet controller does not wait for it), a node
// relabelled from one pool into another gets the new pool's agent before
// the old one has stopped, and a misconfiguration can make two pools select
// one node. The per-sync lock of the node files keeps each write whole, but
// two agents of different pools taking turns would each rewrite the files
// to their own Secrets for ever. With this lock the second agent waits, and
// can say who it waits for.
package nodelock

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nodecreds/nodecreds/internal/hostfs"
)

// FileName is the lock file's name in the state folder.
const FileName = "agent.lock"

// maxRecord bounds what is read of a holder record.
const maxRecord = 4096

// DefaultPoll is how often a held lock is tried again.
const DefaultPoll = 250 * time.Millisecond

// Holder says which agent holds the lock. It holds no secret.
type Holder struct {
	// Pool is the agent's pool (sync --pool); "" for the default DaemonSet.
	Pool string `json:"pool"`
	// Pod is the agent's Pod (or host) name.
	Pod string `json:"pod"`
	// Since is when it took the lock.
	Since time.Time `json:"since"`
}

// Wait is what a waiting agent knows, told on each try that finds the lock
// held.
type Wait struct {
	Holder Holder
	// Known is false when the holder's record could not be read (it is
	// being written, or the holder wrote none).
	Known bool
	// Started is when this agent began to wait.
	Started time.Time
}

// OtherPool reports whether the holder is known to be of another pool
// than self: two pools select this node.
func (w Wait) OtherPool(self string) bool { return w.Known && w.Holder.Pool != self }

// Options configures Acquire.
type Options struct {
	HostRoot string
	StateDir string // node path of the state folder
	Self     Holder // recorded once the lock is taken (Since is set then)
	// Poll is how often a held lock is tried again; DefaultPoll when zero.
	Poll time.Duration
	// OnWait is told, on each try that finds the lock held, who holds it.
	OnWait func(Wait)
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// Lock is the held agent lock. The kernel releases it when the process
// ends, however it ends.
type Lock struct {
	f *os.File
}

// Acquire takes the node's agent lock, waiting while another agent holds
// it, until ctx ends. The lock file is opened in the host root without
// following links, like every node file.
func Acquire(ctx context.Context, o Options) (*Lock, error) {
	now := o.Now
	if now == nil {
		now = time.Now
	}
	poll := o.Poll
	if poll <= 0 {
		poll = DefaultPoll
	}
	f, err := open(o.HostRoot, o.StateDir)
	if err != nil {
		return nil, err
	}
	started := now()
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			self := o.Self
			self.Since = now().UTC()
			if err := record(f, self); err != nil {
				f.Close() // closing releases the lock
				return nil, err
			}
			return &Lock{f: f}, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("locking %s: %w", f.Name(), err)
		}
		if o.OnWait != nil {
			h, known := readRecord(f)
			o.OnWait(Wait{Holder: h, Known: known, Started: started})
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("waiting for the agent lock %s: %w", f.Name(), ctx.Err())
		case <-time.After(poll):
		}
	}
}

// Release clears the holder record and releases the lock.
func (l *Lock) Release() error {
	// A record left behind would only be read while another agent holds
	// the lock, and it rewrites it; clearing it keeps the file honest.
	truncErr := l.f.Truncate(0)
	unlockErr := unix.Flock(int(l.f.Fd()), unix.LOCK_UN)
	closeErr := l.f.Close()
	if err := errors.Join(truncErr, unlockErr, closeErr); err != nil {
		return fmt.Errorf("releasing the agent lock: %w", err)
	}
	return nil
}

// ReadHolder reads the current holder record of the lock in stateDir, for
// tools and tests; known is false when none can be read.
func ReadHolder(hostRoot, stateDir string) (h Holder, known bool, err error) {
	f, err := open(hostRoot, stateDir)
	if err != nil {
		return Holder{}, false, err
	}
	defer f.Close()
	h, known = readRecord(f)
	return h, known, nil
}

// open opens (creating it 0600, and the state folder 0700, if needed) the
// lock file.
func open(hostRoot, stateDir string) (*os.File, error) {
	root, err := hostfs.OpenRoot(hostRoot)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	d, err := root.OpenDir(stateDir, true, 0o700)
	if err != nil {
		return nil, fmt.Errorf("agent lock: state folder: %w", err)
	}
	defer d.Close()
	f, err := d.OpenLock(FileName)
	if err != nil {
		return nil, fmt.Errorf("agent lock: %w", err)
	}
	return f, nil
}

// record writes the holder record into the locked file.
func record(f *os.File, h Holder) error {
	b, err := json.Marshal(h)
	if err != nil {
		return err
	}
	if err := f.Truncate(0); err != nil {
		return fmt.Errorf("recording the agent lock's holder in %s: %w", f.Name(), err)
	}
	if _, err := f.WriteAt(append(b, '\n'), 0); err != nil {
		return fmt.Errorf("recording the agent lock's holder in %s: %w", f.Name(), err)
	}
	return nil
}

// readRecord reads the holder record; false when there is none or it is
// being written.
func readRecord(f *os.File) (Holder, bool) {
	buf := make([]byte, maxRecord)
	n, err := f.ReadAt(buf, 0)
	if n == 0 || n == len(buf) || err != nil && !errors.Is(err, io.EOF) {
		return Holder{}, false
	}
	var h Holder
	if json.Unmarshal(buf[:n], &h) != nil {
		return Holder{}, false
	}
	return h, true
}
