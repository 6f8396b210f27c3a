package egress

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
)

// errDestinationBlocked is returned (wrapped) when every address of a blind destination is in a blocked range.
var errDestinationBlocked = errors.New("destination address not allowed")

// defaultBlocked are the ranges a blind tunnel never reaches under BlindPublic: everything that is not the public
// internet, so the proxy cannot be used to reach the node, the cluster network or cloud metadata endpoints.
var defaultBlocked = mustPrefixes(
	"0.0.0.0/8",      // "this network"
	"10.0.0.0/8",     // RFC 1918
	"100.64.0.0/10",  // CGNAT, used by some CNIs for pods
	"127.0.0.0/8",    // loopback
	"169.254.0.0/16", // link-local, cloud metadata (169.254.169.254)
	"172.16.0.0/12",  // RFC 1918
	"192.0.0.0/24",   // IETF protocol assignments
	"192.168.0.0/16", // RFC 1918
	"198.18.0.0/15",  // benchmarking
	"224.0.0.0/4",    // multicast
	"240.0.0.0/4",    // reserved, broadcast
	"::/128",         // unspecified
	"::1/128",        // loopback
	"64:ff9b::/96",   // NAT64: embeds an IPv4 address the check above would not see
	"64:ff9b:1::/48", // local-use NAT64
	"fc00::/7",       // unique local
	"fe80::/10",      // link-local
	"ff00::/8",       // multicast
	"2001:db8::/32",  // documentation
	"100::/64",       // discard
	"2002::/16",      // 6to4: embeds an IPv4 address
	"fec0::/10",      // deprecated site-local
	"::ffff:0:0/96",  // IPv4-mapped (unmapped before the check; kept as a backstop)
	"::/96",          // IPv4-compatible (deprecated)
	"2001::/32",      // Teredo: embeds an IPv4 address
	"fd00:ec2::/32",  // AWS IMDS over IPv6 (inside fc00::/7 already; explicit for the reader)
)

func mustPrefixes(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

// dialGuard dials blind destinations: it resolves the host, refuses if any resolved address is blocked (a name
// that resolves to both a public and a private address is refused outright, not narrowed), and connects to the
// checked address itself so a second resolution cannot return something else (DNS rebinding).
type dialGuard struct {
	policy   BlindPolicy
	blocked  []netip.Prefix
	resolver *net.Resolver
	dialer   *net.Dialer
}

func newDialGuard(policy BlindPolicy, extra []netip.Prefix, dialer *net.Dialer) *dialGuard {
	blocked := append(append([]netip.Prefix{}, defaultBlocked...), extra...)
	return &dialGuard{policy: policy, blocked: blocked, resolver: net.DefaultResolver, dialer: dialer}
}

func (g *dialGuard) isBlocked(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range g.blocked {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// DialContext is a net.Dialer-compatible dial for blind traffic.
func (g *dialGuard) DialContext(ctx context.Context, network, hostport string) (net.Conn, error) {
	switch g.policy {
	case BlindAllow:
		return g.dialer.DialContext(ctx, network, hostport)
	case BlindPublic:
	default:
		return nil, fmt.Errorf("dialing %s: %w", hostport, errDestinationBlocked)
	}
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return nil, fmt.Errorf("dialing %s: %w", hostport, err)
	}
	var addrs []netip.Addr
	if a, err := netip.ParseAddr(host); err == nil {
		addrs = []netip.Addr{a}
	} else {
		addrs, err = g.resolver.LookupNetIP(ctx, "ip", host)
		if err != nil {
			return nil, fmt.Errorf("resolving %s: %w", host, err)
		}
	}
	if len(addrs) == 0 {
		return nil, fmt.Errorf("resolving %s: no addresses", host)
	}
	for _, a := range addrs {
		if g.isBlocked(a) || a.Zone() != "" {
			return nil, fmt.Errorf("dialing %s: %w", hostport, errDestinationBlocked)
		}
	}
	var firstErr error
	for _, a := range addrs {
		c, err := g.dialer.DialContext(ctx, network, net.JoinHostPort(a.Unmap().String(), port))
		if err == nil {
			return c, nil
		}
		if firstErr == nil {
			firstErr = err
		}
		if ctx.Err() != nil {
			break
		}
	}
	return nil, fmt.Errorf("dialing %s: %w", hostport, firstErr)
}
