// Package filewatch tells when files or folders may have changed: by
// inotify (fsnotify) when the node has an instance and watches to spare,
// and by polling their metadata otherwise. inotify instances are a per-user
// limit (fs.inotify.max_user_instances, 128 by default) shared with every
// root process on the node — containerd, the kubelet, log shippers — so an
// agent that cannot get one must keep working, not crash-loop.
package filewatch

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"
	"golang.org/x/sys/unix"
)

// DefaultPoll is how often paths are compared when polling: drift is then
// corrected within about a second, as with inotify.
const DefaultPoll = time.Second

// Watch watches folders (non-recursively) by inotify, or polls paths.
type Watch struct {
	fs *fsnotify.Watcher // nil when polling

	// Events and Errors are fsnotify's; nil channels when polling.
	Events <-chan fsnotify.Event
	Errors <-chan error

	period time.Duration
	ticker *time.Ticker
	tick   <-chan time.Time
	// degraded is why it polls, "" while inotify works; read by other
	// goroutines (the agent reports it).
	degraded atomic.Pointer[string]
	last     string
}

// New returns a Watch: inotify if an instance can be had, else polling
// every period.
func New(period time.Duration) *Watch {
	w := &Watch{period: period}
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		w.poll(fmt.Errorf("no inotify instance: %w", err))
		return w
	}
	w.fs, w.Events, w.Errors = fw, fw.Events, fw.Errors
	return w
}

// NewPolling returns a Watch that polls every period from the start, for
// why (a node known to lack inotify; tests of the polling path).
func NewPolling(period time.Duration, why error) *Watch {
	w := &Watch{period: period}
	w.poll(why)
	return w
}

// Add watches a folder. A folder that does not exist is reported as such
// (fs.ErrNotExist) and may be added later; running out of inotify watches
// switches to polling, which needs no per-folder set-up.
func (w *Watch) Add(dir string) error {
	if w.fs == nil {
		return nil
	}
	err := w.fs.Add(dir)
	if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EMFILE) {
		w.poll(fmt.Errorf("no inotify watch for %s: %w", dir, err))
		return nil
	}
	return err
}

// Watching reports whether dir is watched by inotify (always true when
// polling: every path is compared on each tick).
func (w *Watch) Watching(dir string) bool {
	if w.fs == nil {
		return true
	}
	for _, d := range w.fs.WatchList() {
		if d == dir {
			return true
		}
	}
	return false
}

// WatchList is the folders watched by inotify (none when polling).
func (w *Watch) WatchList() []string {
	if w.fs == nil {
		return nil
	}
	return w.fs.WatchList()
}

// Remove stops watching a folder (nothing when polling; a folder gone
// took its watch with it).
func (w *Watch) Remove(dir string) {
	if w.fs != nil {
		_ = w.fs.Remove(dir) // a watch already gone is what was wanted
	}
}

func (w *Watch) poll(why error) {
	if w.fs != nil {
		_ = w.fs.Close() // falling back to polling: nothing to do about a failed close
		w.fs, w.Events, w.Errors = nil, nil, nil
	}
	if w.ticker == nil {
		w.ticker = time.NewTicker(w.period)
		w.tick = w.ticker.C
	}
	msg := why.Error()
	w.degraded.Store(&msg)
}

// Polling says why the watch polls, or "" while inotify works.
func (w *Watch) Polling() string {
	why := w.degraded.Load()
	if why == nil {
		return ""
	}
	return fmt.Sprintf("inotify unavailable (%s); polling every %s", *why, w.period)
}

// Tick fires every period while polling (nil channel otherwise).
func (w *Watch) Tick() <-chan time.Time { return w.tick }

// Changed compares paths' metadata (inode, size, times, link targets) with
// the previous call, and reports whether any differs. The first call only
// records.
func (w *Watch) Changed(paths []string) bool {
	now := Fingerprint(paths)
	changed := w.last != "" && now != w.last
	w.last = now
	return changed
}

// Close releases the inotify instance.
func (w *Watch) Close() {
	if w.fs != nil {
		_ = w.fs.Close() // at shutdown: the inotify instance goes with the process anyway
	}
	if w.ticker != nil {
		w.ticker.Stop()
	}
}

// Fingerprint describes paths by what any write, rename, chmod, chown or
// link change alters: inode, size, modification and change times, mode,
// owner; a link also by its target. It reads metadata only, never
// contents (see Stamps for those).
func Fingerprint(paths []string) string {
	var b strings.Builder
	for _, p := range paths {
		b.WriteString(p)
		fi, err := os.Lstat(p)
		if err != nil {
			b.WriteString(" -\n")
			continue
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			fmt.Fprintf(&b, " %d %d %d.%d %d.%d %o %d:%d", st.Ino, st.Size, st.Mtim.Sec, st.Mtim.Nsec, st.Ctim.Sec, st.Ctim.Nsec, st.Mode, st.Uid, st.Gid)
		}
		if fi.Mode()&os.ModeSymlink != 0 {
			target, _ := os.Readlink(p)
			b.WriteString(" -> " + target)
		}
		b.WriteByte('\n')
	}
	return b.String()
}
