// Command nodecreds keeps private-registry pull credentials on every
// Kubernetes node in sync with cluster Secrets. main is the only place that
// exits: 0 fine, 1 failed, 2 bad usage.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"

	"github.com/nodecreds/nodecreds/internal/config"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// errFailed means the command ran and reported its failure already (for
// instance `check` printed NOT OK); main exits 1 without more output.
var errFailed = errors.New("failed")

// atExit runs before the process exits (a profiling build adds to it).
var atExit []func()

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := newRoot(os.Stdout, os.Stderr).ExecuteContext(ctx)
	stop()
	code := exitCode(err, os.Stderr)
	for _, f := range atExit {
		f()
	}
	os.Exit(code)
}

func exitCode(err error, stderr io.Writer) int {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, errFailed):
		return 1
	case errors.Is(err, config.ErrUsage):
		fmt.Fprintf(stderr, "nodecreds: %v\nRun 'nodecreds --help' for usage.\n", err)
		return 2
	default:
		fmt.Fprintf(stderr, "nodecreds: %v\n", err)
		return 1
	}
}

func newRoot(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:   "nodecreds",
		Short: "Keep private-registry pull credentials on every Kubernetes node in sync with cluster Secrets",
		Long: `nodecreds runs on every node (a DaemonSet) and writes the registry credentials
of one or more Secrets into the node's config.json files, which the kubelet and
the docker CLI read. It merges: every other entry and setting in those files is
kept, and 'nodecreds cleanup' puts back what it replaced.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		// A bare `nodecreds` or an unknown subcommand is bad usage.
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return config.UsageError(fmt.Errorf("unknown command %q", args[0]))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			_ = cmd.Help()
			return config.UsageError(errors.New("a command is required"))
		},
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return config.UsageError(err) })
	root.AddCommand(newSyncCmd(), newCheckCmd(stdout), newCleanupCmd(), newStatusCmd(stdout), newProviderCmd(), newVersionCmd(stdout))
	for _, c := range root.Commands() {
		c.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return config.UsageError(err) })
		if c.Args == nil {
			c.Args = noArgs
		}
	}
	return root
}

func noArgs(_ *cobra.Command, args []string) error {
	if len(args) > 0 {
		return config.UsageError(fmt.Errorf("unexpected arguments %q", args))
	}
	return nil
}

// newLogger configures logrus once; components get entries from it.
func newLogger(l config.Log, out io.Writer) *logrus.Logger {
	log := logrus.New()
	log.SetOutput(out)
	if l.Format == "text" {
		log.SetFormatter(&logrus.TextFormatter{FullTimestamp: true})
	} else {
		log.SetFormatter(&logrus.JSONFormatter{})
	}
	lvl, _ := logrus.ParseLevel(l.Level) // validated by config
	log.SetLevel(lvl)
	return log
}

func newVersionCmd(stdout io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		RunE: func(*cobra.Command, []string) error {
			_, err := fmt.Fprintf(stdout, "nodecreds %s\n", version)
			return err
		},
	}
}
