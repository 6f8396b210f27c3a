package redeem

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"
	"time"

	"golang.org/x/sync/singleflight"
	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// RedeemAudience is the audience a caller's ServiceAccount token must be issued for. A token minted for the API
// server (or anything else) does not authenticate here, so a leaked default token is not a redeem credential.
const RedeemAudience = "kilo-redeem"

// podUIDExtra is the TokenReview extra key naming the pod a bound token was issued to.
const podUIDExtra = "authentication.kubernetes.io/pod-uid"

// maxBearerLen bounds the caller's token before it is hashed or sent anywhere.
const maxBearerLen = 16 << 10

// Caller is an authenticated redeem client: a ServiceAccount, and the pod its token is bound to, if any.
type Caller struct {
	Namespace string
	Name      string
	PodUID    string
}

// ErrUnauthenticated means the caller is not an allow-listed ServiceAccount with a valid token for
// RedeemAudience. ErrAuthUnavailable means the API server could not be asked; the caller may retry.
var (
	ErrUnauthenticated = errors.New("unauthenticated")
	ErrAuthUnavailable = errors.New("token review unavailable")
)

// Authenticator establishes who is calling the redeem API from the bearer token it presented.
type Authenticator interface {
	Authenticate(ctx context.Context, bearer string) (Caller, error)
}

// TokenReviewer is the part of the client-go TokenReview client the authenticator uses:
// clientset.AuthenticationV1().TokenReviews() satisfies it.
type TokenReviewer interface {
	Create(ctx context.Context, tr *authenticationv1.TokenReview, opts metav1.CreateOptions) (*authenticationv1.TokenReview, error)
}

// TokenReviewConfig configures NewTokenReviewAuthenticator.
type TokenReviewConfig struct {
	Reviewer TokenReviewer // required; needs RBAC create on tokenreviews (system:auth-delegator)
	// Allowed are the ServiceAccounts that may redeem, as "namespace/name".
	Allowed []string
	// Audience defaults to RedeemAudience.
	Audience string
	// TTL is how long an accepted token is trusted without asking again (default 30s); NegativeTTL the same for
	// a refused one (default 5s), which keeps a client retrying a bad token from turning into API load.
	TTL, NegativeTTL time.Duration
	// CacheSize bounds the review cache (default 1024 tokens).
	CacheSize int
	// IsSessionPod reports whether a pod UID is a session pod. A token bound to a session pod is refused whatever
	// its ServiceAccount: session pods must never receive raw tokens (docs/DESIGN.md §1).
	IsSessionPod func(uid string) bool
	Now          func() time.Time
}

// TokenReviewAuthenticator authenticates callers by TokenReview with a bounded, short-lived cache keyed by the
// SHA-256 of the token: the token itself is neither kept as a key nor logged.
type TokenReviewAuthenticator struct {
	cfg     TokenReviewConfig
	allowed map[string]bool
	cache   *boundedCache[reviewEntry]
	flight  singleflight.Group
}

type reviewEntry struct {
	caller  Caller
	ok      bool
	expires time.Time
}

// NewTokenReviewAuthenticator validates cfg and returns an authenticator.
func NewTokenReviewAuthenticator(cfg TokenReviewConfig) (*TokenReviewAuthenticator, error) {
	if cfg.Reviewer == nil {
		return nil, errors.New("building the redeem authenticator: a TokenReviewer is required")
	}
	allowed := map[string]bool{}
	for _, sa := range cfg.Allowed {
		ns, name, ok := strings.Cut(sa, "/")
		if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
			return nil, fmt.Errorf("building the redeem authenticator: allowed ServiceAccount %q is not namespace/name", sa)
		}
		allowed[sa] = true
	}
	if cfg.Audience == "" {
		cfg.Audience = RedeemAudience
	}
	if cfg.TTL <= 0 {
		cfg.TTL = 30 * time.Second
	}
	if cfg.NegativeTTL <= 0 {
		cfg.NegativeTTL = 5 * time.Second
	}
	if cfg.CacheSize <= 0 {
		cfg.CacheSize = 1024
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &TokenReviewAuthenticator{
		cfg: cfg, allowed: allowed, cache: newBoundedCache[reviewEntry](cfg.CacheSize),
	}, nil
}

// Authenticate implements Authenticator.
func (a *TokenReviewAuthenticator) Authenticate(ctx context.Context, bearer string) (Caller, error) {
	if bearer == "" || len(bearer) > maxBearerLen {
		return Caller{}, ErrUnauthenticated
	}
	sum := sha256.Sum256([]byte(bearer))
	key := string(sum[:])
	now := a.cfg.Now()
	e, hit := a.cache.get(key)
	if !hit || !now.Before(e.expires) {
		v, err, _ := a.flight.Do(key, func() (any, error) { return a.review(ctx, bearer) })
		if err != nil {
			return Caller{}, err
		}
		e = v.(reviewEntry)
		a.cache.put(key, e)
	}
	if !e.ok {
		return Caller{}, ErrUnauthenticated
	}
	// Checked on every request rather than cached: a pod can become a session pod's UID only by being one, but
	// the informer is the authority and costs nothing to ask.
	if e.caller.PodUID != "" && a.cfg.IsSessionPod != nil && a.cfg.IsSessionPod(e.caller.PodUID) {
		return Caller{}, ErrUnauthenticated
	}
	return e.caller, nil
}

func (a *TokenReviewAuthenticator) review(ctx context.Context, bearer string) (reviewEntry, error) {
	tr, err := a.cfg.Reviewer.Create(ctx, &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: bearer, Audiences: []string{a.cfg.Audience}},
	}, metav1.CreateOptions{})
	if err != nil {
		// The client's error describes the call (URL, status), never the request body that holds the token; it
		// is still not wrapped, so nothing downstream can print it next to a request.
		return reviewEntry{}, ErrAuthUnavailable
	}
	now := a.cfg.Now()
	refused := reviewEntry{expires: now.Add(a.cfg.NegativeTTL)}
	st := tr.Status
	if !st.Authenticated || st.Error != "" {
		return refused, nil
	}
	// An authenticator that ignores audiences answers with none; accepting that would accept any token the API
	// server accepts. Require ours explicitly.
	audOK := false
	for _, aud := range st.Audiences {
		if aud == a.cfg.Audience {
			audOK = true
		}
	}
	if !audOK {
		return refused, nil
	}
	rest, isSA := strings.CutPrefix(st.User.Username, "system:serviceaccount:")
	if !isSA {
		return refused, nil
	}
	ns, name, ok := strings.Cut(rest, ":")
	if !ok || !a.allowed[ns+"/"+name] {
		return refused, nil
	}
	c := Caller{Namespace: ns, Name: name}
	if uids := st.User.Extra[podUIDExtra]; len(uids) == 1 {
		c.PodUID = uids[0]
	} else if len(uids) > 1 {
		return refused, nil
	}
	return reviewEntry{caller: c, ok: true, expires: now.Add(a.cfg.TTL)}, nil
}
