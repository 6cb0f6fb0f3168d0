// Package hostfstest has the test helpers that attack a host root: a
// folder swapped for a symlink to the outside at every instant, and a
// listing of what appeared where it must not.
package hostfstest

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// Swapper exchanges each folder with its symlink (renameat2
// RENAME_EXCHANGE) in a tight loop until stopped, so at any instant either
// name may be the link.
type Swapper struct {
	stop  chan struct{}
	done  sync.WaitGroup
	swaps int
}

// SwapWithLink makes, for each folder, a symlink next to it (folder +
// ".swap") pointing at the matching outside folder, and starts swapping the
// two. Folders and outside folders must exist.
func SwapWithLink(t *testing.T, folders, outside []string) *Swapper {
	t.Helper()
	pairs := make([][2]string, len(folders))
	for i, f := range folders {
		pairs[i] = [2]string{f, f + ".swap"}
		if err := os.Symlink(outside[i], f+".swap"); err != nil {
			t.Fatal(err)
		}
	}
	s := &Swapper{stop: make(chan struct{})}
	s.done.Add(1)
	go func() {
		defer s.done.Done()
		for {
			select {
			case <-s.stop:
				return
			default:
			}
			for _, p := range pairs {
				if err := unix.Renameat2(unix.AT_FDCWD, p[0], unix.AT_FDCWD, p[1], unix.RENAME_EXCHANGE); err == nil {
					s.swaps++
				}
			}
		}
	}()
	t.Cleanup(func() { s.Stop() })
	return s
}

// Stop ends the swapping and returns how many swaps were made.
func (s *Swapper) Stop() int {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	s.done.Wait()
	return s.swaps
}

// Tree lists every path under dir, relative to it.
func Tree(dir string) []string {
	var out []string
	_ = filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
		if err == nil && p != dir {
			out = append(out, strings.TrimPrefix(p, dir))
		}
		return nil
	})
	return out
}
