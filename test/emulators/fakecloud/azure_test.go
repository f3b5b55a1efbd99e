package fakecloud

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/podidentity/podidentity/test/emulators/imds"
)

// TestStartARMAcceptsOnlyItsAzureADsTokens: with ARMAudience, ARM answers a request only with a bearer token
// the emulated Azure AD issued for that audience in the tenant, and records the caller of each one it accepted.
func TestStartARMAcceptsOnlyItsAzureADsTokens(t *testing.T) {
	const (
		tenant   = "72f988bf-0000-4000-8000-00000000aaaa"
		audience = "https://management.emulator.test/"
		vm       = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm"
	)
	apps := []imds.App{{TenantID: tenant, OtherTenants: []string{"other-tenant"}, ClientID: "app-a", Secret: "a"}}
	az := Start(t, AzureOptions{TenantID: tenant, Apps: apps, ARMAudience: audience})
	az.ARM.AddVM(vm, true)
	client := az.HTTPClient()
	token := func(tenant, scope string) string {
		t.Helper()
		resp, err := client.PostForm(az.AADURL()+"/"+tenant+"/oauth2/v2.0/token", url.Values{"grant_type": {"client_credentials"},
			"client_id": {"app-a"}, "client_secret": {"a"}, "scope": {scope}})
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body struct {
			AccessToken string `json:"access_token"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || body.AccessToken == "" {
			t.Fatalf("token of app-a in %s for %s: status %d, %v", tenant, scope, resp.StatusCode, err)
		}
		return body.AccessToken
	}
	tests := []struct {
		name          string
		authorization string
		want          int
	}{
		{"no token", "", http.StatusUnauthorized},
		{"another audience", "Bearer " + token(tenant, "https://vault.emulator.test/.default"), http.StatusUnauthorized},
		{"another tenant", "Bearer " + token("other-tenant", audience+".default"), http.StatusUnauthorized},
		{"ARM's audience in the tenant", "Bearer " + token(tenant, audience+".default"), http.StatusOK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequest(http.MethodGet, az.ARM.URL()+vm+"?api-version=2024-07-01", nil)
			if err != nil {
				t.Fatal(err)
			}
			if tt.authorization != "" {
				req.Header.Set("Authorization", tt.authorization)
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tt.want {
				t.Errorf("status %d, want %d", resp.StatusCode, tt.want)
			}
		})
	}
	calls := az.Calls()
	if len(calls) != 1 || calls[0].Method != http.MethodGet || calls[0].AppID != "app-a" || !strings.EqualFold(calls[0].Path, vm) {
		t.Errorf("calls %+v, want the one accepted GET of %s by app-a", calls, vm)
	}
}
