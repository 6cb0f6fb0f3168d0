package nodefile

import (
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/docker/cli/cli/config/configfile"

	"github.com/nodecreds/nodecreds/internal/dockercfg"
	"github.com/nodecreds/nodecreds/internal/testsupport"
	"github.com/nodecreds/nodecreds/internal/testsupport/consumers"
)

// views is what the two consumers read from a file: nil where one cannot
// read it.
type views struct {
	kubelet *consumers.KubeletConfigJSON
	docker  *configfile.ConfigFile
}

func readViews(data []byte) views {
	var v views
	if k, err := consumers.Kubelet(data); err == nil {
		k.Auths = orEmpty(k.Auths)
		v.kubelet = &k
	}
	if c, err := consumers.DockerCLI(data); err == nil {
		c.AuthConfigs = orEmpty(c.AuthConfigs)
		v.docker = c
	}
	return v
}

// without returns v with the entry key taken out (the one nodecreds
// writes).
func (v views) without(key string) views {
	out := views{}
	if v.kubelet != nil {
		k := *v.kubelet
		k.Auths = maps.Clone(k.Auths)
		delete(k.Auths, key)
		out.kubelet = &k
	}
	if v.docker != nil {
		c := *v.docker
		c.AuthConfigs = maps.Clone(c.AuthConfigs)
		delete(c.AuthConfigs, key)
		out.docker = &c
	}
	return out
}

// TestFileReadAsTheConsumersReadIt (issue 21, point 6): a node file is read
// as the kubelet and the docker CLI (encoding/json, into their structs)
// read it — two "auths" objects merged, any spelling of the field, a null
// starting afresh, the later of two keys or fields winning, null entries,
// repeated top-level fields, data after the object — and nothing either of
// them saw is lost: after a sync each still reads everything it read before
// (and nodecreds' entry), and after `cleanup` exactly what it read before,
// a displaced entry included.
func TestFileReadAsTheConsumersReadIt(t *testing.T) {
	f, o, x := `{"auth":"`+testsupport.B64("f:foreign")+`"}`, `{"auth":"`+testsupport.B64("o:other")+`"}`, `{"auth":"`+testsupport.B64("x:theirs")+`"}`
	const ours = "ours.test"
	tests := []struct {
		name, file string
		setAside   bool // the kubelet cannot read it: a copy is kept
	}{
		{"two auths objects (the issue's example)", `{"auths":{"foreign.test":` + f + `},"auths":{"other.test":` + o + `}}`, false},
		{"a later auths object overrides a key", `{"auths":{"foreign.test":` + f + `,"other.test":` + x + `},"auths":{"other.test":` + o + `}}`, false},
		{"Auths, AUTHS", `{"Auths":{"foreign.test":` + f + `},"AUTHS":{"other.test":` + o + `}}`, false},
		{"escaped and folded spellings", `{"\u0061uths":{"foreign.test":` + f + `},"auth` + "\u017f" + `":{"other.test":` + o + `}}`, false},
		{"a null auths starts afresh", `{"auths":{"gone.test":` + x + `},"auths":null,"auths":{"foreign.test":` + f + `}}`, false},
		{"our registry in the first object is displaced, and restored", `{"auths":{"` + ours + `":` + x + `,"foreign.test":` + f + `},"auths":{"other.test":` + o + `}}`, false},
		{"a key twice", `{"auths":{"foreign.test":` + x + `,"foreign.test":` + f + `}}`, false},
		{"a field twice in an entry", `{"auths":{"foreign.test":{"auth":"` + testsupport.B64("a:1") + `","Auth":"` + testsupport.B64("b:2") + `","auth":null}}}`, false},
		{"a null entry", `{"auths":{"foreign.test":null,"other.test":` + o + `}}`, false},
		{"repeated top-level fields", `{"credHelpers":{"a.test":"one"},"auths":{"foreign.test":` + f + `},"credHelpers":{"b.test":"two"},"credsStore":"first","CredsStore":"second"}`, false},
		{"a bare null", `null`, false},
		{"data after the object (the docker CLI reads it, the kubelet does not)", `{"auths":{"foreign.test":` + f + `}}` + "\n{\"auths\":{\"other.test\":" + o + "}}", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, root := newEngine(t)
			p := filepath.Join(root, dockerFile)
			testsupport.WriteFile(t, p, tt.file, 0o600)
			before := readViews([]byte(tt.file))
			if before.docker == nil {
				t.Fatal("the docker CLI cannot read the test's file")
			}

			res := apply(t, e, []string{dockerFile}, dockercfg.Set{item(ours, "u", "p")}, true)
			mustOK(t, res)
			if (res[0].SetAside != "") != tt.setAside {
				t.Errorf("set aside %q, want a copy: %v", res[0].SetAside, tt.setAside)
			}
			data := testsupport.ReadFile(t, p)
			after := readViews(data)
			if after.kubelet == nil || after.docker == nil {
				t.Fatalf("a consumer cannot read the file written:\n%s", data)
			}
			for name, pair := range map[string][2]any{
				"kubelet":    {before.without(ours).kubelet, after.without(ours).kubelet},
				"docker CLI": {before.without(ours).docker, after.without(ours).docker},
			} {
				if !reflect.ValueOf(pair[0]).IsNil() && !reflect.DeepEqual(pair[0], pair[1]) {
					t.Errorf("the %s read\n%+v\nbefore the sync, and after it\n%+v\nfile written:\n%s", name, pair[0], pair[1], data)
				}
			}
			if got := after.docker.AuthConfigs[ours]; got.Username != "u" || got.Password != "p" {
				t.Errorf("nodecreds' entry is not in the file written: %+v", got)
			}

			res, err := e.Cleanup(t.Context(), nil)
			if err != nil {
				t.Fatal(err)
			}
			mustOK(t, res)
			data, err = os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			restored := readViews(data)
			if before.kubelet != nil && !reflect.DeepEqual(before.kubelet, restored.kubelet) {
				t.Errorf("after cleanup the kubelet reads\n%+v\nwant\n%+v", restored.kubelet, before.kubelet)
			}
			if !reflect.DeepEqual(before.docker, restored.docker) {
				t.Errorf("after cleanup the docker CLI reads\n%+v\nwant\n%+v", restored.docker, before.docker)
			}
		})
	}
}

// TestParseDocumentVerdicts: what is an empty document, what is corrupt,
// and what is corrupt but comes with what the docker CLI read of it.
func TestParseDocumentVerdicts(t *testing.T) {
	tests := []struct {
		data          string
		corrupt, kept bool // kept: a document comes with the error
		entries       []string
	}{
		{"", false, true, nil},
		{"null", false, true, nil},
		{" null \n", false, true, nil},
		{"\f", true, false, nil},
		{`{"auths":{"a":{}}}x`, true, true, []string{"a"}},
		{`{"auths":{"a":{}}}{"auths":{"b":{}}}`, true, true, []string{"a"}},
		{`nullx`, true, true, nil},
		{`{"auths":{"a":{}}`, true, false, nil},
		{`{"auths":{"a":1,"a":{}}}`, true, false, nil},
		{`{"auths":{"a":{}},"auths":"x"}`, true, false, nil},
		{`{"AUTHS":{"a":{}},"auths":{"b":null}}`, false, true, []string{"a", "b"}},
	}
	for _, tt := range tests {
		d, err := parseDocument([]byte(tt.data))
		if (err != nil) != tt.corrupt || (d != nil) != tt.kept || err != nil && !strings.Contains(err.Error(), ErrCorrupt.Error()) {
			t.Errorf("parseDocument(%q) = %v, %v; want corrupt %v, document %v", tt.data, d != nil, err, tt.corrupt, tt.kept)
			continue
		}
		if d != nil && !slices.Equal(sortedKeys(d.auths), sortedOrEmpty(tt.entries)) {
			t.Errorf("parseDocument(%q) entries %v, want %v", tt.data, sortedKeys(d.auths), tt.entries)
		}
	}
}
