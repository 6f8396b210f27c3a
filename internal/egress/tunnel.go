package egress

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const connectEstablished = "HTTP/1.1 200 Connection Established\r\n\r\n"

// handleConnect answers CONNECT host:port: intercepted when host:port is a session target, else a blind tunnel
// (or a refusal) per the blind policy.
func (p *Proxy) handleConnect(w http.ResponseWriter, r *http.Request, src netip.Addr) {
	start := time.Now()
	a, err := parseAuthority(r.RequestURI, "https", true)
	if err != nil {
		p.refuse(w, r, routeNone, http.StatusBadRequest, errEgress, "bad_connect_target", start)
		return
	}
	if p.targets.IsTarget(a.hostport) {
		p.intercept(w, r, a, src)
		return
	}
	p.blindTunnel(w, r, a, src, start)
}

// intercept terminates TLS for a target host with a leaf from the interceptor CA and serves the requests inside
// with a per-tunnel http.Server (HTTP/1.1, or HTTP/2 when the client offers it through ALPN). Each request is
// then handled exactly like a plain-http one, with https and the CONNECT authority as its origin.
func (p *Proxy) intercept(w http.ResponseWriter, r *http.Request, a authority, src netip.Addr) {
	// The leaf is issued before answering 200, so a CA problem is an honest 502, not a TLS failure the client
	// would blame on the upstream.
	if _, err := p.leaves.get(a.host); err != nil {
		p.log.Error(err, "Interception certificate unavailable", "host", a.hostport)
		p.m.requests.WithLabelValues(routeNone, outcomeUpstreamError).Inc()
		writeJSON(w, http.StatusBadGateway, errUnavailable, "certificate_unavailable")
		return
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		p.log.Error(err, "Hijacking CONNECT connection")
		return
	}
	if _, err := io.WriteString(conn, connectEstablished); err != nil {
		_ = conn.Close()
		return
	}
	tconn := tls.Server(withBuffered(conn, brw), &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: p.nextProtos,
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			// The SNI, when sent, must name the host of the CONNECT: a client that tunnels to one host and says
			// hello to another is confused or probing, and gets no certificate for either.
			if hello.ServerName != "" && !strings.EqualFold(strings.TrimSuffix(hello.ServerName, "."), a.host) {
				return nil, fmt.Errorf("SNI %q does not match CONNECT host %q", hello.ServerName, a.host)
			}
			return p.leaves.get(a.host)
		},
	})

	x := exchange{scheme: "https", auth: a, src: src, tunnel: true}
	ln := &oneConnListener{conn: tconn, done: make(chan struct{})}
	srv := &http.Server{
		Handler:           http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { p.serveTunnelled(w, r, x) }),
		ReadHeaderTimeout: p.cfg.ReadHeaderTimeout,
		IdleTimeout:       p.cfg.IdleTimeout,
		Protocols:         &p.innerProtos,
		ErrorLog:          log.New(logWriter{p.log.V(1)}, "", 0),
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateClosed || s == http.StateHijacked {
				ln.Close()
			}
		},
	}
	if !p.track(srv) {
		_ = tconn.Close()
		return
	}
	defer p.untrack(srv)
	g := p.m.activeTunnels.WithLabelValues("intercepted")
	g.Inc()
	defer g.Dec()
	if err := srv.Serve(ln); errors.Is(err, http.ErrServerClosed) && !ln.served() {
		_ = tconn.Close() // shut down between registration and Serve: nobody will serve this conn
	}
	<-ln.done // Serve returns when the listener closes; the conn may still be finishing its last response
}

// serveTunnelled handles one request inside an intercepted tunnel.
func (p *Proxy) serveTunnelled(w http.ResponseWriter, r *http.Request, x exchange) {
	start := time.Now()
	if r.RequestURI == "" || r.RequestURI[0] != '/' {
		// Only origin-form inside a tunnel: an absolute-form or authority-form target would name a host the TLS
		// session was not set up for.
		p.refuse(w, r, routeNone, http.StatusBadRequest, errEgress, "bad_request_target", start)
		return
	}
	if r.Host != "" {
		h, err := parseAuthority(r.Host, "https", false)
		if err != nil || h.hostport != x.auth.hostport {
			// The tunnel's authority decides where the request goes and what the redeem decision judges; a Host
			// naming something else is refused rather than silently rewritten, because the client evidently meant
			// a different server.
			p.refuse(w, r, routeNone, http.StatusBadRequest, errEgress, reasonHostMismatch, start)
			return
		}
	}
	x.pathQuery = r.RequestURI
	p.handleRequest(w, r, x, start)
}

// blindTunnel relays bytes to a non-target host without looking inside.
func (p *Proxy) blindTunnel(w http.ResponseWriter, r *http.Request, a authority, src netip.Addr, start time.Time) {
	if p.cfg.Blind == BlindRefuse {
		p.refuse(w, r, routeBlind, http.StatusForbidden, errEgress, reasonDestination, start)
		return
	}
	key := "addr:" + src.String()
	if c, ok := p.callers.Resolve(r.Context(), src); ok {
		key = c.UID
	}
	if !p.tunnelLimit.acquire(key) {
		w.Header().Set("Retry-After", "1")
		p.refuse(w, r, routeBlind, http.StatusTooManyRequests, errEgress, reasonTooMany, start)
		return
	}
	defer p.tunnelLimit.release(key)

	ctx, cancel := context.WithTimeout(r.Context(), p.cfg.DialTimeout)
	up, err := p.guard.DialContext(ctx, "tcp", a.hostport)
	cancel()
	if errors.Is(err, errDestinationBlocked) {
		p.refuse(w, r, routeBlind, http.StatusForbidden, errEgress, reasonDestination, start)
		return
	}
	if err != nil {
		p.log.V(1).Info("Blind tunnel dial failed", "host", a.hostport, "error", err.Error())
		p.m.requests.WithLabelValues(routeBlind, outcomeUpstreamError).Inc()
		writeJSON(w, http.StatusBadGateway, errUnavailable, "upstream_unreachable")
		return
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		_ = up.Close()
		return
	}
	if _, err := io.WriteString(conn, connectEstablished); err != nil {
		_ = conn.Close()
		_ = up.Close()
		return
	}
	client := withBuffered(conn, brw)
	if !p.trackBlind(client, up) {
		_ = client.Close()
		_ = up.Close()
		return
	}
	defer p.untrackBlind(client, up)
	p.m.requests.WithLabelValues(routeBlind, outcomeTunnelled).Inc()
	p.m.latency.WithLabelValues(routeBlind).Observe(time.Since(start).Seconds())
	g := p.m.activeTunnels.WithLabelValues("blind")
	g.Inc()
	defer g.Dec()

	var wg sync.WaitGroup
	var last atomic.Int64
	last.Store(time.Now().UnixNano())
	wg.Add(2)
	go func() { defer wg.Done(); p.pipe(up, client, &last, true) }()
	go func() { defer wg.Done(); p.pipe(client, up, &last, false) }()
	wg.Wait()
	_ = client.Close()
	_ = up.Close()
}

// pipe copies src to dst and half-closes dst at EOF so the other direction can finish (a client that shuts its
// write side still gets the answer). The tunnel is idle only when neither direction moved a byte for
// TunnelIdleTimeout: a long download with a silent client is not idle.
func (p *Proxy) pipe(dst, src net.Conn, last *atomic.Int64, inbound bool) {
	buf := make([]byte, 32<<10)
	idle := p.cfg.TunnelIdleTimeout
	for {
		_ = src.SetReadDeadline(time.Now().Add(idle))
		n, err := src.Read(buf)
		if n > 0 {
			last.Store(time.Now().UnixNano())
			if inbound {
				p.m.bytesIn.Add(float64(n))
			} else {
				p.m.bytesOut.Add(float64(n))
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				_ = src.Close()
				return
			}
		}
		var ne net.Error
		if err != nil && errors.As(err, &ne) && ne.Timeout() && time.Since(time.Unix(0, last.Load())) < idle {
			continue // the other direction is busy
		}
		if err != nil {
			if cw, ok := dst.(interface{ CloseWrite() error }); ok && errors.Is(err, io.EOF) {
				_ = cw.CloseWrite()
			} else {
				_ = dst.Close()
			}
			return
		}
	}
}

func (p *Proxy) track(s *http.Server) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closing {
		return false
	}
	p.inner[s] = struct{}{}
	p.tunnels.Add(1)
	return true
}

func (p *Proxy) untrack(s *http.Server) {
	p.mu.Lock()
	delete(p.inner, s)
	p.mu.Unlock()
	p.tunnels.Done()
}

func (p *Proxy) trackBlind(a, b net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closing {
		return false
	}
	p.blind[a], p.blind[b] = struct{}{}, struct{}{}
	p.tunnels.Add(1)
	return true
}

func (p *Proxy) untrackBlind(a, b net.Conn) {
	p.mu.Lock()
	delete(p.blind, a)
	delete(p.blind, b)
	p.mu.Unlock()
	p.tunnels.Done()
}

// oneConnListener hands one connection to http.Server.Serve, then blocks Accept until the server reports the
// connection closed or hijacked, so Serve returns exactly when the tunnel is over.
type oneConnListener struct {
	conn     net.Conn
	mu       sync.Mutex
	accepted bool
	once     sync.Once
	done     chan struct{}
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	if !l.accepted {
		l.accepted = true
		l.mu.Unlock()
		return l.conn, nil
	}
	l.mu.Unlock()
	<-l.done
	return nil, net.ErrClosed
}

func (l *oneConnListener) served() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.accepted
}

func (l *oneConnListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *oneConnListener) Addr() net.Addr { return l.conn.LocalAddr() }

// bufConn replays bytes the HTTP server had already buffered (a TLS ClientHello sent right behind the CONNECT)
// before reading from the socket.
type bufConn struct {
	net.Conn
	r io.Reader
}

func (c *bufConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func (c *bufConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

func withBuffered(c net.Conn, brw *bufio.ReadWriter) net.Conn {
	if brw == nil || brw.Reader.Buffered() == 0 {
		return c
	}
	return &bufConn{Conn: c, r: io.MultiReader(io.LimitReader(brw.Reader, int64(brw.Reader.Buffered())), c)}
}
