// CONTRACT STUB — the pki helper replaces this file with the real implementation, keeping these exported names
// and signatures (the egress compiles against them).
package pki

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"time"
)

// CA is a certificate authority held in memory.
type CA struct {
	Cert    *x509.Certificate
	Key     crypto.Signer
	CertPEM []byte
}

// NewCA creates a self-signed CA valid from now for validity.
func NewCA(commonName string, validity time.Duration, now time.Time) (*CA, error) {
	return nil, errors.New("unimplemented")
}

// ParseCA loads a CA from PEM.
func ParseCA(certPEM, keyPEM []byte) (*CA, error) { return nil, errors.New("unimplemented") }

// IssueLeaf signs a leaf certificate for hosts (DNS names or IP literals), valid from now for validity.
func (ca *CA) IssueLeaf(hosts []string, validity time.Duration, now time.Time) (*tls.Certificate, error) {
	return nil, errors.New("unimplemented")
}
