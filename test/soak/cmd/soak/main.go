// Command soak runs package soak (test/soak) for many rotations (make soak) and writes the
// samples to docs/benchmarks.md between its soak markers.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/nodecreds/nodecreds/scripts/bench/benchdoc"
	"github.com/nodecreds/nodecreds/test/cluster"
	"github.com/nodecreds/nodecreds/test/soak"
)

func main() {
	rotations := flag.Int("rotations", 1000, "rotations")
	every := flag.Int("every", 50, "sample every N rotations")
	out := flag.String("out", "docs/benchmarks.md", "file whose soak section is replaced ('' prints only)")
	keep := flag.Bool("keep", false, "keep the work folder")
	tags := flag.String("tags", "", "build tags for the agent (profile: it writes a CPU profile to $NODECREDS_CPUPROFILE)")
	flag.Parse()
	if err := run(*rotations, *every, *out, *keep, *tags); err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(1)
	}
}

func run(rotations, every int, out string, keep bool, tags string) error {
	dir, err := os.MkdirTemp("", "nodecreds-soak-")
	if err != nil {
		return err
	}
	if !keep {
		defer os.RemoveAll(dir)
	} else {
		fmt.Fprintln(os.Stderr, "work folder:", dir)
	}
	bin := filepath.Join(dir, "nodecreds")
	build := exec.Command("go", "build", "-trimpath", "-tags="+tags, "-o", bin, "./cmd/nodecreds")
	build.Dir, build.Stdout, build.Stderr = cluster.RepoRoot(), os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return err
	}
	logf := func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) }
	res, err := soak.Run(context.Background(), soak.Config{Binary: bin, Dir: dir, Rotations: rotations, SampleEvery: every, Logf: logf})
	if err != nil {
		return err
	}
	flat := res.Flat()
	report := render(res, rotations, every, flat)
	fmt.Print(report)
	if out != "" {
		if err := benchdoc.Replace(out, benchdoc.Soak, report); err != nil {
			return err
		}
	}
	switch {
	case res.Applied != rotations:
		return fmt.Errorf("%d of %d rotations applied", res.Applied, rotations)
	case res.IdleWrites != 0:
		return fmt.Errorf("%.0f writes while nothing changed", res.IdleWrites)
	case flat != nil:
		return flat
	}
	return nil
}

func render(res soak.Result, rotations, every int, flat error) string {
	var b strings.Builder
	fmt.Fprintf(&b, "## Soak (`make soak`)\n\nMeasured %s by `make soak` (`go run ./test/soak/cmd/soak -rotations %d -every %d`): one agent, with its ServiceAccount's token, against the local API server through %d rotations of its Secret; after every 10th a drift edit of the kubelet file, after every 25th the docker file deleted; the API server stopped for 2 s and restarted halfway; `--resync 1s`. `make test` runs the same code for 100 rotations (`TestSoakShort`).\n\n", time.Now().UTC().Format("2006-01-02"), rotations, every, rotations)
	fmt.Fprintf(&b, "| rotation | RSS | heap in use | goroutines | open fds |\n| --- | --- | --- | --- | --- |\n")
	for _, s := range res.Samples {
		fmt.Fprintf(&b, "| %d | %.1f MiB | %.1f MiB | %.0f | %.0f |\n", s.Rotation, s.RSS/(1<<20), s.Heap/(1<<20), s.Goroutines, s.FDs)
	}
	verdict := "flat within the tolerances"
	if flat != nil {
		verdict = "NOT flat: " + flat.Error()
	}
	fmt.Fprintf(&b, "\nRotations applied: %d of %d; disturbances corrected: %d; API server back → the next change in both files: %s; writes during 5 s of 1 s resyncs with nothing changed: %.0f. Tolerances (last three samples' minimum against the first, taken after %d rotations of warm-up): RSS +%d MiB, heap +%d MiB, goroutines +%d, fds +%d — %s. Took %s.\n",
		res.Applied, rotations, res.Drift, res.CatchUp.Round(time.Millisecond), res.IdleWrites, every, soak.RSSGrowth>>20, soak.HeapGrowth>>20, soak.GoroutinesGrowth, soak.FDsGrowth, verdict, res.Took.Round(time.Second))
	return b.String()
}
