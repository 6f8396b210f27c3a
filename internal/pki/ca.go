// Package pki holds the certificate authorities the operator runs on: the webhook's serving CA and the egress
// interceptor's CA. Everything here is stdlib x509 with ECDSA P-256 keys; the Kubernetes-facing parts (Secrets,
// caBundle injection, hot reload) sit in casecret.go and webhookcert.go on top of these pure functions.
package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1" //nolint:gosec // RFC 5280 §4.2.1.2 method (1) key identifier; not a security function.
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"strings"
	"time"
)

// Backdate moves NotBefore into the past so that a peer whose clock runs a little behind ours does not see a fresh
// certificate as "not yet valid" (the usual cause of rotation-time TLS failures across nodes).
const Backdate = time.Hour

// maxLeafHosts bounds the SANs of one leaf; the egress mints one leaf per upstream host, the webhook a handful.
const maxLeafHosts = 64

// CA is a certificate authority held in memory.
type CA struct {
	Cert    *x509.Certificate
	Key     crypto.Signer
	CertPEM []byte
}

// NewCA creates a self-signed CA valid from now (backdated by Backdate) for validity. The CA may sign leaves only
// (MaxPathLen 0): a leaked leaf key can never mint further certificates.
func NewCA(commonName string, validity time.Duration, now time.Time) (*CA, error) {
	if validity <= 0 {
		return nil, fmt.Errorf("creating CA %q: validity must be positive, got %s", commonName, validity)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("creating CA %q: generating key: %w", commonName, err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, fmt.Errorf("creating CA %q: %w", commonName, err)
	}
	ski, err := subjectKeyID(key.Public())
	if err != nil {
		return nil, fmt.Errorf("creating CA %q: %w", commonName, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             now.Add(-Backdate).UTC().Truncate(time.Second),
		NotAfter:              now.Add(validity).UTC().Truncate(time.Second),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
		SubjectKeyId:          ski,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("creating CA %q: signing: %w", commonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("creating CA %q: parsing the result: %w", commonName, err)
	}
	return &CA{Cert: cert, Key: key, CertPEM: EncodeCertPEM(cert)}, nil
}

// ParseCA loads a CA from PEM: the first CERTIFICATE block of certPEM and a PKCS#8, SEC 1 (EC) or PKCS#1 (RSA)
// private key. It refuses a certificate that is not a CA or whose public key does not match the private key, so a
// half-rotated Secret (new cert, old key) is caught here rather than as an unverifiable chain later.
func ParseCA(certPEM, keyPEM []byte) (*CA, error) {
	cert, err := firstCert(certPEM)
	if err != nil {
		return nil, fmt.Errorf("parsing CA certificate: %w", err)
	}
	if !cert.IsCA || !cert.BasicConstraintsValid {
		return nil, errors.New("parsing CA certificate: it is not a CA (basicConstraints CA:TRUE missing)")
	}
	key, err := parseKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("parsing CA private key: %w", err)
	}
	if !publicKeysEqual(cert.PublicKey, key.Public()) {
		return nil, errors.New("parsing CA: the private key does not match the certificate")
	}
	return &CA{Cert: cert, Key: key, CertPEM: EncodeCertPEM(cert)}, nil
}

// KeyPEM returns the CA's private key as PKCS#8 PEM.
func (ca *CA) KeyPEM() ([]byte, error) { return EncodeKeyPEM(ca.Key) }

// IssueLeaf signs a leaf certificate for hosts (DNS names or IP literals), valid from now for validity. The
// validity is clipped to the CA's own window: a leaf that outlives its issuer would only fail verification later,
// at a worse moment. The returned certificate carries the leaf only (the CA is a root the peer already trusts) and
// has Leaf set, so callers can read NotAfter without parsing.
func (ca *CA) IssueLeaf(hosts []string, validity time.Duration, now time.Time) (*tls.Certificate, error) {
	if ca == nil || ca.Cert == nil || ca.Key == nil {
		return nil, errors.New("issuing leaf: CA is not loaded")
	}
	if validity <= 0 {
		return nil, fmt.Errorf("issuing leaf: validity must be positive, got %s", validity)
	}
	if len(hosts) == 0 || len(hosts) > maxLeafHosts {
		return nil, fmt.Errorf("issuing leaf: need 1 to %d hosts, got %d", maxLeafHosts, len(hosts))
	}
	var dnsNames []string
	var ips []net.IP
	for _, h := range hosts {
		h = strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")
		if ip := net.ParseIP(h); ip != nil {
			ips = append(ips, ip)
			continue
		}
		if err := checkDNSName(h); err != nil {
			return nil, fmt.Errorf("issuing leaf: %w", err)
		}
		dnsNames = append(dnsNames, strings.ToLower(h))
	}
	notBefore := now.Add(-Backdate)
	if notBefore.Before(ca.Cert.NotBefore) {
		notBefore = ca.Cert.NotBefore
	}
	notAfter := now.Add(validity)
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	if !notAfter.After(now) {
		return nil, fmt.Errorf("issuing leaf: CA %q expired at %s", ca.Cert.Subject.CommonName, ca.Cert.NotAfter.Format(time.RFC3339))
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("issuing leaf: generating key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, fmt.Errorf("issuing leaf: %w", err)
	}
	cn := hosts[0]
	if len(cn) > 64 { // RFC 5280 ub-common-name; the SANs carry the real names anyway.
		cn = cn[:64]
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             notBefore.UTC().Truncate(time.Second),
		NotAfter:              notAfter.UTC().Truncate(time.Second),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		DNSNames:              dnsNames,
		IPAddresses:           ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return nil, fmt.Errorf("issuing leaf for %v: signing: %w", hosts, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("issuing leaf for %v: parsing the result: %w", hosts, err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

// EncodeCertPEM returns cert as a CERTIFICATE PEM block.
func EncodeCertPEM(cert *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
}

// EncodeKeyPEM returns key as a PKCS#8 PRIVATE KEY PEM block.
func EncodeKeyPEM(key crypto.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encoding private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// EncodeTLSCertificate returns the chain and key of c as PEM, the tls.crt/tls.key layout of a kubernetes.io/tls
// Secret.
func EncodeTLSCertificate(c *tls.Certificate) (certPEM, keyPEM []byte, err error) {
	var buf bytes.Buffer
	for _, der := range c.Certificate {
		_ = pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: der})
	}
	keyPEM, err = EncodeKeyPEM(c.PrivateKey)
	if err != nil {
		return nil, nil, err
	}
	return buf.Bytes(), keyPEM, nil
}

// ParseCertsPEM returns every CERTIFICATE block in data, skipping other block types. It fails on a certificate
// block that does not parse: a bundle silently missing a CA is the failure mode it exists to prevent.
func ParseCertsPEM(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return certs, nil
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parsing certificate %d of bundle: %w", len(certs)+1, err)
		}
		certs = append(certs, c)
	}
}

func firstCert(data []byte) (*x509.Certificate, error) {
	certs, err := ParseCertsPEM(data)
	if err != nil {
		return nil, err
	}
	if len(certs) == 0 {
		return nil, errors.New("no CERTIFICATE PEM block")
	}
	return certs[0], nil
}

func parseKey(data []byte) (crypto.Signer, error) {
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return nil, errors.New("no private key PEM block")
		}
		var (
			k   any
			err error
		)
		switch block.Type {
		case "PRIVATE KEY":
			k, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		case "EC PRIVATE KEY":
			k, err = x509.ParseECPrivateKey(block.Bytes)
		case "RSA PRIVATE KEY":
			k, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		default:
			continue
		}
		if err != nil {
			// The parser's error never quotes key bytes; keep it wrapped for the block type only.
			return nil, fmt.Errorf("decoding %s block: %w", block.Type, err)
		}
		switch key := k.(type) {
		case *ecdsa.PrivateKey:
			return key, nil
		case *rsa.PrivateKey:
			return key, nil
		case crypto.Signer:
			return key, nil
		default:
			return nil, fmt.Errorf("unsupported private key type %T", k)
		}
	}
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	ea, ok := a.(equaler)
	return ok && ea.Equal(b)
}

func newSerial() (*big.Int, error) {
	// 128 random bits, positive: CA/B Forum asks for at least 64 bits of entropy in serials.
	s, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("generating serial number: %w", err)
	}
	return s.Add(s, big.NewInt(1)), nil
}

func subjectKeyID(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("computing subject key id: %w", err)
	}
	sum := sha1.Sum(der) //nolint:gosec // see import comment.
	return sum[:], nil
}

// checkDNSName accepts what a TLS client may ask for in SNI or a CONNECT authority: letters, digits, '-', '.', '_'
// and a leading "*." wildcard, at most 253 characters. It exists so that a hostile CONNECT target cannot smuggle
// odd bytes into a certificate the egress signs.
func checkDNSName(h string) error {
	if h == "" || len(h) > 253 {
		return fmt.Errorf("host name must be 1 to 253 characters, got %d", len(h))
	}
	name := strings.TrimPrefix(h, "*.")
	for _, label := range strings.Split(name, ".") {
		if label == "" || len(label) > 63 {
			return fmt.Errorf("host name %q has an empty or over-long label", h)
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return fmt.Errorf("host name %q has a character outside [A-Za-z0-9._-]", h)
			}
		}
	}
	return nil
}
