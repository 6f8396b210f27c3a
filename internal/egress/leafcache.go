package egress

import (
	"crypto/tls"
	"fmt"
	"sync"
	"time"
)

// maxCachedLeaves bounds the leaf cache. Only session target hosts are intercepted, so the working set is small;
// the bound only matters if targets churn, and then dropping everything is cheap (leaves are re-issued on demand).
const maxCachedLeaves = 4096

// leafCache issues interception leaves on demand, one issuance per host at a time (concurrent handshakes for the
// same host wait for the first), and reuses them until a quarter of their lifetime is left or the CA changes.
type leafCache struct {
	ca       CASource
	validity time.Duration
	now      func() time.Time

	mu       sync.Mutex
	leaves   map[string]*leafEntry
	inflight map[string]*leafCall
}

type leafEntry struct {
	cert     *tls.Certificate
	ca       LeafIssuer
	notAfter time.Time
	renewAt  time.Time
}

type leafCall struct {
	done chan struct{}
	cert *tls.Certificate
	err  error
}

func newLeafCache(ca CASource, validity time.Duration, now func() time.Time) *leafCache {
	return &leafCache{ca: ca, validity: validity, now: now, leaves: map[string]*leafEntry{}, inflight: map[string]*leafCall{}}
}

// get returns a leaf for host (a DNS name or an IP literal, no port, no brackets).
func (c *leafCache) get(host string) (*tls.Certificate, error) {
	ca := c.ca.CA()
	if ca == nil {
		return nil, fmt.Errorf("issuing interception certificate for %s: no CA loaded", host)
	}
	now := c.now()
	c.mu.Lock()
	if e, ok := c.leaves[host]; ok && e.ca == ca && now.Before(e.renewAt) {
		c.mu.Unlock()
		return e.cert, nil
	}
	if call, ok := c.inflight[host]; ok {
		c.mu.Unlock()
		<-call.done
		return call.cert, call.err
	}
	call := &leafCall{done: make(chan struct{})}
	c.inflight[host] = call
	c.mu.Unlock()

	call.cert, call.err = ca.IssueLeaf([]string{host}, c.validity, now)
	if call.err != nil {
		call.err = fmt.Errorf("issuing interception certificate for %s: %w", host, call.err)
	}

	c.mu.Lock()
	delete(c.inflight, host)
	if call.err == nil {
		if len(c.leaves) >= maxCachedLeaves {
			clear(c.leaves)
		}
		notAfter := now.Add(c.validity)
		if call.cert.Leaf != nil {
			notAfter = call.cert.Leaf.NotAfter
		}
		c.leaves[host] = &leafEntry{cert: call.cert, ca: ca, notAfter: notAfter, renewAt: notAfter.Add(-c.validity / 4)}
	}
	c.mu.Unlock()
	close(call.done)
	return call.cert, call.err
}
