package egress

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
)

// Deps are the proxy's collaborators.
type Deps struct {
	Redeemer Redeemer
	Callers  CallerResolver
	Targets  TargetHosts
	CA       CASource
	// Log receives structured events; it never sees a capability, a token or an Authorization value.
	Log logr.Logger
	// Registerer receives the kilo_egress_* metrics; nil registers nothing.
	Registerer prometheus.Registerer
}

// Proxy is the egress interceptor. It is an http.Handler for the proxy listener; Serve and Shutdown run it with
// the timeouts of its Config and drain intercepted tunnels, which the outer server no longer tracks once hijacked.
type Proxy struct {
	cfg      Config
	log      logr.Logger
	redeemer Redeemer
	callers  CallerResolver
	targets  TargetHosts
	leaves   *leafCache
	guard    *dialGuard
	m        *metrics

	rp            *httputil.ReverseProxy
	upstream      *http.Transport // session targets: one keep-alive pool, normal certificate verification
	blindUpstream *http.Transport // plain-http blind forwarding, dialled through the guard
	innerProtos   http.Protocols
	nextProtos    []string

	reqLimit    *callerLimiter
	tunnelLimit *callerLimiter

	srv *http.Server

	mu      sync.Mutex
	closing bool
	inner   map[*http.Server]struct{}
	blind   map[net.Conn]struct{}
	tunnels sync.WaitGroup
}

// New builds a proxy. It does not listen; call Serve.
func New(cfg Config, d Deps) (*Proxy, error) {
	if d.Redeemer == nil || d.Callers == nil || d.Targets == nil || d.CA == nil {
		return nil, errors.New("building egress proxy: Redeemer, Callers, Targets and CA are required")
	}
	cfg = cfg.withDefaults()
	m, err := newMetrics(d.Registerer)
	if err != nil {
		return nil, fmt.Errorf("registering egress metrics: %w", err)
	}
	dialer := &net.Dialer{Timeout: cfg.DialTimeout, KeepAlive: 30 * time.Second}
	p := &Proxy{
		cfg:         cfg,
		log:         d.Log,
		redeemer:    d.Redeemer,
		callers:     d.Callers,
		targets:     d.Targets,
		leaves:      newLeafCache(d.CA, cfg.LeafValidity, cfg.Now),
		guard:       newDialGuard(cfg.Blind, cfg.BlockedCIDRs, dialer),
		m:           m,
		reqLimit:    newCallerLimiter(cfg.MaxConcurrentPerCaller),
		tunnelLimit: newCallerLimiter(cfg.MaxTunnelsPerCaller),
		inner:       map[*http.Server]struct{}{},
		blind:       map[net.Conn]struct{}{},
	}
	p.upstream = &http.Transport{
		// Never an environment proxy: the egress is the last hop.
		Proxy:                 nil,
		DialContext:           dialer.DialContext,
		TLSClientConfig:       &tls.Config{RootCAs: cfg.UpstreamRoots, MinVersion: tls.VersionTLS12},
		ForceAttemptHTTP2:     true,
		TLSHandshakeTimeout:   cfg.DialTimeout,
		ResponseHeaderTimeout: cfg.ResponseHeaderTimeout,
		ExpectContinueTimeout: time.Second,
		IdleConnTimeout:       cfg.IdleTimeout,
		MaxIdleConns:          1024,
		MaxIdleConnsPerHost:   256,
		// Bodies are passed through as the upstream sent them; decompressing would change what the client sees.
		DisableCompression: true,
	}
	p.blindUpstream = p.upstream.Clone()
	p.blindUpstream.DialContext = p.guard.DialContext
	p.blindUpstream.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12} // system roots only
	p.blindUpstream.MaxIdleConnsPerHost = 16

	p.rp = &httputil.ReverseProxy{
		Rewrite:        p.rewrite,
		Transport:      planTransport{up: p.upstream, blind: p.blindUpstream},
		FlushInterval:  -1, // every write is flushed: server-sent events and chunked streams flow as they arrive
		ModifyResponse: p.modifyResponse,
		ErrorHandler:   p.upstreamError,
		ErrorLog:       log.New(logWriter{p.log.V(1)}, "", 0),
	}

	p.innerProtos.SetHTTP1(true)
	p.nextProtos = []string{"http/1.1"}
	if !cfg.DisableHTTP2 {
		p.innerProtos.SetHTTP2(true)
		p.nextProtos = []string{"h2", "http/1.1"}
	}

	var outer http.Protocols
	outer.SetHTTP1(true) // a forward proxy speaks HTTP/1.1 to its clients; no h2c
	p.srv = &http.Server{
		Handler:           p,
		ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		Protocols:         &outer,
		ErrorLog:          log.New(logWriter{p.log.V(1)}, "", 0),
	}
	return p, nil
}

// Serve accepts proxy connections on l until Shutdown.
func (p *Proxy) Serve(l net.Listener) error {
	err := p.srv.Serve(l)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops accepting, lets in-flight requests and streams finish (plain-http ones, those inside intercepted
// tunnels, and blind tunnels), and forces what is still open when ctx ends.
func (p *Proxy) Shutdown(ctx context.Context) error {
	p.mu.Lock()
	p.closing = true
	inner := make([]*http.Server, 0, len(p.inner))
	for s := range p.inner {
		inner = append(inner, s)
	}
	p.mu.Unlock()

	var wg sync.WaitGroup
	errs := make([]error, len(inner)+1)
	wg.Add(1)
	go func() { defer wg.Done(); errs[0] = p.srv.Shutdown(ctx) }()
	for i, s := range inner {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.Shutdown(ctx); err != nil {
				_ = s.Close()
				errs[i+1] = err
			}
		}()
	}
	wg.Wait()

	done := make(chan struct{})
	go func() { p.tunnels.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		p.mu.Lock()
		for c := range p.blind {
			_ = c.Close()
		}
		p.mu.Unlock()
		<-done
	}
	p.upstream.CloseIdleConnections()
	p.blindUpstream.CloseIdleConnections()
	return errors.Join(errs...)
}

// ServeHTTP handles one request on the proxy port: a CONNECT or an absolute-form request.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	src, ok := sourceAddr(r.RemoteAddr)
	if !ok {
		p.refuse(w, r, routeNone, http.StatusBadRequest, errEgress, "bad_source_address", time.Now())
		return
	}
	if r.Method == http.MethodConnect {
		p.handleConnect(w, r, src)
		return
	}
	start := time.Now()
	x, err := absoluteFormExchange(r)
	if err != nil {
		p.refuse(w, r, routeNone, http.StatusBadRequest, errEgress, "bad_request_target", start)
		return
	}
	x.src = src
	p.handleRequest(w, r, x, start)
}

func sourceAddr(remote string) (netip.Addr, bool) {
	ap, err := netip.ParseAddrPort(remote)
	if err != nil {
		return netip.Addr{}, false
	}
	return ap.Addr().Unmap().WithZone(""), true
}

// logWriter sends net/http's internal log lines (TLS handshake errors, malformed requests) to logr. Those lines
// carry addresses and protocol errors, never header values.
type logWriter struct{ l logr.Logger }

func (w logWriter) Write(b []byte) (int, error) {
	if n := len(b); n > 0 && b[n-1] == '\n' {
		b = b[:n-1]
	}
	w.l.Info("HTTP server", "message", string(b))
	return len(b), nil
}
