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
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

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

// stopGrace is how long a command may still run once it is asked to stop
// (SIGTERM, SIGINT): long enough for the metrics server's 5 s shutdown,
// short of the DaemonSet's 10 s termination grace period.
const stopGrace = 8 * time.Second

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	done := make(chan struct{})
	go exitWhenStuck(ctx, done, stopGrace, os.Stderr, os.Exit)
	name := commandName(os.Args[0])
	err := newRoot(name, os.Stdout, os.Stderr).ExecuteContext(ctx)
	close(done)
	stop()
	code := exitCode(name, err, os.Stderr)
	for _, f := range atExit {
		f()
	}
	os.Exit(code)
}

// exitWhenStuck exits (1) when the command is still running grace after
// ctx ended. Every wait of nodecreds' own ends with ctx, but a read of a
// file cannot be interrupted: one on a hung network or FUSE mount would
// keep a stopped `sync --once` or `cleanup` running for ever, holding the
// state lock. Exiting then is as safe as kill -9, which every write
// survives (atomic replacement, state recorded first).
func exitWhenStuck(ctx context.Context, done <-chan struct{}, grace time.Duration, stderr io.Writer, exit func(int)) {
	select {
	case <-done:
		return
	case <-ctx.Done():
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		fmt.Fprintf(stderr, "nodecreds: still running %s after the stop signal (a file read that does not return?); exiting: the node's files are whole whenever nodecreds stops\n", grace)
		exit(1)
	}
}

// pluginFile is the file name kubectl's plugin discovery runs: `kubectl
// nodecreds` finds kubectl-nodecreds on PATH (krew links it to this binary)
// and runs it with that path as argv[0].
const pluginFile = "kubectl-nodecreds"

// commandName is the name the binary was run by, as help and messages say
// it: "kubectl nodecreds" as a kubectl plugin, else "nodecreds".
func commandName(argv0 string) string {
	if strings.TrimSuffix(filepath.Base(argv0), ".exe") == pluginFile {
		return "kubectl nodecreds"
	}
	return "nodecreds"
}

func exitCode(name string, err error, stderr io.Writer) int {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, errFailed):
		return 1
	case errors.Is(err, config.ErrUsage):
		fmt.Fprintf(stderr, "nodecreds: %s\nRun '%s --help' for usage.\n", redactURLs(err.Error()), name)
		return 2
	default:
		fmt.Fprintf(stderr, "nodecreds: %s\n", redactURLs(err.Error()))
		return 1
	}
}

// urlPattern finds URLs in a message: a kubeconfig's or a flag's, echoed
// by a library's error, may carry user:password@ or a token in its query.
var urlPattern = regexp.MustCompile(`[A-Za-z][A-Za-z0-9+.-]*://[^\s"'<>]+`)

// redactURLs replaces each URL's user-info, query and fragment in msg.
func redactURLs(msg string) string {
	return urlPattern.ReplaceAllStringFunc(msg, func(u string) string {
		scheme, rest, _ := strings.Cut(u, "://")
		if i := strings.IndexAny(rest, "?#"); i >= 0 {
			rest = rest[:i] + "?<redacted>"
		}
		hostEnd := strings.IndexByte(rest, '/')
		if hostEnd < 0 {
			hostEnd = len(rest)
		}
		if at := strings.LastIndexByte(rest[:hostEnd], '@'); at >= 0 {
			rest = "<redacted>@" + rest[at+1:]
		}
		return scheme + "://" + rest
	})
}

// oneLine keeps a message to one line of at most 1 KiB: the kubelet logs
// a failed plugin run's stderr on every pull it retries.
func oneLine(msg string) string {
	msg = strings.Join(strings.Fields(msg), " ")
	if len(msg) > 1024 {
		msg = strings.ToValidUTF8(msg[:1024], "") + "…"
	}
	return msg
}

// newRoot is the command tree, its help naming it name (commandName).
func newRoot(name string, stdout, stderr io.Writer) *cobra.Command {
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
	if name != root.Name() {
		renameForHelp(root, name)
	}
	return root
}

// renameForHelp makes every usage line, and the example command lines of
// the help texts, say name (such as "kubectl nodecreds") instead of
// nodecreds, which is what the person typed.
func renameForHelp(root *cobra.Command, name string) {
	root.Annotations = map[string]string{cobra.CommandDisplayNameAnnotation: name}
	examples := strings.NewReplacer("\n  nodecreds ", "\n  "+name+" ")
	for _, c := range append(root.Commands(), root) {
		c.Long = examples.Replace(c.Long)
		c.Example = examples.Replace(c.Example)
	}
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
