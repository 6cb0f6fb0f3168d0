package main

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/nodecreds/nodecreds/internal/config"
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

// TestPluginName: run as kubectl-nodecreds (kubectl's plugin discovery,
// krew's link), help, usage lines, examples and the usage hint say
// `kubectl nodecreds`; run by any other name, `nodecreds`.
func TestPluginName(t *testing.T) {
	tests := []struct {
		argv0, want string
	}{
		{"/root/.krew/bin/kubectl-nodecreds", "kubectl nodecreds"},
		{"kubectl-nodecreds", "kubectl nodecreds"},
		{"kubectl-nodecreds.exe", "kubectl nodecreds"},
		{"/usr/local/bin/nodecreds", "nodecreds"},
		{"/nodecreds", "nodecreds"},
		{"/opt/bin/kubectl-nodecreds-old", "nodecreds"},
	}
	for _, tt := range tests {
		if got := commandName(tt.argv0); got != tt.want {
			t.Errorf("commandName(%q) = %q, want %q", tt.argv0, got, tt.want)
		}
	}

	for _, name := range []string{"kubectl nodecreds", "nodecreds"} {
		t.Run(name, func(t *testing.T) {
			for _, args := range [][]string{{"--help"}, {"status", "--help"}, {"check", "--help"}} {
				var out bytes.Buffer
				root := newRoot(name, &out, &out)
				root.SetArgs(args)
				if err := root.Execute(); err != nil {
					t.Fatalf("%v: %v", args, err)
				}
				help := out.String()
				usage := name + " [command]"
				if args[0] != "--help" {
					usage = name + " " + args[0] + " [flags]"
				}
				if !strings.Contains(help, "\n  "+usage+"\n") {
					t.Errorf("%s %v: no usage line %q:\n%s", name, args, usage, help)
				}
				if args[0] == "check" && !strings.Contains(help, "\n  "+name+" check --service-account ") {
					t.Errorf("%s check --help: the examples do not say %q:\n%s", name, name, help)
				}
				if name != "nodecreds" && strings.Contains(help, "\n  nodecreds ") {
					t.Errorf("%s %v: a line still starts with nodecreds:\n%s", name, args, help)
				}
			}
			var stderr bytes.Buffer
			if code := exitCode(name, fmt.Errorf("bad: %w", config.ErrUsage), &stderr); code != 2 || !strings.Contains(stderr.String(), "Run '"+name+" --help' for usage.") {
				t.Errorf("usage error: exit %d, %q", code, stderr.String())
			}
		})
	}
}
