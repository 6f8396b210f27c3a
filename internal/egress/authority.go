package egress

import (
	"errors"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

var errBadAuthority = errors.New("malformed authority")

// authority is a parsed request authority.
type authority struct {
	host     string // lower-case DNS name or IP literal, no brackets: the leaf certificate's SAN
	hostport string // host:port with an explicit port (IPv6 bracketed): the target-host key and the dial address
	urlHost  string // what goes in a URL: hostport, or the bracketed host when the port is the scheme's default
}

// parseAuthority parses host[:port] strictly: no userinfo, a decimal port 1–65535 without leading zeros, an IP
// literal (IPv6 in brackets, no zone) or a DNS name of letters, digits, '-', '_' and '.'. requirePort is set for
// CONNECT, whose request-target must carry a port (RFC 9110 §9.3.6).
func parseAuthority(s, scheme string, requirePort bool) (authority, error) {
	if s == "" || len(s) > 261 || strings.ContainsAny(s, "@/?#\\%") {
		return authority{}, errBadAuthority
	}
	host, port := s, ""
	if i := strings.LastIndexByte(s, ':'); i >= 0 && (!strings.HasPrefix(s, "[") || strings.HasSuffix(s[:i], "]")) {
		host, port = s[:i], s[i+1:]
		if port == "" {
			return authority{}, errBadAuthority
		}
	}
	def := "443"
	if scheme == "http" {
		def = "80"
	}
	if port == "" {
		if requirePort {
			return authority{}, errBadAuthority
		}
		port = def
	}
	if port[0] == '0' || len(port) > 5 {
		return authority{}, errBadAuthority
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 || strconv.Itoa(n) != port {
		return authority{}, errBadAuthority
	}
	if strings.HasPrefix(host, "[") {
		if !strings.HasSuffix(host, "]") {
			return authority{}, errBadAuthority
		}
		a, err := netip.ParseAddr(host[1 : len(host)-1])
		if err != nil || !a.Is6() || a.Zone() != "" {
			return authority{}, errBadAuthority
		}
		host = a.String()
	} else if a, err := netip.ParseAddr(host); err == nil {
		if !a.Is4() {
			return authority{}, errBadAuthority // an IPv6 literal must be bracketed
		}
		host = a.String()
	} else {
		// "api.kilo.ai." and "api.kilo.ai" name the same server; without this the fully-qualified spelling would
		// miss the target lookup and ride a blind tunnel, capability and all.
		host = strings.TrimSuffix(host, ".")
		if host == "" || len(host) > 253 || host[0] == '.' || host[len(host)-1] == '.' || strings.Contains(host, "..") {
			return authority{}, errBadAuthority
		}
		for i := 0; i < len(host); i++ {
			c := host[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_') {
				return authority{}, errBadAuthority
			}
		}
		host = strings.ToLower(host)
	}
	a := authority{host: host, hostport: net.JoinHostPort(host, port)}
	if port == def {
		a.urlHost = host
		if strings.Contains(host, ":") {
			a.urlHost = "[" + host + "]"
		}
	} else {
		a.urlHost = a.hostport
	}
	return a, nil
}
