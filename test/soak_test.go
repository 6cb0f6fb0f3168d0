package test

import (
	"testing"

	"github.com/nodecreds/nodecreds/test/soak"
)

// TestSoakShort is `make soak` shortened: one agent against a real API
// server through 100 rotations with drift edits, deleted targets and an API
// server restart; every rotation applied, nothing written while nothing
// changes, and memory, goroutines and file descriptors flat.
func TestSoakShort(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: no control plane")
	}
	res, err := soak.Run(t.Context(), soak.Config{Binary: plainBinary, Dir: t.TempDir(), Rotations: 100, SampleEvery: 20, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d rotations applied, %d disturbances corrected, API server back → change in the file %s, %s in all", res.Applied, res.Drift, res.CatchUp, res.Took)
	if res.Applied != 100 {
		t.Errorf("%d of 100 rotations applied", res.Applied)
	}
	if res.IdleWrites != 0 {
		t.Errorf("%.0f writes while nothing changed", res.IdleWrites)
	}
	if err := res.Flat(); err != nil {
		t.Error(err)
	}
}
