package egress

import (
	"context"
	"fmt"
	"net/netip"
	"net/url"
	"sync"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"

	kilov1alpha1 "github.com/Kilo-Org/kilo-session-operator/api/v1alpha1"
)

// PodCallers is the CallerResolver of the egress: an in-memory index from pod IP (every status.podIPs entry, IPv4
// and IPv6) to pod, kept by a Pod informer's event handler. It is a map read per request rather than a cache List,
// which would deep-copy.
//
// An address identifies a caller only if exactly one live pod claims it: pods on the host network share the
// node's address, and a finished pod (Succeeded/Failed) keeps its IP in status after the address was handed to a
// new pod, so both are left out; two remaining claimants (an informer lag during IP reuse) identify nobody.
type PodCallers struct {
	mu     sync.RWMutex
	byAddr map[netip.Addr]map[string]Caller // address → pod UID → pod
	ips    map[string][]netip.Addr          // pod UID → its indexed addresses
	reg    toolscache.ResourceEventHandlerRegistration
}

// NewPodCallers registers on c's Pod informer. Call before c.Start. The cache may be restricted to session pods
// (redeem.CacheOptions): only they hold capabilities, and an address no cached pod claims is unknown_caller.
func NewPodCallers(ctx context.Context, c cache.Cache) (*PodCallers, error) {
	p := &PodCallers{byAddr: map[netip.Addr]map[string]Caller{}, ips: map[string][]netip.Addr{}}
	inf, err := c.GetInformer(ctx, &corev1.Pod{})
	if err != nil {
		return nil, fmt.Errorf("getting the Pod informer: %w", err)
	}
	p.reg, err = inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { p.upsert(o) },
		UpdateFunc: func(_, o any) { p.upsert(o) },
		DeleteFunc: func(o any) { p.remove(o) },
	})
	if err != nil {
		return nil, fmt.Errorf("watching Pods for caller identity: %w", err)
	}
	return p, nil
}

// HasSynced reports whether the initial Pod list reached the index.
func (p *PodCallers) HasSynced() bool { return p.reg != nil && p.reg.HasSynced() }

// Resolve implements CallerResolver.
func (p *PodCallers) Resolve(_ context.Context, a netip.Addr) (Caller, bool) {
	a = a.Unmap().WithZone("")
	p.mu.RLock()
	defer p.mu.RUnlock()
	pods := p.byAddr[a]
	if len(pods) != 1 {
		return Caller{}, false
	}
	for _, c := range pods {
		return c, true
	}
	return Caller{}, false
}

func podOf(o any) *corev1.Pod {
	if t, ok := o.(toolscache.DeletedFinalStateUnknown); ok {
		o = t.Obj
	}
	pod, _ := o.(*corev1.Pod)
	return pod
}

func (p *PodCallers) upsert(o any) {
	pod := podOf(o)
	if pod == nil {
		return
	}
	var addrs []netip.Addr
	live := !pod.Spec.HostNetwork && pod.Status.Phase != corev1.PodSucceeded && pod.Status.Phase != corev1.PodFailed
	if live {
		seen := map[netip.Addr]bool{}
		add := func(s string) {
			if a, err := netip.ParseAddr(s); err == nil && !seen[a.Unmap()] {
				seen[a.Unmap()] = true
				addrs = append(addrs, a.Unmap())
			}
		}
		add(pod.Status.PodIP)
		for _, ip := range pod.Status.PodIPs {
			add(ip.IP)
		}
	}
	c := Caller{Namespace: pod.Namespace, Name: pod.Name, UID: string(pod.UID)}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.unindexLocked(c.UID)
	for _, a := range addrs {
		m := p.byAddr[a]
		if m == nil {
			m = map[string]Caller{}
			p.byAddr[a] = m
		}
		m[c.UID] = c
	}
	if len(addrs) > 0 {
		p.ips[c.UID] = addrs
	}
}

func (p *PodCallers) remove(o any) {
	pod := podOf(o)
	if pod == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.unindexLocked(string(pod.UID))
}

func (p *PodCallers) unindexLocked(uid string) {
	for _, a := range p.ips[uid] {
		if m := p.byAddr[a]; m != nil {
			delete(m, uid)
			if len(m) == 0 {
				delete(p.byAddr, a)
			}
		}
	}
	delete(p.ips, uid)
}

// SessionTargets is the TargetHosts of the egress: the host:port of every target of every KiloSession (suspended
// ones included) whose target origin is on the cluster upstream allow-list, kept by a KiloSession informer's event
// handler. A session author cannot make the proxy intercept (and so mint a leaf for) a host the cluster admin did
// not allow.
type SessionTargets struct {
	allowed func(origin string) bool
	log     logr.Logger

	mu        sync.RWMutex
	count     map[string]int      // host:port → number of sessions naming it
	bySession map[string][]string // session UID → its host:ports
	reg       toolscache.ResourceEventHandlerRegistration
}

// NewSessionTargets registers on c's KiloSession informer. allowed is the upstream allow-list check (e.g.
// (*policy.AllowList).Allows) on origins like "https://api.kilo.ai".
func NewSessionTargets(ctx context.Context, c cache.Cache, allowed func(origin string) bool, log logr.Logger) (*SessionTargets, error) {
	s := &SessionTargets{allowed: allowed, log: log, count: map[string]int{}, bySession: map[string][]string{}}
	inf, err := c.GetInformer(ctx, &kilov1alpha1.KiloSession{})
	if err != nil {
		return nil, fmt.Errorf("getting the KiloSession informer: %w", err)
	}
	s.reg, err = inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { s.upsert(o) },
		UpdateFunc: func(_, o any) { s.upsert(o) },
		DeleteFunc: func(o any) { s.remove(o) },
	})
	if err != nil {
		return nil, fmt.Errorf("watching KiloSessions for target hosts: %w", err)
	}
	return s, nil
}

// HasSynced reports whether the initial KiloSession list reached the set.
func (s *SessionTargets) HasSynced() bool { return s.reg != nil && s.reg.HasSynced() }

// IsTarget implements TargetHosts.
func (s *SessionTargets) IsTarget(hostport string) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.count[hostport] > 0
}

func sessionOf(o any) *kilov1alpha1.KiloSession {
	if t, ok := o.(toolscache.DeletedFinalStateUnknown); ok {
		o = t.Obj
	}
	ks, _ := o.(*kilov1alpha1.KiloSession)
	return ks
}

// TargetHostPort returns the host:port key and origin of a target base URL, or ok=false when it is not an
// http(s) URL with a valid authority.
func TargetHostPort(base string) (hostport, origin string, ok bool) {
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.User != nil {
		return "", "", false
	}
	a, err := parseAuthority(u.Host, u.Scheme, false)
	if err != nil {
		return "", "", false
	}
	return a.hostport, u.Scheme + "://" + a.urlHost, true
}

func (s *SessionTargets) upsert(o any) {
	ks := sessionOf(o)
	if ks == nil {
		return
	}
	var hosts []string
	// A suspended session's hosts stay intercepted: its pods' requests are then redeemed and refused as
	// capability_revoked inside the cluster, instead of falling through to a blind tunnel that would carry the
	// capability to the upstream and answer the pod with a confusing refusal of its own.
	if ks.DeletionTimestamp == nil {
		t := ks.Spec.Targets
		for _, base := range []string{t.BackendBaseURL, t.ProviderBaseURL, t.SessionIngestBaseURL} {
			hp, origin, ok := TargetHostPort(base)
			if !ok {
				continue
			}
			if !s.allowed(origin) {
				s.log.V(1).Info("Session target not on the upstream allow-list; not intercepted",
					"KiloSession", ks.Namespace+"/"+ks.Name, "origin", origin)
				continue
			}
			hosts = append(hosts, hp)
		}
	}
	uid := string(ks.UID)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dropLocked(uid)
	for _, h := range hosts {
		s.count[h]++
	}
	if len(hosts) > 0 {
		s.bySession[uid] = hosts
	}
}

func (s *SessionTargets) remove(o any) {
	ks := sessionOf(o)
	if ks == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dropLocked(string(ks.UID))
}

func (s *SessionTargets) dropLocked(uid string) {
	for _, h := range s.bySession[uid] {
		if s.count[h]--; s.count[h] <= 0 {
			delete(s.count, h)
		}
	}
	delete(s.bySession, uid)
}

// TargetSet is a fixed set of target hosts, e.g. the upstream allow-list's origins.
type TargetSet map[string]bool

// NewTargetSet builds a TargetSet from origins like "https://api.kilo.ai".
func NewTargetSet(origins []string) (TargetSet, error) {
	s := TargetSet{}
	for _, o := range origins {
		hp, _, ok := TargetHostPort(o)
		if !ok {
			return nil, fmt.Errorf("target origin %q is not an http(s) origin", o)
		}
		s[hp] = true
	}
	return s, nil
}

// IsTarget implements TargetHosts.
func (s TargetSet) IsTarget(hostport string) bool { return s[hostport] }

// AnyTarget is the union of several TargetHosts.
type AnyTarget []TargetHosts

// IsTarget implements TargetHosts.
func (a AnyTarget) IsTarget(hostport string) bool {
	for _, t := range a {
		if t.IsTarget(hostport) {
			return true
		}
	}
	return false
}
