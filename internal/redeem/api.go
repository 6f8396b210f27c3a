package redeem

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"strings"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// RedeemPath is the redeem API's only route.
const RedeemPath = "/v1/redeem"

// MaxRedeemBody bounds a redeem request body. A capability is at most 64 KiB, so twice that leaves room for the
// URL and the other fields while bounding what one request can make the server hold.
const MaxRedeemBody = 128 << 10

// Redeemer is the decision the API serves; *Decider implements it.
type Redeemer interface {
	Decide(ctx context.Context, req Request) (Result, error)
}

// APIConfig configures NewAPIHandler.
type APIConfig struct {
	Redeemer      Redeemer      // required
	Authenticator Authenticator // required; see NewTokenReviewAuthenticator
	Logger        logr.Logger
}

// apiHandler serves POST /v1/redeem for trusted gateways.
type apiHandler struct {
	redeemer Redeemer
	auth     Authenticator
	log      logr.Logger
}

// NewAPIHandler returns the handler for POST /v1/redeem. It authenticates the caller before it reads the body,
// and answers every failure with {"success":false,"reason":…}: 400 invalid_request for a malformed request, 401
// unauthenticated, 403 for a refused redemption, 503 when the server cannot decide (no key ring, TokenReview
// unavailable). Responses carry Cache-Control: no-store; a 200 holds the real Authorization value.
func NewAPIHandler(cfg APIConfig) (http.Handler, error) {
	if cfg.Redeemer == nil || cfg.Authenticator == nil {
		return nil, errors.New("building the redeem API: a Redeemer and an Authenticator are required")
	}
	return &apiHandler{redeemer: cfg.Redeemer, auth: cfg.Authenticator, log: cfg.Logger}, nil
}

type redeemResponse struct {
	Success       bool   `json:"success"`
	Authorization string `json:"authorization,omitempty"`
	RouteClass    string `json:"routeClass,omitempty"`
	Reason        string `json:"reason,omitempty"`
}

func writeJSON(w http.ResponseWriter, status int, body redeemResponse) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	b, _ := json.Marshal(body) // only strings and a bool: cannot fail
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

func writeRefusal(w http.ResponseWriter, status int, r Reason) {
	writeJSON(w, status, redeemResponse{Reason: string(r)})
}

func (h *apiHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != RedeemPath {
		writeRefusal(w, http.StatusNotFound, ReasonInvalidRequest)
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		writeRefusal(w, http.StatusMethodNotAllowed, ReasonInvalidRequest)
		return
	}

	bearer, ok := bearerToken(r.Header.Get("Authorization"))
	if !ok {
		w.Header().Set("WWW-Authenticate", `Bearer realm="kilo-redeem"`)
		writeRefusal(w, http.StatusUnauthorized, ReasonUnauthenticated)
		return
	}
	caller, err := h.auth.Authenticate(r.Context(), bearer)
	if err != nil {
		if errors.Is(err, ErrAuthUnavailable) {
			h.log.Info("Redeem caller could not be authenticated: TokenReview unavailable")
			writeRefusal(w, http.StatusServiceUnavailable, ReasonUnauthenticated)
			return
		}
		w.Header().Set("WWW-Authenticate", `Bearer realm="kilo-redeem"`)
		writeRefusal(w, http.StatusUnauthorized, ReasonUnauthenticated)
		return
	}

	if !isJSONContentType(r.Header.Get("Content-Type")) {
		writeRefusal(w, http.StatusBadRequest, ReasonInvalidRequest)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, MaxRedeemBody+1))
	if err != nil || len(body) > MaxRedeemBody {
		writeRefusal(w, http.StatusBadRequest, ReasonInvalidRequest)
		return
	}
	req, ok := parseRedeemBody(body)
	if !ok {
		writeRefusal(w, http.StatusBadRequest, ReasonInvalidRequest)
		return
	}

	res, err := h.redeemer.Decide(r.Context(), req)
	if err != nil {
		var ref *Refusal
		if !errors.As(err, &ref) {
			writeRefusal(w, http.StatusInternalServerError, ReasonConfiguration)
			return
		}
		status := http.StatusForbidden
		if ref.Reason == ReasonConfiguration {
			status = http.StatusServiceUnavailable
		}
		h.log.V(1).Info("Redeem API refused", "reason", string(ref.Reason),
			"ServiceAccount", caller.Namespace+"/"+caller.Name)
		writeRefusal(w, status, ref.Reason)
		return
	}
	writeJSON(w, http.StatusOK, redeemResponse{
		Success: true, Authorization: string(res.Authorization), RouteClass: string(res.RouteClass),
	})
}

// bearerToken extracts the credential of an "Authorization: Bearer …" header (scheme case-insensitive, RFC 7235).
func bearerToken(h string) (string, bool) {
	scheme, tok, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	tok = strings.TrimSpace(tok)
	return tok, tok != "" && len(tok) <= maxBearerLen
}

func isJSONContentType(ct string) bool {
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil || mt != "application/json" {
		return false
	}
	for k, v := range params {
		if k != "charset" || !strings.EqualFold(v, "utf-8") {
			return false
		}
	}
	return true
}

// parseRedeemBody reads exactly one JSON object whose members are all strings, each known and at most once.
// It is stricter than encoding/json's struct decoding on purpose: a duplicate member is refused rather than
// resolved last-wins, because a gateway and this server reading one body two ways is a request-smuggling seam.
func parseRedeemBody(body []byte) (Request, bool) {
	dec := json.NewDecoder(bytes.NewReader(body))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return Request{}, false
	}
	var req Request
	var seen [5]bool
	for dec.More() {
		kt, err := dec.Token()
		if err != nil {
			return Request{}, false
		}
		key, _ := kt.(string)
		vt, err := dec.Token()
		if err != nil {
			return Request{}, false
		}
		val, isString := vt.(string)
		if !isString {
			return Request{}, false
		}
		var i int
		switch key {
		case "capability":
			i, req.Capability = 0, val
		case "outboundContainerId":
			i, req.CallerPodUID = 1, val
		case "requestUrl":
			i, req.URL = 2, val
		case "requestMethod":
			i, req.Method = 3, val
		case "bootstrapKiloSessionId":
			i, req.BootstrapSessionID = 4, val
		default:
			return Request{}, false
		}
		if seen[i] {
			return Request{}, false
		}
		seen[i] = true
	}
	if t, err := dec.Token(); err != nil || t != json.Delim('}') {
		return Request{}, false
	}
	if _, err := dec.Token(); err != io.EOF {
		return Request{}, false // trailing data
	}
	if req.Capability == "" || req.CallerPodUID == "" || req.URL == "" || !isMethodToken(req.Method) {
		return Request{}, false
	}
	return req, true
}

// isMethodToken: an HTTP method is a token (RFC 9110 §9.1, §5.6.2). Anything else is no request an upstream would
// serve, and judged as given ("GET " or "GET\x00") it would not match a deny rule written for the method it
// imitates.
func isMethodToken(m string) bool {
	if m == "" {
		return false
	}
	for i := 0; i < len(m); i++ {
		c := m[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// MuxConfig configures NewMux.
type MuxConfig struct {
	// API serves RedeemPath (NewAPIHandler); nil leaves the route out, for an egress that serves only the proxy.
	API http.Handler
	// Ready reports why the server is not ready yet, or nil; see ReadyCheck. nil means always ready.
	Ready func() error
	// Gatherer backs /metrics; nil leaves /metrics out.
	Gatherer prometheus.Gatherer
}

// NewMux mounts the redeem API, /healthz, /readyz and /metrics. cmd/egress serves it with NewServer, over TLS
// when certificates are configured:
//
//	srv := redeem.NewServer(addr, redeem.NewMux(cfg))
//	srv.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: reloader.GetCertificate}
//	err := srv.ListenAndServeTLS("", "") // or srv.ListenAndServe() without certificates
func NewMux(cfg MuxConfig) *http.ServeMux {
	mux := http.NewServeMux()
	if cfg.API != nil {
		mux.Handle(RedeemPath, cfg.API)
	}
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		if cfg.Ready != nil {
			if err := cfg.Ready(); err != nil {
				w.WriteHeader(http.StatusServiceUnavailable)
				_, _ = io.WriteString(w, "not ready: "+err.Error()+"\n")
				return
			}
		}
		_, _ = io.WriteString(w, "ok\n")
	})
	if cfg.Gatherer != nil {
		mux.Handle("/metrics", promhttp.HandlerFor(cfg.Gatherer, promhttp.HandlerOpts{}))
	}
	return mux
}

// ReadyCheck is the readiness of a redeem server: the state's informers have synced and a key ring is loaded.
// Before that, a missing pod or session may only be not-yet-seen, and every redemption would be refused.
func ReadyCheck(state interface{ HasSynced() bool }, d *Decider) func() error {
	return func() error {
		if state != nil && !state.HasSynced() {
			return errors.New("Pod and KiloSession informers have not synced")
		}
		if !d.KeyRingLoaded() {
			return errors.New("no capability key ring is loaded")
		}
		return nil
	}
}

// NewServer returns an http.Server for h with timeouts that bound slow clients: headers in 10s, a whole request
// in 30s, idle keep-alive connections for 2 minutes.
func NewServer(addr string, h http.Handler) *http.Server {
	return &http.Server{
		Addr:              addr,
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
	}
}
