// Package source watches where credentials come from — Secrets through the
// API, or folders where Secrets are mounted — and hands out validated
// snapshots of them in precedence order.
package source

import (
	"errors"
	"time"

	"k8s.io/apimachinery/pkg/labels"

	"github.com/nodecreds/nodecreds/internal/dockercfg"
)

// ErrNotFound means the source (a Secret or a folder) does not exist.
var ErrNotFound = errors.New("source not found")

// Snapshot is one source as it is now.
type Snapshot struct {
	// Name identifies the source in logs and reports ("ns/name", a folder).
	Name string
	// Set is the validated content; meaningful only when Err is nil.
	Set dockercfg.Set
	// Clashes inside this one source (two keys for the same registry).
	Clashes []dockercfg.Clash
	// Revision identifies the version of the source without revealing its
	// data (a Secret's uid and resourceVersion, a mounted folder's ..data
	// target).
	Revision string
	// NodeSelector limits the source to the Nodes it matches (a Secret's
	// nodecreds.io/node-selector annotation); nil applies everywhere.
	NodeSelector labels.Selector
	// Selected is set when the source carries a node-selector annotation at
	// all, valid or not: it is for some nodes only.
	Selected bool
	// RuntimeAuth is set when the source opts in to containerd's
	// hosts.toml headers (a Secret annotated nodecreds.io/runtime-auth:
	// "true").
	RuntimeAuth bool
	// NoVerify is set when the source opts out of the login that verifies
	// changed credentials (a Secret annotated nodecreds.io/verify: "off").
	NoVerify bool
	// ExpiresAt is when the credentials expire (a Secret's
	// nodecreds.io/expires-at annotation); zero when unknown. ExpiryErr is
	// why the annotation was ignored (errors.Is ErrExpiresAt): it is
	// reported, and never makes the source unusable.
	ExpiresAt time.Time
	ExpiryErr error
	// Err is why the source cannot be used now. errors.Is(Err, ErrNotFound)
	// when it does not exist, dockercfg.ErrInvalid when it does not validate.
	Err error
}

// Reason classifies Err for metrics and conditions.
func (s Snapshot) Reason() string {
	switch {
	case s.Err == nil:
		return ""
	case errors.Is(s.Err, ErrNotFound):
		return "NotFound"
	case errors.Is(s.Err, dockercfg.ErrInvalid):
		return "Invalid"
	case errors.Is(s.Err, ErrUnsupportedType):
		return "UnsupportedType"
	case errors.Is(s.Err, ErrNodeUnknown):
		return "NodeUnknown"
	}
	return "Unreadable"
}

// ErrUnsupportedType means a Secret is of a type that does not carry
// registry credentials.
var ErrUnsupportedType = errors.New("unsupported Secret type")

// FromData parses a Secret's data map (or a mounted folder's files) the
// way both Secret types lay it out. secretType may be empty when unknown
// (a mounted folder): then whichever key is present is used, preferring
// .dockerconfigjson.
func FromData(secretType string, data map[string][]byte) (dockercfg.Set, []dockercfg.Clash, error) {
	var key string
	var format dockercfg.Format
	switch secretType {
	case "kubernetes.io/dockerconfigjson":
		key, format = dockercfg.KeyConfigJSON, dockercfg.ConfigJSON
	case "kubernetes.io/dockercfg":
		key, format = dockercfg.KeyLegacy, dockercfg.Legacy
	case "":
		if _, ok := data[dockercfg.KeyConfigJSON]; ok {
			key, format = dockercfg.KeyConfigJSON, dockercfg.ConfigJSON
		} else if _, ok := data[dockercfg.KeyLegacy]; ok {
			key, format = dockercfg.KeyLegacy, dockercfg.Legacy
		} else {
			return nil, nil, &dockercfg.ValidationError{Problems: []dockercfg.Problem{{
				Reason: "no " + dockercfg.KeyConfigJSON + " or " + dockercfg.KeyLegacy + " key",
			}}}
		}
	default:
		return nil, nil, errUnsupported(secretType)
	}
	raw, ok := data[key]
	if !ok {
		return nil, nil, &dockercfg.ValidationError{Problems: []dockercfg.Problem{{Reason: "no " + key + " key"}}}
	}
	set, clashes, err := dockercfg.Parse(raw, format)
	if err != nil {
		return nil, nil, err
	}
	return set, clashes, nil
}

type unsupportedError struct{ typ string }

func (e unsupportedError) Error() string {
	return "Secret type " + e.typ + " does not carry registry credentials; use kubernetes.io/dockerconfigjson or kubernetes.io/dockercfg"
}
func (e unsupportedError) Unwrap() error { return ErrUnsupportedType }

func errUnsupported(t string) error { return unsupportedError{typ: t} }
