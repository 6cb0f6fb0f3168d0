package source

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// AnnotationExpiresAt on a Secret says when its credentials expire (RFC
// 3339), as the generator that fills it knows (external-secrets' ECR, GCR,
// Quay generators through the ExternalSecret template): the agent warns
// before that time and fails after it, so a refresh that silently stopped
// is seen before pulls fail.
const AnnotationExpiresAt = "nodecreds.io/expires-at"

// ErrExpiresAt means a Secret's expires-at annotation does not parse. It
// never blocks the credentials: the annotation is ignored and reported.
var ErrExpiresAt = errors.New("invalid " + AnnotationExpiresAt + " annotation")

// parseExpiresAt reads a Secret's expires-at annotation: the zero time
// without one. The value is not repeated in the error (an annotation is no
// secret, but nothing in an error needs it): what it should look like is.
func parseExpiresAt(name string, annotations map[string]string) (time.Time, error) {
	v, ok := annotations[AnnotationExpiresAt]
	if !ok {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339, strings.TrimSpace(v))
	if err == nil {
		return t, nil
	}
	hint := "an RFC 3339 time such as 2026-01-02T15:04:05Z is needed"
	if v != "" && strings.Trim(v, "0123456789.") == "" {
		// The generators give Unix seconds; the template must convert.
		hint = "it looks like Unix seconds: convert it to RFC 3339 in the ExternalSecret template (docs/cloud-tokens.md)"
	}
	return time.Time{}, fmt.Errorf("Secret %s: %w: %s; the expiry is ignored, the credentials are used", name, ErrExpiresAt, hint)
}
