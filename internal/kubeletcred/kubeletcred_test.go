package kubeletcred

import (
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
