package imds_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/golang-jwt/jwt/v5"

	"github.com/podidentity/podidentity/test/emulators/imds"
	"github.com/podidentity/podidentity/test/toolbox/jwttest"
	"github.com/podidentity/podidentity/test/toolbox/testenv"
)

const (
	fedTenant = "72f988bf-0000-0000-0000-000000000001"
	fedClient = "cccccccc-0000-0000-0000-00000000fed1"
)

type federationFixture struct {
	issuer *testenv.Issuer
	aad    *imds.AAD
	srv    *httptest.Server
	now    func() time.Time
	mu     sync.Mutex
	skew   time.Duration
}

// newFederation starts a real API server as the issuer and the emulated Azure AD over TLS with one app whose
// federated credential trusts service account apps/api.
func newFederation(t *testing.T) *federationFixture {
	f := &federationFixture{issuer: testenv.StartIssuer(t)}
	f.now = func() time.Time { f.mu.Lock(); defer f.mu.Unlock(); return time.Now().Add(f.skew) }
	f.aad = imds.NewAAD(time.Hour, imds.App{TenantID: fedTenant, ClientID: fedClient, ObjectID: "oid-fed",
		Federated: []imds.FederatedCredential{{Name: "api", Issuer: f.issuer.URL, Subject: testenv.Subject("apps", "api")}}})
	f.aad.Federation(f.issuer.Anonymous, f.now)
	f.srv = httptest.NewTLSServer(f.aad)
	t.Cleanup(f.srv.Close)
	return f
}

// exchange posts a client-credentials grant with the assertion, as azidentity does, and returns the status and
// the decoded body.
func (f *federationFixture) exchange(t *testing.T, assertion string) (int, map[string]any) {
	t.Helper()
	form := url.Values{"grant_type": {"client_credentials"}, "client_id": {fedClient}, "scope": {"https://vault.azure.net/.default"},
		"client_assertion_type": {imds.ClientAssertionTypeJWT}, "client_assertion": {assertion}}
	resp, err := f.srv.Client().PostForm(f.srv.URL+"/"+fedTenant+"/oauth2/v2.0/token", form)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, body
}

func wantRefusal(t *testing.T, status int, body map[string]any, wantStatus int, wantCode, wantText string) {
	t.Helper()
	desc, _ := body["error_description"].(string)
	if status != wantStatus || body["error"] != wantCode || !strings.HasPrefix(desc, wantText) {
		t.Fatalf("answer %d %v, want %d %s %q...", status, body, wantStatus, wantCode, wantText)
	}
}

func TestFederatedExchangeAgainstAPIServer(t *testing.T) {
	f := newFederation(t)
	good := f.issuer.Token(t, "apps", "api", imds.FederationAudience, 3600)

	t.Run("good token", func(t *testing.T) {
		status, body := f.exchange(t, good)
		if status != http.StatusOK {
			t.Fatalf("answer %d %v", status, body)
		}
		claims := jwttest.Claims(t, body["access_token"].(string))
		if claims["appid"] != fedClient || claims["tid"] != fedTenant || claims["aud"] != "https://vault.azure.net" {
			t.Errorf("claims %v", claims)
		}
		// Azure AD accepts the same assertion again while it is valid (the SDKs re-read one token file).
		if status, body := f.exchange(t, good); status != http.StatusOK {
			t.Fatalf("second use: %d %v", status, body)
		}
		if n := f.aad.Exchanges(fedClient); n != 2 {
			t.Errorf("exchanges = %d, want 2", n)
		}
	})
	t.Run("wrong subject", func(t *testing.T) {
		other := f.issuer.Token(t, "apps", "intruder", imds.FederationAudience, 3600)
		status, body := f.exchange(t, other)
		wantRefusal(t, status, body, http.StatusBadRequest, "invalid_request", "AADSTS70021: No matching federated identity record found for presented assertion. Assertion Issuer: '"+f.issuer.URL+"'. Assertion Subject: 'system:serviceaccount:apps:intruder'.")
	})
	t.Run("wrong audience", func(t *testing.T) {
		tok := f.issuer.Token(t, "apps", "api", "api://something-else", 3600)
		status, body := f.exchange(t, tok)
		wantRefusal(t, status, body, http.StatusBadRequest, "invalid_client", "AADSTS700212: No matching federated identity record found for presented assertion audience 'api://something-else'.")
	})
	t.Run("the API server's own audience", func(t *testing.T) {
		// A token for the API server (as the legacy service account token volume carries) is not a federation token.
		tok := f.issuer.Token(t, "apps", "api", f.issuer.URL, 3600)
		status, body := f.exchange(t, tok)
		wantRefusal(t, status, body, http.StatusBadRequest, "invalid_client", "AADSTS700212:")
	})
	t.Run("expired token", func(t *testing.T) {
		tok := f.issuer.Token(t, "apps", "api", imds.FederationAudience, 600)
		f.mu.Lock()
		f.skew = 11 * time.Minute
		f.mu.Unlock()
		defer func() { f.mu.Lock(); f.skew = 0; f.mu.Unlock() }()
		status, body := f.exchange(t, tok)
		wantRefusal(t, status, body, http.StatusUnauthorized, "invalid_client", "AADSTS700024: Client assertion is not within its valid time range.")
	})
	t.Run("forged signature", func(t *testing.T) {
		var claims jwt.MapClaims
		parsed, _, err := jwt.NewParser().ParseUnverified(good, &claims)
		if err != nil {
			t.Fatal(err)
		}
		key, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			t.Fatal(err)
		}
		forged := jwt.NewWithClaims(jwt.SigningMethodRS256, claims)
		forged.Header["kid"] = parsed.Header["kid"]
		raw, err := forged.SignedString(key)
		if err != nil {
			t.Fatal(err)
		}
		status, body := f.exchange(t, raw)
		wantRefusal(t, status, body, http.StatusUnauthorized, "invalid_client", "AADSTS700027: Client assertion failed signature validation")
	})
	t.Run("issuer the app does not trust", func(t *testing.T) {
		claims := jwt.MapClaims{"iss": "https://attacker.example/", "sub": testenv.Subject("apps", "api"), "aud": imds.FederationAudience,
			"exp": time.Now().Add(time.Hour).Unix()}
		key, _ := rsa.GenerateKey(rand.Reader, 2048)
		raw, _ := jwt.NewWithClaims(jwt.SigningMethodRS256, claims).SignedString(key)
		status, body := f.exchange(t, raw)
		wantRefusal(t, status, body, http.StatusBadRequest, "invalid_client", "AADSTS700211: No matching federated identity record found for presented assertion issuer 'https://attacker.example/'")
	})
	t.Run("replay refused in strict mode", func(t *testing.T) {
		f.aad.RefuseReplays(true)
		defer f.aad.RefuseReplays(false)
		fresh := f.issuer.Token(t, "apps", "api", imds.FederationAudience, 3600)
		if status, body := f.exchange(t, fresh); status != http.StatusOK {
			t.Fatalf("first use: %d %v", status, body)
		}
		status, body := f.exchange(t, fresh)
		wantRefusal(t, status, body, http.StatusBadRequest, "invalid_client", "AADSTS50027: JWT token is invalid or malformed: the assertion with jti")
	})
}

// TestClientAssertionCredentialRotatedFile is the exchange as the sidecar makes it: azidentity's
// ClientAssertionCredential reading the projected token file on every request. The kubelet's rotation is a
// new file; with one-time assertions a credential that kept the old token would be refused.
func TestClientAssertionCredentialRotatedFile(t *testing.T) {
	f := newFederation(t)
	f.aad.RefuseReplays(true)
	file := filepath.Join(t.TempDir(), "token")
	write := func(tok string) {
		if err := os.WriteFile(file, []byte(tok), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(f.issuer.Token(t, "apps", "api", imds.FederationAudience, 3600))
	cred, err := azidentity.NewClientAssertionCredential(fedTenant, fedClient, func(context.Context) (string, error) {
		b, err := os.ReadFile(file)
		return string(b), err
	}, &azidentity.ClientAssertionCredentialOptions{DisableInstanceDiscovery: true,
		ClientOptions: azcore.ClientOptions{Cloud: cloud.Configuration{ActiveDirectoryAuthorityHost: f.srv.URL + "/"}, Transport: f.srv.Client(),
			Retry: policy.RetryOptions{MaxRetries: -1}}})
	if err != nil {
		t.Fatal(err)
	}
	get := func(scope string) error {
		_, err := cred.GetToken(context.Background(), policy.TokenRequestOptions{Scopes: []string{scope}})
		return err
	}
	if err := get("https://vault.azure.net/.default"); err != nil {
		t.Fatal(err)
	}
	if err := get("https://storage.azure.com/.default"); err == nil || !strings.Contains(err.Error(), "already used") {
		t.Fatalf("the same token twice in strict mode: %v, want the replay refusal", err)
	}
	write(f.issuer.Token(t, "apps", "api", imds.FederationAudience, 3600)) // the kubelet rotated it
	if err := get("https://storage.azure.com/.default"); err != nil {
		t.Fatalf("after rotation: %v (the credential must read the file again)", err)
	}
	if n := f.aad.Exchanges(fedClient); n != 2 {
		t.Errorf("exchanges = %d, want 2", n)
	}
	write(f.issuer.Token(t, "apps", "intruder", imds.FederationAudience, 3600))
	err = get("https://management.azure.com/.default")
	if err == nil || !strings.Contains(err.Error(), "AADSTS70021") {
		t.Fatalf("another service account's token: %v, want AADSTS70021", err)
	}
}
