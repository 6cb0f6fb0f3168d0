package testsupport

import "strings"

// LeakMin is the shortest piece of a secret the leak checks look for: a
// redaction that lets four characters of a password through has failed.
const LeakMin = 4

// Leak returns the longest piece (at least LeakMin bytes) of secret that
// text holds, or "" when it holds none.
func Leak(text, secret string) string {
	for n := len(secret); n >= LeakMin; n-- {
		for i := 0; i+n <= len(secret); i++ {
			if strings.Contains(text, secret[i:i+n]) {
				return secret[i : i+n]
			}
		}
	}
	return ""
}

// UserInfoKeys returns registry keys of many shapes that carry secret where
// a reader would take it for a password: in the user-info (before the last
// '@', plain or percent-encoded, after a scheme or not, holding '/', '?',
// '#', ':' or '%40'), as a "port" (user:password without '@'), or as a
// "scheme" (user:password://host). None of them is a valid registry key;
// secret must start with a letter and must not hold '@'.
func UserInfoKeys(secret string) []string {
	const host = "registry.example.com"
	return []string{
		"robot:Xy7/" + secret + "@" + host,
		"robot:" + secret + "@" + host,
		secret + "@" + host,
		"https://robot:" + secret + "@" + host + "/v1/",
		"http://robot:" + secret + "@" + host + ":5000/v2/team",
		"HTTPS://robot:" + secret + "@" + host,
		"https://:" + secret + "@" + host,
		"https://robot%3A" + secret + "@" + host,
		"https://robot%3A" + secret + "%40" + host,
		"robot:" + secret + "%40" + host + "/team",
		"robot:" + secret + "%2540" + host,
		"robot:" + secret + "\uff20" + host,
		"robot:" + secret + "/x@" + host,
		"robot:x/" + secret + "/y@" + host + "/team",
		"robot:x?" + secret + "@" + host,
		"robot:x#" + secret + "@" + host,
		"robot:x:" + secret + "@" + host,
		"robot:x%40" + secret + "@" + host,
		"robot:x@y:" + secret + "@" + host,
		"robot:" + secret + "@" + host + "/team?x=1#y",
		"robot:" + secret + "@*.example.com",
		"robot:" + secret + "@127.0.0.1:5000",
		"robot:" + secret + "@[::1]:5000",
		"robot:" + secret + "@",
		"https://robot:" + secret + "@",
		"robot:" + secret + "@https://" + host,
		"https://robot:" + secret + "@" + host + "@",
		"robot:" + secret + " @" + host,
		"robot:" + secret,
		"robot:" + secret + "/team",
		"robot:" + secret + "?x",
		"robot:" + secret + "#x",
		"robot:" + secret + ":5000",
		"https://robot:" + secret,
		"https://robot:" + secret + "/v2/",
		"robot:" + secret + "://" + host,
		"robot:x/" + secret + "://" + host,
		"robot:Ca://" + secret,
		"[robot:" + secret + "]:5000",
		"https://[robot:" + secret + "]/v2/",
		"[::1]:" + secret,
		host + ":" + secret + "/v2/",
		// A password in the path: url.Parse takes it, the kubelet too.
		host + "/team:" + secret,
		host + "/" + secret + "%3A",
		"https://" + host + "/v2/robot:" + secret,
	}
}
