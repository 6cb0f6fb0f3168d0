package check

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
)

// Resolver looks up a host's addresses (*net.Resolver is one).
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

type dialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// plainDialer connects plain-HTTP requests, which carry a credential in
// clear, and only to a host whose addresses are all loopback or private:
// it looks the name up once, checks every address, and dials the checked
// addresses themselves, so a second lookup cannot answer otherwise (DNS
// rebinding) and a name (".localhost", a private-looking one) proves
// nothing.
func plainDialer(dial dialFunc, res Resolver) dialFunc {
	return checkedDialer(dial, res, plainHTTPAllowed, errPlainHTTP)
}

// tlsDialer connects HTTPS requests (and their proxy's tunnel) to any
// address but those no registry is at: link-local ones (169.254.0.0/16
// holds cloud metadata services), multicast and the unspecified address.
// A Secret names the hosts the agents' verification logins go to, and a
// registry names its token service: neither may point a node at those.
func tlsDialer(dial dialFunc, res Resolver) dialFunc {
	return checkedDialer(dial, res, tlsAllowed, errLinkLocal)
}

func tlsAllowed(a netip.Addr) bool {
	a = a.Unmap()
	return !a.IsLinkLocalUnicast() && !a.IsLinkLocalMulticast() && !a.IsMulticast() && !a.IsUnspecified() && !a.IsInterfaceLocalMulticast()
}

// checkedDialer looks the name up once, refuses (with refusal) unless
// every address is allowed, and dials the checked addresses themselves.
func checkedDialer(dial dialFunc, res Resolver, allowed func(netip.Addr) bool, refusal error) dialFunc {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, portStr, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		port, err := strconv.ParseUint(portStr, 10, 16)
		if err != nil {
			return nil, fmt.Errorf("port of %s: %w", addr, err)
		}
		var addrs []netip.Addr
		if ip, err := netip.ParseAddr(host); err == nil {
			addrs = []netip.Addr{ip}
		} else if addrs, err = res.LookupNetIP(ctx, "ip", host); err != nil {
			return nil, err
		}
		if len(addrs) == 0 {
			return nil, &net.DNSError{Err: "no addresses", Name: host, IsNotFound: true}
		}
		for _, a := range addrs {
			if !allowed(a) {
				return nil, refusal
			}
		}
		var errs []error
		for _, a := range addrs {
			c, err := dial(ctx, network, netip.AddrPortFrom(a.Unmap(), uint16(port)).String())
			if err == nil {
				return c, nil
			}
			errs = append(errs, err)
		}
		return nil, errors.Join(errs...)
	}
}

// plainHTTPAllowed: loopback (127.0.0.0/8, ::1) and private addresses
// (RFC 1918, ULA fc00::/7), an IPv4-mapped address as its IPv4 one. Not
// link-local (169.254.0.0/16 holds cloud metadata services; fe80::/10),
// not the unspecified address, not shared (100.64.0.0/10) or NAT64 space.
func plainHTTPAllowed(a netip.Addr) bool {
	a = a.Unmap()
	return a.IsLoopback() || a.IsPrivate()
}
