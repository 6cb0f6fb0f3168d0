package dockercfg

import (
	"fmt"
	"strings"
	"testing"

	"github.com/nodecreds/nodecreds/internal/testsupport"
)

// keyCanary is a password hidden in registry keys; no piece of it of
// testsupport.LeakMin characters may reach any output.
const keyCanary = "Zq7CanaryKeyPw9"

// Every key shape that carries a password is refused, and neither the
// refusal nor the key as printed (SafeKey, Problem, Clash) holds any piece
// of it.
func TestUserInfoNeverPrinted(t *testing.T) {
	for _, key := range testsupport.UserInfoKeys(keyCanary) {
		t.Run(key, func(t *testing.T) {
			err := ValidateKey(key)
			if err == nil {
				t.Fatalf("ValidateKey accepted a key holding a password")
			}
			doc := `{"auths":{` + jsonString(key) + `:{"auth":"` + testsupport.B64("u:p") + `"}}}`
			_, _, perr := Parse([]byte(doc), ConfigJSON)
			if perr == nil {
				t.Fatalf("Parse accepted it")
			}
			clash := Clash{Registry: Normalize(key), WinnerKey: key, Winner: "a", LoserKey: key, Loser: "b"}
			for what, text := range map[string]string{
				"ValidateKey": err.Error(), "Parse": perr.Error(), "SafeKey": SafeKey(key),
				"Problem": Problem{Key: key, Reason: err.Error()}.String(), "Clash": clash.String(),
			} {
				if leak := testsupport.Leak(text, keyCanary); leak != "" {
					t.Errorf("%s prints %q, which holds %q of the password", what, text, leak)
				}
			}
		})
	}
}

// SafeKey still names what it can: valid keys as they are, the host of an
// invalid key.
func TestSafeKey(t *testing.T) {
	tests := []struct{ key, want string }{
		{"r.test", "r.test"},
		{"https://r.test:5000/v2/team", "https://r.test:5000/v2/team"},
		{"[::1]:5000", "[::1]:5000"},
		{"*.example.com/x", "*.example.com/x"},
		{"robot:pw@r.test", "<redacted>@r.test"},
		{"https://robot:pw@r.test/v1/", "https://<redacted>@r.test/v1/"},
		{"robot:a/b@r.test:5000/team", "<redacted>@r.test:5000/team"},
		{"https://robot%3Apw@r.test", "https://<redacted>@r.test"},
		{"robot:pw%40r.test", "<redacted>@r.test"},
		{"robot:pw", "robot:<redacted>"},
		{"robot:pw/more", "robot:<redacted>/<redacted>"},
		{"r.test/team/robot:pw", "r.test/<redacted>"},
		{"r.test/te%61m", "r.test/<redacted>"},
		{"robot:pw://r.test", "<redacted>"},
		{"ftp://r.test", "<redacted>://r.test"},
		{"r.test/team?token=x#y", "r.test/team"},
		{"r test", "<redacted>"},
		{"[robot:pw]:5000", "<redacted>:5000"},
		{"r.test:99999", "r.test:99999"},
	}
	for _, tt := range tests {
		if got := SafeKey(tt.key); got != tt.want {
			t.Errorf("SafeKey(%q) = %q, want %q", tt.key, got, tt.want)
		}
	}
}

// Refusals describe, they never quote: not the scheme, not a character,
// not the port.
func TestValidateKeyQuotesNothing(t *testing.T) {
	for _, key := range []string{
		keyCanary + "://r.test", "r.test:" + keyCanary, "r" + keyCanary + "!.test", "[" + keyCanary + "]", "r.test/" + keyCanary + " x",
	} {
		err := ValidateKey(key)
		if err == nil {
			t.Errorf("%q accepted", key)
			continue
		}
		if leak := testsupport.Leak(err.Error(), keyCanary); leak != "" {
			t.Errorf("ValidateKey(%q) = %q, which quotes %q", key, err, leak)
		}
	}
}

// FuzzSafeKey puts a password anywhere in a key's user-info — after any
// scheme, among any characters, before any '@' or "%40" and any host —
// and requires that no piece of it survives ValidateKey's error, SafeKey
// or a Problem.
func FuzzSafeKey(f *testing.F) {
	f.Add("https://robot:", "/x", "registry.example.com/v1/", uint8(0))
	f.Add("", "", "r.test", uint8(1))
	f.Add("robot%3A", "?#:", "r.test:5000", uint8(2))
	f.Add("u:", "", "", uint8(3))
	f.Fuzz(func(t *testing.T, before, after, rest string, shape uint8) {
		var key string
		switch shape % 4 {
		case 0: // user-info, ended by '@'
			key = before + keyCanary + after + "@" + rest
		case 1: // ended by an encoded '@'
			key = before + keyCanary + after + "%40" + rest
		case 2: // user:password with no '@': a "port"
			key = strings.ReplaceAll(strings.ReplaceAll(before, "@", ""), ":", "") + ":" + keyCanary + after
			rest = ""
		case 3: // user:password as a "scheme"
			key = strings.ReplaceAll(before, "@", "") + ":" + keyCanary + after + "://" + rest
		}
		// What follows the user-info is the reader's, not the password:
		// only a rest without a piece of the password can be judged.
		if testsupport.Leak(rest, keyCanary) != "" || shape%4 == 3 && testsupport.Leak(after, keyCanary) != "" {
			return
		}
		err := ValidateKey(key)
		if err == nil {
			t.Fatalf("ValidateKey accepted %q", key)
		}
		for what, text := range map[string]string{"ValidateKey": err.Error(), "SafeKey": SafeKey(key), "Problem": Problem{Key: key, Reason: err.Error()}.String()} {
			if leak := testsupport.Leak(text, keyCanary); leak != "" {
				t.Fatalf("%s of %q prints %q, which holds %q of the password", what, key, text, leak)
			}
		}
	})
}

func jsonString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteString(`\` + string(r))
		case r < 0x20:
			b.WriteString(`\u00`)
			b.WriteByte("0123456789abcdef"[r>>4])
			b.WriteByte("0123456789abcdef"[r&15])
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// FuzzSafeKeyURLUserInfo takes any key and the user-info a URL parser (as
// the kubelet's url.Parse) reads in it — the authority after the scheme,
// up to its last '@' — and requires that SafeKey prints no 4 characters
// of it that the rest of the key does not also hold.
func FuzzSafeKeyURLUserInfo(f *testing.F) {
	for _, k := range testsupport.UserInfoKeys(keyCanary) {
		f.Add(k)
	}
	f.Fuzz(func(t *testing.T, key string) {
		s := key
		prefix := ""
		if i := strings.Index(s, "://"); i >= 0 {
			prefix, s = s[:i+3], s[i+3:]
		}
		authority := s
		if i := strings.IndexAny(s, "/?#"); i >= 0 {
			authority = s[:i]
		}
		at := strings.LastIndex(authority, "@")
		if at < 0 {
			return
		}
		userinfo, rest := authority[:at], prefix+s[at+1:]
		// What SafeKey printed of the key, between its "<redacted>"s.
		printed := strings.Split(strings.ReplaceAll(SafeKey(key), redacted+"@", redacted), redacted)
		for i := 0; i+testsupport.LeakMin <= len(userinfo); i++ {
			piece := userinfo[i : i+testsupport.LeakMin]
			for _, p := range printed {
				if strings.Contains(p, piece) && !strings.Contains(rest, piece) {
					t.Fatalf("SafeKey(%q) = %q prints %q of the user-info %q", key, SafeKey(key), piece, userinfo)
				}
			}
		}
	})
}

// TestSafeUsername: a username that may be the secret is never printed,
// by SafeUsername or an Entry's String (logs, errors).
func TestSafeUsername(t *testing.T) {
	const pw = "Kp3UsernamePw"
	for _, tt := range []struct{ user, password, want string }{
		{"robot", pw, "robot"},
		{pw, pw, redacted},
		{"robot+" + pw, pw, redacted},
		{pw, "", redacted},
		{"", pw, ""},
	} {
		if got := SafeUsername(tt.user, tt.password); got != tt.want {
			t.Errorf("SafeUsername(%q, %q) = %q, want %q", tt.user, tt.password, got, tt.want)
		}
		e := Entry{Username: tt.user, Password: tt.password}
		for _, s := range []string{e.String(), fmt.Sprintf("%v %+v %#v %s", e, e, e, e)} {
			if tt.want == redacted && strings.Contains(s, pw) {
				t.Errorf("an Entry prints the password: %s", s)
			}
		}
	}
}
