package cluster

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"time"

	"github.com/podidentity/podidentity/test/toolbox/pki"
)

// certValidity is how long the cluster's certificates are valid: longer than any cluster is kept.
const certValidity = 30 * 24 * time.Hour

// issued is one certificate the harness issues: dir/<file>.crt and dir/<file>.key.
type issued struct {
	file string
	spec pki.Spec
}

// writePair writes p to dir/<file>.crt and dir/<file>.key.
func writePair(dir, file string, p *pki.Pair) error {
	return p.WriteFiles(filepath.Join(dir, file+".crt"), filepath.Join(dir, file+".key"))
}

// writeSigningKey writes a bare key pair (the service-account token signing key) as <file>.key and <file>.pub.
func writeSigningKey(dir, file string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	pub, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, file+".key"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, file+".pub"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644)
}
