package check

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"testing"
)

// fakeNet stands in for DNS and the internet: names answer the addresses a
// test gives them (a public address included), and every address a test
// routes is served by a server on 127.0.0.1. Nothing else is dialled, so
// no packet ever leaves loopback. It records what was dialled and every
// byte written in clear to each address, so a test can tell whether a
// credential went somewhere unencrypted.
type fakeNet struct {
	t      *testing.T
	mu     sync.Mutex
	dns    map[string][]netip.Addr // what the probe's resolver is answered
	sysDNS map[string][]netip.Addr // what a dial by name resolves to; dns when unset
	// lookups answer in turn (the last one from then on): a name that
	// resolves to another address the next time it is asked (DNS
	// rebinding).
	lookups map[string][][]netip.Addr
	routes  map[netip.AddrPort]string // an address → the 127.0.0.1 server standing in
	dialled []string
	written map[netip.AddrPort]*bytes.Buffer
}

func newFakeNet(t *testing.T) *fakeNet {
	return &fakeNet{t: t, dns: map[string][]netip.Addr{}, sysDNS: map[string][]netip.Addr{}, lookups: map[string][][]netip.Addr{}, routes: map[netip.AddrPort]string{}, written: map[netip.AddrPort]*bytes.Buffer{}}
}

// host makes name resolve to addrs.
func (n *fakeNet) host(name string, addrs ...string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.dns[name] = parseAddrs(addrs)
}

// serve routes addr (ip:port) to h, on 127.0.0.1, plain or TLS (with
// httptest's certificate, which is for example.com, *.example.com and
// 127.0.0.1).
func (n *fakeNet) serve(addr string, h http.Handler, tls bool) *httptest.Server {
	srv := httptest.NewUnstartedServer(h)
	if tls {
		srv.StartTLS()
	} else {
		srv.Start()
	}
	n.t.Cleanup(srv.Close)
	n.mu.Lock()
	n.routes[netip.MustParseAddrPort(addr)] = srv.Listener.Addr().String()
	n.mu.Unlock()
	return srv
}

func parseAddrs(addrs []string) []netip.Addr {
	out := make([]netip.Addr, 0, len(addrs))
	for _, a := range addrs {
		out = append(out, netip.MustParseAddr(a))
	}
	return out
}

func (n *fakeNet) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if seq := n.lookups[host]; len(seq) > 0 {
		a := seq[0]
		if len(seq) > 1 {
			n.lookups[host] = seq[1:]
		}
		return slices.Clone(a), nil
	}
	if a, ok := n.dns[host]; ok {
		return slices.Clone(a), nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

// DialContext dials as the system would: a name is resolved (sysDNS, else
// dns), each address tried; only routed addresses connect, to their
// stand-in on 127.0.0.1.
func (n *fakeNet) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return nil, err
	}
	n.mu.Lock()
	n.dialled = append(n.dialled, addr)
	var ips []netip.Addr
	if ip, err := netip.ParseAddr(host); err == nil {
		ips = []netip.Addr{ip}
	} else if a, ok := n.sysDNS[host]; ok {
		ips = a
	} else {
		ips = n.dns[host]
	}
	n.mu.Unlock()
	if len(ips) == 0 {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	for _, ip := range ips {
		ap := netip.AddrPortFrom(ip.Unmap(), uint16(port))
		n.mu.Lock()
		to, ok := n.routes[ap]
		n.mu.Unlock()
		if !ok {
			continue
		}
		var d net.Dialer
		c, err := d.DialContext(ctx, network, to)
		if err != nil {
			return nil, err
		}
		return &recordingConn{Conn: c, n: n, to: ap}, nil
	}
	return nil, &net.OpError{Op: "dial", Net: network, Err: errors.New("fake network: no route")}
}

// clear returns what was written in clear to addr (ip:port).
func (n *fakeNet) clear(addr string) string {
	n.mu.Lock()
	defer n.mu.Unlock()
	if b := n.written[netip.MustParseAddrPort(addr)]; b != nil {
		return b.String()
	}
	return ""
}

func (n *fakeNet) Dialled() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.dialled)
}

type recordingConn struct {
	net.Conn
	n  *fakeNet
	to netip.AddrPort
}

func (c *recordingConn) Write(b []byte) (int, error) {
	c.n.mu.Lock()
	buf := c.n.written[c.to]
	if buf == nil {
		buf = &bytes.Buffer{}
		c.n.written[c.to] = buf
	}
	buf.Write(b)
	c.n.mu.Unlock()
	return c.Conn.Write(b)
}
