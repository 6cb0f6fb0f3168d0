//go:build profile

package main

import (
	"bytes"
	"os"
	"runtime/metrics"
	"runtime/pprof"
	"sync"
	"time"
)

// Built with -tags profile, the binary writes to $NODECREDS_HEAPPROFILE the
// heap profile taken when its live heap was largest (each time it grows,
// and when the process exits):
// how docs/benchmarks.md ("Memory: the largest inputs") found what a sync
// holds at its peak.
func init() {
	path := os.Getenv("NODECREDS_HEAPPROFILE")
	if path == "" {
		return
	}
	var (
		mu   sync.Mutex
		peak uint64
		prof bytes.Buffer
	)
	stop := make(chan struct{})
	go func() {
		s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
			metrics.Read(s)
			if v := s[0].Value.Uint64(); v > peak {
				mu.Lock()
				peak = v
				prof.Reset()
				_ = pprof.Lookup("heap").WriteTo(&prof, 0)
				// Also now: a harness may kill the process.
				_ = os.WriteFile(path, prof.Bytes(), 0o600)
				mu.Unlock()
			}
		}
	}()
	var once sync.Once
	atExit = append(atExit, func() {
		once.Do(func() {
			close(stop)
			mu.Lock()
			defer mu.Unlock()
			_ = os.WriteFile(path, prof.Bytes(), 0o600)
		})
	})
}
