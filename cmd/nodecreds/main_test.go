package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

// TestStopEndsAStuckCommand: once asked to stop, a command that does not
// return (a sync stuck in a read that cannot be interrupted) is ended
// stopGrace later, exit 1, saying why; one that returns in time is not,
// and nothing happens without a stop.
func TestStopEndsAStuckCommand(t *testing.T) {
	tests := []struct {
		name     string
		stop     bool
		returnIn time.Duration // 0: never
		wantExit bool
	}{
		{"stopped, stuck", true, 0, true},
		{"stopped, returns in time", true, stopGrace - time.Second, false},
		{"not stopped, busy for long", false, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				ctx, stop := context.WithCancel(t.Context())
				defer stop()
				done := make(chan struct{})
				var stderr bytes.Buffer
				exited := make(chan time.Duration, 1)
				start := time.Now()
				go exitWhenStuck(ctx, done, stopGrace, &stderr, func(code int) {
					if code != 1 {
						t.Errorf("exit code %d, want 1", code)
					}
					exited <- time.Since(start)
				})
				if tt.stop {
					stop()
				}
				if tt.returnIn > 0 {
					time.Sleep(tt.returnIn)
					close(done)
				}
				time.Sleep(10 * stopGrace)
				synctest.Wait()
				select {
				case after := <-exited:
					if !tt.wantExit {
						t.Fatalf("exited after %s", after)
					}
					if after != stopGrace {
						t.Errorf("exited %s after the stop, want %s", after, stopGrace)
					}
					if !strings.Contains(stderr.String(), "after the stop signal") {
						t.Errorf("no reason given: %q", stderr.String())
					}
				default:
					if tt.wantExit {
						t.Fatal("a stuck command was not ended")
					}
				}
				if !tt.stop || tt.returnIn > 0 {
					select {
					case <-done:
					default:
						close(done)
					}
				}
			})
		})
	}
}
