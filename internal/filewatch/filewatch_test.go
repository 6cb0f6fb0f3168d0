package filewatch

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestChangedByPolling: every kind of change a target or a mounted Secret
// sees is noticed by comparing metadata; nothing is noticed when nothing
// changed.
func TestChangedByPolling(t *testing.T) {
	tests := []struct {
		name   string
		change func(t *testing.T, dir string)
		want   bool
	}{
		{"nothing", func(*testing.T, string) {}, false},
		{"rewritten in place, same size", func(t *testing.T, d string) { write(t, filepath.Join(d, "f"), "bbbb") }, true},
		{"replaced by rename", func(t *testing.T, d string) {
			write(t, filepath.Join(d, "tmp"), "aaaa")
			must(t, os.Rename(filepath.Join(d, "tmp"), filepath.Join(d, "f")))
		}, true},
		{"removed", func(t *testing.T, d string) { must(t, os.Remove(filepath.Join(d, "f"))) }, true},
		{"link re-pointed", func(t *testing.T, d string) {
			must(t, os.Symlink("g", filepath.Join(d, "tmp")))
			must(t, os.Rename(filepath.Join(d, "tmp"), filepath.Join(d, "l")))
		}, true},
		{"mode changed", func(t *testing.T, d string) { must(t, os.Chmod(filepath.Join(d, "f"), 0o644)) }, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			write(t, filepath.Join(dir, "f"), "aaaa")
			must(t, os.Symlink("f", filepath.Join(dir, "l")))
			paths := []string{filepath.Join(dir, "f"), filepath.Join(dir, "l"), filepath.Join(dir, "missing")}
			w := newPolling(time.Hour, errors.New("test"))
			defer w.Close()
			if w.Changed(paths) {
				t.Fatal("the first call reported a change")
			}
			time.Sleep(10 * time.Millisecond) // distinct mtimes
			tt.change(t, dir)
			if got := w.Changed(paths); got != tt.want {
				t.Errorf("Changed = %v, want %v", got, tt.want)
			}
			if w.Changed(paths) {
				t.Errorf("a second call without a change reported one")
			}
		})
	}
}

// TestPollingSaysWhy: a polling watch ticks and says why; an inotify one
// does neither.
func TestPollingSaysWhy(t *testing.T) {
	w := newPolling(10*time.Millisecond, errors.New("no inotify instance: too many open files"))
	defer w.Close()
	if p := w.Polling(); p != "inotify unavailable (no inotify instance: too many open files); polling every 10ms" {
		t.Errorf("Polling() = %q", p)
	}
	select {
	case <-w.Tick():
	case <-time.After(5 * time.Second):
		t.Fatal("a polling watch does not tick")
	}
	if err := w.Add(t.TempDir()); err != nil || !w.Watching("/anything") {
		t.Errorf("a polling watch refuses a folder: %v", err)
	}

	in := New(time.Second)
	defer in.Close()
	if in.Polling() != "" || in.Tick() != nil {
		t.Fatalf("an inotify watch polls: %s (is every inotify instance of this user taken?)", in.Polling())
	}
	dir := t.TempDir()
	if err := in.Add(dir); err != nil || !in.Watching(dir) {
		t.Errorf("inotify watch of %s: %v", dir, err)
	}
}

func newPolling(period time.Duration, why error) *Watch { return NewPolling(period, why) }

func write(t *testing.T, path, s string) {
	t.Helper()
	must(t, os.WriteFile(path, []byte(s), 0o600))
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
