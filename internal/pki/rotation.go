package pki

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"time"
)

// Data keys of a CA kept in a Secret (see CAState). The layout is shared by the webhook's Secret (which adds the
// serving pair under tls.crt/tls.key) and the egress interceptor's CA Secret.
const (
	// BundleKey is the trust bundle: every CA a client should trust right now, PEM, signer first. This is the only
	// key a consumer (caBundle, the session pods' CA ConfigMap) ever needs.
	BundleKey = "ca.crt"
	// SignerCertKey and SignerKeyKey hold the CA that signs new leaves.
	SignerCertKey = "signer.crt"
	SignerKeyKey  = "signer.key"
	// NextCertKey and NextKeyKey hold the announced successor during a rotation: trusted (it is in the bundle) but
	// not yet signing.
	NextCertKey = "next.crt"
	NextKeyKey  = "next.key"
)

// CAOptions say how long a CA lives and how a rotation overlaps.
//
// A rotation has two steps so that nobody ever sees a certificate signed by a CA they do not trust yet:
//  1. announce — RotateBefore the signer expires, a successor CA is created and added to the bundle;
//  2. promote — PromoteAfter later (time for every consumer to pick up the new bundle), the successor becomes the
//     signer. The old signer stays in the bundle until it expires, because leaves it signed are still being served.
type CAOptions struct {
	// CommonName of generated CAs.
	CommonName string
	// Validity of a generated CA. Default 365 days.
	Validity time.Duration
	// RotateBefore is how long before the signer's expiry its successor is announced. Default Validity/3.
	RotateBefore time.Duration
	// PromoteAfter is how long an announced successor waits before it signs. Default 10 minutes, enough for the
	// API server to reload a webhook caBundle; the egress CA should use days, because session pods read their CA
	// file at process start (NODE_EXTRA_CA_CERTS is read once).
	PromoteAfter time.Duration
}

func (o CAOptions) withDefaults() CAOptions {
	if o.CommonName == "" {
		o.CommonName = "kilo-session-operator CA"
	}
	if o.Validity == 0 {
		o.Validity = 365 * 24 * time.Hour
	}
	if o.RotateBefore == 0 {
		o.RotateBefore = o.Validity / 3
	}
	if o.PromoteAfter == 0 {
		o.PromoteAfter = 10 * time.Minute
	}
	return o
}

// Validate reports options under which a rotation cannot complete before the signer expires.
func (o CAOptions) Validate() error {
	o = o.withDefaults()
	if o.Validity <= 0 || o.RotateBefore <= 0 || o.PromoteAfter <= 0 {
		return errors.New("CA validity, rotateBefore and promoteAfter must be positive")
	}
	if o.RotateBefore >= o.Validity {
		return fmt.Errorf("CA rotateBefore (%s) must be shorter than its validity (%s)", o.RotateBefore, o.Validity)
	}
	if o.PromoteAfter >= o.RotateBefore {
		return fmt.Errorf("CA promoteAfter (%s) must be shorter than rotateBefore (%s): the successor must sign before the signer expires", o.PromoteAfter, o.RotateBefore)
	}
	return nil
}

// CAState is a rotating CA: the signer, an optional announced successor, and retired signers still trusted.
type CAState struct {
	Signer *CA
	// Next is the announced successor; nil outside a rotation.
	Next *CA
	// Retired are former signers kept in the bundle until they expire.
	Retired []*x509.Certificate
}

// ErrNoCA means the data holds no CA yet; PlanCA creates one.
var ErrNoCA = errors.New("no CA in the Secret data")

// CAStateFromData reads the CA layout (BundleKey, SignerCertKey, …) from Secret data. It returns ErrNoCA when the
// signer keys are absent, and a descriptive error when they are present but unusable.
func CAStateFromData(data map[string][]byte) (*CAState, error) {
	if len(data[SignerCertKey]) == 0 && len(data[SignerKeyKey]) == 0 {
		return nil, ErrNoCA
	}
	signer, err := ParseCA(data[SignerCertKey], data[SignerKeyKey])
	if err != nil {
		return nil, fmt.Errorf("reading signer CA: %w", err)
	}
	s := &CAState{Signer: signer}
	if len(data[NextCertKey]) > 0 || len(data[NextKeyKey]) > 0 {
		if s.Next, err = ParseCA(data[NextCertKey], data[NextKeyKey]); err != nil {
			return nil, fmt.Errorf("reading announced CA: %w", err)
		}
	}
	bundle, err := ParseCertsPEM(data[BundleKey])
	if err != nil {
		return nil, fmt.Errorf("reading CA bundle: %w", err)
	}
	for _, c := range bundle {
		if c.Equal(s.Signer.Cert) || (s.Next != nil && c.Equal(s.Next.Cert)) {
			continue
		}
		s.Retired = append(s.Retired, c)
	}
	return s, nil
}

// Data returns the Secret data for s (only the CA keys; callers merge it into their Secret).
func (s *CAState) Data() (map[string][]byte, error) {
	data := map[string][]byte{BundleKey: s.Bundle(), SignerCertKey: s.Signer.CertPEM}
	var err error
	if data[SignerKeyKey], err = s.Signer.KeyPEM(); err != nil {
		return nil, err
	}
	if s.Next != nil {
		data[NextCertKey] = s.Next.CertPEM
		if data[NextKeyKey], err = s.Next.KeyPEM(); err != nil {
			return nil, err
		}
	}
	return data, nil
}

// Bundle is the PEM trust bundle: signer, announced successor, then retired signers.
func (s *CAState) Bundle() []byte {
	var buf bytes.Buffer
	buf.Write(s.Signer.CertPEM)
	if s.Next != nil {
		buf.Write(s.Next.CertPEM)
	}
	for _, c := range s.Retired {
		buf.Write(EncodeCertPEM(c))
	}
	return buf.Bytes()
}

// announcedAt is when the successor entered the bundle: NewCA backdates NotBefore by exactly Backdate.
func announcedAt(next *CA) time.Time { return next.Cert.NotBefore.Add(Backdate) }

// PlanCA is the rotation decision, a pure function of the current state and the time: it returns the state to
// persist, whether it differs from cur, and when the decision should be taken again. cur may be nil (no CA yet).
func PlanCA(cur *CAState, now time.Time, opts CAOptions) (next *CAState, changed bool, wake time.Time, err error) {
	opts = opts.withDefaults()
	if err := opts.Validate(); err != nil {
		return nil, false, time.Time{}, err
	}
	if cur == nil || (!now.Before(cur.Signer.Cert.NotAfter) && (cur.Next == nil || !now.Before(cur.Next.Cert.NotAfter))) {
		// First start, or the writer was away past the expiry of every CA it had: nothing is left to overlap with.
		ca, err := NewCA(opts.CommonName, opts.Validity, now)
		if err != nil {
			return nil, false, time.Time{}, err
		}
		cur, changed = &CAState{Signer: ca}, true
	} else {
		cp := *cur
		cp.Retired = append([]*x509.Certificate(nil), cur.Retired...)
		cur = &cp
	}

	// Announce.
	if cur.Next == nil && !now.Before(cur.Signer.Cert.NotAfter.Add(-opts.RotateBefore)) {
		if cur.Next, err = NewCA(opts.CommonName, opts.Validity, now); err != nil {
			return nil, false, time.Time{}, err
		}
		changed = true
	}
	// Promote, once consumers had PromoteAfter to learn the successor, or at once if the signer would otherwise
	// expire first (a writer that was down through the overlap).
	if cur.Next != nil {
		promoteAt := announcedAt(cur.Next).Add(opts.PromoteAfter)
		if !now.Before(promoteAt) || !now.Before(cur.Signer.Cert.NotAfter.Add(-time.Minute)) {
			cur.Retired = append([]*x509.Certificate{cur.Signer.Cert}, cur.Retired...)
			cur.Signer, cur.Next = cur.Next, nil
			changed = true
		}
	}
	// Forget retired CAs once they expire: nothing they signed can verify any more.
	kept := cur.Retired[:0]
	for _, c := range cur.Retired {
		if now.Before(c.NotAfter) {
			kept = append(kept, c)
		} else {
			changed = true
		}
	}
	cur.Retired = kept

	if cur.Next != nil {
		wake = announcedAt(cur.Next).Add(opts.PromoteAfter)
	} else {
		wake = cur.Signer.Cert.NotAfter.Add(-opts.RotateBefore)
	}
	for _, c := range cur.Retired {
		if c.NotAfter.Before(wake) {
			wake = c.NotAfter
		}
	}
	return cur, changed, wake, nil
}
