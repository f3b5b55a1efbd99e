package app

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/podidentity/podidentity/api/identitytype"
	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/test/emulators/imds"
	"github.com/podidentity/podidentity/test/toolbox/jwttest"
	"github.com/podidentity/podidentity/test/toolbox/testenv"
)

// federation is a real API server as the service account issuer, the emulated Azure AD over TLS that verifies
// its tokens (discovery and JWKS fetched from the API server), and a sidecar whose pod runs as apps/web.
type federation struct {
	issuer  *testenv.Issuer
	aad     *imds.AAD
	aadSrv  *httptest.Server
	h       *harness
	file    string
	mu      sync.Mutex
	skew    time.Duration
	fedA    contract.Identity // bound, authority from --aad-authority-host
	fedB    contract.Identity // bound, authority from its adEndpoint (a sovereign cloud's, in production)
	unbound contract.Identity // trusts apps/web in Azure AD, but no binding selects the pod
}

func federatedIdentity(name, clientID string) contract.Identity {
	return contract.Identity{Namespace: "apps", Name: name, Type: identitytype.UserAssignedMSI, ClientID: clientID, TenantID: tenant,
		Backend: contract.BackendFederated, Binding: "apps/" + name}
}

func startFederation(t *testing.T) *federation {
	logs := &logBuffer{}
	f := newFederation(t, func(s setup) *harness { h := startTB(t, s, logs.logger()); h.logs = logs; return h })
	return f
}

// newFederation starts the issuer, Azure AD and the sidecar (with startSidecar: the test's or the benchmark's
// harness).
func newFederation(t testing.TB, startSidecar func(setup) *harness) *federation {
	f := &federation{issuer: testenv.StartIssuer(t)}
	f.fedA = federatedIdentity("fed-a", "fedfed00-0000-4000-8000-00000000000a")
	f.fedA.ResourceID = rid + "fed-a"
	f.fedB = federatedIdentity("fed-b", "fedfed00-0000-4000-8000-00000000000b")
	f.unbound = federatedIdentity("fed-unbound", "fedfed00-0000-4000-8000-0000000000ff")
	trusts := []imds.FederatedCredential{{Name: "web", Issuer: f.issuer.URL, Subject: testenv.Subject("apps", "web")}}
	f.aad = imds.NewAAD(time.Hour,
		imds.App{TenantID: tenant, ClientID: f.fedA.ClientID, ObjectID: "0f000000-0000-0000-0000-00000000000a", Federated: trusts},
		imds.App{TenantID: tenant, ClientID: f.fedB.ClientID, ObjectID: "0f000000-0000-0000-0000-00000000000b", Federated: trusts},
		imds.App{TenantID: tenant, ClientID: f.unbound.ClientID, Federated: trusts})
	f.aad.Federation(f.issuer.Anonymous, func() time.Time { f.mu.Lock(); defer f.mu.Unlock(); return time.Now().Add(f.skew) })
	f.aadSrv = httptest.NewTLSServer(f.aad)
	t.Cleanup(f.aadSrv.Close)
	f.fedB.ADEndpoint = f.aadSrv.URL + "/"
	f.file = filepath.Join(t.TempDir(), "token")
	f.rotate(t, "web", imds.FederationAudience)
	f.h = startSidecar(setup{bound: []contract.Identity{web, f.fedA, f.fedB}, attached: []imds.Identity{webMI},
		cfg: func(c *Config) {
			c.FederatedTokenFile = f.file
			c.AADAuthorityHost = f.aadSrv.URL + "/"
			c.AADDisableInstanceDiscovery = true
			c.AADTransport = f.aadSrv.Client()
		}})
	return f
}

// rotate writes a new token of service account apps/<sa> for audience, as the kubelet does (a new file
// renamed into place).
func (f *federation) rotate(t testing.TB, sa, audience string) {
	t.Helper()
	tmp := f.file + ".new"
	if err := os.WriteFile(tmp, []byte(f.issuer.Token(t, "apps", sa, audience, 3600)), 0o444); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, f.file); err != nil {
		t.Fatal(err)
	}
}

func (f *federation) get(t *testing.T, resource, query string) response {
	t.Helper()
	return rawGet(t, f.h.addr, "/metadata/identity/oauth2/token?api-version=2018-02-01&resource="+url.QueryEscape(resource)+query, md)
}

func TestFederatedIdentities(t *testing.T) {
	f := startFederation(t)

	t.Run("federated token by client_id, then from the cache", func(t *testing.T) {
		for i := range 2 {
			r := f.get(t, "https://vault.azure.net", "&client_id="+f.fedA.ClientID)
			if r.status != 200 {
				t.Fatalf("request %d: %d %s", i, r.status, r.raw)
			}
			c := jwttest.Claims(t, r.body["access_token"])
			if c["appid"] != f.fedA.ClientID || c["tid"] != tenant || c["aud"] != "https://vault.azure.net" || r.body["client_id"] != f.fedA.ClientID || r.body["resource"] != "https://vault.azure.net" {
				t.Fatalf("claims %v, body %s", c, r.raw)
			}
		}
		if n := f.aad.Exchanges(f.fedA.ClientID); n != 1 {
			t.Fatalf("%d exchanges at Azure AD, want 1 (the second request is a cache hit)", n)
		}
	})
	t.Run("by resource ID and by object ID", func(t *testing.T) {
		if r := f.get(t, "https://vault.azure.net", "&mi_res_id="+url.QueryEscape(f.fedA.ResourceID)); r.status != 200 || r.body["client_id"] != f.fedA.ClientID {
			t.Fatalf("%d %s", r.status, r.raw)
		}
		if r := f.get(t, "https://vault.azure.net", "&object_id=0f000000-0000-0000-0000-00000000000b"); r.status != 200 || r.body["client_id"] != f.fedB.ClientID {
			t.Fatalf("%d %s", r.status, r.raw)
		}
	})
	t.Run("authority from the identity's adEndpoint", func(t *testing.T) {
		// fedB's adEndpoint is the emulator; with --aad-authority-host unreachable it must still be served.
		if r := f.get(t, "https://storage.azure.com/", "&client_id="+f.fedB.ClientID); r.status != 200 || r.body["client_id"] != f.fedB.ClientID {
			t.Fatalf("%d %s", r.status, r.raw)
		}
	})
	t.Run("node identity beside them comes from IMDS", func(t *testing.T) {
		before := f.h.emu.Counters().TokenRequests
		if r := f.get(t, "https://node.example", "&client_id="+web.ClientID); r.status != 200 || r.body["client_id"] != web.ClientID {
			t.Fatalf("%d %s", r.status, r.raw)
		}
		if after := f.h.emu.Counters().TokenRequests; after != before+1 {
			t.Fatalf("IMDS token requests %d -> %d", before, after)
		}
	})
	t.Run("an identity Azure AD would issue, but not bound: refused without asking", func(t *testing.T) {
		r := f.get(t, "https://vault.azure.net", "&client_id="+f.unbound.ClientID)
		if r.status != 400 || !strings.Contains(r.body["error_description"], "not an identity bound to this pod") {
			t.Fatalf("%d %s", r.status, r.raw)
		}
		if n := f.aad.Exchanges(f.unbound.ClientID); n != 0 {
			t.Fatalf("%d exchanges for the unbound identity", n)
		}
	})
	t.Run("100 concurrent cold requests make one exchange", func(t *testing.T) {
		before := f.aad.Exchanges(f.fedA.ClientID)
		var wg sync.WaitGroup
		errs := make(chan string, 100)
		for range 100 {
			wg.Go(func() {
				resp, err := http.DefaultClient.Do(&http.Request{Method: "GET", Header: http.Header{"Metadata": {"true"}},
					URL: &url.URL{Scheme: "http", Host: f.h.addr, Path: "/metadata/identity/oauth2/token",
						RawQuery: "api-version=2018-02-01&resource=https%3A%2F%2Fdatabase.windows.net%2F&client_id=" + f.fedA.ClientID}})
				if err != nil {
					errs <- err.Error()
					return
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					errs <- string(b)
				}
			})
		}
		wg.Wait()
		close(errs)
		for e := range errs {
			t.Fatal(e)
		}
		if n := f.aad.Exchanges(f.fedA.ClientID) - before; n != 1 {
			t.Fatalf("%d exchanges, want 1", n)
		}
	})
	t.Run("rotated token file is read on the next exchange", func(t *testing.T) {
		f.aad.RefuseReplays(true) // each token accepted once: only a re-read file gets a second exchange through
		defer f.aad.RefuseReplays(false)
		f.rotate(t, "web", imds.FederationAudience)
		if r := f.get(t, "https://r1.example", "&client_id="+f.fedA.ClientID); r.status != 200 {
			t.Fatalf("%d %s", r.status, r.raw)
		}
		if r := f.get(t, "https://r2.example", "&client_id="+f.fedA.ClientID); r.status != 400 || !strings.Contains(r.body["error_description"], "already used") {
			t.Fatalf("same token again in strict mode: %d %s", r.status, r.raw)
		}
		f.rotate(t, "web", imds.FederationAudience)
		if r := f.get(t, "https://r2.example", "&client_id="+f.fedA.ClientID); r.status != 200 {
			t.Fatalf("after rotation: %d %s", r.status, r.raw)
		}
	})
	refusals := []struct {
		name, sa, audience string
		skew               time.Duration
		want               string
	}{
		{"wrong subject (another service account's token)", "intruder", imds.FederationAudience, 0, "AADSTS70021"},
		{"wrong audience", "web", "api://something-else", 0, "AADSTS700212"},
		{"expired token", "web", imds.FederationAudience, 2 * time.Hour, "AADSTS700024"},
	}
	for i, tc := range refusals {
		t.Run(tc.name, func(t *testing.T) {
			f.rotate(t, tc.sa, tc.audience)
			defer f.rotate(t, "web", imds.FederationAudience)
			f.mu.Lock()
			f.skew = tc.skew
			f.mu.Unlock()
			defer func() { f.mu.Lock(); f.skew = 0; f.mu.Unlock() }()
			resource := "https://refused" + string(rune('a'+i)) + ".example"
			r := f.get(t, resource, "&client_id="+f.fedA.ClientID)
			if r.status != 400 || r.body["error"] != "invalid_request" || !strings.Contains(r.body["error_description"], tc.want) ||
				!strings.Contains(r.body["error_description"], "federated identity apps/fed-a") {
				t.Fatalf("%d %s, want 400 naming %s", r.status, r.raw, tc.want)
			}
		})
	}
	t.Run("token file missing", func(t *testing.T) {
		if err := os.Rename(f.file, f.file+".away"); err != nil {
			t.Fatal(err)
		}
		defer func() {
			if err := os.Rename(f.file+".away", f.file); err != nil {
				t.Errorf("putting the token file back: %v", err)
			}
		}()
		r := f.get(t, "https://missing.example", "&client_id="+f.fedA.ClientID)
		if r.status != 500 || r.body["error"] != "configuration_error" || !strings.Contains(r.body["error_description"], "recreate the pod") {
			t.Fatalf("%d %s", r.status, r.raw)
		}
	})
	t.Run("metrics and audit name the backend", func(t *testing.T) {
		resp, err := http.Get("http://" + f.h.health + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, m := range []string{
			`podidentity_sidecar_token_requests_total{backend="federated",identity="apps/fed-a",result="hit"}`,
			`podidentity_sidecar_token_requests_total{backend="federated",identity="apps/fed-a",result="miss"}`,
			`podidentity_sidecar_token_requests_total{backend="federated",identity="apps/fed-a",result="error"}`,
			`podidentity_sidecar_token_requests_total{backend="node",identity="apps/web",result="miss"} 1`,
			`podidentity_sidecar_upstream_fetches_total{backend="federated",identity="apps/fed-b",result="ok"}`,
			`podidentity_sidecar_upstream_fetches_total{backend="node",identity="apps/web",result="ok"}`,
		} {
			if !strings.Contains(string(b), m) {
				t.Errorf("metrics lack %s", m)
			}
		}
		var fedIssued, nodeIssued, fedFailed bool
		for _, l := range f.h.logs.all() {
			fedIssued = fedIssued || strings.Contains(l, `"token issued"`) && strings.Contains(l, `"identity":"apps/fed-a"`) && strings.Contains(l, `"backend":"federated"`)
			nodeIssued = nodeIssued || strings.Contains(l, `"token issued"`) && strings.Contains(l, `"identity":"apps/web"`) && strings.Contains(l, `"backend":"node"`)
			fedFailed = fedFailed || strings.Contains(l, `"token not issued"`) && strings.Contains(l, `"backend":"federated"`) && strings.Contains(l, "AADSTS70021")
		}
		if !fedIssued || !nodeIssued || !fedFailed {
			t.Errorf("audit lines (federated issued %v, node issued %v, federated refusal %v):\n%s", fedIssued, nodeIssued, fedFailed, strings.Join(f.h.logs.all(), "\n"))
		}
	})
}
