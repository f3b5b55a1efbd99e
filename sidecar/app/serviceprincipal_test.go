package app

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podidentity/podidentity/api/identitytype"
	"github.com/podidentity/podidentity/internal/annotation"
	"github.com/podidentity/podidentity/test/imds"
	"github.com/podidentity/podidentity/test/jwttest"
)

const tenant = "7e0b6a1c-0000-4000-8000-00000000000a"

func selfSigned(t *testing.T) (*x509.Certificate, []byte) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "sp-cert"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pemData := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	pemData = append(pemData, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})...)
	return cert, pemData
}

// TestServicePrincipals: types 1 and 2 get their token from (emulated) Azure AD through azidentity, with the
// credential read from the secrets directory the webhook mounts into the sidecar only.
func TestServicePrincipals(t *testing.T) {
	cert, certPEM := selfSigned(t)
	secretSP := annotation.Identity{Namespace: "apps", Name: "sp-secret", Type: identitytype.ServicePrincipal, ClientID: "5e000000-0000-4000-8000-000000000001", TenantID: tenant, SecretName: "sp-secret-creds"}
	certSP := annotation.Identity{Namespace: "apps", Name: "sp-cert", Type: identitytype.ServicePrincipalCertificate, ClientID: "5e000000-0000-4000-8000-000000000002", TenantID: tenant, SecretName: "sp-cert-creds",
		AuxiliaryTenantIDs: []string{"7e0b6a1c-0000-4000-8000-00000000000b"}}
	wrongSP := annotation.Identity{Namespace: "apps", Name: "sp-wrong", Type: identitytype.ServicePrincipal, ClientID: "5e000000-0000-4000-8000-000000000003", TenantID: tenant, SecretName: "sp-wrong-creds"}
	unreachableSP := annotation.Identity{Namespace: "apps", Name: "sp-unreachable", Type: identitytype.ServicePrincipal, ClientID: "5e000000-0000-4000-8000-000000000005", TenantID: tenant, SecretName: "sp-unreachable-creds",
		ADEndpoint: "https://127.0.0.1:1/"}
	missingSP := annotation.Identity{Namespace: "apps", Name: "sp-missing", Type: identitytype.ServicePrincipal, ClientID: "5e000000-0000-4000-8000-000000000004", TenantID: tenant, SecretName: "sp-missing-creds"}

	aad := imds.NewAAD(time.Hour,
		imds.App{TenantID: tenant, ClientID: secretSP.ClientID, ObjectID: "0e000000-0000-0000-0000-000000000001", Secret: "s3cret"},
		imds.App{TenantID: tenant, ClientID: certSP.ClientID, ObjectID: "0e000000-0000-0000-0000-000000000002", Certificate: cert},
		imds.App{TenantID: tenant, ClientID: wrongSP.ClientID, Secret: "right"},
	)
	aadSrv := httptest.NewTLSServer(aad)
	t.Cleanup(aadSrv.Close)

	secrets := t.TempDir()
	write := func(id, file, content string) {
		dir := filepath.Join(secrets, id)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, file), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("sp-secret", "clientSecret", "s3cret\n")
	write("sp-cert", "certificate", string(certPEM))
	write("sp-cert", "password", "")
	write("sp-wrong", "clientSecret", "wrong")
	write("sp-unreachable", "clientSecret", "s3cret")

	h := start(t, setup{bound: []annotation.Identity{web, secretSP, certSP, wrongSP, missingSP, unreachableSP}, attached: []imds.Identity{webMI},
		cfg: func(c *Config) {
			c.SecretsDir = secrets
			c.AADAuthorityHost = aadSrv.URL + "/"
			c.AADDisableInstanceDiscovery = true
			c.AADTransport = aadSrv.Client()
		}})
	tests := []struct {
		name   string
		id     annotation.Identity
		status int
		want   string
	}{
		{"client secret (type 1)", secretSP, 200, ""},
		{"certificate (type 2)", certSP, 200, ""},
		{"wrong secret", wrongSP, 400, "Invalid client secret"},
		{"secret not mounted", missingSP, 500, "sp-missing-creds"},
		{"Azure AD unreachable (adEndpoint): transient", unreachableSP, 503, "no token from Azure AD"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for i := range 2 {
				r := rawGet(t, h.addr, "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net&client_id="+tt.id.ClientID, md)
				if r.status != tt.status {
					t.Fatalf("%d %s, want %d", r.status, r.raw, tt.status)
				}
				if tt.status == 503 && r.header.Get("Retry-After") != "5" {
					t.Fatalf("503 without Retry-After 5: %v", r.header)
				}
				if tt.status != 200 {
					if !strings.Contains(r.body["error_description"], tt.want) {
						t.Fatalf("body %s, want %q", r.raw, tt.want)
					}
					return
				}
				c := jwttest.Claims(t, r.body["access_token"])
				if c["appid"] != tt.id.ClientID || c["aud"] != "https://vault.azure.net" || c["tid"] != tenant || r.body["client_id"] != tt.id.ClientID {
					t.Fatalf("request %d: token claims %v, body %s", i, c, r.raw)
				}
			}
			if n := aad.Tokens(tt.id.ClientID); n != 1 {
				t.Fatalf("Azure AD issued %d tokens, want 1 (the second request is a cache hit)", n)
			}
		})
	}
	if n := h.emu.Counters().TokenRequests; n != 0 {
		t.Fatalf("service principals went to IMDS (%d requests)", n)
	}
}
