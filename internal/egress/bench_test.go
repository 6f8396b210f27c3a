package egress

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
)

// BenchmarkEgressInterceptor measures, in one run against one upstream handler on loopback with keep-alive
// connections and benchConcurrency clients:
//
//	(a) a bare httputil.ReverseProxy (the baseline),
//	(b) the interceptor on plain-http absolute-form requests, each redeemed with the real decision,
//	(c) the interceptor through CONNECT + TLS interception (the upstream leg is TLS too).
//
// The three run interleaved in rounds so machine noise hits them alike: throughput from concurrent batches, and
// latency from sequential requests alternating a, b, c (one in flight, so the percentiles measure the proxy,
// not queueing behind the other workers). Reported: throughput and p50/p99 of each, the b-vs-a throughput ratio
// (budget ≥ 0.70) and b's added p99 latency in ms (budget ≤ 1).
func BenchmarkEgressInterceptor(b *testing.B) {
	const benchConcurrency = 4
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"ok":true}`)
	})
	plainUp := httptest.NewServer(handler)
	defer plainUp.Close()
	tlsUp := httptest.NewTLSServer(handler)
	defer tlsUp.Close()

	// (a) the baseline reverse proxy.
	target, _ := url.Parse(plainUp.URL)
	rp := &httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) { pr.SetURL(target) }}
	rpSrv := httptest.NewServer(rp)
	defer rpSrv.Close()

	// (b) and (c): the interceptor with the real decision.
	e := &env{logs: &logSink{}}
	e.tlsUp = &upstream{srv: tlsUp}
	e.plainUp = &upstream{srv: plainUp}
	s := newRealStack(b, e, plainUp.URL, tlsUp.URL)
	capPlain := s.issue(b, "uid-a", plainUp.URL)
	capTLS := s.issue(b, "uid-a", tlsUp.URL)
	ca := newTestCA(b)
	roots := x509.NewCertPool()
	roots.AddCert(tlsUp.Certificate())
	p, err := New(Config{UpstreamRoots: roots, MaxConcurrentPerCaller: 1024}, Deps{
		Redeemer: s.dec,
		Callers:  &fakeCallers{m: map[netip.Addr]Caller{addrA: {Namespace: "ns", Name: "a", UID: "uid-a"}}},
		Targets: &fakeTargets{m: map[string]bool{
			plainUp.Listener.Addr().String(): true, tlsUp.Listener.Addr().String(): true,
		}},
		CA:  staticCA{ca},
		Log: logr.Discard(),
	})
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go func() { _ = p.Serve(ln) }()
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = p.Shutdown(ctx)
	}()
	proxyURL := &url.URL{Scheme: "http", Host: ln.Addr().String()}

	newClient := func(proxy bool) *http.Client {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: addrA.AsSlice()}}
		tr := &http.Transport{DialContext: d.DialContext, MaxIdleConnsPerHost: benchConcurrency * 2,
			TLSClientConfig: &tls.Config{RootCAs: ca.pool()}}
		if proxy {
			tr.Proxy = http.ProxyURL(proxyURL)
		}
		return &http.Client{Transport: tr}
	}
	type variant struct {
		name   string
		client *http.Client
		url    string
		auth   string
		lat    []time.Duration
		count  int
		total  time.Duration
	}
	vs := []*variant{
		{name: "a", client: newClient(false), url: rpSrv.URL + "/api/v1/models?x=1", auth: "Bearer not-a-capability"},
		{name: "b", client: newClient(true), url: plainUp.URL + "/api/v1/models?x=1", auth: "Bearer " + capPlain},
		{name: "c", client: newClient(true), url: tlsUp.URL + "/api/v1/models?x=1", auth: "Bearer " + capTLS},
	}
	one := func(v *variant) time.Duration {
		req, _ := http.NewRequest("GET", v.url, nil)
		req.Header.Set("Authorization", v.auth)
		t0 := time.Now()
		resp, err := v.client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			b.Fatalf("%s: status %d", v.name, resp.StatusCode)
		}
		return time.Since(t0)
	}
	// batch runs n requests of v over benchConcurrency workers.
	batch := func(v *variant, n int) {
		var mu sync.Mutex
		var wg sync.WaitGroup
		next := make(chan struct{}, n)
		for range n {
			next <- struct{}{}
		}
		close(next)
		t0 := time.Now()
		for range benchConcurrency {
			wg.Add(1)
			go func() {
				defer wg.Done()
				k := 0
				for range next {
					one(v)
					k++
				}
				mu.Lock()
				v.count += k
				mu.Unlock()
			}()
		}
		wg.Wait()
		v.total += time.Since(t0)
	}
	for _, v := range vs { // warm connections, leaves and the claims cache
		batch(v, 2*benchConcurrency)
		v.count, v.total = 0, 0
	}

	b.ResetTimer()
	const round = 200
	for done := 0; done < b.N; done += round {
		n := min(round, b.N-done)
		for _, v := range vs {
			batch(v, n)
		}
		for range max(1, n/2) {
			for _, v := range vs {
				v.lat = append(v.lat, one(v))
			}
		}
	}
	b.StopTimer()

	pct := func(l []time.Duration, q float64) time.Duration {
		slices.Sort(l)
		return l[min(len(l)-1, int(float64(len(l))*q))]
	}
	rps := map[string]float64{}
	p99 := map[string]time.Duration{}
	for _, v := range vs {
		rps[v.name] = float64(v.count) / v.total.Seconds()
		p99[v.name] = pct(v.lat, 0.99)
		b.ReportMetric(rps[v.name], v.name+"-req/s")
		b.ReportMetric(float64(pct(v.lat, 0.50).Microseconds()), v.name+"-p50-µs")
		b.ReportMetric(float64(p99[v.name].Microseconds()), v.name+"-p99-µs")
	}
	b.ReportMetric(rps["b"]/rps["a"], "b/a-x-baseline")
	b.ReportMetric(rps["c"]/rps["a"], "c/a-x-baseline")
	b.ReportMetric(float64(p99["b"]-p99["a"])/1e6, "b-p99-added-ms")
}
