package cluster

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"
)

// TestWritePKI checks, without starting anything, that the certificates the cluster writes chain to their CA
// with the names and usages the components need, and that each key file matches its certificate.
func TestWritePKI(t *testing.T) {
	c := &Cluster{opts: Options{StateDir: t.TempDir(), NodeName: "node-1"}}
	if err := c.writePKI(); err != nil {
		t.Fatal(err)
	}
	dir := c.pkiDir()
	load := func(file string) *x509.Certificate {
		t.Helper()
		pair, err := tls.LoadX509KeyPair(filepath.Join(dir, file+".crt"), filepath.Join(dir, file+".key"))
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		return pair.Leaf
	}
	pool := func(file string) *x509.CertPool {
		p := x509.NewCertPool()
		p.AddCert(load(file))
		return p
	}
	cluster, azure := pool("ca"), pool("azure-ca")
	server := []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	client := []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	for _, tc := range []struct {
		file  string
		roots *x509.CertPool
		name  string
		usage []x509.ExtKeyUsage
	}{
		{"apiserver", cluster, "kubernetes.default.svc", server},
		{"apiserver", cluster, NodeIP, server},
		{"apiserver", cluster, KubernetesServiceIP, server},
		{"kubelet-serving", cluster, "node-1", server},
		{"admin", cluster, "", client},
		{"apiserver-kubelet-client", cluster, "", client},
		{"kubelet-client", cluster, "", client},
		{"controller-manager", cluster, "", client},
		{"scheduler", cluster, "", client},
		{"kube-proxy", cluster, "", client},
		{"fakecloud", azure, AADHost, server},
		{"registry", cluster, "127.0.0.1", server},
	} {
		if _, err := load(tc.file).Verify(x509.VerifyOptions{Roots: tc.roots, DNSName: tc.name, KeyUsages: tc.usage}); err != nil {
			t.Errorf("%s for %q: %v", tc.file, tc.name, err)
		}
	}
	if _, err := load("fakecloud").Verify(x509.VerifyOptions{Roots: cluster, DNSName: AADHost}); err == nil {
		t.Error("the fake cloud's certificate chains to the cluster CA; want its own CA only")
	}
	if got := load("kubelet-client").Subject; got.CommonName != "system:node:node-1" || len(got.Organization) != 1 || got.Organization[0] != "system:nodes" {
		t.Errorf("kubelet-client subject %v", got)
	}
	for _, f := range []string{"service-account.key", "service-account.pub"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Error(err)
		}
	}
}
