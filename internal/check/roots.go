package check

import (
	"crypto/x509"
	"sync"

	"golang.org/x/crypto/x509roots/fallback/bundle"
)

// fallbackRoots installs TLS roots compiled into the binary, used only when
// the system has none (the image holds nothing but the binary, and `check
// --probe` must still verify registries' certificates). It is done on the
// first probe rather than at start-up, as the fallback package's init
// would: parsing some 150 certificates cost every agent on every node
// about 1 MiB of memory for connections it never makes (it talks to the API
// server with the cluster's own CA).
var fallbackRoots = sync.OnceFunc(func() {
	p := x509.NewCertPool()
	for c := range bundle.Roots() {
		cert, err := x509.ParseCertificate(c.Certificate)
		if err != nil {
			continue // a bundle entry Go cannot parse is not one we can use
		}
		if c.Constraint == nil {
			p.AddCert(cert)
		} else {
			p.AddCertWithConstraint(cert, c.Constraint)
		}
	}
	x509.SetFallbackRoots(p)
})
