package provider

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nodecreds/nodecreds/internal/hostfs"
	"github.com/nodecreds/nodecreds/internal/pullsecret"
)

// AnswersFile, in the state folder, counts the service-account-token
// mode's runs by pullsecret.Reason: a JSON object {"Answered": n, ...}.
// The plugin cannot serve metrics (the kubelet runs it for one answer), so
// the agent reads this file when it is scraped. It holds reasons and
// numbers only.
const AnswersFile = "provider-answers.json"

// answersLock is the lock file beside it: the data file is replaced by a
// rename on every count, so the lock cannot be on the data file itself.
const answersLock = "provider-answers.lock"

// lockWait bounds how long a run waits for another run's count: counting
// must never hold an answer up for long.
const lockWait = 2 * time.Second

// maxAnswersFile bounds what is read of the file (a few hundred bytes
// when nobody else writes it).
const maxAnswersFile = 64 << 10

// countAnswer adds one to reason in the counters file of stateDir (a node
// path under hostRoot), under the lock, replacing the file atomically.
// Counting never fails an answer: a missing state folder is not counted,
// and any other failure is returned only for tests to see.
func countAnswer(ctx context.Context, hostRoot, stateDir string, reason pullsecret.Reason) error {
	if stateDir == "" {
		return nil
	}
	root, err := hostfs.OpenRoot(hostRoot)
	if err != nil {
		return err
	}
	defer root.Close()
	d, err := root.OpenDir(stateDir, false, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer d.Close()
	lf, err := d.OpenLock(answersLock)
	if err != nil {
		return err
	}
	defer lf.Close() // closing releases the lock
	if err := flockWithin(ctx, lf, lockWait); err != nil {
		return fmt.Errorf("locking %s: %w", d.Name(answersLock), err)
	}
	// The temp file of a run that died between writing the counters and
	// renaming them (under the lock, any there is such).
	d.SweepTemps("."+AnswersFile+".", "")
	counts := readCounts(d)
	counts[string(reason)]++
	data, err := json.Marshal(counts)
	if err != nil {
		return err
	}
	return d.WriteFile(AnswersFile, 0o600, func(f *os.File) error {
		_, err := f.Write(append(data, '\n'))
		return err
	})
}

// flockWithin takes an exclusive lock on f, trying until within has passed
// or ctx ends.
func flockWithin(ctx context.Context, f *os.File, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if !errors.Is(err, unix.EWOULDBLOCK) {
			return err
		}
		if time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// readCounts reads the counters; a missing or unreadable file counts from
// zero (a counter reset, which Prometheus takes in its stride).
func readCounts(d *hostfs.Dir) map[string]uint64 {
	counts := map[string]uint64{}
	data, _, err := d.ReadFile(AnswersFile, maxAnswersFile)
	if err != nil || json.Unmarshal(data, &counts) != nil {
		return map[string]uint64{}
	}
	return counts
}

// ReadAnswers returns the counters of stateDir (a node path under
// hostRoot) for each of pullsecret.Reasons, for the agent's metrics. A
// missing or unparsable file, or one that fails to read, gives false: no
// samples rather than an error.
func ReadAnswers(hostRoot, stateDir string) (map[pullsecret.Reason]uint64, bool) {
	root, err := hostfs.OpenRoot(hostRoot)
	if err != nil {
		return nil, false
	}
	defer root.Close()
	d, err := root.OpenDir(stateDir, false, 0)
	if err != nil {
		return nil, false
	}
	defer d.Close()
	data, _, err := d.ReadFile(AnswersFile, maxAnswersFile)
	if err != nil {
		return nil, false
	}
	var counts map[string]uint64
	if err := json.Unmarshal(data, &counts); err != nil || counts == nil {
		return nil, false
	}
	out := make(map[pullsecret.Reason]uint64, len(pullsecret.Reasons))
	for _, r := range pullsecret.Reasons {
		out[r] = counts[string(r)]
	}
	return out, true
}
