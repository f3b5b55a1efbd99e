package app

import (
	"crypto/x509"
	"encoding/json"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podidentity/podidentity/api/identitytype"
	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/test/emulators/imds"
	"github.com/podidentity/podidentity/test/toolbox/jwttest"
	"github.com/podidentity/podidentity/test/toolbox/pki"
)

const tenant = "7e0b6a1c-0000-4000-8000-00000000000a"

// spCertificate makes a service principal's certificate and the PEM its Secret holds: the certificate, then
// its key in PKCS #1.
func spCertificate() (*x509.Certificate, []byte) {
	p := pki.SelfSigned(pki.Spec{CommonName: "sp-cert", RSA: true})
	return p.Cert, append(p.CertPEM(), p.KeyPEM()...)
}

// TestServicePrincipals: types 1 and 2 get their token from (emulated) Azure AD through azidentity, with the
// credential read from the secrets directory the webhook mounts into the sidecar only.
func TestServicePrincipals(t *testing.T) {
	cert, certPEM := spCertificate()
	secretSP := contract.Identity{Namespace: "apps", Name: "sp-secret", Type: identitytype.ServicePrincipal, ClientID: "5e000000-0000-4000-8000-000000000001", TenantID: tenant, SecretName: "sp-secret-creds"}
	certSP := contract.Identity{Namespace: "apps", Name: "sp-cert", Type: identitytype.ServicePrincipalCertificate, ClientID: "5e000000-0000-4000-8000-000000000002", TenantID: tenant, SecretName: "sp-cert-creds",
		AuxiliaryTenantIDs: []string{"7e0b6a1c-0000-4000-8000-00000000000b"}}
	wrongSP := contract.Identity{Namespace: "apps", Name: "sp-wrong", Type: identitytype.ServicePrincipal, ClientID: "5e000000-0000-4000-8000-000000000003", TenantID: tenant, SecretName: "sp-wrong-creds"}
	unreachableSP := contract.Identity{Namespace: "apps", Name: "sp-unreachable", Type: identitytype.ServicePrincipal, ClientID: "5e000000-0000-4000-8000-000000000005", TenantID: tenant, SecretName: "sp-unreachable-creds",
		ADEndpoint: "https://127.0.0.1:1/"}
	missingSP := contract.Identity{Namespace: "apps", Name: "sp-missing", Type: identitytype.ServicePrincipal, ClientID: "5e000000-0000-4000-8000-000000000004", TenantID: tenant, SecretName: "sp-missing-creds"}

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

	h := start(t, setup{bound: []contract.Identity{web, secretSP, certSP, wrongSP, missingSP, unreachableSP}, attached: []imds.Identity{webMI},
		cfg: func(c *Config) {
			c.SecretsDir = secrets
			c.AADAuthorityHost = aadSrv.URL + "/"
			c.AADDisableInstanceDiscovery = true
			c.AADTransport = aadSrv.Client()
		}})
	tests := []struct {
		name   string
		id     contract.Identity
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

// TestAuxiliaryTenants: a client-secret service principal (type 1) with auxiliaryTenantIDs is answered as AAD
// Pod Identity's NMI answered it (pkg/nmi/server, pkg/auth upstream): a JSON list of token answers, the primary
// tenant's first, then one per auxiliary tenant in the AzureIdentity's order, each from Azure AD for that
// tenant; cached like any token. Without auxiliary tenants, and for certificates (type 2, whose auxiliary
// tenants NMI ignored), the answer stays IMDS's single object. A tenant Azure AD refuses fails the request;
// more than three auxiliary tenants are refused (NMI's token library refused them).
func TestAuxiliaryTenants(t *testing.T) {
	const (
		aux1 = "7e0b6a1c-0000-4000-8000-0000000000b1"
		aux2 = "7e0b6a1c-0000-4000-8000-0000000000b2"
		aux3 = "7e0b6a1c-0000-4000-8000-0000000000b3"
		aux4 = "7e0b6a1c-0000-4000-8000-0000000000b4"
		gone = "7e0b6a1c-0000-4000-8000-0000000000ff" // the application has no service principal there
	)
	cert, certPEM := spCertificate()
	sp := func(name, client string, typ identitytype.IdentityType, aux ...string) contract.Identity {
		return contract.Identity{Namespace: "apps", Name: name, Type: typ, ClientID: client, TenantID: tenant, SecretName: name + "-creds", AuxiliaryTenantIDs: aux}
	}
	multi := sp("sp-multi", "5e000000-0000-4000-8000-0000000000a1", identitytype.ServicePrincipal, aux1, aux2)
	single := sp("sp-single", "5e000000-0000-4000-8000-0000000000a2", identitytype.ServicePrincipal)
	certMulti := sp("sp-cert-multi", "5e000000-0000-4000-8000-0000000000a3", identitytype.ServicePrincipalCertificate, aux1)
	refused := sp("sp-aux-refused", "5e000000-0000-4000-8000-0000000000a4", identitytype.ServicePrincipal, aux1, gone)
	tooMany := sp("sp-too-many", "5e000000-0000-4000-8000-0000000000a5", identitytype.ServicePrincipal, aux1, aux2, aux3, aux4)
	others := []string{aux1, aux2, aux3, aux4}
	aad := imds.NewAAD(time.Hour,
		imds.App{TenantID: tenant, OtherTenants: others, ClientID: multi.ClientID, Secret: "s1"},
		imds.App{TenantID: tenant, OtherTenants: others, ClientID: single.ClientID, Secret: "s2"},
		imds.App{TenantID: tenant, OtherTenants: others, ClientID: certMulti.ClientID, Certificate: cert},
		imds.App{TenantID: tenant, OtherTenants: others, ClientID: refused.ClientID, Secret: "s4"},
		imds.App{TenantID: tenant, OtherTenants: others, ClientID: tooMany.ClientID, Secret: "s5"},
	)
	aadSrv := httptest.NewTLSServer(aad)
	t.Cleanup(aadSrv.Close)
	secrets := t.TempDir()
	for name, files := range map[string]map[string]string{
		multi.Name: {"clientSecret": "s1"}, single.Name: {"clientSecret": "s2"}, certMulti.Name: {"certificate": string(certPEM), "password": ""},
		refused.Name: {"clientSecret": "s4"}, tooMany.Name: {"clientSecret": "s5"},
	} {
		if err := os.MkdirAll(filepath.Join(secrets, name), 0o755); err != nil {
			t.Fatal(err)
		}
		for f, content := range files {
			if err := os.WriteFile(filepath.Join(secrets, name, f), []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	h := start(t, setup{bound: []contract.Identity{multi, single, certMulti, refused, tooMany},
		cfg: func(c *Config) {
			c.SecretsDir = secrets
			c.AADAuthorityHost = aadSrv.URL + "/"
			c.AADDisableInstanceDiscovery = true
			c.AADTransport = aadSrv.Client()
		}})
	tests := []struct {
		name        string
		id          contract.Identity
		status      int
		wantTenants []string // nil: a single object; else a list with these tid claims, in order
		wantError   string
		wantIssued  int // tokens Azure AD issued for the client ID after both requests
	}{
		{"type 1 with two auxiliary tenants: a list, primary first", multi, 200, []string{tenant, aux1, aux2}, "", 3},
		{"type 1 without auxiliary tenants: one object", single, 200, nil, "", 1},
		{"type 2 with an auxiliary tenant: one object, as NMI", certMulti, 200, nil, "", 1},
		{"an auxiliary tenant Azure AD refuses: primary and first auxiliary cached", refused, 400, nil, "AADSTS700016", 2},
		{"four auxiliary tenants", tooMany, 400, nil, "at most 3 are allowed", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for i := range 2 {
				r := rawGet(t, h.addr, "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F&client_id="+tt.id.ClientID, md)
				if r.status != tt.status {
					t.Fatalf("request %d: %d %s, want %d", i, r.status, r.raw, tt.status)
				}
				if tt.status != 200 {
					if !strings.Contains(r.body["error_description"], tt.wantError) {
						t.Fatalf("body %s, want %q", r.raw, tt.wantError)
					}
					continue
				}
				var answers []map[string]string
				if tt.wantTenants == nil {
					if strings.HasPrefix(strings.TrimSpace(r.raw), "[") || r.body["access_token"] == "" {
						t.Fatalf("request %d: want one token object, got %s", i, r.raw)
					}
					answers = []map[string]string{r.body}
				} else if err := json.Unmarshal([]byte(r.raw), &answers); err != nil || len(answers) != len(tt.wantTenants) {
					t.Fatalf("request %d: want a list of %d token answers, got %s (%v)", i, len(tt.wantTenants), r.raw, err)
				}
				for j, a := range answers {
					c := jwttest.Claims(t, a["access_token"])
					wantTid := tenant
					if tt.wantTenants != nil {
						wantTid = tt.wantTenants[j]
					}
					if c["tid"] != wantTid || c["appid"] != tt.id.ClientID || c["aud"] != "https://management.azure.com/" ||
						a["resource"] != "https://management.azure.com/" || a["client_id"] != tt.id.ClientID || a["token_type"] != "Bearer" || a["expires_on"] == "" {
						t.Fatalf("request %d, answer %d: claims %v, answer %v; want tid %s", i, j, c, a, wantTid)
					}
				}
			}
			if n := aad.Tokens(tt.id.ClientID); n != tt.wantIssued {
				t.Fatalf("Azure AD issued %d tokens, want %d (the second request is served from the cache)", n, tt.wantIssued)
			}
		})
	}
	var audit string
	for _, l := range h.logs.all() {
		if strings.Contains(l, `"token issued"`) && strings.Contains(l, multi.ClientID) {
			audit = l
		}
	}
	if !strings.Contains(audit, `"auxiliaryTenants":2`) {
		t.Errorf("audit line of the multi-tenant token does not count its auxiliary tenants: %q", audit)
	}
}
