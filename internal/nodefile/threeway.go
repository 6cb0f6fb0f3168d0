package nodefile

import (
	"slices"

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
