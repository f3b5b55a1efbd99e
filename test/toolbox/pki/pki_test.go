package pki

import (
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
)

func TestSelfSignedServingCertificateIsTrustedByItsPool(t *testing.T) {
	p := SelfSigned(Spec{CommonName: "server", IPs: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"}, Server: true, CA: true})
	for _, name := range []string{"127.0.0.1", "localhost"} {
		if _, err := p.Cert.Verify(x509.VerifyOptions{DNSName: name, Roots: p.Pool()}); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := p.Cert.Verify(x509.VerifyOptions{DNSName: "other", Roots: p.Pool()}); err == nil {
		t.Error("verified for a name it does not hold")
	}
	if _, ok := p.Key.(*ecdsa.PrivateKey); !ok {
		t.Errorf("key %T, want ECDSA", p.Key)
	}
	if left := time.Until(p.Cert.NotAfter); left < DefaultValidity-time.Minute || left > DefaultValidity {
		t.Errorf("valid for %v more, want %v", left, DefaultValidity)
	}
}

func TestIssuedCertificatesChainToTheCA(t *testing.T) {
	ca := SelfSigned(Spec{CommonName: "ca", CA: true, Validity: 30 * 24 * time.Hour})
	client := ca.Issue(Spec{CommonName: "admin", Organization: []string{"system:masters"}, Client: true})
	server := ca.Issue(Spec{CommonName: "api", DNSNames: []string{"kubernetes"}, Server: true})
	if _, err := client.Cert.Verify(x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("client: %v", err)
	}
	if _, err := server.Cert.Verify(x509.VerifyOptions{Roots: ca.Pool(), DNSName: "kubernetes"}); err != nil {
		t.Errorf("server: %v", err)
	}
	if _, err := client.Cert.Verify(x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
		t.Error("a client certificate verified for serverAuth")
	}
	if client.Cert.Subject.Organization[0] != "system:masters" || client.Cert.SerialNumber.Cmp(server.Cert.SerialNumber) == 0 {
		t.Errorf("subject %v, serials %v and %v", client.Cert.Subject, client.Cert.SerialNumber, server.Cert.SerialNumber)
	}
}

func TestPEMAndFiles(t *testing.T) {
	ec := SelfSigned(Spec{CommonName: "ec"})
	if _, err := tls.X509KeyPair(ec.CertPEM(), ec.KeyPEM()); err != nil {
		t.Errorf("EC pair: %v", err)
	}
	dir := t.TempDir()
	crt, key := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	if err := ec.WriteFiles(crt, key); err != nil {
		t.Fatal(err)
	}
	if _, err := tls.LoadX509KeyPair(crt, key); err != nil {
		t.Errorf("written files: %v", err)
	}
	if fi, err := os.Stat(key); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("key file: %v, %v", fi.Mode(), err)
	}

	r := SelfSigned(Spec{CommonName: "sp", RSA: true})
	if _, ok := r.Key.(*rsa.PrivateKey); !ok {
		t.Fatalf("key %T, want RSA", r.Key)
	}
	for name, keyPEM := range map[string][]byte{"PKCS #1": r.KeyPEM(), "PKCS #8": r.PKCS8KeyPEM()} {
		certs, k, err := azidentity.ParseCertificates(append(r.CertPEM(), keyPEM...), nil)
		if err != nil || len(certs) != 1 || !certs[0].Equal(r.Cert) || k == nil {
			t.Errorf("%s: azidentity read %d certificates, key %v: %v", name, len(certs), k != nil, err)
		}
	}
}
