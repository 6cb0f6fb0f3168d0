package filewatch

import (
	"crypto/sha256"
	"errors"
	"io"
	"io/fs"
	"time"

	"github.com/nodecreds/nodecreds/internal/hostfs"
)

// SettleTime is how long after a file's change time a read of it must
// start to stand for every later state of the file with the same metadata.
// The kernel stamps changes from a clock that ticks at most every jiffy
// (10 ms at HZ=100): a change within one tick of the read could leave the
// change time as it was, but any change after SettleTime moves it, and no
// writer can set it back (short of setting the node's clock).
const SettleTime = 100 * time.Millisecond

// Stamps tells what files hold and who may read them (hostfs.Stamp). It
// reads a file's bytes again unless its metadata (inode, size, times,
// mode, owner, links) is exactly as at a read that started SettleTime or
// more after the file's last change, so a same-size edit with its time
// stamps restored is never missed, and an unchanged file costs one stat.
// It is not safe for concurrent use.
type Stamps struct {
	now   func() time.Time
	known map[string]stamped
}

type stamped struct {
	info  hostfs.Info
	stamp hostfs.Stamp
}

// NewStamps returns an empty Stamps.
func NewStamps() *Stamps {
	return &Stamps{now: time.Now, known: map[string]stamped{}}
}

// Of returns the stamp of the file at path, following links. A missing
// file has Exists false; anything that is not a regular file of at most
// hostfs.MaxFileSize, or cannot be read, has Exists true and a zero Sum,
// which equals no file's stamp. It never blocks on a FIFO or device.
func (s *Stamps) Of(path string) hostfs.Stamp {
	start := s.now()
	f, info, err := hostfs.OpenRegular(path)
	if err != nil {
		delete(s.known, path)
		return hostfs.Stamp{Exists: !errors.Is(err, fs.ErrNotExist)}
	}
	defer f.Close()
	if k, ok := s.known[path]; ok && k.info == info {
		return k.stamp
	}
	delete(s.known, path)
	st := hostfs.Stamp{Exists: true, Mode: info.Mode, UID: info.UID, GID: info.GID}
	// Hashed as it is read: a target can be 4 MiB, and the agent's memory
	// is for merging.
	h := sha256.New()
	n, err := io.Copy(h, io.LimitReader(f, hostfs.MaxFileSize+1))
	if err != nil || n > hostfs.MaxFileSize {
		return st
	}
	h.Sum(st.Sum[:0])
	after, err := hostfs.Stat(f)
	if err == nil && after == info && start.UnixNano()-info.Ctime >= SettleTime.Nanoseconds() {
		s.known[path] = stamped{info: info, stamp: st}
	}
	return st
}
