package source

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/sirupsen/logrus"

	"github.com/nodecreds/nodecreds/internal/dockercfg"
	"github.com/nodecreds/nodecreds/internal/filewatch"
	"github.com/nodecreds/nodecreds/internal/hostfs"
)

// Dir reads Secrets mounted as folders. The kubelet updates a mounted
// Secret by writing a new timestamped folder and swapping the ..data
// symlink; every step of that shows up as an event on the folder itself, so
// a non-recursive watch on each folder sees the swap.
type Dir struct {
	dirs     []string
	log      *logrus.Entry
	changed  chan struct{}
	swapped  chan struct{}
	retry    time.Duration
	watch    atomic.Pointer[filewatch.Watch]
	relevant map[string]bool // names whose events may change what a folder holds
	// runtimeAuth: every folder opts in to containerd's hosts.toml
	// headers. A mounted Secret carries no annotations, so with folders
	// the operator's flag (--containerd-certs-dir) is the opt-in.
	runtimeAuth bool
}

// NewDir returns a source over dirs, in precedence order; runtimeAuth
// opts every folder in to containerd's hosts.toml headers.
func NewDir(dirs []string, runtimeAuth bool, log *logrus.Entry) *Dir {
	d := &Dir{dirs: dirs, log: log, runtimeAuth: runtimeAuth, changed: make(chan struct{}, 1), swapped: make(chan struct{}, 1), retry: 2 * time.Second, relevant: map[string]bool{}}
	for _, dir := range dirs {
		dir = filepath.Clean(dir) // as the watch names its events
		for _, name := range []string{dir, filepath.Join(dir, "..data"), filepath.Join(dir, dockercfg.KeyConfigJSON), filepath.Join(dir, dockercfg.KeyLegacy)} {
			d.relevant[name] = true
		}
	}
	return d
}

// Changed is signalled (coalesced) whenever a folder may have changed:
// a key file written in place may still be half written, so the agent
// waits for the writes to settle.
func (d *Dir) Changed() <-chan struct{} { return d.changed }

// Completed is signalled when the kubelet swapped a folder's ..data link:
// the swap is atomic, the new version whole, so the agent syncs at once.
func (d *Dir) Completed() <-chan struct{} { return d.swapped }

// Ready is closed at once: folders need no cache.
func (d *Dir) Ready() <-chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}

// Snapshots reads every folder now.
func (d *Dir) Snapshots() []Snapshot {
	out := make([]Snapshot, len(d.dirs))
	for i, dir := range d.dirs {
		out[i] = readDir(dir)
		out[i].RuntimeAuth = d.runtimeAuth
	}
	return out
}

func readDir(dir string) Snapshot {
	s := Snapshot{Name: dir}
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		s.Err = fmt.Errorf("folder %s: %w", dir, ErrNotFound)
		return s
	case err != nil:
		s.Err = fmt.Errorf("folder %s: %w", dir, err)
		return s
	case !fi.IsDir():
		s.Err = fmt.Errorf("%s is not a folder", dir)
		return s
	}
	data := map[string][]byte{}
	for _, key := range []string{dockercfg.KeyConfigJSON, dockercfg.KeyLegacy} {
		b, err := readLimited(filepath.Join(dir, key))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			s.Err = err
			return s
		}
		data[key] = b
	}
	s.Revision = dirRevision(dir)
	set, clashes, err := FromData("", data)
	if err != nil {
		s.Err = fmt.Errorf("folder %s: %w", dir, err)
		return s
	}
	s.Set, s.Clashes = set, clashes
	return s
}

// readLimited reads at most one byte more than a Secret may hold, so an
// oversized file is reported, not loaded. A FIFO or device is refused, not
// waited on.
func readLimited(path string) ([]byte, error) {
	f, _, err := hostfs.OpenRegular(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, dockercfg.MaxSize+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	return b, nil
}

// dirRevision names the version of a mounted Secret without its data: the
// kubelet's timestamped folder behind ..data, or else the files' mtimes.
func dirRevision(dir string) string {
	if target, err := os.Readlink(filepath.Join(dir, "..data")); err == nil {
		return target
	}
	var rev string
	for _, key := range []string{dockercfg.KeyConfigJSON, dockercfg.KeyLegacy} {
		if fi, err := os.Stat(filepath.Join(dir, key)); err == nil {
			rev += key + "@" + strconv.FormatInt(fi.ModTime().UnixNano(), 10)
		}
	}
	return rev
}

// Run watches the folders until ctx ends. A folder that does not exist yet
// is watched from when it appears. Without inotify the folders are polled.
func (d *Dir) Run(ctx context.Context) error {
	w := filewatch.New(filewatch.DefaultPoll)
	defer w.Close()
	d.watch.Store(w)

	watched := map[string]bool{}
	d.addMissing(w, watched)
	w.Changed(d.pollPaths()) // the baseline
	tick := time.NewTicker(d.retry)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			d.event(ev, watched)
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			// An overflow means events were lost: re-read everything.
			d.log.WithError(err).Warn("folder watch error; re-reading")
			d.notify()
		case <-w.Tick():
			if w.Changed(d.pollPaths()) {
				d.notify()
			}
		case <-tick.C:
			if len(watched) < len(d.dirs) {
				d.addMissing(w, watched)
			}
		}
	}
}

// addMissing watches the folders that exist and are not watched yet
// (recorded in watched).
func (d *Dir) addMissing(w *filewatch.Watch, watched map[string]bool) {
	for _, dir := range d.dirs {
		if watched[dir] {
			continue
		}
		if _, err := os.Stat(dir); err != nil {
			continue
		}
		if err := w.Add(dir); err != nil {
			continue
		}
		watched[dir] = true
		d.log.WithField("folder", dir).Debug("watching secret folder")
		d.notify() // it may have appeared with content
	}
}

// event signals what ev changes: a whole new version (the kubelet's ..data
// swap), a change, or nothing.
func (d *Dir) event(ev fsnotify.Event, watched map[string]bool) {
	if ev.Has(fsnotify.Remove) && watched[ev.Name] {
		// The folder itself went away; watch for it again.
		delete(watched, ev.Name)
	}
	switch {
	case filepath.Base(ev.Name) == "..data" && d.relevant[ev.Name] && ev.Has(fsnotify.Create):
		signal(d.swapped)
	case d.relevant[ev.Name]:
		d.notify()
	}
	// Anything else is a step of the kubelet's swap (its new timestamped
	// folder, ..data_tmp, the old folder's removal), which changes nothing
	// until ..data moves.
}

// pollPaths are what a polled folder is compared by: the folder, the
// kubelet's ..data link and the keys.
func (d *Dir) pollPaths() []string {
	var paths []string
	for _, dir := range d.dirs {
		paths = append(paths, dir, filepath.Join(dir, "..data"),
			filepath.Join(dir, dockercfg.KeyConfigJSON), filepath.Join(dir, dockercfg.KeyLegacy))
	}
	return paths
}

// Polling says why the folders are polled, or "" while inotify works.
func (d *Dir) Polling() string {
	if w := d.watch.Load(); w != nil {
		return w.Polling()
	}
	return ""
}

func (d *Dir) notify() { signal(d.changed) }

// signal sends on a coalescing channel of one.
func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}
