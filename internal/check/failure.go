package check

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strings"
	"syscall"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/nodecreds/nodecreds/internal/kubeletcred"
)

// What a failed probe reports is built only from the texts below, the
// HTTP status and the registry's error codes that the distribution spec
// defines: never an error's own text (a library quotes the registry's
// body, a URL, a redirect's target, a proxy's status line), so nothing a
// registry, a token service, a redirect or a proxy chose reaches the
// output.
const (
	descTimeout     = "timed out"
	descRefused     = "connection refused"
	descNotFound    = "name not found"
	descLookup      = "name lookup failed"
	descUnreachable = "host or network unreachable"
	descClosed      = "connection closed before an answer"
	descCert        = "TLS: certificate not trusted or not for this host"
	descTLS         = "TLS handshake failed"
	descProxy       = "the proxy refused the tunnel"
	descOtherHost   = "refused: a host other than the registry and the token service it named"
	descDowngrade   = "refused: a switch from HTTPS to plain HTTP"
	descPlainHTTP   = "refused: plain HTTP to an address that is neither loopback nor private"
	descLinkLocal   = "refused: a link-local, multicast or unspecified address"
	descRedirect    = "refused or failed redirect"
	descRealm       = "refused: the token service the registry named (plain HTTP, or a private or link-local address)"
	descNoToken     = "no token in the token service's answer"
	descBadToken    = "the token service's answer is not a token"
	descBadHost     = "not a registry host"
	descNotSent     = "not sent: a credential filed under Docker Hub's key goes to Docker Hub only"
	descOther       = "failed (details withheld: they may hold text the registry chose)"
	descCodeOther   = "an error code outside the distribution spec (not shown)"
)

// failureTexts are all the descriptions above, for tests.
var failureTexts = []string{descTimeout, descRefused, descNotFound, descLookup, descUnreachable, descClosed, descCert, descTLS, descProxy, descOtherHost, descDowngrade, descPlainHTTP, descLinkLocal, descRedirect, descRealm, descNoToken, descBadToken, descBadHost, descNotSent, descOther}

// distributionCodes are the error codes of the OCI distribution spec and
// of docker/distribution. Only these are reported: a code is free text
// the registry chose, and a well-formed upper-case identifier may be an
// upper-case password echoed back.
var distributionCodes = map[string]bool{
	"BLOB_UNKNOWN": true, "BLOB_UPLOAD_INVALID": true, "BLOB_UPLOAD_UNKNOWN": true,
	"DIGEST_INVALID": true, "MANIFEST_BLOB_UNKNOWN": true, "MANIFEST_INVALID": true,
	"MANIFEST_UNKNOWN": true, "MANIFEST_UNVERIFIED": true, "NAME_INVALID": true,
	"NAME_UNKNOWN": true, "SIZE_INVALID": true, "TAG_INVALID": true,
	"UNAUTHORIZED": true, "DENIED": true, "UNSUPPORTED": true,
	"TOOMANYREQUESTS": true, "UNKNOWN": true, "UNAVAILABLE": true,
	"PAGINATION_NUMBER_INVALID": true, "RANGE_INVALID": true,
}

// Refusals of the probe's own transport; their texts are fixed.
var (
	errOtherHost = errors.New("refusing to contact a host other than the registry being probed")
	errDowngrade = errors.New("refusing to switch from HTTPS to plain HTTP")
	errPlainHTTP = errors.New("refusing plain HTTP to an address that is neither loopback nor private")
	errLinkLocal = errors.New("refusing a link-local, multicast or unspecified address")
	errProxy     = errors.New("the proxy refused the tunnel")
)

// statusResult is a registry's (or token service's) refusal: the status,
// and its error codes where the spec defines them.
func statusResult(status int, diags []transport.Diagnostic) ProbeResult {
	res := ProbeResult{Status: status}
	other := false
	for _, d := range diags {
		c := string(d.Code)
		switch {
		case distributionCodes[c] && !containsString(res.Codes, c):
			res.Codes = append(res.Codes, c)
		case !distributionCodes[c]:
			other = true
		}
	}
	res.Error = statusError(status, res.Codes, other)
	return res
}

// statusError describes a refusal by its codes, or by its status when it
// has none; other says that codes outside the spec were left out.
func statusError(status int, codes []string, other bool) string {
	var msg string
	switch {
	case len(codes) > 0:
		msg = strings.Join(codes, ", ")
	case http.StatusText(status) != "":
		msg = http.StatusText(status)
	default:
		msg = fmt.Sprintf("HTTP status %d", status)
	}
	if other {
		msg += "; " + descCodeOther
	}
	return msg
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// classify names the class of a failed login. It reads errors' types and
// the facts the probe's transport recorded, never their text.
func classify(err error, f facts) ProbeResult {
	var terr *transport.Error
	switch {
	case errors.Is(err, errDowngrade):
		return ProbeResult{Error: descDowngrade}
	case errors.Is(err, errPlainHTTP):
		return ProbeResult{Error: descPlainHTTP}
	case errors.Is(err, errLinkLocal):
		return ProbeResult{Error: descLinkLocal}
	case errors.Is(err, errOtherHost):
		return ProbeResult{Error: descOtherHost}
	case errors.Is(err, errProxy):
		return ProbeResult{Error: descProxy}
	case errors.As(err, &terr):
		return statusResult(terr.StatusCode, terr.Errors)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded), isTimeout(err):
		return ProbeResult{Error: descTimeout}
	}
	var (
		unknownCA   x509.UnknownAuthorityError
		hostname    x509.HostnameError
		invalid     x509.CertificateInvalidError
		verify      *tls.CertificateVerificationError
		record      tls.RecordHeaderError
		alert       tls.AlertError
		dnsErr      *net.DNSError
		syntaxErr   *json.SyntaxError
		typeErr     *json.UnmarshalTypeError
		unreachable = errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH)
	)
	switch {
	case errors.As(err, &unknownCA), errors.As(err, &hostname), errors.As(err, &invalid), errors.As(err, &verify):
		return ProbeResult{Error: descCert}
	case errors.As(err, &record), errors.As(err, &alert):
		return ProbeResult{Error: descTLS}
	case errors.As(err, &dnsErr):
		if dnsErr.IsNotFound {
			return ProbeResult{Error: descNotFound}
		}
		return ProbeResult{Error: descLookup}
	case errors.Is(err, syscall.ECONNREFUSED):
		return ProbeResult{Error: descRefused}
	case unreachable:
		return ProbeResult{Error: descUnreachable}
	case f.noToken:
		return ProbeResult{Error: descNoToken}
	case errors.As(err, &syntaxErr), errors.As(err, &typeErr):
		return ProbeResult{Error: descBadToken}
	case f.bearer && !f.realmAsked:
		return ProbeResult{Error: descRealm}
	case f.redirected:
		return ProbeResult{Error: descRedirect}
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return ProbeResult{Error: descClosed}
	}
	return ProbeResult{Error: descOther}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// scrub removes the credential from a message. Messages are built from
// fixed texts (classify), so this is a last line of defence only: the
// password and user:password raw, JSON- and Go-quoted, hex, in every
// base64 alphabet, and URL-encoded once or twice.
func scrub(msg string, c kubeletcred.Cred) string {
	var forms []string
	for _, s := range []string{c.Password, c.Username + ":" + c.Password} {
		b := []byte(s)
		j, _ := json.Marshal(s)
		q := fmt.Sprintf("%q", s)
		for _, f := range []string{
			s, strings.Trim(string(j), `"`), q[1 : len(q)-1],
			hex.EncodeToString(b), strings.ToUpper(hex.EncodeToString(b)),
			base64.StdEncoding.EncodeToString(b), base64.RawStdEncoding.EncodeToString(b),
			base64.URLEncoding.EncodeToString(b), base64.RawURLEncoding.EncodeToString(b),
		} {
			forms = append(forms, f, url.QueryEscape(f), url.PathEscape(f), url.QueryEscape(url.QueryEscape(f)))
		}
	}
	sort.Slice(forms, func(i, j int) bool { return len(forms[i]) > len(forms[j]) })
	for _, s := range forms {
		if len(s) >= 3 {
			msg = strings.ReplaceAll(msg, s, "<redacted>")
		}
	}
	return msg
}
