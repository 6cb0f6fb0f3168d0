package hoststoml

import (
	"bytes"
	"errors"
	"fmt"
	"slices"

	"github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"
)

// document is where the keys and tables of one hosts.toml sit in its bytes.
// Offsets are byte offsets into src.
type document struct {
	src    []byte
	tables []table
	kvs    []keyValue
	// decoded is the whole file as go-toml decodes it, for the final check.
	decoded map[string]any
	// eofNewline: an edit being planned adds the newline the file lacks at its end.
	eofNewline bool
}

// table is a `[a.b]` or `[[a.b]]` header line and the region it opens.
type table struct {
	path      []string
	keyRaw    []string // the key parts as written, quotes included
	array     bool
	lineStart int // start of the header's line
	lineEnd   int // after the header line's newline
	bodyEnd   int // after the newline of the region's last key/value line (lineEnd when it has none)
	lastKV    int // index into kvs of the region's last key/value; -1 when it has none
}

// keyValue is one `key = value`, at the top level of a table or in an
// inline table.
type keyValue struct {
	path      []string // full path: table path + key parts
	keyRaw    []string // the key parts as written
	inline    bool     // inside an inline table
	valueKind unstable.Kind
	keyStart  int
	valStart  int
	valEnd    int
	lineStart int // start of the line the key is on
	lineEnd   int // after the newline ending the line the value ends on
	table     int // index into tables of the region it sits in; -1 for the top level
}

// errPos: a value is not where the parser said; the file is not edited.
var errPos = errors.New("value position not found")

// errInvalid marks input that is not TOML; the file is left as it is.
var errInvalid = errors.New("not valid TOML")

// parseDocument indexes src. An error names a line, never file content.
func parseDocument(src []byte) (*document, error) {
	d := &document{src: src}
	if err := toml.Unmarshal(src, &d.decoded); err != nil {
		var de *toml.DecodeError
		if errors.As(err, &de) {
			row, _ := de.Position()
			return nil, fmt.Errorf("%w at line %d", errInvalid, row)
		}
		return nil, errInvalid
	}
	p := unstable.Parser{KeepComments: true}
	p.Reset(src)
	cur := -1
	var tablePath []string
	for p.NextExpression() {
		e := p.Expression()
		switch e.Kind {
		case unstable.Table, unstable.ArrayTable:
			t, err := d.table(e)
			if err != nil {
				return nil, err
			}
			d.tables = append(d.tables, t)
			cur = len(d.tables) - 1
			tablePath = t.path
		case unstable.KeyValue:
			if err := d.keyValue(e, tablePath, false, cur); err != nil {
				return nil, err
			}
		}
	}
	if err := p.Error(); err != nil {
		// Unmarshal accepted it, so the two parsers disagree: refuse.
		return nil, fmt.Errorf("%w: the TOML parser could not index the file", errInvalid)
	}
	return d, nil
}

// keyParts returns a key's parts, as decoded and as written, and the
// ranges of its first and last part.
func (d *document) keyParts(it unstable.Iterator) (parts, raw []string, first, last unstable.Range) {
	for i := 0; it.Next(); i++ {
		n := it.Node()
		parts = append(parts, string(n.Data))
		raw = append(raw, string(d.raw(n.Raw)))
		if i == 0 {
			first = n.Raw
		}
		last = n.Raw
	}
	return parts, raw, first, last
}

func (d *document) table(e *unstable.Node) (table, error) {
	t := table{array: e.Kind == unstable.ArrayTable, lastKV: -1}
	var first, last unstable.Range
	t.path, t.keyRaw, first, last = d.keyParts(e.Key())
	t.lineStart = lineStart(d.src, int(first.Offset))
	pos := skipSpace(d.src, int(last.Offset+last.Length))
	closing := 1
	if t.array {
		closing = 2
	}
	for range closing {
		if pos >= len(d.src) || d.src[pos] != ']' {
			return table{}, fmt.Errorf("%w: unexpected table header at line %d", errInvalid, d.line(t.lineStart))
		}
		pos++
	}
	t.lineEnd = endOfLine(d.src, pos)
	t.bodyEnd = t.lineEnd
	return t, nil
}

func (d *document) keyValue(e *unstable.Node, prefix []string, inline bool, cur int) error {
	parts, raw, first, last := d.keyParts(e.Key())
	kv := keyValue{
		path:     append(slices.Clone(prefix), parts...),
		keyRaw:   raw,
		inline:   inline,
		keyStart: int(first.Offset),
		table:    cur,
	}
	kv.lineStart = lineStart(d.src, kv.keyStart)
	pos := skipSpace(d.src, int(last.Offset+last.Length))
	if pos >= len(d.src) || d.src[pos] != '=' {
		return fmt.Errorf("%w: unexpected key at line %d", errInvalid, d.line(kv.keyStart))
	}
	kv.valStart = skipSpace(d.src, pos+1)
	v := e.Value()
	kv.valueKind = v.Kind
	end, err := d.valueEnd(v, kv.valStart)
	if err != nil {
		return fmt.Errorf("value at line %d: %w", d.line(kv.keyStart), err)
	}
	kv.valEnd = end
	kv.lineEnd = endOfLine(d.src, end)
	d.kvs = append(d.kvs, kv)
	if !inline && cur >= 0 {
		d.tables[cur].bodyEnd = kv.lineEnd
		d.tables[cur].lastKV = len(d.kvs) - 1
	}
	if v.Kind == unstable.InlineTable {
		for it := v.Children(); it.Next(); {
			if it.Node().Kind != unstable.KeyValue {
				continue
			}
			if err := d.keyValue(it.Node(), kv.path, true, cur); err != nil {
				return err
			}
		}
	}
	return nil
}

// valueEnd returns the offset after the value n that starts at start. The
// parser records where strings are; for arrays and inline tables the end is
// found from their last element and the closing bracket.
func (d *document) valueEnd(n *unstable.Node, start int) (int, error) {
	switch n.Kind {
	case unstable.String:
		if int(n.Raw.Offset) != start {
			return 0, errPos
		}
		return int(n.Raw.Offset + n.Raw.Length), nil
	case unstable.Bool, unstable.Integer, unstable.Float, unstable.LocalDate,
		unstable.LocalTime, unstable.LocalDateTime, unstable.DateTime:
		end := start + len(n.Data)
		if end > len(d.src) || !bytes.Equal(d.src[start:end], n.Data) {
			return 0, errPos
		}
		return end, nil
	case unstable.Array:
		return d.arrayEnd(n, start)
	case unstable.InlineTable:
		return d.inlineTableEnd(n, start)
	default:
		return 0, errPos
	}
}

func (d *document) raw(r unstable.Range) []byte { return d.src[r.Offset : r.Offset+r.Length] }

// line is the 1-based line number of offset.
func (d *document) line(offset int) int { return bytes.Count(d.src[:offset], []byte{'\n'}) + 1 }

// newline is the file's line ending: CRLF when its first line ends so.
func (d *document) newline() string {
	if i := bytes.IndexByte(d.src, '\n'); i > 0 && d.src[i-1] == '\r' {
		return "\r\n"
	}
	return "\n"
}

// lineIndent is the white space that starts the line at lineStart.
func (d *document) lineIndent(lineStart int) string {
	return string(d.src[lineStart:skipSpace(d.src, lineStart)])
}

// indent is the white space before offset on its line.
func (d *document) indent(lineStart, offset int) string {
	s := d.src[lineStart:offset]
	if len(bytes.Trim(s, " \t")) != 0 {
		return ""
	}
	return string(s)
}

func skipSpace(b []byte, pos int) int {
	for pos < len(b) && (b[pos] == ' ' || b[pos] == '\t') {
		pos++
	}
	return pos
}

// skipArrayTrivia skips what may sit between array elements: white space,
// newlines, comments and commas.
func skipArrayTrivia(b []byte, pos int) int {
	for pos < len(b) {
		switch b[pos] {
		case ' ', '\t', '\r', '\n', ',':
			pos++
		case '#':
			for pos < len(b) && b[pos] != '\n' {
				pos++
			}
		default:
			return pos
		}
	}
	return pos
}

func lineStart(b []byte, pos int) int {
	return bytes.LastIndexByte(b[:pos], '\n') + 1
}

// endOfLine returns the offset after the newline that ends the line pos is
// on, skipping trailing white space and a comment; len(b) at the end of file.
func endOfLine(b []byte, pos int) int {
	i := bytes.IndexByte(b[pos:], '\n')
	if i < 0 {
		return len(b)
	}
	return pos + i + 1
}

// arrayEnd: the end of the last element, then the closing bracket.
func (d *document) arrayEnd(n *unstable.Node, start int) (int, error) {
	if start >= len(d.src) || d.src[start] != '[' {
		return 0, errPos
	}
	pos := start + 1
	for it := n.Children(); it.Next(); {
		c := it.Node()
		if c.Kind == unstable.Comment {
			continue
		}
		end, err := d.valueEnd(c, skipArrayTrivia(d.src, pos))
		if err != nil {
			return 0, err
		}
		pos = end
	}
	pos = skipArrayTrivia(d.src, pos)
	if pos >= len(d.src) || d.src[pos] != ']' {
		return 0, errPos
	}
	return pos + 1, nil
}

// inlineTableEnd: the end of the last value, then the closing brace.
func (d *document) inlineTableEnd(n *unstable.Node, start int) (int, error) {
	if int(n.Raw.Offset) != start || d.src[start] != '{' {
		return 0, errPos
	}
	pos := start + 1
	for it := n.Children(); it.Next(); {
		kv := it.Node()
		if kv.Kind != unstable.KeyValue {
			continue
		}
		var last unstable.Range
		for k := kv.Key(); k.Next(); {
			last = k.Node().Raw
		}
		eq := skipSpace(d.src, int(last.Offset+last.Length))
		if eq >= len(d.src) || d.src[eq] != '=' {
			return 0, errPos
		}
		end, err := d.valueEnd(kv.Value(), skipSpace(d.src, eq+1))
		if err != nil {
			return 0, err
		}
		pos = end
	}
	for pos < len(d.src) && (d.src[pos] == ' ' || d.src[pos] == '\t' || d.src[pos] == ',') {
		pos++
	}
	if pos >= len(d.src) || d.src[pos] != '}' {
		return 0, errPos
	}
	return pos + 1, nil
}
