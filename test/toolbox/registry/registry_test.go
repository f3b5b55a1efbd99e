package registry

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/podidentity/podidentity/test/toolbox/pki"
)

func client(r *Registry) *http.Client {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(r.CA)
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
}

func TestAuthenticationIsRequired(t *testing.T) {
	r, err := Start(Options{Password: "right"})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for _, tc := range []struct {
		name, user, password string
		want                 int
	}{
		{"anonymous", "", "", http.StatusUnauthorized},
		{"wrong password", r.User, "wrong", http.StatusUnauthorized},
		{"unknown user", "someone", "right", http.StatusUnauthorized},
		{"right credentials", r.User, "right", http.StatusOK},
	} {
		req, _ := http.NewRequest(http.MethodGet, "https://"+r.Host+"/v2/", nil)
		if tc.user != "" {
			req.SetBasicAuth(tc.user, tc.password)
		}
		resp, err := client(r).Do(req)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%s: status %d, want %d", tc.name, resp.StatusCode, tc.want)
		}
		if tc.want == http.StatusUnauthorized && !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Basic") {
			t.Errorf("%s: challenge %q, want Basic", tc.name, resp.Header.Get("WWW-Authenticate"))
		}
	}
	// Plain HTTP is not served.
	if resp, err := http.Get("http://" + r.Host + "/v2/"); err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("plain HTTP: status %d, want 400 (a TLS server's answer to plain HTTP)", resp.StatusCode)
		}
	}
}

func TestStartRefusesNonLoopbackAddresses(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:0", ":0", "192.0.2.1:5000", "localhost:0"} {
		if r, err := Start(Options{Addr: addr}); err == nil {
			r.Close()
			t.Errorf("Start(%q) served", addr)
		}
	}
}

func TestDockerConfigJSON(t *testing.T) {
	got := string(DockerConfigJSON("127.0.0.1:5000", "u", "p"))
	want := `{"auths":{"127.0.0.1:5000":{"username":"u","password":"p","auth":"dTpw"}}}`
	if got != want {
		t.Errorf("DockerConfigJSON = %s, want %s", got, want)
	}
}

func TestStartWithAnIssuedCertificate(t *testing.T) {
	ca := pki.SelfSigned(pki.Spec{CommonName: "test CA", CA: true})
	leaf := ca.Issue(pki.Spec{CommonName: "registry", Server: true, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	r, err := Start(Options{CertPEM: leaf.CertPEM(), KeyPEM: leaf.KeyPEM(), CAPEM: ca.CertPEM()})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if ca, err := os.ReadFile(r.CAFile); err != nil || string(ca) != string(r.CA) {
		t.Errorf("CAFile holds %q (%v), want the CA", ca, err)
	}
	req, _ := http.NewRequest(http.MethodGet, "https://"+r.Host+"/v2/", nil)
	req.SetBasicAuth(r.User, r.Password)
	resp, err := client(r).Do(req) // trusts only the CA
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("status %d", resp.StatusCode)
	}
}
