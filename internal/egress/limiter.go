package egress

import "sync"

// callerLimiter bounds concurrent work per calling pod. It never queues: a pod over its bound is told so at once
// (429) instead of holding a connection open, so one pod cannot starve the proxy for the others.
type callerLimiter struct {
	max int
	mu  sync.Mutex
	n   map[string]int
}

func newCallerLimiter(max int) *callerLimiter { return &callerLimiter{max: max, n: map[string]int{}} }

func (l *callerLimiter) acquire(key string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n[key] >= l.max {
		return false
	}
	l.n[key]++
	return true
}

func (l *callerLimiter) release(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n[key] <= 1 {
		delete(l.n, key) // keeps the map as small as the set of pods with work in flight
		return
	}
	l.n[key]--
}
