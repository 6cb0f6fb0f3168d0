package kubeletcred

import (
	"strings"
	"testing"
)

func TestKeyMatching(t *testing.T) {
	creds := map[string]Cred{}
	for _, k := range []string{"reg.test", "https://reg.test:5000/v2/", "team.test/private", "*.glob.test", "https://index.docker.io/v1/"} {
		creds[k] = Cred{Key: k, Username: "u-" + k}
	}
	ring := NewKeyring(creds)
	tests := []struct {
		image string
		want  string // key found first, "" for none
	}{
		{"reg.test/app:v1", "reg.test"},
		{"reg.test:5000/app", "https://reg.test:5000/v2/"},
		{"reg.test:5001/app", ""},
		{"team.test/private/app", "team.test/private"},
		{"team.test/public/app", ""},
		{"eu.glob.test/app", "*.glob.test"},
		{"a.eu.glob.test/app", ""},
		{"busybox", "https://index.docker.io/v1/"},
		{"library/busybox:1", "https://index.docker.io/v1/"},
		{"docker.io/someone/app", "https://index.docker.io/v1/"},
		{"quay.test/app", ""},
	}
	for _, tt := range tests {
		repo, err := RepoOf(tt.image, false)
		if err != nil {
			t.Fatal(err)
		}
		got := ""
		if c := ring.Lookup(repo); len(c) > 0 {
			got = c[0].Key
		}
		if got != tt.want {
			t.Errorf("%s (repo %s): found %q, want %q", tt.image, repo, got, tt.want)
		}
	}
}

// TestLookupEveryCredential: every credential the kubelet tries, in its
// order, under its index key; the Docker Hub fallback under
// index.docker.io (which a credential provider must answer with for the
// kubelet to apply the same fallback); a credential provider's answer
// covers every index key of the image's registry, one credential each.
func TestLookupEveryCredential(t *testing.T) {
	creds := map[string]Cred{}
	for _, k := range []string{"https://r.test/", "r.test", "r.test/team", "*.test", "other.test", "https://index.docker.io/v1/"} {
		creds[k] = Cred{Key: k}
	}
	ring := NewKeyring(creds)
	render := func(ms []Match) string {
		var out []string
		for _, m := range ms {
			out = append(out, m.Pattern+"="+m.Key)
		}
		return strings.Join(out, " ")
	}
	for _, tt := range []struct{ repo, lookup, answer string }{
		{"r.test/team/app", "r.test/team=r.test/team r.test=https://r.test/ r.test=r.test *.test=*.test", "r.test/team=r.test/team r.test=https://r.test/ *.test=*.test"},
		{"r.test/other/app", "r.test=https://r.test/ r.test=r.test *.test=*.test", "r.test/team=r.test/team r.test=https://r.test/ *.test=*.test"},
		{"localhost/app", "index.docker.io=https://index.docker.io/v1/", "index.docker.io=https://index.docker.io/v1/"},
		{"docker.io/library/busybox", "index.docker.io=https://index.docker.io/v1/", "index.docker.io=https://index.docker.io/v1/"},
		{"q.example/app", "", ""},
	} {
		if got := render(ring.Lookup(tt.repo)); got != tt.lookup {
			t.Errorf("Lookup(%s) = %s, want %s", tt.repo, got, tt.lookup)
		}
		if got := render(ring.ForRegistry(tt.repo)); got != tt.answer {
			t.Errorf("ForRegistry(%s) = %s, want %s", tt.repo, got, tt.answer)
		}
	}
}

// TestReadRefusesWhatTheKubeletRefuses: a file the kubelet's decoding
// refuses is unreadable here too (check then says so): HttpHeaders that are
// not strings, an auth that does not decode in an entry a later duplicate
// replaces.
func TestReadRefusesWhatTheKubeletRefuses(t *testing.T) {
	good := `{"auth":"dTpw"}`
	for _, doc := range []string{
		`{"auths":{"r.test":` + good + `},"HttpHeaders":{"X":1}}`,
		`{"auths":{"r.test":` + good + `},"httpheaders":["x"]}`,
		`{"auths":{"r.test":{"auth":"not base64!"},"r.test":` + good + `}}`,
	} {
		if _, err := parseKubelet([]byte(doc), false); err == nil {
			t.Errorf("%s: read, the kubelet refuses it", doc)
		}
	}
	if _, err := parseKubelet([]byte(`{"auths":{"r.test":`+good+`},"HttpHeaders":{"X":"y"}}`), false); err != nil {
		t.Errorf("good file refused: %v", err)
	}
}
