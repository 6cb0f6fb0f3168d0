package nodefile

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/nodecreds/nodecreds/internal/dockercfg"
)

// benchSetup makes a config.json that will hold n entries: n/2 foreign
// ones already there and n/2 that the desired set adds, so parse, merge and
// write all scale with n.
func benchSetup(b *testing.B, n int) (*Engine, dockercfg.Set) {
	b.Helper()
	root := b.TempDir()
	p := filepath.Join(root, kubeletFile)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		b.Fatal(err)
	}
	doc := []byte(`{"auths":{`)
	for i := range n / 2 {
		if i > 0 {
			doc = append(doc, ',')
		}
		doc = fmt.Appendf(doc, `"foreign-%d.example.test":{"auth":"Zm9yZWlnbjpwYXNzd29yZA=="}`, i)
	}
	doc = append(doc, `},"credsStore":"desktop"}`...)
	if err := os.WriteFile(p, doc, 0o600); err != nil {
		b.Fatal(err)
	}
	set := make(dockercfg.Set, n-n/2)
	for i := range set {
		set[i] = dockercfg.Item{Key: fmt.Sprintf("reg-%d.example.test", i), Entry: dockercfg.Entry{Username: "robot", Password: fmt.Sprintf("pw-%d", i)}}
	}
	return New(Options{HostRoot: root, StateDir: stateDir}), set
}

// BenchmarkApply measures parse + merge + atomic write (and the state file,
// before and after) of one target, each iteration rotating one entry with
// the same engine, as a running agent does.
func BenchmarkApply(b *testing.B) { benchRotations(b, false) }

// BenchmarkApplyFirst is BenchmarkApply for an engine that remembers
// nothing: each iteration is a new engine, as after an agent's restart or
// for `nodecreds sync --once`, so the file and the state are parsed and
// every entry hashed again.
func BenchmarkApplyFirst(b *testing.B) { benchRotations(b, true) }

func benchRotations(b *testing.B, fresh bool) {
	for _, n := range []int{10, 1000, 10000} {
		b.Run(fmt.Sprintf("entries=%d", n), func(b *testing.B) {
			e, set := benchSetup(b, n)
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				set[0].Entry.Password = fmt.Sprintf("rotated-%d", i)
				if fresh {
					e = New(Options{HostRoot: e.root, StateDir: stateDir})
				}
				res, err := e.Apply(b.Context(), []string{kubeletFile}, set, true)
				if err != nil || res[0].Err != nil || !res[0].Changed {
					b.Fatalf("apply: %v %+v", err, res)
				}
			}
		})
	}
}

// BenchmarkApplyNoChange measures the resync path: read, parse, merge,
// compare, and no write.
func BenchmarkApplyNoChange(b *testing.B) {
	for _, n := range []int{10, 1000, 10000} {
		b.Run(fmt.Sprintf("entries=%d", n), func(b *testing.B) {
			e, set := benchSetup(b, n)
			if _, err := e.Apply(b.Context(), []string{kubeletFile}, set, true); err != nil {
				b.Fatal(err)
			}
			p := filepath.Join(e.root, kubeletFile)
			before, _ := os.Stat(p)
			b.ReportAllocs()
			for b.Loop() {
				res, err := e.Apply(b.Context(), []string{kubeletFile}, set, true)
				if err != nil || res[0].Err != nil || res[0].Changed {
					b.Fatalf("no-change apply wrote: %v %+v", err, res)
				}
			}
			after, _ := os.Stat(p)
			if !after.ModTime().Equal(before.ModTime()) || ino(after) != ino(before) {
				b.Fatal("the no-change path rewrote the file")
			}
		})
	}
}
