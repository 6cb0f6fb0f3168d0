//go:build profile

package main

import (
	"os"
	"runtime/pprof"
	"sync"
	"time"
)

// Built with -tags profile (never in a release), the binary writes a CPU
// profile to $NODECREDS_CPUPROFILE, of its whole run or of its first
// $NODECREDS_CPUPROFILE_FOR (a Go duration; harnesses that kill the agent
// need it): how the benchmarks find where an agent's time goes
// (docs/benchmarks.md).
func init() {
	path := os.Getenv("NODECREDS_CPUPROFILE")
	if path == "" {
		return
	}
	f, err := os.Create(path)
	if err != nil {
		panic(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		panic(err)
	}
	var once sync.Once
	stop := func() { once.Do(func() { pprof.StopCPUProfile(); f.Close() }) }
	atExit = append(atExit, stop)
	if d, err := time.ParseDuration(os.Getenv("NODECREDS_CPUPROFILE_FOR")); err == nil {
		time.AfterFunc(d, stop)
	}
}
