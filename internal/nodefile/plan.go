package nodefile

import (
	"bytes"
	"errors"

	"github.com/nodecreds/nodecreds/internal/jsonwalk"
)

// planStep is what a plan does with the file.
type planStep int

// targetPlan is what one target becomes.
type targetPlan struct {
	step    planStep
	parsed  *document // base as parsed (empty when corrupt)
	corrupt error     // why base does not parse
	merged  mergeResult
	intent  TargetState // recorded before the file is touched
	// unreadable says what in the file, another writer's, the kubelet
	// refuses, so that it reads none of it ("" when it reads it).
	unreadable string
}

// planTarget decides, without I/O, what a target becomes: base is the file
// to merge into, cur the file on disk (they differ only after a lost race,
// when prev is the base merged into before), old the target's state.
//
// parse is parseDocument, or one that remembers; what it returns is never
// modified.
func planTarget(base, cur fileRead, prev, newer *document, desired *wanted, prune pruneRule, old TargetState, parse func([]byte) (*document, error)) (targetPlan, error) {
	racing := base.exists != cur.exists || !bytes.Equal(base.data, cur.data)
	orig, perr := parse(base.data)
	if perr != nil && !errors.Is(perr, ErrCorrupt) {
		// Not corrupt but not to be taken apart (too many entries): the
		// file is left as it is, never set aside.
		return targetPlan{}, perr
	}
	if orig == nil {
		orig, _ = parseDocument(nil)
	}
	doc := carried(orig, prev, newer)
	p := targetPlan{parsed: doc, corrupt: perr, merged: merge(doc, desired, prune, old)}
	p.unreadable = orig.still(p.merged.doc)
	if !base.exists && len(p.merged.doc.auths) > 0 {
		p.merged.state.Created = true
	}
	// The intent, recorded before the file is touched, covers what of
	// ours is in the file on disk right now: cur, which after a lost race is
	// our own stale write rather than base.
	setIntent := func() {
		p.intent = intent(ownedOnDisk(doc, cur, prev, racing, old, parse), old, p.merged.state)
	}
	switch {
	case perr != nil && len(p.merged.state.Owned) == 0 && len(p.merged.restored) == 0 && !racing && prev == nil:
		p.step = stepLeave
	case p.merged.state.Created && p.merged.doc.empty():
		p.step = stepDrop
		setIntent()
	case perr == nil && !racing && p.merged.doc.equal(orig) && !(orig.refused.any && p.unreadable == ""):
		// (A file that reads as this document but that the kubelet
		// refuses as it is — an entry it cannot decode, replaced by a
		// later one of its key — is written anew, which it can read.)
		p.step = stepKeep
	default:
		// Refused here, before anything is recorded or touched, if it
		// cannot be written; encoded when it is written.
		if _, err := p.merged.doc.encodedSize(); err != nil {
			return p, err
		}
		p.step = stepWrite
		setIntent()
	}
	return p, nil
}

// carried is orig, the file to merge into, with what this sync saw of
// other writers carried into it (the result is a clone when anything is).
func carried(orig, prev, newer *document) *document {
	doc := orig
	if newer != nil {
		// Newer than base for every key both hold (held files a write of
		// ours replaced, and base is that write): their values win, base
		// fills in what they lack.
		doc = newer.clone()
		carry(orig, doc)
	}
	if prev != nil {
		// While our stale file was in place the other writer may have read
		// it and written on top of it, dropping what it had added before;
		// or its file was taken off the target and is held. Carry forward
		// everything seen from it in this sync.
		if doc == orig {
			doc = doc.clone()
		}
		carry(prev, doc)
	}
	return doc
}

// ownedOnDisk is what the intent must recognise as ours: our entries in
// the file on disk right now (doc, or cur after a lost race, when cur is
// our own stale write rather than the file merged into), and in prev.
func ownedOnDisk(doc *document, cur fileRead, prev *document, racing bool, old TargetState, parse func([]byte) (*document, error)) map[string]string {
	onDisk := ownedIn(doc, old)
	if racing {
		if curDoc, err := parse(cur.data); err == nil {
			onDisk = ownedIn(curDoc, old)
		}
	}
	if prev != nil {
		// Ours in a held file, which a crash leaves to the next
		// process to merge, must be recognised there too.
		for k, fp := range ownedIn(prev, old) {
			if _, ok := onDisk[k]; !ok {
				onDisk[k] = fp
			}
		}
	}
	return onDisk
}

// carry copies into doc every auths entry and top-level field of prev that
// doc lacks. It may bring back something the other writer deleted during the
// race; losing something it added would be worse.
func carry(prev, doc *document) {
	for k, v := range prev.auths {
		if _, ok := doc.auths[k]; !ok {
			doc.auths[k] = v
		}
	}
	fields := map[string]bool{}
	for k := range doc.top {
		fields[jsonwalk.Fold(k)] = true
	}
	for _, m := range doc.repeated {
		fields[jsonwalk.Fold(m.key)] = true
	}
	for k, v := range prev.top {
		if !fields[jsonwalk.Fold(k)] {
			doc.top[k] = v
		}
	}
	for _, m := range prev.repeated {
		if !fields[jsonwalk.Fold(m.key)] {
			doc.repeated = append(doc.repeated, m)
		}
	}
}
