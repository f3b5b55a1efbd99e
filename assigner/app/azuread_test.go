package app

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"

	"github.com/podidentity/podidentity/assigner/azure"
	"github.com/podidentity/podidentity/assigner/config"
	"github.com/podidentity/podidentity/assigner/providerid"
	"github.com/podidentity/podidentity/test/emulators/arm"
	"github.com/podidentity/podidentity/test/emulators/imds"
)

const (
	secretAppID = "11111111-0000-4000-8000-000000000001"
	certAppID   = "22222222-0000-4000-8000-000000000002"
	appSecret   = "s3cret-of-the-assigner"
	testVM      = "/subscriptions/sub/resourceGroups/MC_rg/providers/Microsoft.Compute/virtualMachines/vm0"
	testUAMI    = "/subscriptions/sub/resourceGroups/identities/providers/Microsoft.ManagedIdentity/userAssignedIdentities/app"
)

// TestCredentialsAgainstEmulatedAzureAD builds the assigner's credentials the way it does at start-up
// (config.ResolveAuth from azure.json and the environment, config.Cloud from the custom-cloud flags, then
// auth.Credential) and uses them with the real azidentity and armcompute SDKs: the token must come from the
// emulated Azure AD (client secret or certificate assertion), and it must be what ARM receives.
func TestCredentialsAgainstEmulatedAzureAD(t *testing.T) {
	dir := t.TempDir()
	cert, certPath := newCertificate(t, dir, "assigner")
	_, strangerPath := newCertificate(t, dir, "stranger") // a key Azure AD does not know
	apps := []imds.App{
		{TenantID: fakeTenant, ClientID: secretAppID, Secret: appSecret},
		{TenantID: fakeTenant, ClientID: certAppID, Certificate: cert},
	}
	tests := []struct {
		name       string
		azureJSON  config.AzureJSON
		env        map[string]string
		wantMethod config.Method
		wantApp    string // client id ARM must see; empty: authentication must fail
		wantErr    string // in the token error
	}{
		{name: "client secret from azure.json",
			azureJSON:  config.AzureJSON{TenantID: fakeTenant, AADClientID: secretAppID, AADClientSecret: appSecret},
			wantMethod: config.ClientSecret, wantApp: secretAppID},
		{name: "client secret from the environment",
			env:        map[string]string{"AZURE_TENANT_ID": fakeTenant, "AZURE_CLIENT_ID": secretAppID, "AZURE_CLIENT_SECRET": appSecret},
			wantMethod: config.ClientSecret, wantApp: secretAppID},
		{name: "certificate from azure.json",
			azureJSON:  config.AzureJSON{TenantID: fakeTenant, AADClientID: certAppID, AADClientCertPath: certPath},
			wantMethod: config.ClientCertificate, wantApp: certAppID},
		{name: "certificate from the environment, tenant from azure.json",
			azureJSON:  config.AzureJSON{TenantID: fakeTenant, AADClientSecret: "msi"},
			env:        map[string]string{"AZURE_CLIENT_ID": certAppID, "AZURE_CLIENT_CERTIFICATE_PATH": certPath},
			wantMethod: config.ClientCertificate, wantApp: certAppID},
		{name: "wrong client secret",
			azureJSON:  config.AzureJSON{TenantID: fakeTenant, AADClientID: secretAppID, AADClientSecret: "guessed"},
			wantMethod: config.ClientSecret, wantErr: "AADSTS7000215"},
		{name: "certificate Azure AD does not know",
			azureJSON:  config.AzureJSON{TenantID: fakeTenant, AADClientID: certAppID, AADClientCertPath: strangerPath},
			wantMethod: config.ClientCertificate, wantErr: "AADSTS700027"},
		{name: "application of another tenant",
			azureJSON:  config.AzureJSON{TenantID: "other-tenant", AADClientID: secretAppID, AADClientSecret: appSecret},
			wantMethod: config.ClientSecret, wantErr: "AADSTS700016"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fc := newFakeCloud(t, arm.Options{Latency: 10 * time.Millisecond}, apps...)
			fc.ARM.AddVM(testVM, true)
			auth, err := config.ResolveAuth(tc.azureJSON, func(k string) string { return tc.env[k] })
			if err != nil {
				t.Fatal(err)
			}
			if auth.Method != tc.wantMethod {
				t.Fatalf("method %s, want %s", auth.Method, tc.wantMethod)
			}
			cloudCfg := fc.cloudConfig(t)
			cred, err := auth.Credential(policy.ClientOptions{Cloud: cloudCfg, Transport: fc.HTTPClient()})
			if err != nil {
				t.Fatal(err)
			}
			// The readiness check asks for the same token the ARM client will use.
			readyErr := CredentialCheck(cred, config.ResourceManagerScope(cloudCfg), time.Minute)(httptest.NewRequest(http.MethodGet, "/readyz", nil))
			armc := azure.NewARM(cred, azure.ARMOptions{Cloud: cloudCfg, Transport: fc.HTTPClient(), PollFrequency: 10 * time.Millisecond,
				Retry: policy.RetryOptions{MaxRetries: -1}})
			res, err := providerid.ParseResourceID(testVM)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			cur, getErr := armc.Get(ctx, res)
			if tc.wantApp == "" {
				for what, err := range map[string]error{"readiness": readyErr, "ARM read": getErr} {
					if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
						t.Errorf("%s: error %v, want one containing %s", what, err, tc.wantErr)
					}
				}
				if calls := fc.Calls(); len(calls) != 0 {
					t.Errorf("ARM accepted requests without a valid token: %+v", calls)
				}
				return
			}
			if readyErr != nil || getErr != nil {
				t.Fatalf("readiness: %v; ARM read: %v", readyErr, getErr)
			}
			plan := azure.Plan(cur, azure.Goal{Want: map[string]string{strings.ToLower(testUAMI): testUAMI}})
			if len(plan) != 1 {
				t.Fatalf("plan %+v, want one PATCH", plan)
			}
			if _, err := armc.Patch(ctx, res, plan[0]); err != nil {
				t.Fatal(err)
			}
			if system, users := fc.ARM.Identities(testVM); !system || len(users) != 1 || users[0] != testUAMI {
				t.Fatalf("VM identities: system=%v users=%v", system, users)
			}
			calls := fc.Calls()
			if len(calls) < 2 { // GET, PATCH (and the poller's GETs)
				t.Fatalf("ARM saw %d authorized requests, want at least a GET and a PATCH", len(calls))
			}
			for _, c := range calls {
				if c.AppID != tc.wantApp {
					t.Fatalf("ARM request %s %s carried a token of %s, want %s", c.Method, c.Path, c.AppID, tc.wantApp)
				}
			}
			// One token, cached by azidentity, served readiness and every ARM call.
			if n := fc.AAD.Tokens(tc.wantApp); n != 1 {
				t.Fatalf("Azure AD issued %d tokens to %s, want 1 (azidentity caches it)", n, tc.wantApp)
			}
		})
	}
}

// TestARMRejectsForeignTokens: the check above is not vacuous; ARM refuses the emulator's static token and
// a token of the right application issued for another audience.
func TestARMRejectsForeignTokens(t *testing.T) {
	fc := newFakeCloud(t, arm.Options{}, imds.App{TenantID: fakeTenant, ClientID: secretAppID, Secret: appSecret})
	fc.ARM.AddVM(testVM, false)
	res, err := providerid.ParseResourceID(testVM)
	if err != nil {
		t.Fatal(err)
	}
	vault, err := config.Cloud("", fc.ARM.URL(), "https://vault.emulator.test/", fc.AADURL()+"/")
	if err != nil {
		t.Fatal(err)
	}
	auth := config.Auth{Method: config.ClientSecret, TenantID: fakeTenant, ClientID: secretAppID, Secret: appSecret}
	vaultCred, err := auth.Credential(policy.ClientOptions{Cloud: vault, Transport: fc.HTTPClient()})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		cred azcore.TokenCredential
		opts azure.ARMOptions
	}{
		{name: "static emulator token", cred: arm.Credential{}, opts: azure.ARMOptions{Cloud: fc.cloudConfig(t)}},
		{name: "token for another audience", cred: vaultCred, opts: azure.ARMOptions{Cloud: vault}},
	}
	for _, tc := range tests {
		tc.opts.Transport, tc.opts.Retry = fc.HTTPClient(), policy.RetryOptions{MaxRetries: -1}
		_, err := azure.NewARM(tc.cred, tc.opts).Get(context.Background(), res)
		if err == nil || !strings.Contains(err.Error(), "InvalidAuthenticationToken") {
			t.Errorf("%s: error %v, want 401 InvalidAuthenticationToken", tc.name, err)
		}
	}
	if c := fc.ARM.Counts(); c.Reads != 0 {
		t.Errorf("ARM served %d reads to rejected tokens", c.Reads)
	}
}
