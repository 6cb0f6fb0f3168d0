// Package pullsecret decides the per-workload answer of the credential
// provider's service-account-token mode: which of the Secrets a
// ServiceAccount's nodecreds.io/pull-secret annotation names answers for an
// image, and with which entries. The plugin reads those Secrets with the
// Pod's own token, `nodecreds check --service-account` with the caller's
// credentials; both decide here, so check says what the plugin would answer.
package pullsecret

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"strings"
	"syscall"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/nodecreds/nodecreds/internal/dockercfg"
	"github.com/nodecreds/nodecreds/internal/kubeletcred"
	"github.com/nodecreds/nodecreds/internal/source"
)

// Annotation on a ServiceAccount names, in order, the pull Secrets of its
// namespace the provider answers with for that ServiceAccount's Pods.
const Annotation = "nodecreds.io/pull-secret"

// MaxNames bounds the Secrets one annotation may name: each is one API
// request on a pull, and the kubelet waits for the answer.
const MaxNames = 8

// Reason says why an answer is what it is. It is the metric label and the
// word `check` prints, so the set is closed.
type Reason string

const (
	Answered      Reason = "Answered"          // a Secret had entries for the image's registry
	NoAnnotation  Reason = "NoAnnotation"      // the kubelet skips the provider: node-wide credentials apply
	BadAnnotation Reason = "InvalidAnnotation" // not a list of Secret names
	BadToken      Reason = "InvalidToken"      // no ServiceAccount token, or not one
	NotFound      Reason = "SecretNotFound"
	Forbidden     Reason = "SecretForbidden" // the ServiceAccount may not get the Secret
	Malformed     Reason = "SecretMalformed" // wrong type, or not valid registry credentials
	NoEntry       Reason = "NoEntry"         // no named Secret has an entry for the registry
	APIError      Reason = "APIError"        // the API server could not be asked (unreachable, TLS, timeout, 5xx)
	BadRequest    Reason = "InvalidRequest"  // the kubelet's request itself
)

// Reasons lists every Reason, for metrics that show zeros.
var Reasons = []Reason{Answered, NoAnnotation, BadAnnotation, BadToken, NotFound, Forbidden, Malformed, NoEntry, APIError, BadRequest}

// Error is a failed answer: a Reason and a message naming the namespace,
// Secret and registry, never a credential or token.
type Error struct {
	Reason Reason
	Msg    string
}

func (e *Error) Error() string { return string(e.Reason) + ": " + e.Msg }

// ReasonOf is err's Reason, APIError for any other error.
func ReasonOf(err error) Reason {
	if err == nil {
		return Answered
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Reason
	}
	return APIError
}

func failf(r Reason, format string, args ...any) error {
	return &Error{Reason: r, Msg: fmt.Sprintf(format, args...)}
}

// Names parses the annotation's value: Secret names separated by commas,
// blanks around them ignored, the first of a repeated name kept.
func Names(value string) ([]string, error) {
	var names []string
	for _, n := range strings.Split(value, ",") {
		n = strings.TrimSpace(n)
		if n == "" {
			continue
		}
		if errs := validation.IsDNS1123Subdomain(n); len(errs) > 0 {
			return nil, failf(BadAnnotation, "%s: %q is not a Secret name: %s", Annotation, capped(n), capped(strings.Join(errs, "; ")))
		}
		if !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	if len(names) == 0 {
		return nil, failf(BadAnnotation, "%s names no Secret", Annotation)
	}
	if len(names) > MaxNames {
		return nil, failf(BadAnnotation, "%s names %d Secrets, at most %d are read", Annotation, len(names), MaxNames)
	}
	return names, nil
}

// capped keeps a tenant's value from filling the kubelet's log: each
// failed pull logs the message again.
func capped(s string) string {
	const limit = 128
	if len(s) <= limit {
		return s
	}
	return strings.ToValidUTF8(s[:limit], "") + "…"
}

// Answer is what the provider hands the kubelet for one image.
type Answer struct {
	Secret  string              // the Secret that answered (its name)
	Matches []kubeletcred.Match // its entries for the image's registry, as the kubelet files them
	Read    []string            // the Secrets read, in order (the last one answered)
}

// SecretGetter reads one Secret. It is this narrow, rather than client-go's
// typed client, because that client's package registers every API group's
// types at start: about 10 MB more in every nodecreds process, the agent's
// included.
type SecretGetter interface {
	GetSecret(ctx context.Context, namespace, name string) (*corev1.Secret, error)
}

// Resolve reads the named Secrets of namespace in order, through secrets
// (a client authenticated as the Pod's ServiceAccount in the plugin), and
// answers with the first one that has an entry for image's registry: the
// annotation's order decides between two Secrets of one registry, and the
// Secrets after the answering one are not read. A Secret before it that
// cannot be read or parsed fails the whole answer, since it might have
// been the one to answer.
func Resolve(ctx context.Context, secrets SecretGetter, namespace string, names []string, image string) (Answer, error) {
	repo, err := kubeletcred.RepoOf(image, false)
	if err != nil {
		return Answer{}, failf(BadRequest, "%v", kubeletcred.RefError(image, err))
	}
	var ans Answer
	for _, name := range names {
		ans.Read = append(ans.Read, name)
		sec, err := secrets.GetSecret(ctx, namespace, name)
		if err != nil {
			return ans, getError(namespace, name, err)
		}
		creds, err := credsOf(sec)
		if err != nil {
			return ans, failf(Malformed, "Secret %s/%s: %v", namespace, name, err)
		}
		if m := kubeletcred.NewKeyring(creds).ForRegistry(repo); len(m) > 0 {
			ans.Secret, ans.Matches = name, m
			return ans, nil
		}
	}
	return ans, failf(NoEntry, "no entry for %s in Secret(s) %s of namespace %s", kubeletcred.SafeRef(image, false), strings.Join(names, ", "), namespace)
}

// getError names what a failed GET means for the tenant. The API server's
// message is kept only for other failures (it names the Secret, never its
// data).
func getError(namespace, name string, err error) error {
	switch {
	case apierrors.IsNotFound(err):
		return failf(NotFound, "Secret %s/%s not found", namespace, name)
	case apierrors.IsForbidden(err):
		return failf(Forbidden, "the ServiceAccount may not get Secret %s/%s: grant it get on secrets/%s with a Role in %s", namespace, name, name, namespace)
	case apierrors.IsUnauthorized(err):
		return failf(BadToken, "the API server did not accept the Pod's token reading Secret %s/%s (is the token's audience one of its --api-audiences?)", namespace, name)
	}
	return failf(APIError, "getting Secret %s/%s: %s", namespace, name, Describe(err))
}

// ErrRefused is a request the client refused to send: a redirect, or one
// elsewhere than the configured API server.
var ErrRefused = errors.New("refused a redirect, or a request elsewhere than the configured API server")

// Describe says what kind of failure err is, in words of its own: the
// status code and reason of an API answer, or the class of a transport
// failure. Never err's text: an answer's body comes from the API server or
// whatever stands in front of it, and a URL may carry credentials.
func Describe(err error) string {
	var status apierrors.APIStatus
	var dns *net.DNSError
	var unknownCA x509.UnknownAuthorityError
	var badCert x509.CertificateInvalidError
	var badHost x509.HostnameError
	var netErr net.Error
	switch {
	case errors.Is(err, ErrRefused):
		return ErrRefused.Error()
	case errors.As(err, &status):
		st := status.Status()
		return fmt.Sprintf("the API server answered %d %s", st.Code, st.Reason)
	case errors.As(err, &unknownCA), errors.As(err, &badCert), errors.As(err, &badHost):
		return "TLS: the API server's certificate is not valid for the configured CA and address"
	case errors.As(err, &dns):
		return "the API server's name does not resolve"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &netErr) && netErr.Timeout():
		return "timed out"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	}
	return "the request failed without an answer"
}

// credsOf validates a pull Secret as the agent validates its sources (type
// dockerconfigjson or the legacy dockercfg; every entry good, or none
// used), keeping only entries whose key the answer may carry: a key
// holding a password never leaves in an answer.
func credsOf(sec *corev1.Secret) (map[string]kubeletcred.Cred, error) {
	if sec.Type != corev1.SecretTypeDockerConfigJson && sec.Type != corev1.SecretTypeDockercfg {
		return nil, fmt.Errorf("type %q, want %s or %s", sec.Type, corev1.SecretTypeDockerConfigJson, corev1.SecretTypeDockercfg)
	}
	set, _, err := source.FromData(string(sec.Type), sec.Data)
	if err != nil {
		return nil, err
	}
	creds := make(map[string]kubeletcred.Cred, len(set))
	for _, it := range set {
		creds[it.Key] = kubeletcred.Cred{Key: it.Key, Username: it.Entry.Username, Password: it.Entry.Password}
	}
	maps.DeleteFunc(creds, func(key string, _ kubeletcred.Cred) bool { return dockercfg.ValidateKey(key) != nil })
	return creds, nil
}
