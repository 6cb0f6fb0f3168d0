package hoststoml

import (
	"bytes"
	"fmt"
)

// Restore undoes rec in current: a replaced value gets its previous text
// back, an added key or header table is taken out again. remove reports that
// the file was created by nodecreds and holds nothing else, so it can be
// deleted. A host whose Authorization is gone already is left as it is.
// To give up one host only, pass a Record holding that host's Change.
func Restore(current []byte, folder string, rec Record) (data []byte, remove bool, err error) {
	if _, err := FolderHost(folder); err != nil {
		return nil, false, err
	}
	d, err := parseDocument(current)
	if err != nil {
		return nil, false, err
	}
	var edits []edit
	var leading []int // edits of changes that added a newline at the end
	restored := map[string]string{}
	for _, c := range rec.Changes {
		auths := d.authorizations(c.Section)
		if len(auths) == 0 {
			continue
		}
		if len(auths) > 1 {
			return nil, false, fmt.Errorf("%s has more than one Authorization key (line %d)", where(c.Section), d.line(d.kvs[auths[1]].keyStart))
		}
		e, err := d.undo(c, auths[0])
		if err != nil {
			return nil, false, err
		}
		restored[c.Section] = ""
		if c.LeadingNewline {
			leading = append(leading, len(edits))
		}
		edits = append(edits, e)
	}
	// The newline added before a table at the end of a file that lacked
	// one goes when everything after it goes.
	for _, i := range leading {
		e := &edits[i]
		if e.start > 0 && current[e.start-1] == '\n' && removedToEnd(edits, e.end, len(current)) {
			e.start--
			if e.start > 0 && current[e.start-1] == '\r' {
				e.start--
			}
		}
	}
	out := splice(current, edits)
	if len(edits) > 0 {
		if err := verify(d.decoded, out, restored); err != nil {
			return nil, false, err
		}
	}
	if rec.Created {
		for _, scheme := range []string{"", "http", "https"} {
			if skel, err := Skeleton(folder, scheme); err == nil && bytes.Equal(out, skel) {
				return out, true, nil
			}
		}
	}
	return out, false, nil
}

// onlyKV reports whether kv is the only key/value in table ti's region.
func (d *document) onlyKV(ti, kvi int) bool {
	for i, kv := range d.kvs {
		if i != kvi && !kv.inline && kv.table == ti {
			return false
		}
	}
	return true
}

// removedToEnd reports whether the removals in edits cover [from, end).
func removedToEnd(edits []edit, from, end int) bool {
	for from < end {
		next := from
		for _, e := range edits {
			if e.text == "" && e.start <= from && e.end > next {
				next = e.end
			}
		}
		if next == from {
			return false
		}
		from = next
	}
	return true
}

// undo plans putting back what change c replaced or removing what it added,
// the key now being d.kvs[kvi].
func (d *document) undo(c Change, kvi int) (edit, error) {
	kv := d.kvs[kvi]
	switch c.Action {
	case Replaced:
		return edit{kv.valStart, kv.valEnd, string(c.Previous)}, nil
	case AddedKey, AddedTable:
		if kv.inline || d.indent(kv.lineStart, kv.keyStart) == "" && kv.lineStart != kv.keyStart {
			return edit{}, fmt.Errorf("%s is no longer on a line of its own (line %d); not removed", where(c.Section), d.line(kv.keyStart))
		}
		start, end := kv.lineStart, kv.lineEnd
		if c.Action == AddedTable && kv.table >= 0 {
			t := d.tables[kv.table]
			// The table nodecreds added goes too, when the key is all it holds.
			if t.lastKV == kvi && d.onlyKV(kv.table, kvi) && t.lineEnd == kv.lineStart {
				start = t.lineStart
			}
		}
		return edit{start, end, ""}, nil
	default:
		return edit{}, fmt.Errorf("unknown change %q in the record", c.Action)
	}
}

// Split parts rec's changes by the file as it is now: ours are those
// whose section still holds the value nodecreds wrote (a change recorded
// without a fingerprint counts as ours), theirs those whose value someone
// else put there since, or took out. Created goes with ours.
func Split(current []byte, rec Record) (ours, theirs Record, err error) {
	d, err := parseDocument(current)
	if err != nil {
		return Record{}, Record{}, err
	}
	ours.Created = rec.Created
	for _, c := range rec.Changes {
		if c.Ours == "" || d.holds(c.Section, c.Ours) {
			ours.Changes = append(ours.Changes, c)
		} else {
			theirs.Changes = append(theirs.Changes, c)
		}
	}
	return ours, theirs, nil
}

// Confirm drops from a Pending record the changes that the file does not
// hold (the write they were recorded for never happened) and clears
// Pending. current nil: there is no file.
func Confirm(current []byte, rec Record) Record {
	if !rec.Pending {
		return rec
	}
	out := Record{Created: rec.Created}
	if current == nil {
		return Record{}
	}
	ours, _, err := Split(current, rec)
	if err != nil {
		return Record{Created: rec.Created, Changes: rec.Changes} // judged later
	}
	out.Changes = ours.Changes
	if len(out.Changes) == 0 {
		return Record{}
	}
	return out
}

// holds reports whether an Authorization value of the section has
// fingerprint fp (one of several counts: Restore then refuses the section,
// and the value stays ours until it is taken out).
func (d *document) holds(section, fp string) bool {
	h, _ := lookup(d.decoded, append(sectionPath(section), "header")).(map[string]any)
	for k, v := range h {
		if s, isString := v.(string); isString && isAuthorization(k) && Fingerprint(s) == fp {
			return true
		}
	}
	return false
}

// Holding lists the sections of data (by key, "" for the top level) with
// an Authorization value whose fingerprint is one of rec's: where a value
// nodecreds wrote is, wherever an edit moved it.
func Holding(data []byte, rec Record) ([]string, error) {
	d, err := parseDocument(data)
	if err != nil {
		return nil, err
	}
	var out []string
	sections := []string{""}
	if hosts, ok := d.decoded["host"].(map[string]any); ok {
		for k := range hosts {
			sections = append(sections, k)
		}
	}
	for _, s := range sections {
		for _, c := range rec.Changes {
			if c.Ours != "" && d.holds(s, c.Ours) {
				out = append(out, s)
				break
			}
		}
	}
	return out, nil
}
