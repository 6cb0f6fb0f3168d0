package check

import (
	"bytes"
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/nodecreds/nodecreds/internal/pullsecret"
	"github.com/nodecreds/nodecreds/internal/testsupport"
)

// fakeAPI is a fake clientset as check --service-account uses it.
type fakeAPI struct{ cs *fake.Clientset }

func (f fakeAPI) GetServiceAccount(ctx context.Context, namespace, name string) (*corev1.ServiceAccount, error) {
	return f.cs.CoreV1().ServiceAccounts(namespace).Get(ctx, name, metav1.GetOptions{})
}

func (f fakeAPI) GetSecret(ctx context.Context, namespace, name string) (*corev1.Secret, error) {
	return f.cs.CoreV1().Secrets(namespace).Get(ctx, name, metav1.GetOptions{})
}

func (f fakeAPI) CreateSubjectAccessReview(ctx context.Context, sar *authorizationv1.SubjectAccessReview) (*authorizationv1.SubjectAccessReview, error) {
	return f.cs.AuthorizationV1().SubjectAccessReviews().Create(ctx, sar, metav1.CreateOptions{})
}

const canary = "canary-pw-7f3a9"

func pullSecret(name string, auths map[string]string) *corev1.Secret {
	m := map[string]any{}
	for reg, user := range auths {
		m[reg] = map[string]string{"auth": testsupport.B64(user + ":" + canary)}
	}
	data, _ := json.Marshal(map[string]any{"auths": m})
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: "team", Name: name},
		Type:       corev1.SecretTypeDockerConfigJson,
		Data:       map[string][]byte{corev1.DockerConfigJsonKey: data},
	}
}

func serviceAccount(annotation *string) *corev1.ServiceAccount {
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "team", Name: "puller"}}
	if annotation != nil {
		sa.Annotations = map[string]string{pullsecret.Annotation: *annotation}
	}
	return sa
}

func ptr(s string) *string { return &s }

// TestRunServiceAccount: the answer is the plugin's — the annotation's
// order decides, a Secret the ServiceAccount may not get is
// SecretForbidden even though the caller reads it (and it is not read), a
// Secret the caller may not read leaves the answer Unknown, a caller who
// may not ask SubjectAccessReviews gets "not checked" without a failure;
// no password in the report.
func TestRunServiceAccount(t *testing.T) {
	secrets := []runtime.Object{
		pullSecret("a", map[string]string{"r.test": "user-a"}),
		pullSecret("b", map[string]string{"r.test": "user-b", "other.test": "other-b"}),
		pullSecret("hidden", map[string]string{"r.test": "user-hidden"}),
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "team", Name: "bad"}, Type: corev1.SecretTypeOpaque, Data: map[string][]byte{"x": []byte(canary)}},
	}
	tests := []struct {
		name         string
		annotation   *string
		saDenied     []string // Secrets the ServiceAccount may not get
		callerDenied []string // Secrets the caller may not get
		noSAR        bool     // the caller may not create SubjectAccessReviews
		images       []string
		wantOK       bool
		want         []ImageAnswer
		wantAccess   map[string]string
		warn         string
	}{
		{
			name: "the first Secret answers", annotation: ptr("a, b"), images: []string{"r.test/app:v1"}, wantOK: true,
			want:       []ImageAnswer{{Reason: "Answered", Secret: "a", Entry: "r.test", Username: "user-a", Read: []string{"a"}}},
			wantAccess: map[string]string{"a": MayGet, "b": MayGet},
		},
		{
			name: "the order decides", annotation: ptr("b,a"), images: []string{"r.test/app:v1"}, wantOK: true,
			want: []ImageAnswer{{Reason: "Answered", Secret: "b", Entry: "r.test", Username: "user-b", Read: []string{"b"}}},
		},
		{
			name: "a later Secret answers for another registry", annotation: ptr("a,b"), images: []string{"r.test/app", "other.test/x/y:1"}, wantOK: true,
			want: []ImageAnswer{
				{Reason: "Answered", Secret: "a", Entry: "r.test", Username: "user-a", Read: []string{"a"}},
				{Reason: "Answered", Secret: "b", Entry: "other.test", Username: "other-b", Read: []string{"a", "b"}},
			},
		},
		{
			name: "no annotation", images: []string{"r.test/app"},
			want:       []ImageAnswer{{Reason: "NoAnnotation"}},
			wantAccess: map[string]string{},
		},
		{
			name: "not a list of names", annotation: ptr("a,Not_A_Name"), images: []string{"r.test/app"},
			want: []ImageAnswer{{Reason: "InvalidAnnotation"}},
		},
		{
			name: "the ServiceAccount may not get a Secret the caller reads", annotation: ptr("hidden,a"), saDenied: []string{"hidden"}, images: []string{"r.test/app"},
			want:       []ImageAnswer{{Reason: "SecretForbidden", Read: []string{"hidden"}}},
			wantAccess: map[string]string{"hidden": MayNotGet, "a": MayGet},
		},
		{
			name: "missing Secret", annotation: ptr("gone,a"), images: []string{"r.test/app"},
			want: []ImageAnswer{{Reason: "SecretNotFound", Read: []string{"gone"}}},
		},
		{
			name: "malformed Secret", annotation: ptr("bad,a"), images: []string{"r.test/app"},
			want: []ImageAnswer{{Reason: "SecretMalformed", Read: []string{"bad"}}},
		},
		{
			name: "no entry for the registry", annotation: ptr("a,b"), images: []string{"none.test/app"},
			want: []ImageAnswer{{Reason: "NoEntry", Read: []string{"a", "b"}}},
		},
		{
			name: "not an image", annotation: ptr("a"), images: []string{"r.test/app@sha256:nothex"},
			want: []ImageAnswer{{Reason: "InvalidRequest"}},
		},
		{
			name: "the caller may not read a Secret the answer turns on", annotation: ptr("hidden,a"), callerDenied: []string{"hidden"}, images: []string{"r.test/app"},
			want: []ImageAnswer{{Reason: Unknown, Read: []string{"hidden"}}},
		},
		{
			name: "the caller may not ask what the ServiceAccount may do", annotation: ptr("a"), noSAR: true, images: []string{"r.test/app"}, wantOK: true,
			want:       []ImageAnswer{{Reason: "Answered", Secret: "a", Entry: "r.test", Username: "user-a", Read: []string{"a"}}},
			wantAccess: map[string]string{"a": NotChecked},
			warn:       "may not create SubjectAccessReviews",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cs := fake.NewClientset(append([]runtime.Object{serviceAccount(tt.annotation)}, secrets...)...)
			var callerGot []string
			cs.PrependReactor("get", "secrets", func(a k8stesting.Action) (bool, runtime.Object, error) {
				name := a.(k8stesting.GetAction).GetName()
				callerGot = append(callerGot, name)
				if slices.Contains(tt.callerDenied, name) {
					return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "secrets"}, name, nil)
				}
				return false, nil, nil
			})
			cs.PrependReactor("create", "subjectaccessreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
				if tt.noSAR {
					return true, nil, apierrors.NewForbidden(schema.GroupResource{Group: "authorization.k8s.io", Resource: "subjectaccessreviews"}, "", nil)
				}
				sar := a.(k8stesting.CreateAction).GetObject().(*authorizationv1.SubjectAccessReview)
				ra := sar.Spec.ResourceAttributes
				if sar.Spec.User != "system:serviceaccount:team:puller" ||
					!slices.Equal(sar.Spec.Groups, []string{"system:serviceaccounts", "system:serviceaccounts:team", "system:authenticated"}) ||
					ra == nil || ra.Namespace != "team" || ra.Verb != "get" || ra.Resource != "secrets" || ra.Group != "" {
					t.Errorf("review asked %+v", sar.Spec)
				}
				sar.Status.Allowed = !slices.Contains(tt.saDenied, ra.Name)
				return true, sar, nil
			})
			rep, err := RunServiceAccount(t.Context(), fakeAPI{cs}, "team", "puller", tt.images)
			if err != nil {
				t.Fatal(err)
			}
			sr := rep.ServiceAccount
			if rep.OK != tt.wantOK || sr == nil || sr.Annotated != (tt.annotation != nil) || rep.File != "" || len(rep.Results) != len(tt.images) {
				t.Fatalf("report %+v", rep)
			}
			for i, want := range tt.want {
				got := sr.Images[i]
				if got.Reason != want.Reason || got.Secret != want.Secret || got.Entry != want.Entry || got.Username != want.Username || !slices.Equal(got.Read, want.Read) {
					t.Errorf("image %d: %+v, want %+v", i, got, want)
				}
				switch {
				case got.Reason != "Answered" && got.Message == "":
					t.Errorf("image %d: %s without a message", i, got.Reason)
				case tt.noSAR && !strings.Contains(got.Message, "not checked"):
					t.Errorf("image %d: message %q does not say the access is not checked", i, got.Message)
				}
				res := rep.Results[i]
				if res.Found != (want.Reason == "Answered") || res.Entry != want.Entry || res.Username != want.Username {
					t.Errorf("result %d: %+v", i, res)
				}
			}
			for name, want := range tt.wantAccess {
				i := slices.IndexFunc(sr.Secrets, func(s SecretAccess) bool { return s.Name == name })
				if i < 0 || sr.Secrets[i].ServiceAccountMayGet != want {
					t.Errorf("access to %s: %+v, want %s", name, sr.Secrets, want)
				}
			}
			for _, d := range tt.saDenied {
				if slices.Contains(callerGot, d) {
					t.Errorf("Secret %s, which the ServiceAccount may not get, was read", d)
				}
			}
			if tt.warn != "" && !strings.Contains(strings.Join(rep.Warnings, "\n"), tt.warn) {
				t.Errorf("warnings %q, want %q", rep.Warnings, tt.warn)
			}
			var out bytes.Buffer
			if err := json.NewEncoder(&out).Encode(rep); err != nil {
				t.Fatal(err)
			}
			if err := rep.WriteTable(&out); err != nil {
				t.Fatal(err)
			}
			if strings.Contains(out.String(), canary) || strings.Contains(out.String(), testsupport.B64("user-a:"+canary)) {
				t.Errorf("a password in the output:\n%s", out.String())
			}
			for _, want := range tt.want {
				if !strings.Contains(out.String(), want.Reason) {
					t.Errorf("table lacks %s:\n%s", want.Reason, out.String())
				}
			}
		})
	}
}

// TestRunServiceAccountUnreadable: a ServiceAccount that is missing, or
// that the caller may not read, is an error naming whose permission
// failed.
func TestRunServiceAccountUnreadable(t *testing.T) {
	cs := fake.NewClientset()
	_, err := RunServiceAccount(t.Context(), fakeAPI{cs}, "team", "puller", []string{"r.test/a"})
	if err == nil || !strings.Contains(err.Error(), "ServiceAccount team/puller not found") {
		t.Errorf("missing: %v", err)
	}
	cs.PrependReactor("get", "serviceaccounts", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "serviceaccounts"}, "puller", nil)
	})
	_, err = RunServiceAccount(t.Context(), fakeAPI{cs}, "team", "puller", []string{"r.test/a"})
	if err == nil || !strings.Contains(err.Error(), "your kubeconfig's user may not get ServiceAccount team/puller") {
		t.Errorf("forbidden: %v", err)
	}
}
