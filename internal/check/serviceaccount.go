package check

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/nodecreds/nodecreds/internal/dockercfg"
	"github.com/nodecreds/nodecreds/internal/kubeletcred"
	"github.com/nodecreds/nodecreds/internal/pullsecret"
)

// ServiceAccountAPI is what `check --service-account` reads, with the
// caller's credentials: the ServiceAccount, its Secrets, and the API
// server's word on what the ServiceAccount itself may read.
type ServiceAccountAPI interface {
	GetServiceAccount(ctx context.Context, namespace, name string) (*corev1.ServiceAccount, error)
	GetSecret(ctx context.Context, namespace, name string) (*corev1.Secret, error)
	CreateSubjectAccessReview(ctx context.Context, sar *authorizationv1.SubjectAccessReview) (*authorizationv1.SubjectAccessReview, error)
}

// What a SubjectAccessReview said of the ServiceAccount and one Secret.
const (
	MayGet     = "yes"
	MayNotGet  = "no"
	NotChecked = "not checked" // the caller may not ask, or the API server did not answer
)

// Unknown is the reason of an image whose answer turns on a Secret the
// caller may not read: what the plugin answers is not known. It is check's
// word, not one of pullsecret.Reasons (the plugin always knows).
const Unknown = "Unknown"

// ServiceAccountReport is what the plugin's service-account mode
// (nodecreds-sa) answers for one ServiceAccount's Pods.
type ServiceAccountReport struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// Annotated: the ServiceAccount has the nodecreds.io/pull-secret
	// annotation; without it the kubelet does not run the plugin.
	Annotated bool `json:"annotated"`
	// Secrets are the annotation's Secret names, in its order (the order
	// that decides between two Secrets of one registry).
	Secrets []SecretAccess `json:"secrets"`
	Images  []ImageAnswer  `json:"images"`
}

// SecretAccess says whether the ServiceAccount may get one Secret.
type SecretAccess struct {
	Name                 string `json:"name"`
	ServiceAccountMayGet string `json:"serviceAccountMayGet"` // MayGet, MayNotGet or NotChecked
}

// ImageAnswer is the plugin's answer for one image.
type ImageAnswer struct {
	Image string `json:"image"`
	// Reason is one of pullsecret.Reasons, or Unknown.
	Reason string `json:"reason"`
	// Secret is the Secret that answers; Entry its auths key the kubelet
	// tries first and Username that entry's user.
	Secret   string `json:"secret,omitempty"`
	Entry    string `json:"entry,omitempty"`
	Username string `json:"username,omitempty"`
	// Read are the Secrets the plugin reads for the image, in order.
	Read    []string `json:"read,omitempty"`
	Message string   `json:"message,omitempty"`
}

// RunServiceAccount says what the plugin's service-account mode answers
// for each image pulled by namespace/name's Pods. It reads with the
// caller's credentials (api) and asks the API server what the
// ServiceAccount may read, since the plugin reads with the Pod's token: a
// Secret the caller can read but the ServiceAccount cannot is one the
// plugin meets as SecretForbidden. The error is for a ServiceAccount that
// cannot be read at all. No password, auth string or token is in the
// report.
func RunServiceAccount(ctx context.Context, api ServiceAccountAPI, namespace, name string, images []string) (Report, error) {
	rep := Report{OK: true, Results: []Result{}, Warnings: []string{}}
	sa, err := api.GetServiceAccount(ctx, namespace, name)
	switch {
	case apierrors.IsNotFound(err):
		return rep, fmt.Errorf("ServiceAccount %s/%s not found", namespace, name)
	case apierrors.IsForbidden(err):
		return rep, fmt.Errorf("your kubeconfig's user may not get ServiceAccount %s/%s (this says nothing of what the ServiceAccount may do)", namespace, name)
	case err != nil:
		return rep, fmt.Errorf("getting ServiceAccount %s/%s: %s", namespace, name, pullsecret.Describe(err))
	}
	sr := &ServiceAccountReport{Namespace: namespace, Name: name, Secrets: []SecretAccess{}, Images: []ImageAnswer{}}
	rep.ServiceAccount = sr
	value, annotated := sa.Annotations[pullsecret.Annotation]
	sr.Annotated = annotated
	var names []string
	var namesErr error
	switch {
	case !annotated:
		namesErr = &pullsecret.Error{Reason: pullsecret.NoAnnotation, Msg: fmt.Sprintf(
			"ServiceAccount %s/%s has no %s annotation: the kubelet does not run the nodecreds-sa provider for its Pods and the node-wide answer applies (nodecreds check --image on the node)",
			namespace, name, pullsecret.Annotation)}
	default:
		names, namesErr = pullsecret.Names(value)
	}
	var access map[string]string
	if namesErr == nil {
		var warn string
		access, warn = reviewAccess(ctx, api, namespace, name, names)
		if warn != "" {
			rep.Warnings = append(rep.Warnings, warn)
		}
		for _, n := range names {
			sr.Secrets = append(sr.Secrets, SecretAccess{Name: n, ServiceAccountMayGet: access[n]})
		}
	}
	view := &serviceAccountView{caller: api, access: access, read: map[string]readResult{}}
	for _, image := range images {
		ia, err := answerFor(ctx, view, namespace, names, namesErr, image)
		rep.Warnings = append(rep.Warnings, ia.warnings...)
		rep.OK = rep.OK && err == nil
		sr.Images = append(sr.Images, ia.ImageAnswer)
		rep.Results = append(rep.Results, Result{Ref: ia.Image, Found: err == nil, Entry: ia.Entry, Username: ia.Username, Error: errorText(ia.ImageAnswer)})
	}
	return rep, nil
}

// imageAnswer is one image's answer and the warnings it adds.
type imageAnswer struct {
	ImageAnswer
	warnings []string
}

// answerFor is what the plugin answers for image, seen through view;
// namesErr is the annotation's failure, which every image shares.
func answerFor(ctx context.Context, view *serviceAccountView, namespace string, names []string, namesErr error, image string) (imageAnswer, error) {
	ia := imageAnswer{ImageAnswer: ImageAnswer{Image: kubeletcred.SafeRef(image, false)}}
	var ans pullsecret.Answer
	err := namesErr
	if err == nil {
		ans, err = pullsecret.Resolve(ctx, view, namespace, names, image)
	}
	ia.Reason, ia.Read = string(pullsecret.ReasonOf(err)), ans.Read
	var pe *pullsecret.Error
	switch {
	case err == nil:
		m := ans.Matches[0]
		ia.Secret, ia.Entry, ia.Username = ans.Secret, dockercfg.SafeKey(m.Key), dockercfg.SafeUsername(m.Username, m.Password)
		if view.access[ans.Secret] == NotChecked {
			ia.Message = fmt.Sprintf("whether the ServiceAccount may get Secret %s/%s is not checked", namespace, ans.Secret)
		}
		ia.warnings = unordered(ia.Image, ans.Matches)
	case len(ans.Read) > 0 && view.callerDenied(ans.Read[len(ans.Read)-1]):
		last := ans.Read[len(ans.Read)-1]
		ia.Reason = Unknown
		ia.Message = fmt.Sprintf("your kubeconfig's user may not get Secret %s/%s, so what the plugin answers is not known (whether the ServiceAccount may get it: %s)", namespace, last, view.access[last])
	case errors.As(err, &pe):
		ia.Message = pe.Msg
	default:
		ia.Message = err.Error()
	}
	return ia, err
}

// errorText is the existing results' error for an image the plugin does
// not answer.
func errorText(ia ImageAnswer) string {
	if ia.Reason == string(pullsecret.Answered) {
		return ""
	}
	return ia.Reason + ": " + ia.Message
}

// reviewAccess asks the API server, for each Secret, whether the
// ServiceAccount may get it, as the plugin's token would be authorized
// (its user and groups). When the caller may not ask, every Secret is
// NotChecked and the warning says why: the rest of the check still holds.
func reviewAccess(ctx context.Context, api ServiceAccountAPI, namespace, name string, secrets []string) (map[string]string, string) {
	access := make(map[string]string, len(secrets))
	for _, s := range secrets {
		access[s] = NotChecked
	}
	user := "system:serviceaccount:" + namespace + ":" + name
	for _, s := range secrets {
		sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
			User:   user,
			Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + namespace, "system:authenticated"},
			ResourceAttributes: &authorizationv1.ResourceAttributes{
				Namespace: namespace, Verb: "get", Resource: "secrets", Name: s,
			},
		}}
		got, err := api.CreateSubjectAccessReview(ctx, sar)
		switch {
		case apierrors.IsForbidden(err):
			return access, fmt.Sprintf("your kubeconfig's user may not create SubjectAccessReviews, so whether ServiceAccount %s/%s may get its Secrets is not checked; the plugin meets SecretForbidden on any it may not get", namespace, name)
		case err != nil:
			return access, fmt.Sprintf("whether ServiceAccount %s/%s may get its Secrets is not checked: asking the API server: %s", namespace, name, pullsecret.Describe(err))
		case got.Status.Allowed:
			access[s] = MayGet
		default:
			access[s] = MayNotGet
		}
	}
	return access, ""
}

// serviceAccountView reads Secrets as the plugin would meet them: a Secret
// the ServiceAccount may not get is Forbidden whatever the caller may
// read; the others are read with the caller's credentials, once each.
type serviceAccountView struct {
	caller ServiceAccountAPI
	access map[string]string
	read   map[string]readResult
}

type readResult struct {
	secret *corev1.Secret
	err    error
	denied bool // the caller was refused
}

func (v *serviceAccountView) callerDenied(name string) bool { return v.read[name].denied }

// GetSecret is pullsecret.SecretGetter seen through the view.
func (v *serviceAccountView) GetSecret(ctx context.Context, namespace, name string) (*corev1.Secret, error) {
	if v.access[name] == MayNotGet {
		return nil, apierrors.NewForbidden(schema.GroupResource{Resource: "secrets"}, name, errors.New("the ServiceAccount may not get it"))
	}
	if r, ok := v.read[name]; ok {
		return r.secret, r.err
	}
	sec, err := v.caller.GetSecret(ctx, namespace, name)
	r := readResult{secret: sec, err: err}
	if apierrors.IsForbidden(err) {
		// Not the plugin's Forbidden: that one is the ServiceAccount's.
		r = readResult{err: fmt.Errorf("your kubeconfig's user may not get Secret %s", name), denied: true}
	}
	v.read[name] = r
	return r.secret, r.err
}

// writeTable prints the service-account answer for people.
func (sr *ServiceAccountReport) writeTable(tw *tabwriter.Writer) {
	fmt.Fprintf(tw, "service account:\t%s/%s\n", text(sr.Namespace), text(sr.Name))
	if !sr.Annotated {
		fmt.Fprintf(tw, "plugin:\tnot run: no %s annotation, the node-wide answer applies\n", pullsecret.Annotation)
	} else {
		names := make([]string, 0, len(sr.Secrets))
		for _, s := range sr.Secrets {
			names = append(names, s.Name)
		}
		fmt.Fprintf(tw, "plugin:\tnodecreds-sa, %s: %s\n", pullsecret.Annotation, text(orDash(strings.Join(names, ", "))))
	}
	if len(sr.Secrets) > 0 {
		fmt.Fprintln(tw, "\nSECRET\tSERVICEACCOUNT MAY GET")
		for _, s := range sr.Secrets {
			fmt.Fprintf(tw, "%s\t%s\n", text(s.Name), s.ServiceAccountMayGet)
		}
	}
	fmt.Fprintln(tw, "\nIMAGE\tREASON\tSECRET\tENTRY\tUSERNAME")
	for _, ia := range sr.Images {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", text(ia.Image), ia.Reason, text(orDash(ia.Secret)), text(orDash(ia.Entry)), text(orDash(ia.Username)))
		if ia.Message != "" {
			fmt.Fprintf(tw, "  %s\n", text(ia.Message))
		}
	}
}
