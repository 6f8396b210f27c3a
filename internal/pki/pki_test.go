package pki

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func verifies(t *testing.T, leaf *tls.Certificate, bundle []byte, host string, at time.Time) error {
	t.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(bundle) {
		t.Fatal("bundle holds no certificate")
	}
	_, err := leaf.Leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: host, CurrentTime: at})
	return err
}

func TestIssueLeafChainsToItsCA(t *testing.T) {
	ca, err := NewCA("test CA", 24*time.Hour, t0)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.IssueLeaf([]string{"api.kilo.ai", "10.0.0.1", "[::1]"}, time.Hour, t0)
	if err != nil {
		t.Fatal(err)
	}
	if err := verifies(t, leaf, ca.CertPEM, "api.kilo.ai", t0.Add(time.Minute)); err != nil {
		t.Fatalf("leaf does not verify: %v", err)
	}
	if err := verifies(t, leaf, ca.CertPEM, "evil.example", t0); err == nil {
		t.Fatal("leaf verified for a host it was not issued for")
	}
	if len(leaf.Leaf.IPAddresses) != 2 {
		t.Fatalf("IP SANs = %v", leaf.Leaf.IPAddresses)
	}
	// Backdated for clock skew, never before the CA.
	if !leaf.Leaf.NotBefore.Equal(ca.Cert.NotBefore) {
		t.Errorf("NotBefore %s, want the CA's %s", leaf.Leaf.NotBefore, ca.Cert.NotBefore)
	}
}

func TestIssueLeafNeverOutlivesItsCA(t *testing.T) {
	ca, _ := NewCA("short", time.Hour, t0)
	leaf, err := ca.IssueLeaf([]string{"a.example"}, 24*time.Hour, t0)
	if err != nil {
		t.Fatal(err)
	}
	if leaf.Leaf.NotAfter.After(ca.Cert.NotAfter) {
		t.Fatalf("leaf NotAfter %s is after the CA's %s", leaf.Leaf.NotAfter, ca.Cert.NotAfter)
	}
	if _, err := ca.IssueLeaf([]string{"a.example"}, time.Hour, t0.Add(2*time.Hour)); err == nil {
		t.Fatal("an expired CA issued a leaf")
	}
}

func TestIssueLeafRefusesHostileNames(t *testing.T) {
	ca, _ := NewCA("test CA", time.Hour, t0)
	for _, h := range []string{"", "a b.example", "evil\r\nHost: x", "a..b", strings.Repeat("a", 254), "ex@mple.com"} {
		if _, err := ca.IssueLeaf([]string{h}, time.Hour, t0); err == nil {
			t.Errorf("host %q accepted", h)
		}
	}
	if _, err := ca.IssueLeaf(nil, time.Hour, t0); err == nil {
		t.Error("no hosts accepted")
	}
}

func TestParseCARoundTripAndMismatch(t *testing.T) {
	a, _ := NewCA("a", time.Hour, t0)
	b, _ := NewCA("b", time.Hour, t0)
	aKey, _ := a.KeyPEM()
	bKey, _ := b.KeyPEM()
	got, err := ParseCA(a.CertPEM, aKey)
	if err != nil || !got.Cert.Equal(a.Cert) {
		t.Fatalf("round trip: %v", err)
	}
	if _, err := ParseCA(a.CertPEM, bKey); err == nil {
		t.Fatal("a certificate with another CA's key was accepted")
	} else if bytes.Contains([]byte(err.Error()), bKey[30:60]) {
		t.Fatal("error quotes key material")
	}
	leaf, _ := a.IssueLeaf([]string{"x.example"}, time.Hour, t0)
	leafCert, leafKey, _ := EncodeTLSCertificate(leaf)
	if _, err := ParseCA(leafCert, leafKey); err == nil {
		t.Fatal("a leaf was accepted as a CA")
	}
}

func opts() CAOptions {
	return CAOptions{CommonName: "t", Validity: 30 * 24 * time.Hour, RotateBefore: 10 * 24 * time.Hour, PromoteAfter: time.Hour}
}

func TestPlanCARotatesWithOverlap(t *testing.T) {
	s, changed, wake, err := PlanCA(nil, t0, opts())
	if err != nil || !changed || s.Next != nil {
		t.Fatalf("first plan: changed=%v err=%v", changed, err)
	}
	first := s.Signer
	if want := first.Cert.NotAfter.Add(-opts().RotateBefore); !wake.Equal(want) {
		t.Fatalf("wake %s, want announce time %s", wake, want)
	}
	if _, changed, _, _ := PlanCA(s, wake.Add(-time.Second), opts()); changed {
		t.Fatal("changed before the announce time")
	}

	// Announce: successor trusted, old still signing.
	s, changed, wake, _ = PlanCA(s, wake, opts())
	if !changed || s.Next == nil || s.Signer != first {
		t.Fatal("successor not announced, or signer replaced too early")
	}
	if n, _ := ParseCertsPEM(s.Bundle()); len(n) != 2 {
		t.Fatalf("bundle during announce holds %d CAs, want 2", len(n))
	}
	next := s.Next

	// Promote PromoteAfter later: the successor signs, the old CA stays trusted.
	s, changed, wake, _ = PlanCA(s, wake, opts())
	if !changed || s.Signer.Cert != next.Cert || s.Next != nil || len(s.Retired) != 1 || !s.Retired[0].Equal(first.Cert) {
		t.Fatalf("promotion wrong: %+v", s)
	}
	if !wake.Equal(first.Cert.NotAfter) {
		t.Fatalf("wake %s, want the retired CA's expiry %s", wake, first.Cert.NotAfter)
	}
	// A leaf of the old CA still verifies against the bundle; so does one of the new CA.
	oldLeaf, _ := first.IssueLeaf([]string{"w.example"}, time.Hour, t0)
	if err := verifies(t, oldLeaf, s.Bundle(), "w.example", t0.Add(time.Minute)); err != nil {
		t.Fatalf("old leaf no longer trusted after promotion: %v", err)
	}

	// The retired CA is dropped once it has expired.
	s, changed, _, _ = PlanCA(s, first.Cert.NotAfter, opts())
	if !changed || len(s.Retired) != 0 {
		t.Fatal("expired CA not pruned")
	}
}

func TestPlanCARecoversAfterLongDowntime(t *testing.T) {
	s, _, _, _ := PlanCA(nil, t0, opts())
	// Announced, then the writer was down until after the old signer expired: promote, don't regenerate.
	s, _, _, _ = PlanCA(s, s.Signer.Cert.NotAfter.Add(-opts().RotateBefore), opts())
	next := s.Next
	s, changed, _, _ := PlanCA(s, s.Signer.Cert.NotAfter.Add(time.Hour), opts())
	if !changed || s.Signer.Cert != next.Cert {
		t.Fatal("the announced successor was not promoted after the signer expired")
	}
}

func TestCAStateSurvivesTheSecret(t *testing.T) {
	s, _, wake, _ := PlanCA(nil, t0, opts())
	s, _, _, _ = PlanCA(s, wake, opts())
	data, err := s.Data()
	if err != nil {
		t.Fatal(err)
	}
	back, err := CAStateFromData(data)
	if err != nil || back.Next == nil || !back.Signer.Cert.Equal(s.Signer.Cert) || !bytes.Equal(back.Bundle(), s.Bundle()) {
		t.Fatalf("round trip lost state: %v", err)
	}
	if _, err := CAStateFromData(map[string][]byte{}); !errors.Is(err, ErrNoCA) {
		t.Fatalf("empty data: %v", err)
	}
	data[SignerKeyKey] = data[NextKeyKey]
	if _, err := CAStateFromData(data); err == nil {
		t.Fatal("mismatched signer key accepted")
	}
}

func TestCAOptionsValidate(t *testing.T) {
	for _, o := range []CAOptions{
		{Validity: time.Hour, RotateBefore: 2 * time.Hour},
		{Validity: 10 * time.Hour, RotateBefore: time.Hour, PromoteAfter: 2 * time.Hour},
	} {
		if err := o.Validate(); err == nil {
			t.Errorf("%+v accepted", o)
		}
	}
}

func fakeClient(t *testing.T, objs ...client.Object) client.WithWatch {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	return fake.NewClientBuilder().WithScheme(s).WithObjects(objs...).Build()
}

func TestEnsureCASecretCreatesOnceAndKeepsOtherKeys(t *testing.T) {
	key := types.NamespacedName{Namespace: "kilo-system", Name: "kilo-egress-ca"}
	c := fakeClient(t, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name}, Data: map[string][]byte{"other": []byte("x")}})
	ctx := context.Background()
	s1, _, err := EnsureCASecret(ctx, c, key, opts(), t0)
	if err != nil {
		t.Fatal(err)
	}
	s2, _, err := EnsureCASecret(ctx, c, key, opts(), t0.Add(time.Hour))
	if err != nil || !s2.Signer.Cert.Equal(s1.Signer.Cert) {
		t.Fatalf("second call replaced the CA: %v", err)
	}
	got := &corev1.Secret{}
	_ = c.Get(ctx, key, got)
	if string(got.Data["other"]) != "x" || len(got.Data[BundleKey]) == 0 {
		t.Fatalf("Secret data: keys %v", len(got.Data))
	}
}

// Two egress replicas racing: the loser's write conflicts and its next call adopts the winner's CA.
func TestEnsureCASecretConcurrentWritersConverge(t *testing.T) {
	key := types.NamespacedName{Namespace: "kilo-system", Name: "kilo-egress-ca"}
	ctx := context.Background()
	var raced bool
	base := fakeClient(t)
	c := interceptor.NewClient(base, interceptor.Funcs{
		Create: func(ctx context.Context, cl client.WithWatch, obj client.Object, opts ...client.CreateOption) error {
			if !raced {
				raced = true
				// The other replica creates first.
				other, _, _, err := PlanCA(nil, t0, CAOptions{Validity: 30 * 24 * time.Hour, RotateBefore: 10 * 24 * time.Hour, PromoteAfter: time.Hour})
				if err != nil {
					return err
				}
				d, _ := other.Data()
				if err := cl.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name}, Data: d}); err != nil {
					return err
				}
			}
			return cl.Create(ctx, obj, opts...)
		},
	})
	if _, _, err := EnsureCASecret(ctx, c, key, opts(), t0); err == nil {
		t.Fatal("the losing writer did not see its conflict")
	}
	winner := &corev1.Secret{}
	_ = base.Get(ctx, key, winner)
	s, _, err := EnsureCASecret(ctx, c, key, opts(), t0)
	if err != nil || !bytes.Equal(s.Bundle(), winner.Data[BundleKey]) {
		t.Fatalf("retry did not adopt the winner's CA: %v", err)
	}
}

func FuzzParseCA(f *testing.F) {
	ca, _ := NewCA("seed", time.Hour, t0)
	key, _ := ca.KeyPEM()
	f.Add(ca.CertPEM, key)
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), []byte("-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n"))
	f.Fuzz(func(t *testing.T, certPEM, keyPEM []byte) {
		got, err := ParseCA(certPEM, keyPEM)
		if err == nil && (got.Cert == nil || got.Key == nil || !got.Cert.IsCA) {
			t.Fatal("accepted something that is not a usable CA")
		}
		_, _ = CAStateFromData(map[string][]byte{SignerCertKey: certPEM, SignerKeyKey: keyPEM, BundleKey: certPEM})
	})
}
