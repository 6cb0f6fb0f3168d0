package test

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nodecreds/nodecreds/internal/pullsecret"
	"github.com/nodecreds/nodecreds/internal/testsupport"
)

// saCheck is `check --service-account -o json` as other tools read it.
type saCheck struct {
	OK      bool    `json:"ok"`
	File    *string `json:"file"`
	Results []struct {
		Ref      string `json:"ref"`
		Found    bool   `json:"found"`
		Entry    string `json:"entry"`
		Username string `json:"username"`
		Error    string `json:"error"`
	} `json:"results"`
	Warnings       []string `json:"warnings"`
	ServiceAccount *struct {
		Namespace string     `json:"namespace"`
		Name      string     `json:"name"`
		Annotated bool       `json:"annotated"`
		Secrets   []saSecret `json:"secrets"`
		Images    []struct {
			Image    string   `json:"image"`
			Reason   string   `json:"reason"`
			Secret   string   `json:"secret"`
			Entry    string   `json:"entry"`
			Username string   `json:"username"`
			Read     []string `json:"read"`
			Message  string   `json:"message"`
		} `json:"images"`
	} `json:"serviceAccount"`
}

type saSecret struct {
	Name                 string `json:"name"`
	ServiceAccountMayGet string `json:"serviceAccountMayGet"`
}

// TestCheckServiceAccount runs `nodecreds check --service-account` against
// a real API server under RBAC: per image it names the plugin's answer
// (the annotation's order deciding), a Secret the ServiceAccount has no
// Role for is SecretForbidden although the admin caller reads it, a
// ServiceAccount without the annotation is NoAnnotation; a caller who may
// not ask SubjectAccessReviews gets "not checked", one who may not read a
// Secret gets Unknown; exit codes 0, 1, 2; no password in any output.
func TestCheckServiceAccount(t *testing.T) {
	c := startCluster(t)
	ctx := t.Context()
	const tenant = "team-a"
	canaries := []string{"pw-first-canary-41", "pw-second-canary-42", "pw-noRole-canary-43"}
	auths := []string{testsupport.B64("first-user:" + canaries[0]), testsupport.B64("second-user:" + canaries[1]), testsupport.B64("norole-user:" + canaries[2])}
	mustCreate := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	_, err := c.Admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: tenant}}, metav1.CreateOptions{})
	mustCreate(err)
	for name, data := range map[string][]byte{
		"first":     dockerconfigjson(t, map[string]string{"registry.a.test": "first-user:" + canaries[0]}),
		"second":    dockerconfigjson(t, map[string]string{"registry.a.test": "second-user:" + canaries[1], "other.a.test": "second-user:" + canaries[1]}),
		"no-role":   dockerconfigjson(t, map[string]string{"registry.a.test": "norole-user:" + canaries[2]}),
		"malformed": []byte(`{"auths":{"registry.a.test":{"auth":"%%%` + canaries[0] + `"}}}`),
	} {
		_, err := c.Admin.CoreV1().Secrets(tenant).Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Type:       corev1.SecretTypeDockerConfigJson,
			Data:       map[string][]byte{corev1.DockerConfigJsonKey: data},
		}, metav1.CreateOptions{})
		mustCreate(err)
	}
	// The tenant's Role: get on the Secrets its pullers name; no-role is
	// in no Role.
	_, err = c.Admin.RbacV1().Roles(tenant).Create(ctx, &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "pull-secrets"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"get"}, ResourceNames: []string{"first", "second", "missing", "malformed"}}},
	}, metav1.CreateOptions{})
	mustCreate(err)
	annotated := map[string]string{
		"ordered":   "first,second",
		"reversed":  "second, first",
		"no-role":   "no-role,first",
		"missing":   "missing,first",
		"malformed": "malformed,first",
		"plain":     "",
	}
	var subjects []rbacv1.Subject
	for name, value := range annotated {
		sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}
		if value != "" {
			sa.Annotations = map[string]string{pullsecret.Annotation: value}
		}
		_, err := c.Admin.CoreV1().ServiceAccounts(tenant).Create(ctx, sa, metav1.CreateOptions{})
		mustCreate(err)
		if name != "no-role" {
			subjects = append(subjects, rbacv1.Subject{Kind: "ServiceAccount", Name: name, Namespace: tenant})
		}
	}
	_, err = c.Admin.RbacV1().RoleBindings(tenant).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "pull-secrets"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "pull-secrets"},
		Subjects:   subjects,
	}, metav1.CreateOptions{})
	mustCreate(err)

	const image, other, unknown = "registry.a.test/team-a/app:v1", "other.a.test/team-a/tool:v2", "nowhere.a.test/app:v1"
	type wantImage struct{ reason, secret, username string }
	tests := []struct {
		name       string
		kubeconfig string // "" : the admin's
		sa         string
		images     []string
		want       []wantImage
		access     map[string]string
		warn       string
		code       int
	}{
		{name: "the first named Secret answers", sa: "ordered", images: []string{image}, want: []wantImage{{"Answered", "first", "first-user"}},
			access: map[string]string{"first": "yes", "second": "yes"}, code: 0},
		{name: "the order decides", sa: "reversed", images: []string{image}, want: []wantImage{{"Answered", "second", "second-user"}}, code: 0},
		{name: "a later Secret answers for its registry; an image with no entry fails", sa: "ordered", images: []string{image, other, unknown},
			want: []wantImage{{"Answered", "first", "first-user"}, {"Answered", "second", "second-user"}, {"NoEntry", "", ""}}, code: 1},
		{name: "no annotation: the node-wide answer applies", sa: "plain", images: []string{image}, want: []wantImage{{"NoAnnotation", "", ""}}, code: 1},
		{name: "no Role for the Secret, which the caller can read", sa: "no-role", images: []string{image}, want: []wantImage{{"SecretForbidden", "", ""}},
			access: map[string]string{"no-role": "no", "first": "no"}, code: 1},
		{name: "missing Secret", sa: "missing", images: []string{image}, want: []wantImage{{"SecretNotFound", "", ""}}, access: map[string]string{"missing": "yes"}, code: 1},
		{name: "malformed Secret", sa: "malformed", images: []string{image}, want: []wantImage{{"SecretMalformed", "", ""}}, code: 1},
		{name: "a caller who may not ask SubjectAccessReviews", kubeconfig: "viewer", sa: "ordered", images: []string{image},
			want: []wantImage{{"Answered", "first", "first-user"}}, access: map[string]string{"first": "not checked"}, warn: "may not create SubjectAccessReviews", code: 0},
		{name: "a caller who may not read the Secret that decides", kubeconfig: "viewer", sa: "reversed", images: []string{image},
			want: []wantImage{{"Unknown", "", ""}}, code: 1},
	}
	// viewer may read the ServiceAccounts and Secret first, nothing more.
	_, err = c.Admin.RbacV1().Roles(tenant).Create(ctx, &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "viewer"},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"serviceaccounts"}, Verbs: []string{"get"}},
			{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"get"}, ResourceNames: []string{"first"}},
		},
	}, metav1.CreateOptions{})
	mustCreate(err)
	_, err = c.Admin.CoreV1().ServiceAccounts(tenant).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "viewer"}}, metav1.CreateOptions{})
	mustCreate(err)
	_, err = c.Admin.RbacV1().RoleBindings(tenant).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "viewer"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "viewer"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "viewer", Namespace: tenant}},
	}, metav1.CreateOptions{})
	mustCreate(err)
	viewer, _, err := c.ServiceAccountKubeconfig(ctx, tenant, "viewer")
	mustCreate(err)

	noSecrets := func(t *testing.T, stdout, stderr string) {
		t.Helper()
		assertNoSecrets(t, "stdout", stdout, append(slices.Clone(canaries), auths...)...)
		assertNoSecrets(t, "stderr", stderr, append(slices.Clone(canaries), auths...)...)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kubeconfig := c.Kubeconfig
			if tt.kubeconfig == "viewer" {
				kubeconfig = viewer
			}
			args := []string{"check", "--service-account", tenant + "/" + tt.sa, "--image", strings.Join(tt.images, ","), "--kubeconfig", kubeconfig}
			stdout, stderr, code := run(t, append(args, "-o", "json")...)
			noSecrets(t, stdout, stderr)
			if code != tt.code {
				t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tt.code, stdout, stderr)
			}
			var got saCheck
			if err := json.Unmarshal([]byte(stdout), &got); err != nil {
				t.Fatalf("not the documented JSON: %v\n%s", err, stdout)
			}
			sa := got.ServiceAccount
			if got.OK != (tt.code == 0) || got.File == nil || *got.File != "" || got.Warnings == nil || sa == nil ||
				sa.Namespace != tenant || sa.Name != tt.sa || sa.Annotated != (annotated[tt.sa] != "") ||
				len(sa.Images) != len(tt.images) || len(got.Results) != len(tt.images) {
				t.Fatalf("JSON shape:\n%s", stdout)
			}
			if names, _ := pullsecret.Names(annotated[tt.sa]); len(sa.Secrets) != len(names) {
				t.Errorf("secrets %+v, want the annotation's %q", sa.Secrets, names)
			}
			for i, w := range tt.want {
				im, res := sa.Images[i], got.Results[i]
				if im.Image != tt.images[i] || im.Reason != w.reason || im.Secret != w.secret || im.Username != w.username {
					t.Errorf("image %d: %+v, want %+v", i, im, w)
				}
				if w.reason == "Answered" && (im.Entry == "" || res.Entry != im.Entry || !res.Found || res.Username != w.username) ||
					w.reason != "Answered" && (im.Message == "" || res.Found || !strings.HasPrefix(res.Error, w.reason+": ")) {
					t.Errorf("image %d: %+v, result %+v", i, im, res)
				}
			}
			for name, want := range tt.access {
				i := slices.IndexFunc(sa.Secrets, func(s saSecret) bool { return s.Name == name })
				if i < 0 || sa.Secrets[i].ServiceAccountMayGet != want {
					t.Errorf("ServiceAccount may get %s: %+v, want %q", name, sa.Secrets, want)
				}
			}
			if tt.warn != "" && !strings.Contains(strings.Join(got.Warnings, "\n"), tt.warn) {
				t.Errorf("warnings %q, want %q", got.Warnings, tt.warn)
			}

			table, stderr, code := run(t, args...)
			noSecrets(t, table, stderr)
			if code != tt.code || !strings.Contains(table, "service account:  "+tenant+"/"+tt.sa) {
				t.Errorf("table: exit %d\n%s%s", code, table, stderr)
			}
			for _, w := range tt.want {
				if !strings.Contains(table, w.reason) {
					t.Errorf("table lacks %s:\n%s", w.reason, table)
				}
			}
		})
	}

	t.Run("the SecretForbidden message names the grant", func(t *testing.T) {
		stdout, stderr, _ := run(t, "check", "--service-account", tenant+"/no-role", "--image", image, "--kubeconfig", c.Kubeconfig)
		noSecrets(t, stdout, stderr)
		if !strings.Contains(stdout, "grant it get on secrets/no-role") {
			t.Errorf("table:\n%s", stdout)
		}
	})
	t.Run("a ServiceAccount that does not exist", func(t *testing.T) {
		stdout, stderr, code := run(t, "check", "--service-account", tenant+"/nobody", "--image", image, "--kubeconfig", c.Kubeconfig)
		if code != 1 || !strings.Contains(stderr, "ServiceAccount team-a/nobody not found") {
			t.Errorf("exit %d\n%s%s", code, stdout, stderr)
		}
	})
	for _, args := range [][]string{
		{"--service-account", tenant, "--image", image},
		{"--service-account", tenant + "/ordered"},
		{"--service-account", tenant + "/ordered", "--image", image, "--registry", "registry.a.test"},
		{"--service-account", tenant + "/ordered", "--image", image, "--probe"},
		{"--image", image, "--kubeconfig", c.Kubeconfig},
	} {
		stdout, stderr, code := run(t, append([]string{"check"}, args...)...)
		if code != 2 || stdout != "" {
			t.Errorf("check %q: exit %d, want 2 (usage)\n%s%s", args, code, stdout, stderr)
		}
	}
}
