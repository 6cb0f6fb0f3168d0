package hoststoml

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
)

const (
	basicNew = "Basic bmV3dXNlcjpuZXdwYXNz" // newuser:newpass
	basicOld = "Basic b2xkdXNlcjpvbGRwYXNz" // olduser:oldpass
)

func TestMerge(t *testing.T) {
	tests := []struct {
		name    string
		folder  string
		in      *string // nil: no file
		headers map[string]string
		scheme  string
		want    string // exact output
		action  Action
		noHost  bool
	}{
		{
			name:    "no file: created with the registry as server and its header in a host table",
			folder:  "reg.example.com_5000_",
			headers: map[string]string{"reg.example.com:5000": basicNew},
			want: "# Written by nodecreds for the Authorization header of this registry.\n" +
				"server = \"https://reg.example.com:5000\"\n\n" +
				"[host.\"https://reg.example.com:5000\"]\n" +
				"  capabilities = [\"pull\", \"resolve\"]\n" +
				"[host.\"https://reg.example.com:5000\".header]\n" +
				"  Authorization = \"" + basicNew + "\"\n",
			action: AddedTable,
		},
		{
			name:    "no file, http key: created with http",
			folder:  "reg.example.com",
			headers: map[string]string{"reg.example.com": basicNew},
			scheme:  "http",
			want: "# Written by nodecreds for the Authorization header of this registry.\n" +
				"server = \"http://reg.example.com\"\n\n" +
				"[host.\"http://reg.example.com\"]\n" +
				"  capabilities = [\"pull\", \"resolve\"]\n" +
				"[host.\"http://reg.example.com\".header]\n" +
				"  Authorization = \"" + basicNew + "\"\n",
			action: AddedTable,
		},
		{
			name:    "no file, loopback registry: containerd's default scheme http",
			folder:  "127.0.0.1:5123",
			headers: map[string]string{"127.0.0.1:5123": basicNew},
			want: "# Written by nodecreds for the Authorization header of this registry.\n" +
				"server = \"http://127.0.0.1:5123\"\n\n" +
				"[host.\"http://127.0.0.1:5123\"]\n" +
				"  capabilities = [\"pull\", \"resolve\"]\n" +
				"[host.\"http://127.0.0.1:5123\".header]\n" +
				"  Authorization = \"" + basicNew + "\"\n",
			action: AddedTable,
		},
		{
			name:    "admin's mirror section with comments: header table added after it",
			folder:  "upstream.example",
			in:      ptr("server = \"https://upstream.example\"\n\n# pull-through cache; ask #infra before changing\n[host.\"https://mirror.example:5000\"]\n  capabilities = [\"pull\", \"resolve\"] # no push\n  ca = \"/etc/certs/mirror.pem\"\n\n[host.\"https://other.example\"]\n  capabilities = [\"pull\"]\n"),
			headers: map[string]string{"mirror.example:5000": basicNew},
			want:    "server = \"https://upstream.example\"\n\n# pull-through cache; ask #infra before changing\n[host.\"https://mirror.example:5000\"]\n  capabilities = [\"pull\", \"resolve\"] # no push\n  ca = \"/etc/certs/mirror.pem\"\n[host.\"https://mirror.example:5000\".header]\n  Authorization = \"" + basicNew + "\"\n\n[host.\"https://other.example\"]\n  capabilities = [\"pull\"]\n",
			action:  AddedTable,
		},
		{
			name:    "header table with other headers: they stay, the key is added after them",
			folder:  "upstream.example",
			in:      ptr("[host.\"https://upstream.example\"]\n  [host.\"https://upstream.example\".header]\n    X-Team = [\"a\", \"b\"]\n    X-Other = \"c\" # kept\n# trailing comment\n"),
			headers: map[string]string{"upstream.example": basicNew},
			want:    "[host.\"https://upstream.example\"]\n  [host.\"https://upstream.example\".header]\n    X-Team = [\"a\", \"b\"]\n    X-Other = \"c\" # kept\n    Authorization = \"" + basicNew + "\"\n# trailing comment\n",
			action:  AddedKey,
		},
		{
			name:    "empty header table: the key goes under it",
			folder:  "upstream.example",
			in:      ptr("[host.\"upstream.example\"]\n[host.\"upstream.example\".header]\n"),
			headers: map[string]string{"upstream.example": basicNew},
			want:    "[host.\"upstream.example\"]\n[host.\"upstream.example\".header]\n  Authorization = \"" + basicNew + "\"\n",
			action:  AddedKey,
		},
		{
			name:    "existing value replaced, its comment kept",
			folder:  "upstream.example",
			in:      ptr("[host.'https://upstream.example'.header]\nAuthorization   =   'Basic old' # rotated by hand\n"),
			headers: map[string]string{"upstream.example": basicNew},
			want:    "[host.'https://upstream.example'.header]\nAuthorization   =   \"" + basicNew + "\" # rotated by hand\n",
			action:  Replaced,
		},
		{
			name:    "array value replaced by one string",
			folder:  "upstream.example",
			in:      ptr("[host.\"https://upstream.example\".header]\nauthorization = [\n  \"Basic a\", # first\n  \"Basic b\",\n]\nX = \"y\"\n"),
			headers: map[string]string{"upstream.example": basicNew},
			want:    "[host.\"https://upstream.example\".header]\nauthorization = \"" + basicNew + "\"\nX = \"y\"\n",
			action:  Replaced,
		},
		{
			name:    "inline header table holding Authorization: the value is replaced",
			folder:  "upstream.example",
			in:      ptr("[host.\"https://upstream.example\"]\nheader = { X = [\"1\"], Authorization = \"Basic old\" }\n"),
			headers: map[string]string{"upstream.example": basicNew},
			want:    "[host.\"https://upstream.example\"]\nheader = { X = [\"1\"], Authorization = \"" + basicNew + "\" }\n",
			action:  Replaced,
		},
		{
			name:    "dotted header keys: header.Authorization added after them",
			folder:  "upstream.example",
			in:      ptr("[host.\"https://upstream.example\"]\n  capabilities = [\"pull\"]\n  header.X-Team = \"a\"\n  skip_verify = false\n"),
			headers: map[string]string{"upstream.example": basicNew},
			want:    "[host.\"https://upstream.example\"]\n  capabilities = [\"pull\"]\n  header.X-Team = \"a\"\n  header.Authorization = \"" + basicNew + "\"\n  skip_verify = false\n",
			action:  AddedKey,
		},
		{
			name:    "CRLF file stays CRLF",
			folder:  "upstream.example",
			in:      ptr("server = \"https://upstream.example\"\r\n\r\n[host.\"https://upstream.example\"]\r\n  capabilities = [\"pull\", \"resolve\"]\r\n"),
			headers: map[string]string{"upstream.example": basicNew},
			want:    "server = \"https://upstream.example\"\r\n\r\n[host.\"https://upstream.example\"]\r\n  capabilities = [\"pull\", \"resolve\"]\r\n[host.\"https://upstream.example\".header]\r\n  Authorization = \"" + basicNew + "\"\r\n",
			action:  AddedTable,
		},
		{
			name:    "no newline at the end",
			folder:  "upstream.example",
			in:      ptr("[host.\"https://upstream.example\"]\n  capabilities = [\"pull\"]"),
			headers: map[string]string{"upstream.example": basicNew},
			want:    "[host.\"https://upstream.example\"]\n  capabilities = [\"pull\"]\n[host.\"https://upstream.example\".header]\n  Authorization = \"" + basicNew + "\"\n",
			action:  AddedTable,
		},
		{
			name:    "top-level server and header only (ignored by containerd 1.6): the top-level value is replaced",
			folder:  "upstream.example",
			in:      ptr("server = \"https://upstream.example\"\n\n[header]\n  Authorization = \"Basic old\"\n"),
			headers: map[string]string{"upstream.example": basicNew},
			want:    "server = \"https://upstream.example\"\n\n[header]\n  Authorization = \"" + basicNew + "\"\n",
			action:  Replaced,
			noHost:  true,
		},
		{
			name:    "server names us, no header: [header] added at the end",
			folder:  "docker.io",
			in:      ptr("server = \"https://registry-1.docker.io\"\n[host.\"https://mirror.internal\"]\n  capabilities = [\"pull\", \"resolve\"]\n"),
			headers: map[string]string{"registry-1.docker.io": basicNew},
			want:    "server = \"https://registry-1.docker.io\"\n[host.\"https://mirror.internal\"]\n  capabilities = [\"pull\", \"resolve\"]\n[header]\n  Authorization = \"" + basicNew + "\"\n",
			action:  AddedTable,
		},
		{
			name:    "host we hold nothing for: unchanged",
			folder:  "upstream.example",
			in:      ptr("server = \"https://upstream.example\"\n[host.\"https://mirror.example\"]\n"),
			headers: map[string]string{"elsewhere.example": basicNew},
			want:    "server = \"https://upstream.example\"\n[host.\"https://mirror.example\"]\n",
		},
		{
			name:    "already the value: unchanged",
			folder:  "upstream.example",
			in:      ptr("[host.\"https://upstream.example\".header]\nAuthorization = \"" + basicNew + "\"\n"),
			headers: map[string]string{"upstream.example": basicNew},
			want:    "[host.\"https://upstream.example\".header]\nAuthorization = \"" + basicNew + "\"\n",
		},
		{
			name:    "no file and no credentials for the registry: none created",
			folder:  "upstream.example",
			headers: map[string]string{"mirror.example": basicNew},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var in []byte
			if tt.in != nil {
				in = []byte(*tt.in)
			}
			res, err := Merge(in, tt.folder, Options{Headers: tt.headers, Scheme: tt.scheme})
			if err != nil {
				t.Fatalf("Merge: %v", err)
			}
			if string(res.Data) != tt.want {
				t.Fatalf("Merge output\n got: %q\nwant: %q", res.Data, tt.want)
			}
			if res.NoHostTable != tt.noHost {
				t.Errorf("NoHostTable = %v, want %v", res.NoHostTable, tt.noHost)
			}
			if tt.action == "" {
				if res.Changed || len(res.Record.Changes) != 0 {
					t.Fatalf("changed %v, record %+v; want no change", res.Changed, res.Record)
				}
				return
			}
			if !res.Changed || len(res.Record.Changes) != 1 || res.Record.Changes[0].Action != tt.action {
				t.Fatalf("record %+v, want one %s", res.Record, tt.action)
			}
			if res.Record.Created != (tt.in == nil) {
				t.Errorf("Created = %v", res.Record.Created)
			}
			// Merging again changes nothing.
			again, err := Merge(res.Data, tt.folder, Options{Headers: tt.headers, Scheme: tt.scheme})
			if err != nil || again.Changed || !bytes.Equal(again.Data, res.Data) {
				t.Fatalf("second merge changed the file (err %v)", err)
			}
			// A rotation keeps the first record's account of what was there.
			// (A plain-HTTP server created for an http:// key or a loopback
			// host is one its key allows.)
			plain := map[string]bool{keyOf(tt.headers): tt.scheme == "http" || isLocalhost(tt.folder)}
			rotated, err := Merge(res.Data, tt.folder, Options{Headers: map[string]string{keyOf(tt.headers): basicOld}, PlainHTTP: plain})
			if err != nil || !rotated.Changed {
				t.Fatalf("rotation: changed %v, err %v", rotated.Changed, err)
			}
			rec := res.Record.Then(rotated.Record)
			first := res.Record.Changes[0]
			first.Ours = rotated.Record.Changes[0].Ours // the value there now
			if len(rec.Changes) != 1 || rec.Changes[0] != first {
				t.Fatalf("Then kept %+v, want the first change with the fingerprint of the value there now", rec)
			}
			// Restore gives back the bytes that were there.
			back, remove, err := Restore(rotated.Data, tt.folder, rec)
			if err != nil {
				t.Fatalf("Restore: %v", err)
			}
			if tt.in == nil {
				if !remove {
					t.Fatalf("Restore of a created file: remove = false, left %q", back)
				}
				return
			}
			if remove || string(back) != *tt.in {
				t.Fatalf("Restore\n got: %q (remove %v)\nwant: %q", back, remove, *tt.in)
			}
		})
	}
}

func TestMergeRefuses(t *testing.T) {
	tests := []struct {
		name    string
		folder  string
		in      string
		headers map[string]string
		line    string // the error names this line
	}{
		{"invalid TOML", "upstream.example", "[host.\"https://upstream.example\"\n", map[string]string{"upstream.example": basicNew}, "line 1"},
		{"duplicate table", "upstream.example", "[header]\nA = \"1\"\n[header]\n", map[string]string{"upstream.example": basicNew}, "not valid TOML"},
		{"two Authorization keys", "upstream.example", "server = \"https://upstream.example\"\n[header]\nAuthorization = \"Basic secretone\"\nauthorization = \"Basic secrettwo\"\n", map[string]string{"upstream.example": basicNew}, "line"},
		{"inline header without Authorization", "upstream.example", "[host.\"https://upstream.example\"]\nheader = { X = \"secretvalue\" }\n", map[string]string{"upstream.example": basicNew}, "line 2"},
		{"Authorization not a string", "upstream.example", "server = \"https://upstream.example\"\n[header]\nAuthorization = 12\n", map[string]string{"upstream.example": basicNew}, "line 3"},
		{"host defined by dotted keys only", "upstream.example", "host.\"https://upstream.example\".capabilities = [\"pull\"]\n", map[string]string{"upstream.example": basicNew}, "line 1"},
		{"_default folder", "_default", "", map[string]string{"upstream.example": basicNew}, ""},
		{"header value with a newline", "upstream.example", "", map[string]string{"upstream.example": "Basic a\nb"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := []byte(tt.in)
			orig := bytes.Clone(in)
			res, err := Merge(in, tt.folder, Options{Headers: tt.headers})
			if err == nil {
				t.Fatalf("Merge accepted it: %q", res.Data)
			}
			if !strings.Contains(err.Error(), tt.line) {
				t.Errorf("error %q does not name %q", err, tt.line)
			}
			for _, secret := range []string{"secret", "Basic"} {
				if strings.Contains(err.Error(), secret) {
					t.Errorf("error %q holds file content", err)
				}
			}
			if !bytes.Equal(in, orig) || res.Data != nil {
				t.Fatal("input touched or output returned")
			}
		})
	}
	if _, err := Merge(nil, "_default", Options{}); !errors.Is(err, ErrDefaultFolder) {
		t.Fatalf("_default: %v", err)
	}
}

func TestFolderHost(t *testing.T) {
	for in, want := range map[string]string{
		"reg.example.com_5000_": "reg.example.com:5000",
		"reg.example.com:5000":  "reg.example.com:5000",
		"docker.io":             "docker.io",
		"my_registry":           "my_registry",
		"a_b_":                  "a_b_",
	} {
		if got, err := FolderHost(in); err != nil || got != want {
			t.Errorf("FolderHost(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"_default", "", "..", "a/b"} {
		if _, err := FolderHost(bad); err == nil {
			t.Errorf("FolderHost(%q) accepted", bad)
		}
	}
}

func TestSecretNeverFormatted(t *testing.T) {
	c := Change{Section: "x", Action: Replaced, Previous: Secret("Basic c2VjcmV0")}
	rec := Record{Changes: []Change{c}}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q"} {
		if s := fmt.Sprintf(verb, rec); strings.Contains(s, "c2VjcmV0") {
			t.Errorf("%s printed the previous value: %s", verb, s)
		}
	}
}

func keyOf(m map[string]string) string {
	for k := range m {
		return k
	}
	return ""
}

func ptr(s string) *string { return &s }

// FuzzMergeRestore: Merge never panics and leaves its input alone; what it
// merges merges again to itself, and Restore gives back the input's bytes.
func FuzzMergeRestore(f *testing.F) {
	for _, s := range []string{
		"",
		"server = \"https://upstream.example\"\n[header]\nAuthorization = \"Basic a\"\n",
		"# c\n[host.\"https://mirror.example\"]\n  capabilities = [\"pull\"] # c\n[host.\"https://mirror.example\".header]\n  X = [\"1\",\n \"2\"]\n",
		"[host.\"https://upstream.example\"]\r\nheader.X-Team = \"t\"\r\nheader = 1\r\n",
		"[host.'upstream.example']\nheader = { X = \"1\", Authorization = [\"Basic x\", 'y'] }",
	} {
		f.Add([]byte(s), true)
	}
	f.Fuzz(func(t *testing.T, data []byte, mirrorToo bool) {
		headers := map[string]string{"upstream.example": basicNew}
		if mirrorToo {
			headers["mirror.example"] = basicNew
		}
		orig := bytes.Clone(data)
		res, err := Merge(data, "upstream.example", Options{Headers: headers})
		if !bytes.Equal(data, orig) {
			t.Fatal("Merge changed its input")
		}
		if err != nil || !res.Changed {
			return
		}
		again, err := Merge(res.Data, "upstream.example", Options{Headers: headers})
		if err != nil || again.Changed {
			t.Fatalf("merging the output again: changed %v, err %v\n%q", again.Changed, err, res.Data)
		}
		back, remove, err := Restore(res.Data, "upstream.example", res.Record)
		if err != nil {
			t.Fatalf("Restore: %v\n in: %q\nout: %q", err, data, res.Data)
		}
		if data == nil {
			if !remove {
				t.Fatalf("created file not removed: %q", back)
			}
			return
		}
		if !bytes.Equal(back, data) {
			t.Fatalf("Restore\n got: %q\nwant: %q", back, data)
		}
	})
}

func TestRestoreAfterOtherEdits(t *testing.T) {
	in := "server = \"https://upstream.example\"\n[host.\"https://mirror.example\"]\n  capabilities = [\"pull\"]\n[host.\"https://b.example\".header]\n  Authorization = \"Basic b2xk\"\n"
	headers := map[string]string{"mirror.example": basicNew, "b.example": basicNew}
	res, err := Merge([]byte(in), "upstream.example", Options{Headers: headers})
	if err != nil || len(res.Record.Changes) != 2 {
		t.Fatalf("Merge: %v, %+v", err, res.Record)
	}
	// The admin adds a comment and a key elsewhere meanwhile; they stay.
	edited := strings.Replace(string(res.Data), "server =", "# moved\nserver =", 1) + "[host.\"https://c.example\"]\n"
	want := strings.Replace(in, "server =", "# moved\nserver =", 1) + "[host.\"https://c.example\"]\n"
	back, remove, err := Restore([]byte(edited), "upstream.example", res.Record)
	if err != nil || remove || string(back) != want {
		t.Fatalf("Restore: %v %v\n got: %q\nwant: %q", err, remove, back, want)
	}
	// One host only.
	var one Record
	for _, c := range res.Record.Changes {
		if c.Section == "https://b.example" {
			one.Changes = append(one.Changes, c)
		}
	}
	back, _, err = Restore(res.Data, "upstream.example", one)
	if err != nil || !strings.Contains(string(back), "Basic b2xk") || !strings.Contains(string(back), basicNew) {
		t.Fatalf("partial Restore: %v\n%q", err, back)
	}
}

func TestRestoreKeepsAnEditedCreatedFile(t *testing.T) {
	res, err := Merge(nil, "upstream.example", Options{Headers: map[string]string{"upstream.example": basicNew}})
	if err != nil {
		t.Fatal(err)
	}
	edited := append(bytes.Clone(res.Data), []byte("[host.\"https://mirror.example\"]\n")...)
	back, remove, err := Restore(edited, "upstream.example", res.Record)
	if err != nil || remove || strings.Contains(string(back), "Authorization =") || !strings.Contains(string(back), "mirror.example") {
		t.Fatalf("Restore of an edited created file: remove %v, err %v\n%q", remove, err, back)
	}
}
