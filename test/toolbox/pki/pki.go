// Package pki makes certificates for tests and test harnesses: a self-signed certificate (a serving
// certificate its clients trust directly, a service principal's credential, a CA) and certificates a CA
// issues (the local cluster's). Keys are ECDSA P-256 unless the Spec asks for RSA.
//
// Nothing here is for the product: the webhook's own serving certificates come from cert-controller or
// cert-manager.
//
// The functions panic instead of returning errors: only a failing crypto/rand or a Spec that x509 refuses
// can make them fail, and both are bugs of the caller, not conditions a test checks.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"time"
)

// DefaultValidity is how long a certificate is valid when its Spec says nothing.
const DefaultValidity = 24 * time.Hour

// Spec describes a certificate.
type Spec struct {
	CommonName   string
	Organization []string
	IPs          []net.IP
	DNSNames     []string
	// Server and Client add the serverAuth and clientAuth extended key usages.
	Server, Client bool
	// CA makes a certificate that signs others (key usage certSign, basic constraints CA:true).
	CA bool
	// RSA gives the certificate a 2048-bit RSA key (as Azure AD certificate credentials have) instead of an
	// ECDSA P-256 one.
	RSA bool
	// Validity is how long the certificate is valid from now (DefaultValidity when zero). Every certificate
	// is valid from an hour ago, so a clock a little behind does not refuse it.
	Validity time.Duration
}

// Pair is a certificate and its private key.
type Pair struct {
	Cert *x509.Certificate
	Key  crypto.Signer // *ecdsa.PrivateKey or *rsa.PrivateKey
}

// SelfSigned makes a certificate signed by its own key.
func SelfSigned(s Spec) *Pair {
	key := newKey(s.RSA)
	return &Pair{Cert: sign(template(s), nil, key.Public(), key), Key: key}
}

// Issue makes a certificate signed by p, which must be a CA.
func (p *Pair) Issue(s Spec) *Pair {
	key := newKey(s.RSA)
	return &Pair{Cert: sign(template(s), p.Cert, key.Public(), p.Key), Key: key}
}

// CertPEM is the certificate in PEM ("CERTIFICATE").
func (p *Pair) CertPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.Cert.Raw})
}

// KeyPEM is the private key in PEM, in its type's own encoding: "EC PRIVATE KEY" (SEC 1) or
// "RSA PRIVATE KEY" (PKCS #1), as openssl and Kubernetes write them.
func (p *Pair) KeyPEM() []byte {
	switch k := p.Key.(type) {
	case *ecdsa.PrivateKey:
		der, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			panic(err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
	case *rsa.PrivateKey:
		return pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)})
	default:
		panic(fmt.Sprintf("pki: unexpected key type %T", p.Key))
	}
}

// PKCS8KeyPEM is the private key in PEM as PKCS #8 ("PRIVATE KEY").
func (p *Pair) PKCS8KeyPEM() []byte {
	der, err := x509.MarshalPKCS8PrivateKey(p.Key)
	if err != nil {
		panic(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// Pool is a certificate pool that trusts p.
func (p *Pair) Pool() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(p.Cert)
	return pool
}

// WriteFiles writes the certificate (CertPEM, mode 0644) to certPath and the key (KeyPEM, mode 0600) to
// keyPath.
func (p *Pair) WriteFiles(certPath, keyPath string) error {
	if err := os.WriteFile(certPath, p.CertPEM(), 0o644); err != nil {
		return err
	}
	return os.WriteFile(keyPath, p.KeyPEM(), 0o600)
}

func template(s Spec) *x509.Certificate {
	validity := s.Validity
	if validity == 0 {
		validity = DefaultValidity
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: s.CommonName, Organization: s.Organization},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		IPAddresses:  s.IPs,
		DNSNames:     s.DNSNames,
	}
	if s.RSA {
		tmpl.KeyUsage |= x509.KeyUsageKeyEncipherment
	}
	if s.CA {
		tmpl.KeyUsage |= x509.KeyUsageCertSign
		tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
	}
	if s.Server {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	}
	if s.Client {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageClientAuth)
	}
	return tmpl
}

// sign signs tmpl with signer as parent (tmpl itself when parent is nil) and parses the result.
func sign(tmpl, parent *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer) *x509.Certificate {
	if parent == nil {
		parent = tmpl
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		panic(fmt.Sprintf("pki: signing %q: %v", tmpl.Subject.CommonName, err))
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		panic(err)
	}
	return cert
}

func newKey(useRSA bool) crypto.Signer {
	var (
		key crypto.Signer
		err error
	)
	if useRSA {
		key, err = rsa.GenerateKey(rand.Reader, 2048)
	} else {
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	}
	if err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return key
}

// serial is a random 126-bit serial number, so that no two certificates of a test share one.
func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	if err != nil {
		panic(err)
	}
	return n
}
