package pullsecret

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/nodecreds/nodecreds/internal/testsupport"
)

func TestNames(t *testing.T) {
	for _, tc := range []struct {
		value string
		want  []string
		err   bool
	}{
		{value: "a", want: []string{"a"}},
		{value: " a , b,, a ", want: []string{"a", "b"}},
		{value: "b,a", want: []string{"b", "a"}},
		{value: "", err: true},
		{value: " , ", err: true},
		{value: "Upper", err: true},
		{value: "a/b", err: true},
		{value: "../x", err: true},
		{value: "a,b,c,d,e,f,g,h,i", err: true},
		{value: "a,b,c,d,e,f,g,h", want: []string{"a", "b", "c", "d", "e", "f", "g", "h"}},
	} {
		got, err := Names(tc.value)
		if tc.err {
			if ReasonOf(err) != BadAnnotation {
				t.Errorf("Names(%q) = %v, %v; want %s", tc.value, got, err, BadAnnotation)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("Names(%q) = %v, %v; want %v", tc.value, got, err, tc.want)
		}
	}
}

// secrets is a namespace's Secrets; an error stands for an API answer.
type secrets map[string]any

type getter struct {
	byNS  map[string]secrets
	asked []string
}

func (g *getter) GetSecret(_ context.Context, namespace, name string) (*corev1.Secret, error) {
	g.asked = append(g.asked, namespace+"/"+name)
	switch v := g.byNS[namespace][name].(type) {
	case *corev1.Secret:
		return v, nil
	case error:
		return nil, v
	}
	return nil, apierrors.NewNotFound(schema.GroupResource{Resource: "secrets"}, name)
}

func pull(name, body string) *corev1.Secret {
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Type:       corev1.SecretTypeDockerConfigJson,
		Data:       map[string][]byte{corev1.DockerConfigJsonKey: []byte(body)},
	}
}

func auths(key, user, pass string) string {
	return `{"auths":{"` + key + `":{"auth":"` + testsupport.B64(user+":"+pass) + `"}}}`
}

func TestResolve(t *testing.T) {
	const pw = "canary-pw-resolve"
	forbidden := apierrors.NewForbidden(schema.GroupResource{Resource: "secrets"}, "x", errors.New("no"))
	for _, tc := range []struct {
		name     string
		ns       secrets
		names    []string
		image    string
		reason   Reason
		user     string   // the first match's username
		patterns []string // every match's pattern
		asked    []string
	}{
		{name: "answered", ns: secrets{"a": pull("a", auths("r.test", "u1", pw))}, names: []string{"a"}, image: "r.test/app:v1",
			reason: Answered, user: "u1", patterns: []string{"r.test"}, asked: []string{"t/a"}},
		{name: "first with an entry answers, later ones unread", ns: secrets{
			"a": pull("a", auths("other.test", "u0", pw)), "b": pull("b", auths("r.test", "u1", pw)), "c": pull("c", auths("r.test", "u2", pw))},
			names: []string{"a", "b", "c"}, image: "r.test/app", reason: Answered, user: "u1", patterns: []string{"r.test"}, asked: []string{"t/a", "t/b"}},
		{name: "order decides", ns: secrets{"b": pull("b", auths("r.test", "u1", pw)), "c": pull("c", auths("r.test", "u2", pw))},
			names: []string{"c", "b"}, image: "r.test/app", reason: Answered, user: "u2", asked: []string{"t/c"}},
		{name: "every entry of the registry, any path", ns: secrets{"a": pull("a", `{"auths":{"r.test/team":{"auth":"`+testsupport.B64("u1:"+pw)+`"},"r.test":{"auth":"`+testsupport.B64("u2:"+pw)+`"},"x.test":{"auth":"`+testsupport.B64("u3:"+pw)+`"}}}`)},
			names: []string{"a"}, image: "r.test/other/app", reason: Answered, user: "u1", patterns: []string{"r.test/team", "r.test"}},
		{name: "a key with a password is refused, unechoed", ns: secrets{"a": pull("a", auths("u:"+pw+"@r.test", "u1", pw))},
			names: []string{"a"}, image: "r.test/app", reason: Malformed},
		{name: "missing", ns: secrets{}, names: []string{"a"}, image: "r.test/app", reason: NotFound},
		{name: "forbidden before an answer fails it", ns: secrets{"a": forbidden, "b": pull("b", auths("r.test", "u1", pw))},
			names: []string{"a", "b"}, image: "r.test/app", reason: Forbidden, asked: []string{"t/a"}},
		{name: "unauthorized token", ns: secrets{"a": apierrors.NewUnauthorized("no")}, names: []string{"a"}, image: "r.test/app", reason: BadToken},
		{name: "server error", ns: secrets{"a": apierrors.NewInternalError(errors.New("boom"))}, names: []string{"a"}, image: "r.test/app", reason: APIError},
		{name: "opaque", ns: secrets{"a": &corev1.Secret{Type: corev1.SecretTypeOpaque, Data: map[string][]byte{corev1.DockerConfigJsonKey: []byte(auths("r.test", "u", pw))}}},
			names: []string{"a"}, image: "r.test/app", reason: Malformed},
		{name: "bad json", ns: secrets{"a": pull("a", `{"auths":`)}, names: []string{"a"}, image: "r.test/app", reason: Malformed},
		{name: "bad auth", ns: secrets{"a": pull("a", `{"auths":{"r.test":{"auth":"not base64 `+pw+`"}}}`)}, names: []string{"a"}, image: "r.test/app", reason: Malformed},
		{name: "legacy dockercfg", ns: secrets{"a": &corev1.Secret{Type: corev1.SecretTypeDockercfg, Data: map[string][]byte{corev1.DockerConfigKey: []byte(`{"r.test":{"auth":"` + testsupport.B64("u1:"+pw) + `"}}`)}}},
			names: []string{"a"}, image: "r.test/app", reason: Answered, user: "u1"},
		{name: "no entry", ns: secrets{"a": pull("a", auths("other.test", "u", pw))}, names: []string{"a"}, image: "r.test/app", reason: NoEntry},
		{name: "bad image", ns: secrets{}, names: []string{"a"}, image: "UPPER/App", reason: BadRequest, asked: []string{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := &getter{byNS: map[string]secrets{"t": tc.ns, "other": {"a": pull("a", auths("r.test", "other", pw))}}}
			ans, err := Resolve(t.Context(), g, "t", tc.names, tc.image)
			if got := ReasonOf(err); got != tc.reason {
				t.Fatalf("reason %s (%v), want %s", got, err, tc.reason)
			}
			if err != nil && strings.Contains(err.Error(), pw) {
				t.Errorf("the error holds the password: %v", err)
			}
			if tc.user != "" && (len(ans.Matches) == 0 || ans.Matches[0].Username != tc.user) {
				t.Errorf("matches %v, want first user %s", ans.Matches, tc.user)
			}
			var patterns []string
			for _, m := range ans.Matches {
				patterns = append(patterns, m.Pattern)
			}
			if tc.patterns != nil && !slices.Equal(patterns, tc.patterns) {
				t.Errorf("patterns %v, want %v", patterns, tc.patterns)
			}
			if tc.asked != nil && !slices.Equal(g.asked, tc.asked) && !(len(tc.asked) == 0 && len(g.asked) == 0) {
				t.Errorf("read %v, want %v", g.asked, tc.asked)
			}
			for _, a := range g.asked {
				if !strings.HasPrefix(a, "t/") {
					t.Errorf("read %s, outside the namespace", a)
				}
			}
		})
	}
}
