package main

import (
	"strings"
	"testing"
)

func TestRedactURLs(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`parse "https://u:CANARY@h:6443:x%zz": invalid port`, `parse "https://<redacted>@h:6443:x%zz": invalid port`},
		{`proxy-url socks7://u:CANARY@p not supported`, `proxy-url socks7://<redacted>@p not supported`},
		{`--api-server https://h/?token=CANARY: must have no query`, `--api-server https://h/?<redacted> must have no query`},
		{`https://h/path#CANARY`, `https://h/path?<redacted>`},
		{`no URL here: a?b`, `no URL here: a?b`},
		{`https://h:6443/api/v1 refused`, `https://h:6443/api/v1 refused`},
	} {
		got := redactURLs(tc.in)
		if strings.Contains(got, "CANARY") || got != tc.want {
			t.Errorf("redactURLs(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	long := oneLine(strings.Repeat("a\nb ", 2000))
	if len(long) > 1024+len("…") || strings.Contains(long, "\n") {
		t.Errorf("oneLine gave %d bytes", len(long))
	}
}
