package egress

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/Kilo-Org/kilo-session-operator/internal/capability"
	"github.com/Kilo-Org/kilo-session-operator/internal/redeem"
)

// Error codes of the JSON bodies the proxy answers with itself.
const (
	errRefused     = "kilo_capability_refused" // the capability was refused; reason says why
	errEgress      = "kilo_egress_refused"     // the request was refused for a reason unrelated to a capability
	errUnavailable = "kilo_egress_unavailable" // the redeem decision or the upstream failed
)

// Reasons the proxy adds to the redeem decision's.
const (
	reasonUnknownCaller      = "unknown_caller"
	reasonInvalidCapability  = "invalid_capability"
	reasonCapabilityRequired = "capability_required"
	reasonDestination        = "destination_not_allowed"
	reasonTooMany            = "too_many_requests"
	reasonBodyTooLarge       = "request_body_too_large"
	reasonHostMismatch       = "host_mismatch"
	reasonMethodOverride     = "method_override"
)

// methodOverrideHeaders make many frameworks and gateways (Express's method-override, Rails, Laravel, Symfony,
// Google's ESP) route a request as a method other than its own. The redeem decision judges the request's real
// method, so a redeemed request carrying one is refused rather than letting the upstream run a different one.
var methodOverrideHeaders = []string{"X-Http-Method-Override", "X-Http-Method", "X-Method-Override"}

// exchange is one request's routing facts, established by the front door (absolute-form or a tunnel).
type exchange struct {
	scheme    string // upstream scheme: https for tunnels, the request's own for absolute-form
	auth      authority
	pathQuery string // the request-target's path and query, byte for byte as received
	src       netip.Addr
	tunnel    bool
}

// absoluteFormExchange parses a plain proxy request "GET http://host[:port]/path?query". The URL given to the
// redeem decision is rebuilt from the raw request-target, never from Go's parsed (and re-encodable) URL; if our
// reading of the authority and Go's differ, the request is refused rather than guessing which one the upstream
// would see. The Host header is ignored (RFC 9112 §3.2.2: the target's authority wins), and the upstream is sent
// the target's authority as its Host: normalised, not refused.
func absoluteFormExchange(r *http.Request) (exchange, error) {
	raw := r.RequestURI
	i := strings.Index(raw, "://")
	if i <= 0 || r.URL == nil || r.URL.User != nil {
		return exchange{}, errBadAuthority
	}
	scheme := strings.ToLower(raw[:i])
	if scheme != "http" && scheme != "https" {
		return exchange{}, errBadAuthority
	}
	rest := raw[i+3:]
	j := strings.IndexAny(rest, "/?")
	if j < 0 {
		j = len(rest)
	}
	rawAuth, pathQuery := rest[:j], rest[j:]
	if rawAuth != r.URL.Host {
		return exchange{}, errBadAuthority
	}
	a, err := parseAuthority(rawAuth, scheme, false)
	if err != nil {
		return exchange{}, err
	}
	if pathQuery == "" || pathQuery[0] == '?' {
		pathQuery = "/" + pathQuery // RFC 9112 §3.2.1: an empty path is "/"
	}
	return exchange{scheme: scheme, auth: a, pathQuery: pathQuery}, nil
}

// plan is what the reverse proxy needs for one forwarded request; it travels in the request context.
type plan struct {
	target  *url.URL
	auth    string // replacement Authorization value, "" to forward the client's headers unchanged
	token   string // the credential inside auth, scrubbed from response headers
	blind   bool
	route   string
	start   time.Time
	written bool // the upstream answered (headers went to the client)
}

type planKey struct{}

func planOf(ctx context.Context) *plan {
	pl, _ := ctx.Value(planKey{}).(*plan)
	return pl
}

// handleRequest is the decision for one request, in this order: where a capability sits (misplaced ones are
// refused before anything else looks at the request), who calls, the per-pod bound, the redeem decision, then
// forwarding. Nothing reaches an upstream before every check passed.
func (p *Proxy) handleRequest(w http.ResponseWriter, r *http.Request, x exchange, start time.Time) {
	token, kind := inspectCredentials(r.Header, r.RequestURI)
	switch kind {
	case credDuplicateAuth:
		// Two Authorization fields: an intermediary and the upstream could each pick a different one.
		reason := "duplicate_authorization"
		code := errEgress
		for _, v := range r.Header["Authorization"] {
			if headerValueHasMarker(v) {
				code, reason = errRefused, reasonInvalidCapability
			}
		}
		p.refuse(w, r, routeNone, http.StatusForbidden, code, reason, start)
		return
	case credMisplaced:
		p.refuse(w, r, routeNone, http.StatusForbidden, errRefused, reasonInvalidCapability, start)
		return
	}

	caller, known := p.callers.Resolve(r.Context(), x.src)
	limitKey := caller.UID
	if !known {
		limitKey = "addr:" + x.src.String()
	}

	pl := &plan{start: start, route: routeNone}
	target := x.tunnel || p.targets.IsTarget(x.auth.hostport)
	switch {
	case kind == credBearer && !known:
		p.refuse(w, r, routeNone, http.StatusForbidden, errRefused, reasonUnknownCaller, start)
		return
	case kind == credBearer:
	case target && p.cfg.RefuseUncredentialed:
		p.refuse(w, r, routeNone, http.StatusForbidden, errEgress, reasonCapabilityRequired, start)
		return
	case !target && p.cfg.Blind == BlindRefuse:
		p.refuse(w, r, routeBlind, http.StatusForbidden, errEgress, reasonDestination, start)
		return
	case !target:
		pl.blind, pl.route = true, routeBlind
	}

	if r.ContentLength > p.cfg.MaxRequestBodyBytes {
		p.refuse(w, r, pl.route, http.StatusRequestEntityTooLarge, errEgress, reasonBodyTooLarge, start)
		return
	}
	if !p.reqLimit.acquire(limitKey) {
		w.Header().Set("Retry-After", "1")
		p.refuse(w, r, pl.route, http.StatusTooManyRequests, errEgress, reasonTooMany, start)
		return
	}
	defer p.reqLimit.release(limitKey)

	if kind == credBearer {
		for _, h := range methodOverrideHeaders {
			if _, ok := r.Header[h]; ok {
				p.refuse(w, r, routeNone, http.StatusForbidden, errEgress, reasonMethodOverride, start)
				return
			}
		}
		res, err := p.redeemer.Decide(r.Context(), redeem.Request{
			Capability:   token,
			CallerPodUID: caller.UID,
			URL:          x.scheme + "://" + x.auth.urlHost + x.pathQuery,
			Method:       r.Method,
		})
		var ref *redeem.Refusal
		switch {
		case errors.As(err, &ref) && ref.Reason == redeem.Reason(capability.ReasonConfiguration):
			// No key ring loaded, or a bad one: the cluster's fault, not the capability's. Fail closed with 502.
			p.log.Info("Redeem decision unavailable", "reason", string(ref.Reason), "detail", ref.Detail, "host", x.auth.hostport)
			p.m.requests.WithLabelValues(routeNone, outcomeRedeemError).Inc()
			writeJSON(w, http.StatusBadGateway, errUnavailable, string(ref.Reason))
			return
		case errors.As(err, &ref):
			p.log.V(1).Info("Refused capability", "reason", string(ref.Reason), "detail", ref.Detail,
				"method", r.Method, "host", x.auth.hostport, "pod", caller.Namespace+"/"+caller.Name)
			p.refuse(w, r, routeNone, http.StatusForbidden, errRefused, string(ref.Reason), start)
			return
		case err != nil:
			// The decision could not be made (key ring not loaded, informers not synced): fail closed, and tell
			// the client it is our fault, not its capability's.
			p.log.Error(err, "Redeem decision failed", "host", x.auth.hostport, "pod", caller.Namespace+"/"+caller.Name)
			p.m.requests.WithLabelValues(routeNone, outcomeRedeemError).Inc()
			writeJSON(w, http.StatusBadGateway, errUnavailable, "redeem_failed")
			return
		}
		pl.route = string(res.RouteClass)
		pl.auth = string(res.Authorization)
		pl.token, _ = bearerToken(pl.auth)
		if pl.token == "" {
			pl.token = pl.auth
		}
	}

	pl.target = upstreamURL(x)
	ctx, cancel := context.WithTimeout(context.WithValue(r.Context(), planKey{}, pl), p.cfg.RequestTimeout)
	defer cancel()
	out := r.WithContext(ctx)
	if r.Body != nil && r.Body != http.NoBody {
		out.Body = &countingBody{ReadCloser: http.MaxBytesReader(w, r.Body, p.cfg.MaxRequestBodyBytes), m: p.m}
	}
	p.rp.ServeHTTP(&countingWriter{ResponseWriter: w, m: p.m}, out)
}

// upstreamURL is the URL the transport requests. The path goes in Opaque so the request line carries the exact
// bytes the client sent (and the redeem decision judged): url.URL would otherwise re-encode a RawPath it finds
// non-canonical.
func upstreamURL(x exchange) *url.URL {
	path, query, hasQuery := strings.Cut(x.pathQuery, "?")
	u := &url.URL{Scheme: x.scheme, Host: x.auth.urlHost, Opaque: path, RawQuery: query, ForceQuery: hasQuery && query == ""}
	if strings.HasPrefix(path, "//") {
		// An Opaque starting with "//" is read as an authority; send the absolute form instead, which every
		// HTTP/1.1 server accepts (RFC 9112 §3.2.2).
		u.Opaque = "//" + x.auth.urlHost + path
	}
	return u
}

func (p *Proxy) rewrite(pr *httputil.ProxyRequest) {
	pl := planOf(pr.In.Context())
	pr.Out.URL = pl.target
	pr.Out.Host = "" // the transport sends the target's authority
	stripProxyHeaders(pr.Out.Header)
	if pl.auth != "" {
		pr.Out.Header["Authorization"] = []string{pl.auth}
	}
}

// stripProxyHeaders removes Proxy-* fields (Proxy-Authorization, Proxy-Connection, and any other): they address
// this hop only, and a Proxy-Authorization must never travel on to an upstream.
func stripProxyHeaders(h http.Header) {
	for k := range h {
		if len(k) > 6 && strings.EqualFold(k[:6], "proxy-") {
			delete(h, k)
		}
	}
}

func (p *Proxy) modifyResponse(resp *http.Response) error {
	pl := planOf(resp.Request.Context())
	stripProxyHeaders(resp.Header)
	if pl.token != "" {
		// An upstream echoing the credential in a header (a debug endpoint, a misconfigured gateway) must not hand
		// it to the pod the whole design keeps it from.
		for k, vs := range resp.Header {
			for _, v := range vs {
				if strings.Contains(v, pl.token) {
					delete(resp.Header, k)
					break
				}
			}
		}
	}
	if pl.token != "" && resp.Body != nil && resp.Body != http.NoBody {
		// Trailers arrive after the body, when the header scrub above has long run; scrub them as the body ends
		// (the reverse proxy copies them only after reading the body to EOF and closing it).
		resp.Body = &trailerScrub{ReadCloser: resp.Body, resp: resp, token: pl.token}
	}
	pl.written = true
	p.m.requests.WithLabelValues(pl.route, outcomeForwarded).Inc()
	p.m.upstream.WithLabelValues(pl.route, codeClass(resp.StatusCode)).Inc()
	p.m.latency.WithLabelValues(pl.route).Observe(time.Since(pl.start).Seconds())
	return nil
}

func (p *Proxy) upstreamError(w http.ResponseWriter, r *http.Request, err error) {
	pl := planOf(r.Context())
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		p.refuse(w, r, pl.route, http.StatusRequestEntityTooLarge, errEgress, reasonBodyTooLarge, pl.start)
		return
	}
	if r.Context().Err() != nil && !errors.Is(r.Context().Err(), context.DeadlineExceeded) {
		return // the client went away; nobody to answer
	}
	// *url.Error quotes the URL, query included; keep only the cause.
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	if errors.Is(err, errDestinationBlocked) {
		p.refuse(w, r, pl.route, http.StatusForbidden, errEgress, reasonDestination, pl.start)
		return
	}
	p.log.V(1).Info("Upstream request failed", "host", pl.target.Host, "route", pl.route, "error", err.Error())
	p.m.requests.WithLabelValues(pl.route, outcomeUpstreamError).Inc()
	if pl.written {
		return // headers are out; the stream just ends
	}
	writeJSON(w, http.StatusBadGateway, errUnavailable, "upstream_unreachable")
}

// refuse answers the client itself and never forwards.
func (p *Proxy) refuse(w http.ResponseWriter, r *http.Request, route string, status int, code, reason string, start time.Time) {
	outcome := outcomeRefused
	switch status {
	case http.StatusBadRequest:
		outcome = outcomeBadRequest
	case http.StatusTooManyRequests:
		outcome = outcomeLimited
	}
	p.m.requests.WithLabelValues(route, outcome).Inc()
	p.m.latency.WithLabelValues(route).Observe(time.Since(start).Seconds())
	writeJSON(w, status, code, reason)
}

func writeJSON(w http.ResponseWriter, status int, code, reason string) {
	body, _ := json.Marshal(struct {
		Error  string `json:"error"`
		Reason string `json:"reason"`
	}{code, reason})
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Length", strconv.Itoa(len(body)+1))
	w.WriteHeader(status)
	_, _ = w.Write(append(body, '\n'))
}

// planTransport sends blind traffic through the guarded dialer and everything else through the target pool.
type planTransport struct{ up, blind http.RoundTripper }

func (t planTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if pl := planOf(r.Context()); pl != nil && pl.blind {
		return t.blind.RoundTrip(r)
	}
	return t.up.RoundTrip(r)
}

type countingBody struct {
	io.ReadCloser
	m *metrics
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		b.m.bytesIn.Add(float64(n))
	}
	return n, err
}

// countingWriter counts response bytes. Unwrap lets http.ResponseController reach the real writer's Flush and
// Hijack (the reverse proxy flushes and upgrades through it).
type countingWriter struct {
	http.ResponseWriter
	m *metrics
}

func (w *countingWriter) Write(p []byte) (int, error) {
	n, err := w.ResponseWriter.Write(p)
	if n > 0 {
		w.m.bytesOut.Add(float64(n))
	}
	return n, err
}

func (w *countingWriter) Flush() { _ = http.NewResponseController(w.ResponseWriter).Flush() }

func (w *countingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

var _ net.Conn = (*bufConn)(nil)

// trailerScrub removes every trailer whose value holds the credential once the upstream body has ended.
type trailerScrub struct {
	io.ReadCloser
	resp  *http.Response
	token string
}

func (b *trailerScrub) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil {
		b.scrub()
	}
	return n, err
}

func (b *trailerScrub) Close() error {
	err := b.ReadCloser.Close()
	b.scrub()
	return err
}

func (b *trailerScrub) scrub() {
	for k, vs := range b.resp.Trailer {
		for _, v := range vs {
			if strings.Contains(v, b.token) {
				// Emptied, not deleted: the reverse proxy decides how to send trailers by comparing their count
				// with what it announced, and a deletion would make it drop the undeclared ones that remain.
				b.resp.Trailer[k] = nil
				break
			}
		}
	}
}
