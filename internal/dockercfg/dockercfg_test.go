package dockercfg

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"runtime"
	"strings"
	"testing"

	"github.com/nodecreds/nodecreds/internal/testsupport"
	"github.com/nodecreds/nodecreds/internal/testsupport/consumers"
)

const canary = "s3cr3t-CANARY-pw"

func TestParseValid(t *testing.T) {
	tests := []struct {
		name   string
		format Format
		doc    string
		want   map[string]Entry
	}{
		{
			name:   "dockerconfigjson with auth",
			format: ConfigJSON,
			doc:    `{"auths":{"reg.example.com":{"auth":"` + testsupport.B64("alice:"+canary) + `"}}}`,
			want:   map[string]Entry{"reg.example.com": {Username: "alice", Password: canary}},
		},
		{
			name:   "unpadded auth is accepted like the kubelet does",
			format: ConfigJSON,
			doc:    `{"auths":{"reg.example.com":{"auth":"` + strings.TrimRight(testsupport.B64("al:x"), "=") + `"}}}`,
			want:   map[string]Entry{"reg.example.com": {Username: "al", Password: "x"}},
		},
		{
			name:   "username and password without auth",
			format: ConfigJSON,
			doc:    `{"auths":{"https://index.docker.io/v1/":{"username":"bob","password":"pw","email":"b@example.com"}}}`,
			want:   map[string]Entry{"https://index.docker.io/v1/": {Username: "bob", Password: "pw", Email: "b@example.com"}},
		},
		{
			name:   "auth wins over username/password",
			format: ConfigJSON,
			doc:    `{"auths":{"r.io":{"auth":"` + testsupport.B64("a:b") + `","username":"x","password":"y"}}}`,
			want:   map[string]Entry{"r.io": {Username: "a", Password: "b"}},
		},
		{
			name:   "password containing colons",
			format: ConfigJSON,
			doc:    `{"auths":{"r.io:5000":{"auth":"` + testsupport.B64("a:b:c:d") + `"}}}`,
			want:   map[string]Entry{"r.io:5000": {Username: "a", Password: "b:c:d"}},
		},
		{
			name:   "tokens and unknown entry fields",
			format: ConfigJSON,
			doc:    `{"auths":{"r.io/team":{"auth":"` + testsupport.B64("u:p") + `","identitytoken":"it","registrytoken":"rt","serveraddress":"r.io"}},"credsStore":"x"}`,
			want:   map[string]Entry{"r.io/team": {Username: "u", Password: "p", IdentityToken: "it", RegistryToken: "rt"}},
		},
		{
			name:   "empty auths",
			format: ConfigJSON,
			doc:    `{"auths":{}}`,
			want:   map[string]Entry{},
		},
		{
			name:   "legacy dockercfg",
			format: Legacy,
			doc:    `{"*.example.com":{"auth":"` + testsupport.B64("u:p") + `","email":"e@x"},"[::1]:5000":{"username":"u","password":"p"}}`,
			want: map[string]Entry{
				"*.example.com": {Username: "u", Password: "p", Email: "e@x"},
				"[::1]:5000":    {Username: "u", Password: "p"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			set, _, err := Parse([]byte(tt.doc), tt.format)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if len(set) != len(tt.want) {
				t.Fatalf("got %d entries, want %d", len(set), len(tt.want))
			}
			for _, it := range set {
				if want, ok := tt.want[it.Key]; !ok || want != it.Entry {
					t.Errorf("entry %q = %#v, want %#v", it.Key, it.Entry, want)
				}
			}
		})
	}
}

func TestParseInvalid(t *testing.T) {
	big := `{"auths":{"r.io":{"auth":"` + testsupport.B64("u:"+strings.Repeat("x", MaxSize)) + `"}}}`
	tests := []struct {
		name   string
		format Format
		doc    string
		want   string // substring of the error
	}{
		{"empty", ConfigJSON, "", "empty"},
		{"white space", ConfigJSON, " \n", "empty"},
		{"not json", ConfigJSON, "auths: " + canary, "not valid JSON"},
		{"binary garbage", ConfigJSON, "\x00\xff\xfe" + canary, "not valid JSON"},
		{"trailing garbage", ConfigJSON, `{"auths":{}} ` + canary, "not valid JSON"},
		{"truncated", ConfigJSON, `{"auths":{"r.io":{"auth":"` + testsupport.B64("u:"+canary), "unexpected end"},
		{"array", ConfigJSON, `["` + canary + `"]`, "not a JSON object"},
		{"no auths", ConfigJSON, `{"credsStore":"x"}`, `no "auths"`},
		{"legacy shape in dockerconfigjson", ConfigJSON, `{"r.io":{"auth":"` + testsupport.B64("u:"+canary) + `"}}`, "legacy .dockercfg"},
		{"auths not object", ConfigJSON, `{"auths":"` + canary + `"}`, `"auths" is a string`},
		{"entry not object", ConfigJSON, `{"auths":{"r.io":"` + canary + `"}}`, `registry "r.io": entry is a string`},
		{"auth not base64", ConfigJSON, `{"auths":{"r.io":{"auth":"!!` + canary + `"}}}`, "not valid base64"},
		{"auth without colon", ConfigJSON, `{"auths":{"r.io":{"auth":"` + testsupport.B64(canary) + `"}}}`, "no ':'"},
		{"auth empty user", ConfigJSON, `{"auths":{"r.io":{"auth":"` + testsupport.B64(":"+canary) + `"}}}`, "empty user"},
		{"auth not a string", ConfigJSON, `{"auths":{"r.io":{"auth":12}}}`, `"auth" is a number`},
		{"no credentials", ConfigJSON, `{"auths":{"r.io":{"email":"x@y"}}}`, "no credentials"},
		{"username without password", ConfigJSON, `{"auths":{"r.io":{"username":"u"}}}`, "password"},
		{"password without username", ConfigJSON, `{"auths":{"r.io":{"password":"` + canary + `"}}}`, `"username" is empty`},
		{"empty key", ConfigJSON, `{"auths":{"":{"auth":"` + testsupport.B64("u:"+canary) + `"}}}`, "empty registry key"},
		{"key with space", ConfigJSON, `{"auths":{"r .io":{"auth":"` + testsupport.B64("u:"+canary) + `"}}}`, "white space"},
		{"scheme without host", ConfigJSON, `{"auths":{"https://":{"auth":"` + testsupport.B64("u:"+canary) + `"}}}`, "no host"},
		{"odd scheme", ConfigJSON, `{"auths":{"ftp://r.io":{"auth":"` + testsupport.B64("u:"+canary) + `"}}}`, "scheme"},
		{"bad port", ConfigJSON, `{"auths":{"r.io:99999":{"auth":"` + testsupport.B64("u:"+canary) + `"}}}`, "port"},
		{"empty port", ConfigJSON, `{"auths":{"r.io:":{"auth":"` + testsupport.B64("u:"+canary) + `"}}}`, "empty port"},
		{"oversized", ConfigJSON, big, "larger than the 1 MiB"},
		{"dockerconfigjson shape in dockercfg", Legacy, `{"auths":{"r.io":{"auth":"` + testsupport.B64("u:"+canary) + `"}}}`, ".dockerconfigjson content"},
		{"legacy entry not object", Legacy, `{"r.io":[1]}`, "an array"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			set, _, err := Parse([]byte(tt.doc), tt.format)
			if err == nil {
				t.Fatalf("Parse accepted it: %v", set)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error %v does not wrap ErrInvalid", err)
			}
			msg := err.Error()
			if !strings.Contains(msg, tt.want) {
				t.Errorf("error %q does not say %q", msg, tt.want)
			}
			for _, leak := range []string{canary, testsupport.B64("u:" + canary), testsupport.B64(canary)} {
				if strings.Contains(msg, leak) {
					t.Errorf("error %q leaks a secret value", msg)
				}
			}
		})
	}
}

func TestParseReportsEveryProblem(t *testing.T) {
	doc := `{"auths":{"a.io":{"auth":"%%%"},"b.io":{},"c.io":{"auth":"` + testsupport.B64("u:p") + `"}}}`
	_, _, err := Parse([]byte(doc), ConfigJSON)
	var verr *ValidationError
	if !errors.As(err, &verr) {
		t.Fatalf("want a *ValidationError, got %v", err)
	}
	if len(verr.Problems) != 2 || verr.Problems[0].Key != "a.io" || verr.Problems[1].Key != "b.io" {
		t.Errorf("problems = %v, want a.io and b.io", verr.Problems)
	}
}

func TestEntryEncodingAndRedaction(t *testing.T) {
	e := Entry{Username: "alice", Password: canary, Email: "a@x", IdentityToken: "tok"}
	raw, err := json.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]string
	if err := json.Unmarshal(raw, &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"auth": testsupport.B64("alice:" + canary), "email": "a@x", "identitytoken": "tok"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("encoded %v, want %v", got, want)
	}
	if !strings.HasSuffix(testsupport.B64("alice:"+canary), "=") && len(e.Auth())%4 != 0 {
		t.Errorf("auth %q is not padded", e.Auth())
	}
	for _, s := range []string{fmt.Sprint(e), fmt.Sprintf("%v %+v %#v %s", e, e, e, e), fmt.Sprint(Item{Key: "k", Entry: e})} {
		if strings.Contains(s, canary) || strings.Contains(s, e.Auth()) {
			t.Errorf("formatting leaks the secret: %s", s)
		}
	}
}

func TestAuthIsPadded(t *testing.T) {
	for _, pw := range []string{"", "a", "ab", "abc", "abcd"} {
		a := Entry{Username: "u", Password: pw}.Auth()
		if len(a)%4 != 0 {
			t.Errorf("Auth() for %d-byte password = %q, not padded", len(pw), a)
		}
	}
}

func TestNormalize(t *testing.T) {
	tests := []struct{ in, want string }{
		{"reg.example.com", "reg.example.com"},
		{"https://reg.example.com", "reg.example.com"},
		{"http://REG.example.com/", "REG.example.com"}, // the kubelet matches hosts case-sensitively
		{"DOCKER.IO", "DOCKER.IO"},
		{"https://reg.example.com/v2/", "reg.example.com"},
		{"reg.example.com/v1/", "reg.example.com"},
		{"reg.example.com:5000", "reg.example.com:5000"},
		// As the kubelet files them: a trailing slash stays (r/Team/ does
		// not cover r/Teamx), "/v1" without one is a path, HTTPS:// no scheme.
		{"reg.example.com/Team/", "reg.example.com/Team/"},
		{"reg.example.com/Team", "reg.example.com/Team"},
		{"reg.example.com/v1", "reg.example.com/v1"},
		{"reg.example.com/v2/team/", "reg.example.com/team/"},
		{"reg.example.com/", "reg.example.com"},
		{"HTTPS://reg.example.com", "HTTPS://reg.example.com"}, // not r.example.com
		// User-info is no part of the key to the kubelet's url.Parse: a
		// foreign key with it competes with ours for the registry.
		{"https://robot:pw@reg.example.com/v1/", "reg.example.com"},
		{"robot:pw@reg.example.com", "reg.example.com"},
		{"robot:pw://reg.example.com", "robot:pw://reg.example.com"}, // unparseable: ignored by the kubelet
		{"reg.example.com/te%61m", "reg.example.com/team"},
		{"https://index.docker.io/v1/", "docker.io"},
		{"index.docker.io", "docker.io"},
		{"docker.io", "docker.io"},
		{"registry-1.docker.io", "registry-1.docker.io"}, // not Docker Hub to the kubelet or the docker CLI
		{"*.example.com", "*.example.com"},
	}
	for _, tt := range tests {
		if got := Normalize(tt.in); got != tt.want {
			t.Errorf("Normalize(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestValidateKey(t *testing.T) {
	good := []string{"r.io", "localhost", "localhost:5000", "127.0.0.1:5000", "[::1]:5000", "https://r.io/v1/", "http://r.io", "*.r.io", "r.io/team/sub", "my_registry.local", "[2001:db8::1]/team", "R.IO/Team_a/b-c.d",
		"*.example.com", "a.*.example.com", "r?.example.com", "*.eu.example.co.uk", "*.r.test"}
	bad := []string{"", " ", "r.io ", "https://", "https:///x", "ftp://r.io", "r.io:x", "r.io:0", ":5000", "r..io", "r.io\t", "[::1", "r.io:", "a/b c", "r!.io", "r.io/team/robot:pw", "r.io/x?y", "r.io/x#y", "r.io/%41", "r.io/a~b", "[robot:pw]:5000", "[fe80::1%25eth0]", "r.io:+80", "pw@r.io/x", "r.io/x@y",
		"*", "*.*", "*.*.*", "?", "*:5000", "https://*/v2/", "*.?", "**",
		// Wildcards beyond one registrable domain: every registry under
		// .com, .co.uk, .test would get the credential.
		"*.com", "*e*.*", "reg*.com", "*.co.uk", "*.example.*", "a.*.com", "*.test", "*.COM:5000",
		// Schemes the kubelet does not read as schemes.
		"HTTPS://r.io", "Https://r.io", "HTTP://r.io"}
	for _, k := range good {
		if err := ValidateKey(k); err != nil {
			t.Errorf("ValidateKey(%q) = %v, want ok", k, err)
		}
	}
	for _, k := range bad {
		if err := ValidateKey(k); err == nil {
			t.Errorf("ValidateKey(%q) = nil, want an error", k)
		}
	}
}

func TestView(t *testing.T) {
	e := func(u string) Entry { return Entry{Username: u} }
	a := NamedSet{Name: "first", Set: Set{{Key: "docker.io", Entry: e("a")}, {Key: "https://r.io/", Entry: e("a2")}, {Key: "r.io", Entry: e("a")}}}
	b := NamedSet{Name: "second", Set: Set{{Key: "https://index.docker.io/v1/", Entry: e("b")}, {Key: "q.io", Entry: e("b")}, {Key: "r.io/v2/", Entry: e("b")}}}
	tests := []struct {
		reader Reader
		want   string // key=user@source ...
	}{
		// Every spelling of the first source, as spelled: the kubelet
		// tries each, as with the Secret as an imagePullSecret.
		{Kubelet, "docker.io=a@first https://r.io/=a2@first r.io=a@first q.io=b@second"},
		// One key per registry, the one the docker CLI looks up first;
		// Docker Hub under its key.
		{DockerCLI, DockerHubKey + "=a@first r.io=a@first q.io=b@second"},
	}
	for _, tt := range tests {
		set, clashes := View(tt.reader, a, b)
		var got []string
		for _, it := range set {
			got = append(got, it.Key+"="+it.Entry.Username+"@"+it.Source)
		}
		if strings.Join(got, " ") != tt.want {
			t.Errorf("%v: %s, want %s", tt.reader, strings.Join(got, " "), tt.want)
		}
		if len(clashes) != 2 || clashes[0].Winner != "first" || clashes[0].Loser != "second" || clashes[0].Registry != "docker.io" || clashes[1].Registry != "r.io" {
			t.Errorf("%v: clashes = %v", tt.reader, clashes)
		}
	}
}

func TestReaderOf(t *testing.T) {
	for path, want := range map[string]Reader{
		"/var/lib/kubelet/config.json": Kubelet,
		"/root/.docker/config.json":    DockerCLI,
		"/home/ci/.docker/config.json": DockerCLI,
		"/etc/kubelet/config.json":     Kubelet,
		"/root/.docker/other.json":     Kubelet,
	} {
		if got := ReaderOf(path); got != want {
			t.Errorf("ReaderOf(%s) = %v, want %v", path, got, want)
		}
	}
}

// Two keys of one document for one registry are both kept (the kubelet
// tries both); the clash names the one the docker CLI's file gets.
func TestParseDuplicateRegistryInOneDocument(t *testing.T) {
	doc := `{"auths":{"docker.io":{"auth":"` + testsupport.B64("a:1") + `"},"https://index.docker.io/v1/":{"auth":"` + testsupport.B64("b:2") + `"}}}`
	set, clashes, err := Parse([]byte(doc), ConfigJSON)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(set.Keys()) != "[docker.io https://index.docker.io/v1/]" || len(clashes) != 1 || clashes[0].WinnerKey != DockerHubKey || clashes[0].LoserKey != "docker.io" {
		t.Errorf("set %v clashes %v; want both keys kept and %s named as the docker CLI's", set.Keys(), clashes, DockerHubKey)
	}
}

// FuzzParse: whatever Parse accepts encodes to something both consumers
// decode back to the same user and password; and what it decodes is what
// the kubelet decodes from the same Secret (its struct shapes) — keys,
// users, passwords and emails — with the tokens the docker CLI's entry type
// reads: whenever nodecreds accepts a Secret, the kubelet would too, and
// would see the same entries.
func FuzzParse(f *testing.F) {
	f.Add([]byte(`{"auths":{"r.io":{"auth":"dTpw"}}}`), false)
	f.Add([]byte(`{"r.io":{"username":"u","password":"p"}}`), true)
	f.Add([]byte(`{"auths":{"https://index.docker.io/v1/":{"auth":"dTpw=="}}}`), false)
	f.Add([]byte(`{"auths":{"a.io":{"auth":"dTpw"}},"Auths":{"b.io":{"Auth":"dTpw","AUTH":null,"email":"e"}},"auths":null,"auth\u017f":{"c.io":{"UserName":"u","password":"p","identityToken":"t"}}}`), false)
	f.Add([]byte(`{"r.io":{"auth":" dTpw"},"r.io":{"auth":"dTpw\n"}}`), true)
	f.Add([]byte(`{"auths":{"r.io":"x","r.io":{"auth":"dTpw"}},"HttpHeaders":{"a":"b"}}`), false)
	f.Fuzz(func(t *testing.T, data []byte, legacy bool) {
		format := ConfigJSON
		if legacy {
			format = Legacy
		}
		set, _, err := Parse(data, format)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			return
		}
		// Whatever is accepted must encode to something both consumers
		// decode back to the same user and password.
		seen := map[string]bool{}
		for _, it := range set {
			if err := ValidateKey(it.Key); err != nil {
				t.Fatalf("accepted key %q: %v", it.Key, err)
			}
			if seen[it.Key] {
				t.Fatalf("duplicate key %q", it.Key)
			}
			seen[it.Key] = true
			u, p, reason := DecodeAuth(it.Entry.Auth())
			if reason != "" || u != it.Entry.Username || p != it.Entry.Password || u == "" {
				t.Fatalf("round trip of %q failed: %s", it.Key, reason)
			}
		}
		decoded, problems, err := decode(data, format)
		if err != nil || len(problems) > 0 {
			t.Fatalf("Parse accepted what decode refuses: %v %v", err, problems)
		}
		checkLikeTheKubelet(t, data, legacy, decoded)
	})
}

// checkLikeTheKubelet fails unless the kubelet decodes data (a Secret's
// document) without error into exactly the entries of set, and the docker
// CLI's entry type reads the same tokens.
func checkLikeTheKubelet(t *testing.T, data []byte, legacy bool, set Set) {
	t.Helper()
	var k consumers.KubeletConfig
	var err error
	if legacy {
		k, err = consumers.KubeletLegacy(data)
	} else {
		var cfg consumers.KubeletConfigJSON
		cfg, err = consumers.Kubelet(data)
		k = cfg.Auths
	}
	if err != nil {
		t.Fatalf("%q: nodecreds accepts what the kubelet refuses: %v", data, err)
	}
	d, err := consumers.DockerCLIEntries(data, legacy)
	if err != nil {
		t.Fatalf("%q: nodecreds accepts what the docker CLI's entry type refuses: %v", data, err)
	}
	if len(k) != len(set) {
		t.Fatalf("%q: nodecreds reads %q, the kubelet %d entries", data, set.Keys(), len(k))
	}
	for _, it := range set {
		want, ok := k[it.Key]
		if !ok || want.Username != it.Entry.Username || want.Password != it.Entry.Password || want.Email != it.Entry.Email {
			t.Fatalf("%q: entry %q is %#v to nodecreds and %q/%d/%q to the kubelet", data, it.Key, it.Entry, want.Username, len(want.Password), want.Email)
		}
		if tok := d[it.Key]; tok.IdentityToken != it.Entry.IdentityToken || tok.RegistryToken != it.Entry.RegistryToken {
			t.Fatalf("%q: entry %q has other tokens to the docker CLI", data, it.Key)
		}
	}
}

// TestParseReadsLikeTheKubelet (issue 21, point 6, for Secrets): a Secret
// is read as the kubelet reads it as an imagePullSecret — two "auths"
// objects merged, any spelling of the field and of entry fields, a null
// field leaving what came before, a null "auths" starting afresh — and what
// the kubelet would refuse is refused, even in an entry a later key
// replaces.
func TestParseReadsLikeTheKubelet(t *testing.T) {
	a, b := testsupport.B64("alice:"+canary), testsupport.B64("bob:"+canary)
	tests := []struct {
		name, doc string
		legacy    bool
		want      map[string]string // key → user; nil: refused
	}{
		{"two auths objects", `{"auths":{"a.test":{"auth":"` + a + `"}},"auths":{"b.test":{"auth":"` + b + `"}}}`, false, map[string]string{"a.test": "alice", "b.test": "bob"}},
		{"Auths", `{"Auths":{"a.test":{"auth":"` + a + `"}}}`, false, map[string]string{"a.test": "alice"}},
		{"the later of auth and Auth", `{"auths":{"a.test":{"auth":"` + a + `","Auth":"` + b + `"}}}`, false, map[string]string{"a.test": "bob"}},
		{"a null field keeps the earlier", `{"auths":{"a.test":{"auth":"` + a + `","auth":null}}}`, false, map[string]string{"a.test": "alice"}},
		{"Username and Password", `{"auths":{"a.test":{"Username":"carol","PASSWORD":"x"}}}`, false, map[string]string{"a.test": "carol"}},
		{"a null auths starts afresh", `{"auths":{"a.test":{"auth":"` + a + `"}},"auths":null,"auths":{"b.test":{"auth":"` + b + `"}}}`, false, map[string]string{"b.test": "bob"}},
		{"the later of two keys", `{"a.test":{"auth":"` + a + `"},"a.test":{"auth":"` + b + `"}}`, true, map[string]string{"a.test": "bob"}},
		{"an entry of the wrong type, replaced", `{"auths":{"a.test":"x","a.test":{"auth":"` + a + `"}}}`, false, nil},
		{"a field of the wrong type, replaced", `{"auths":{"a.test":{"auth":5},"a.test":{"auth":"` + a + `"}}}`, false, nil},
		{"a bad auth, replaced", `{"a.test":{"auth":"!"},"a.test":{"auth":"` + a + `"}}`, true, nil},
		{"HttpHeaders of the wrong type", `{"auths":{"a.test":{"auth":"` + a + `"}},"HttpHeaders":5}`, false, nil},
		{"white space before auth", `{"auths":{"a.test":{"auth":" ` + a + `"}}}`, false, nil},
		{"only a null auths", `{"auths":{"a.test":{"auth":"` + a + `"}},"auths":null}`, false, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			format := ConfigJSON
			if tt.legacy {
				format = Legacy
			}
			set, _, err := Parse([]byte(tt.doc), format)
			if tt.want == nil {
				if err == nil {
					t.Fatalf("accepted: %v", set.Keys())
				}
				if strings.Contains(err.Error(), canary) {
					t.Errorf("error %q leaks a secret", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]string{}
			for _, it := range set {
				got[it.Key] = it.Entry.Username
			}
			if !maps.Equal(got, tt.want) {
				t.Errorf("entries %v, want %v", got, tt.want)
			}
			checkLikeTheKubelet(t, []byte(tt.doc), tt.legacy, set)
		})
	}
}

// TestParseEntryLimit (issue 21, point 4): a Secret of more than
// MaxEntries entries is refused, counted before any is built, with a
// reason naming the limit; at the limit it is accepted.
func TestParseEntryLimit(t *testing.T) {
	doc := func(n int, legacy bool) []byte {
		var b strings.Builder
		if !legacy {
			b.WriteString(`{"auths":{"r0.t":{"auth":"dTpw"}},"auths":{`)
		} else {
			b.WriteString(`{"r0.t":{"auth":"dTpw"},`)
		}
		for i := range n - 1 {
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, `"r%d.t":{"auth":"dTpw"}`, i)
		}
		if !legacy {
			b.WriteString(`}`)
		}
		b.WriteString(`}`)
		return []byte(b.String())
	}
	for _, legacy := range []bool{false, true} {
		format := ConfigJSON
		if legacy {
			format = Legacy
		}
		if set, _, err := Parse(doc(MaxEntries, legacy), format); err != nil || len(set) != MaxEntries-1 {
			t.Errorf("legacy %v: %d entries at the limit: %d, %v", legacy, MaxEntries, len(set), err)
		}
		over := doc(MaxEntries+1, legacy)
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		_, _, err := Parse(over, format)
		runtime.ReadMemStats(&after)
		if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("more than the %d nodecreds accepts", MaxEntries)) {
			t.Errorf("legacy %v: one over the limit: %v", legacy, err)
		}
		if got := after.TotalAlloc - before.TotalAlloc; got > 1<<20 {
			t.Errorf("legacy %v: refusing it allocated %d KiB", legacy, got>>10)
		}
	}
}

// A key carrying user-info is refused without echoing it: the error reaches
// logs, Events and the Node condition.
func TestUserInfoKeyNotEchoed(t *testing.T) {
	for _, key := range []string{"user:PASSWORD@r.test", "https://user:PASSWORD@r.test/v2/", "user:PASSWORD@r.test:5000", "PASSWORD@r.test", "https://u:PASSWORD@x://r.test"} {
		doc := `{"auths":{"` + key + `":{"auth":"` + testsupport.B64("u:p") + `"}}}`
		_, _, err := Parse([]byte(doc), ConfigJSON)
		if err == nil {
			t.Errorf("%s: accepted", key)
			continue
		}
		if strings.Contains(err.Error(), "PASSWORD") || !strings.Contains(err.Error(), "user-info") {
			t.Errorf("%s: error %q echoes the user-info or does not say what is wrong", key, err)
		}
	}
}

// Wildcard-only keys match every registry; *.example.com is fine.
func TestAllWildcardKeyRefused(t *testing.T) {
	_, _, err := Parse([]byte(`{"auths":{"*.*":{"auth":"`+testsupport.B64("u:p")+`"}}}`), ConfigJSON)
	if err == nil || !strings.Contains(err.Error(), "matches every host") {
		t.Errorf("want a 'matches every host' error, got %v", err)
	}
	if _, _, err := Parse([]byte(`{"auths":{"*.example.com":{"auth":"`+testsupport.B64("u:p")+`"}}}`), ConfigJSON); err != nil {
		t.Errorf("*.example.com refused: %v", err)
	}
}

// Keys that differ only in case are two registries to the kubelet, so both
// are kept; every key keeps its spelling (the docker CLI's file gets Docker
// Hub under its own key: TestView).
func TestCaseAndDockerHubKeys(t *testing.T) {
	doc := `{"auths":{"R.TEST/":{"auth":"` + testsupport.B64("upper:1") + `"},"r.test":{"auth":"` + testsupport.B64("lower:2") + `"},"docker.io":{"auth":"` + testsupport.B64("hub:3") + `"}}}`
	set, clashes, err := Parse([]byte(doc), ConfigJSON)
	if err != nil || len(clashes) != 0 {
		t.Fatalf("Parse: %v, clashes %v", err, clashes)
	}
	got := map[string]string{}
	for _, it := range set {
		got[it.Key] = it.Entry.Username
	}
	want := map[string]string{"R.TEST/": "upper", "r.test": "lower", "docker.io": "hub"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("entries %v, want %v", got, want)
	}
}

// TestViewClashesAsTheKubeletFilesKeys: two sources clash only on keys the
// kubelet files under one index key, so a key it would use is never
// dropped for one it files elsewhere (r.test/v1 is a path to it; HTTPS://
// is no scheme; r.test/team/ does not cover r.test/teamx).
func TestViewClashesAsTheKubeletFilesKeys(t *testing.T) {
	for _, first := range []string{"r.test/v1", "r.test/team/", "r.test/team"} {
		a := NamedSet{Name: "a", Set: Set{{Key: first, Entry: Entry{Username: "a"}}}}
		b := NamedSet{Name: "b", Set: Set{{Key: "r.test", Entry: Entry{Username: "b"}}, {Key: "r.test/team/", Entry: Entry{Username: "b"}}}}
		set, clashes := View(Kubelet, a, b)
		want := 3
		if first == "r.test/team/" {
			want = 2 // the same key: b's is a clash
		}
		if len(set) != want || len(clashes) != 3-want {
			t.Errorf("%s before r.test and r.test/team/: kept %v, clashes %v", first, set.Keys(), clashes)
		}
	}
}
