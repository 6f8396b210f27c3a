// Command upstream is the demo's stand-in for api.kilo.ai and the session-ingest service.
//
// It serves HTTPS on two loopback listeners (one playing the Kilo backend and model-provider routes, one playing
// session ingest) with a certificate from a CA it creates at start, and records every request it receives:
// method, path and the Authorization header. The demo reads the record from a plain-HTTP control listener
// (GET /_seen, POST /_reset) to prove that the upstream saw the user's real token and never a kka1 capability.
//
// The tokens in the demo are throwaway demo values, which is why this program may show them; nothing in the
// product does.
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"log"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// seen is one request as the upstream received it.
type seen struct {
	Service       string `json:"service"` // "api" or "ingest"
	Method        string `json:"method"`
	Path          string `json:"path"` // escaped path as received, with the query
	Authorization string `json:"authorization"`
	// Capability is true when the Authorization header held a kka1 capability: the egress must never let one
	// through, so the demo fails if it ever sees true.
	Capability bool `json:"capability"`
}

type recorder struct {
	mu   sync.Mutex
	reqs []seen
}

func (r *recorder) add(s seen) {
	r.mu.Lock()
	defer r.mu.Unlock()
	// Bounded: the demo makes a handful of requests; a runaway client must not grow memory without limit.
	if len(r.reqs) >= 10000 {
		r.reqs = r.reqs[1:]
	}
	r.reqs = append(r.reqs, s)
}

func (r *recorder) snapshot() []seen {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]seen(nil), r.reqs...)
}

func (r *recorder) reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reqs = nil
}

func main() {
	var (
		apiAddr     = flag.String("api-listen", "127.0.0.1:0", "address of the HTTPS listener playing api.kilo.ai (backend and provider routes)")
		ingestAddr  = flag.String("ingest-listen", "127.0.0.1:0", "address of the HTTPS listener playing the session-ingest service")
		controlAddr = flag.String("control-listen", "127.0.0.1:0", "address of the plain-HTTP control listener (/_seen, /_reset)")
		stateDir    = flag.String("state-dir", "", "directory to write ca.crt and addresses.json into (required)")
	)
	flag.Parse()
	if *stateDir == "" {
		fmt.Fprintln(os.Stderr, "upstream: --state-dir is required")
		os.Exit(2)
	}
	if err := run(*apiAddr, *ingestAddr, *controlAddr, *stateDir); err != nil {
		fmt.Fprintf(os.Stderr, "upstream: %v\n", err)
		os.Exit(1)
	}
}

func run(apiAddr, ingestAddr, controlAddr, stateDir string) error {
	for _, a := range []string{apiAddr, ingestAddr, controlAddr} {
		if err := requireLoopback(a); err != nil {
			return err
		}
	}
	caPEM, leaf, err := makeCertificates()
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(stateDir, "ca.crt"), caPEM, 0o644); err != nil {
		return fmt.Errorf("writing the upstream CA: %w", err)
	}

	rec := &recorder{}
	tlsConf := &tls.Config{Certificates: []tls.Certificate{leaf}, MinVersion: tls.VersionTLS12}

	apiLn, err := tls.Listen("tcp", apiAddr, tlsConf)
	if err != nil {
		return fmt.Errorf("listening for the api service on %s: %w", apiAddr, err)
	}
	ingestLn, err := tls.Listen("tcp", ingestAddr, tlsConf)
	if err != nil {
		return fmt.Errorf("listening for the ingest service on %s: %w", ingestAddr, err)
	}
	controlLn, err := net.Listen("tcp", controlAddr)
	if err != nil {
		return fmt.Errorf("listening for the control endpoint on %s: %w", controlAddr, err)
	}

	addrs := map[string]string{
		"api":     "https://" + apiLn.Addr().String(),
		"ingest":  "https://" + ingestLn.Addr().String(),
		"control": "http://" + controlLn.Addr().String(),
	}
	b, _ := json.MarshalIndent(addrs, "", "  ")
	// Written last and renamed into place: the demo waits for this file, so it must never see half of it.
	tmp := filepath.Join(stateDir, ".addresses.json")
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("writing addresses: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(stateDir, "addresses.json")); err != nil {
		return fmt.Errorf("writing addresses: %w", err)
	}

	servers := []*http.Server{
		{Handler: service("api", rec), ReadHeaderTimeout: 10 * time.Second},
		{Handler: service("ingest", rec), ReadHeaderTimeout: 10 * time.Second},
		{Handler: control(rec), ReadHeaderTimeout: 10 * time.Second},
	}
	errc := make(chan error, 3)
	for i, ln := range []net.Listener{apiLn, ingestLn, controlLn} {
		go func() { errc <- servers[i].Serve(ln) }()
	}
	log.Printf("upstream: api %s, ingest %s, control %s", addrs["api"], addrs["ingest"], addrs["control"])

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	select {
	case s := <-sig:
		log.Printf("upstream: %v, stopping", s)
	case err := <-errc:
		if !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("serving: %w", err)
		}
	}
	for _, s := range servers {
		_ = s.Close()
	}
	return nil
}

// requireLoopback keeps the demo's promise that it only ever talks on loopback.
func requireLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("parsing listen address %q: %w", addr, err)
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("listen address %q is not a loopback IP address", addr)
	}
	return nil
}

// service answers like the real upstream would, closely enough for the demo: a chat completion on the provider
// route, a transcript on the ingest export, and a small JSON echo everywhere else.
func service(name string, rec *recorder) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		auth := r.Header.Get("Authorization")
		rec.add(seen{
			Service:       name,
			Method:        r.Method,
			Path:          r.URL.RequestURI(),
			Authorization: auth,
			Capability:    strings.Contains(strings.ToLower(auth), "kka1."),
		})
		w.Header().Set("Content-Type", "application/json")
		if !strings.HasPrefix(auth, "Bearer ") {
			w.WriteHeader(http.StatusUnauthorized)
			_ = json.NewEncoder(w).Encode(map[string]string{"error": "missing bearer token"})
			return
		}
		path := r.URL.EscapedPath()
		switch {
		case name == "api" && strings.HasSuffix(path, "/chat/completions"):
			_ = json.NewEncoder(w).Encode(map[string]any{
				"id":      "chatcmpl-demo",
				"object":  "chat.completion",
				"model":   "kilo/demo-model",
				"choices": []any{map[string]any{"index": 0, "message": map[string]string{"role": "assistant", "content": "Hello from the stand-in upstream."}, "finish_reason": "stop"}},
			})
		case name == "ingest" && strings.HasSuffix(path, "/export"):
			_ = json.NewEncoder(w).Encode(map[string]any{"exported": true, "path": path, "messages": 3})
		default:
			_ = json.NewEncoder(w).Encode(map[string]any{"ok": true, "service": name, "method": r.Method, "path": path})
		}
	})
}

func control(rec *recorder) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /_seen", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(rec.snapshot())
	})
	mux.HandleFunc("POST /_reset", func(w http.ResponseWriter, r *http.Request) {
		rec.reset()
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	return mux
}

// makeCertificates creates a throwaway CA and a serving certificate for the loopback names, so the egress
// verifies the upstream exactly as it would verify api.kilo.ai, only against a CA the demo hands it.
func makeCertificates() ([]byte, tls.Certificate, error) {
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, tls.Certificate{}, fmt.Errorf("generating the CA key: %w", err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "kilo demo upstream CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, tls.Certificate{}, fmt.Errorf("creating the CA certificate: %w", err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, tls.Certificate{}, fmt.Errorf("parsing the CA certificate: %w", err)
	}
	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, tls.Certificate{}, fmt.Errorf("generating the serving key: %w", err)
	}
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "kilo demo upstream"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, caCert, &leafKey.PublicKey, caKey)
	if err != nil {
		return nil, tls.Certificate{}, fmt.Errorf("creating the serving certificate: %w", err)
	}
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	return caPEM, tls.Certificate{Certificate: [][]byte{leafDER}, PrivateKey: leafKey}, nil
}
