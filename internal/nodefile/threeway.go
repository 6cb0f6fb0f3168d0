package nodefile

import (
	"slices"
	"time"

	"github.com/nodecreds/nodecreds/internal/jsonwalk"
)

// threeWay is what the other writer's files hold, seen across the races of
// one sync (step 7): merged, the document the last attempt merged into;
// next, the file another writer put at the target since; ancestors, the
// files next can have been written on (the one we expected at the target —
// our own stale write, while it was there — and that writer's previous
// file, which it may have read before our swap). Per auths key and per
// top-level field, next's value (an absence too: a logout) is taken where
// it differs from every ancestor, as only that writer changed it then;
// anywhere else merged's value stays, as next merely lacks what was added
// before (its writer read our stale file, or its own older one). The
// result is a new document; none of the three is modified.
//
// Where next differs from one ancestor only, its writer may have read the
// other: nothing is taken, so a value is never lost to a writer that did
// not see it, at the price that a change that restores what one ancestor
// held is not seen.
func threeWay(merged *document, ancestors []*document, next *document) *document {
	out := merged.clone()
	changed := func(key string) bool {
		v, ok := next.auths[key]
		for _, a := range ancestors {
			av, aok := a.auths[key]
			if aok == ok && (!ok || sameJSON(av, v)) {
				return false
			}
		}
		return true
	}
	apply := func(key string) {
		if v, ok := next.auths[key]; ok {
			out.auths[key] = v
		} else {
			delete(out.auths, key)
		}
	}
	for key := range next.auths {
		if changed(key) {
			apply(key)
		}
	}
	for _, a := range ancestors {
		for key := range a.auths {
			if _, ok := next.auths[key]; !ok && changed(key) {
				apply(key)
			}
		}
	}
	threeWayFields(out, ancestors, next)
	return out
}

// threeWayFields is threeWay for the top-level fields other than auths,
// each the members a consumer reads into it (all spellings of its name).
func threeWayFields(out *document, ancestors []*document, next *document) {
	theirs := fieldGroups(next)
	names := map[string]bool{}
	for name := range theirs {
		names[name] = true
	}
	groups := make([]map[string][]member, len(ancestors))
	for i, a := range ancestors {
		groups[i] = fieldGroups(a)
		for name := range groups[i] {
			names[name] = true
		}
	}
	for name := range names {
		same := slices.ContainsFunc(groups, func(g map[string][]member) bool { return sameMembers(g[name], theirs[name]) })
		if same {
			continue
		}
		for k := range out.top {
			if k != "auths" && jsonwalk.Fold(k) == name {
				delete(out.top, k)
			}
		}
		out.repeated = slices.DeleteFunc(slices.Clone(out.repeated), func(m member) bool { return jsonwalk.Fold(m.key) == name })
		ms := theirs[name]
		if len(ms) == 1 {
			out.top[ms[0].key] = ms[0].value
			continue
		}
		out.repeated = append(out.repeated, ms...)
	}
}

// fieldGroups returns doc's top-level members other than auths by folded
// name, in file order.
func fieldGroups(doc *document) map[string][]member {
	out := map[string][]member{}
	for k, v := range doc.top {
		if k != "auths" {
			out[jsonwalk.Fold(k)] = append(out[jsonwalk.Fold(k)], member{key: k, value: v})
		}
	}
	for _, m := range doc.repeated {
		out[jsonwalk.Fold(m.key)] = append(out[jsonwalk.Fold(m.key)], m)
	}
	return out
}

// sameMembers reports whether two fields are the same members, in order.
func sameMembers(a, b []member) bool {
	return slices.EqualFunc(a, b, func(x, y member) bool { return x.key == y.key && sameJSON(x.value, y.value) })
}

// seen merges next, another writer's file found at the target (exists
// false: none) after the plan that merged into s.prev, into what this sync
// knows of that writer's files (step 7): base becomes their content so
// far, which the next plan merges into. A file that does not parse is
// base as it is (set aside by the plan), what was known carried into it.
func (s *targetSync) seen(next fileRead) {
	doc, err := parseDocument(next.data)
	if !next.exists {
		doc, err = parseDocument(nil)
	}
	if s.ancestors == nil {
		// The first: written on the file we read, as far as we know.
		s.ancestors = []*document{parsedOrEmpty(s.cur.data)}
	}
	s.chain, s.base = true, next
	if err != nil {
		s.ancestors = []*document{parsedOrEmpty(nil)}
		return
	}
	merged := threeWay(s.prev, s.ancestors, doc)
	data, err := merged.encode()
	if err != nil {
		// Over a limit: the plan says so, on their file as it is.
		s.ancestors = []*document{doc}
		return
	}
	s.prev, s.ancestors = merged, []*document{doc}
	s.base = fileRead{exists: next.exists || !merged.empty(), data: data, mode: next.mode, uid: next.uid, gid: next.gid, info: next.info}
}

// parsedOrEmpty is data parsed, or an empty document when it does not
// parse.
func parsedOrEmpty(data []byte) *document {
	if doc, err := parseDocument(data); err == nil {
		return doc
	}
	doc, _ := parseDocument(nil)
	return doc
}

// exposureWindow is how long after a sync that left its stale file in
// place for a while (a race) the next sync takes a file at the target as
// possibly written on that stale file: `docker login` saves, within a
// second or so, what it read.
const exposureWindow = time.Minute

// exposure is a target whose last sync raced: the stale file of ours that
// was in place while it merged again, and the file it left.
type exposure struct {
	stale *document
	left  *document
	data  string // fileDigest of the file left
	at    time.Time
}

// noteExposure remembers, when this sync's file was built after a race
// that left our stale file in place, that file and the one left, for the
// next sync (see afterExposure); otherwise forgets what was.
func (s *targetSync) noteExposure(p targetPlan, w written) {
	if s.stale == nil || p.step != stepWrite {
		delete(s.e.exposed, s.t.path)
		return
	}
	if s.e.exposed == nil {
		s.e.exposed = map[string]exposure{}
	}
	s.e.exposed[s.t.path] = exposure{stale: s.stale, left: p.merged.doc, data: fileDigest(w.data), at: s.e.now()}
}

// afterExposure takes a file found at the target where the last sync left
// another, soon after that sync raced, as possibly written on the stale
// file of ours that was in place for a while (another writer read it then,
// and renamed what it made of it once the sync was done): what that file
// lacks of the one left but the stale one lacked too was never seen by its
// writer, and stays; what it changed relative to both is taken.
func (s *targetSync) afterExposure() {
	x, ok := s.e.exposed[s.t.path]
	if !ok || s.cur.exists && fileDigest(s.cur.data) == x.data {
		return // nothing raced, or what was left is still there
	}
	delete(s.e.exposed, s.t.path)
	if s.e.now().Sub(x.at) > exposureWindow || !s.cur.exists {
		return
	}
	doc, err := parseDocument(s.cur.data)
	if err != nil {
		return
	}
	merged := threeWay(x.left, []*document{x.left, x.stale}, doc)
	if data, err := merged.encode(); err == nil {
		s.base = fileRead{exists: true, data: data, mode: s.cur.mode, uid: s.cur.uid, gid: s.cur.gid, info: s.cur.info}
	}
}
