// Package provider is the kubelet's image credential provider exec plugin
// (KEP-2133): a CredentialProviderRequest on stdin, a
// CredentialProviderResponse on stdout. It answers from the kubelet file
// nodecreds keeps in sync, so a rotation reaches new pulls after the short
// cache duration it returns rather than the kubelet's 5-minute cache of
// config.json.
package provider

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	credv1 "k8s.io/kubelet/pkg/apis/credentialprovider/v1"

	"github.com/nodecreds/nodecreds/internal/kubeletcred"
)

// APIVersion is the protocol version spoken.
const APIVersion = "credentialprovider.kubelet.k8s.io/v1"

// ErrBadRequest means stdin held no valid CredentialProviderRequest.
var ErrBadRequest = errors.New("invalid CredentialProviderRequest")

// Options configures the plugin.
type Options struct {
	HostRoot      string
	File          string // node path of the config.json nodecreds maintains
	CacheDuration time.Duration
}

// Serve answers one request. An image without credentials gets an empty
// response, so the kubelet falls back to its other sources. Errors never
// carry a credential.
func Serve(in io.Reader, out io.Writer, o Options) error {
	req, err := decodeRequest(in)
	if err != nil {
		return err
	}
	resp := newResponse(o.CacheDuration)
	matches, err := kubeletcred.ProviderAnswer(o.HostRoot, o.File, req.Image)
	if err != nil {
		return fmt.Errorf("looking up %s: %w", req.Image, err)
	}
	addMatches(&resp, matches)
	return json.NewEncoder(out).Encode(resp)
}

// decodeRequest reads the kubelet's request from in: one
// CredentialProviderRequest of this protocol version, naming an image.
func decodeRequest(in io.Reader) (credv1.CredentialProviderRequest, error) {
	var req credv1.CredentialProviderRequest
	dec := json.NewDecoder(io.LimitReader(in, 1<<20))
	if err := dec.Decode(&req); err != nil {
		return req, fmt.Errorf("%w: not JSON (%w)", ErrBadRequest, err)
	}
	if req.APIVersion != APIVersion || req.Kind != "CredentialProviderRequest" {
		return req, fmt.Errorf("%w: apiVersion %q kind %q, want %s CredentialProviderRequest", ErrBadRequest, req.APIVersion, req.Kind, APIVersion)
	}
	if req.Image == "" {
		return req, fmt.Errorf("%w: no image", ErrBadRequest)
	}
	return req, nil
}

// newResponse is an answer without credentials, cached per registry.
func newResponse(cache time.Duration) credv1.CredentialProviderResponse {
	return credv1.CredentialProviderResponse{
		TypeMeta:      metav1.TypeMeta{APIVersion: APIVersion, Kind: "CredentialProviderResponse"},
		CacheKeyType:  credv1.RegistryPluginCacheKeyType,
		CacheDuration: &metav1.Duration{Duration: cache},
		Auth:          map[string]credv1.AuthConfig{},
	}
}

// addMatches puts each match under its own index key: the kubelet matches
// them against this image, and against every other image of the registry
// while it keeps the answer. Two entries of one index key (https://r.test/
// and r.test) cannot both go in a map: the first in key order answers
// (`nodecreds check` says so where it happens).
func addMatches(resp *credv1.CredentialProviderResponse, matches []kubeletcred.Match) {
	for _, m := range matches {
		resp.Auth[m.Pattern] = credv1.AuthConfig{Username: m.Username, Password: m.Password}
	}
}
