package nodefile

import (
	"fmt"
	"maps"
	"slices"

	"github.com/nodecreds/nodecreds/internal/dockercfg"
	"github.com/nodecreds/nodecreds/internal/hostfs"
)

// batch is one run over the targets: each opened once, planned, then
// written in turn (protocol.go).
type batch struct {
	e       *Engine
	root    *hostfs.Root
	store   *stateStore
	targets []string
	results []Result
	syncs   []*targetSync   // by target; nil where there is nothing to commit
	opened  []*openedTarget // by target; nil for one that failed to open or names a file synced under another target
	sameAs  []int           // index of the target synced for this one's file
	all     []*openedTarget // every target opened, to close
}

// newBatch opens every target's folder in the root. A file that two
// targets name (a link, a bind mount) is synced under the first only.
func newBatch(e *Engine, root *hostfs.Root, store *stateStore, targets []string) *batch {
	n := len(targets)
	b := &batch{e: e, root: root, store: store, targets: targets, results: make([]Result, n),
		syncs: make([]*targetSync, n), opened: make([]*openedTarget, n), sameAs: make([]int, n)}
	seen := map[string]int{} // file id → the first target that is that file
	for i, target := range targets {
		b.results[i].Target, b.sameAs[i] = target, i
		t, err := openTarget(root, target)
		if err != nil {
			b.results[i].Err = err
			continue
		}
		b.all = append(b.all, t)
		b.results[i].Path = t.path
		if first, dup := seen[t.id]; dup {
			b.sameFile(i, first)
			continue
		}
		seen[t.id], b.opened[i] = i, t
	}
	return b
}

// sameFile notes that target i names the file of target first. Syncing it
// under both names would make each displace the other's entries into the
// state; what the state recorded under this name is recorded under the
// first from now on.
func (b *batch) sameFile(i, first int) {
	target := b.targets[i]
	b.sameAs[i] = first
	b.results[i].Warnings = []string{fmt.Sprintf("%s is the same file as target %s; synced once, under %s", target, b.targets[first], b.targets[first])}
	if ts := b.store.st.Targets[target]; ts != nil {
		merged := targetRecord{store: b.store, target: b.targets[first]}.current().absorb(*ts)
		b.store.set(b.targets[first], merged)
		b.store.set(target, TargetState{})
	}
}

func (b *batch) close() {
	for _, t := range b.all {
		t.close()
	}
}

// appliesNow names the sources that apply to the node now, known or held.
func appliesNow(sources []dockercfg.NamedSet, prune pruneRule) map[string]bool {
	applies := maps.Clone(prune.hold)
	if applies == nil {
		applies = map[string]bool{}
	}
	for _, ns := range sources {
		applies[ns.Name] = true
	}
	return applies
}

// readerViews prepares what each reader's files get, once for all its
// targets, and once for both readers when they get the same (no Docker
// Hub key, no two spellings of one registry: most sources).
type readerViews struct {
	memo    *memory
	sources []dockercfg.NamedSet
	wants   map[dockercfg.Reader]*wanted
	views   map[dockercfg.Reader]dockercfg.Set
}

func newReaderViews(m *memory, sources []dockercfg.NamedSet) *readerViews {
	return &readerViews{memo: m, sources: sources, wants: map[dockercfg.Reader]*wanted{}, views: map[dockercfg.Reader]dockercfg.Set{}}
}

// of returns what target's file gets (dockercfg.View for its reader).
func (v *readerViews) of(target string) *wanted {
	r := dockercfg.ReaderOf(target)
	if w := v.wants[r]; w != nil {
		return w
	}
	view, _ := dockercfg.View(r, v.sources...)
	for other, w := range v.wants {
		if slices.Equal(v.views[other], view) {
			v.wants[r] = w
			return w
		}
	}
	v.wants[r], v.views[r] = v.memo.wanted(r, view), view
	return v.wants[r]
}
