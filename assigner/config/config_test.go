package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"

	"github.com/podidentity/podidentity/test/toolbox/pki"
)

func TestParseAzureJSON(t *testing.T) {
	c, err := ParseAzureJSON([]byte(`{"cloud":"AzurePublicCloud","tenantId":"t","subscriptionId":"s","aadClientId":"msi","aadClientSecret":"msi",
		"resourceGroup":"MC_rg","vmType":"vmss","useManagedIdentityExtension":true,"userAssignedIdentityID":"kubelet-client","unknownField":1}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.TenantID != "t" || c.SubscriptionID != "s" || !c.UseManagedIdentityExtension || c.UserAssignedIdentityID != "kubelet-client" || c.VMType != "vmss" || c.ResourceGroup != "MC_rg" {
		t.Fatalf("parsed %+v", c)
	}
	if _, err := ParseAzureJSON([]byte(`{`)); err == nil {
		t.Fatal("broken JSON accepted")
	}
	if _, err := LoadAzureJSON(filepath.Join(t.TempDir(), "missing.json")); err == nil || !strings.Contains(err.Error(), "azure.json") {
		t.Fatalf("missing file: %v", err)
	}
}

func TestResolveAuth(t *testing.T) {
	tests := []struct {
		name    string
		cfg     AzureJSON
		env     map[string]string
		want    Auth
		wantErr string
	}{
		{name: "AKS kubelet identity", cfg: AzureJSON{TenantID: "t", AADClientID: "msi", AADClientSecret: "msi", UseManagedIdentityExtension: true, UserAssignedIdentityID: "kid"},
			want: Auth{Method: ManagedIdentity, ClientID: "kid"}},
		{name: "system-assigned managed identity", cfg: AzureJSON{UseManagedIdentityExtension: true}, want: Auth{Method: ManagedIdentity}},
		{name: "service principal secret", cfg: AzureJSON{TenantID: "t", AADClientID: "app", AADClientSecret: "s3cret"},
			want: Auth{Method: ClientSecret, TenantID: "t", ClientID: "app", Secret: "s3cret"}},
		{name: "service principal certificate", cfg: AzureJSON{TenantID: "t", AADClientID: "app", AADClientCertPath: "/c.pfx", AADClientCertPassword: "pw"},
			want: Auth{Method: ClientCertificate, TenantID: "t", ClientID: "app", CertPath: "/c.pfx", CertPassword: "pw"}},
		{name: "workload identity from the environment wins", cfg: AzureJSON{UseManagedIdentityExtension: true},
			env:  map[string]string{"AZURE_FEDERATED_TOKEN_FILE": "/tok", "AZURE_CLIENT_ID": "wi", "AZURE_TENANT_ID": "t2"},
			want: Auth{Method: WorkloadIdentity, TenantID: "t2", ClientID: "wi", TokenFile: "/tok"}},
		{name: "secret from the environment", env: map[string]string{"AZURE_CLIENT_SECRET": "x", "AZURE_CLIENT_ID": "a", "AZURE_TENANT_ID": "t"},
			want: Auth{Method: ClientSecret, TenantID: "t", ClientID: "a", Secret: "x"}},
		{name: "nothing configured: node managed identity", want: Auth{Method: ManagedIdentity}},
		{name: "secret without tenant", cfg: AzureJSON{AADClientID: "app", AADClientSecret: "s"}, wantErr: "tenant id"},
		{name: "workload identity without client id", env: map[string]string{"AZURE_FEDERATED_TOKEN_FILE": "/tok", "AZURE_TENANT_ID": "t"}, wantErr: "client id"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ResolveAuth(tc.cfg, func(k string) string { return tc.env[k] })
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("ResolveAuth = %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}

func TestCredentialsBuild(t *testing.T) {
	dir := t.TempDir()
	sp := pki.SelfSigned(pki.Spec{CommonName: "assigner", RSA: true})
	certPath := filepath.Join(dir, "cert.pem")
	pemBytes := append(sp.CertPEM(), sp.PKCS8KeyPEM()...)
	if err := os.WriteFile(certPath, pemBytes, 0o600); err != nil {
		t.Fatal(err)
	}
	tokenPath := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenPath, []byte("jwt"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, a := range []Auth{
		{Method: ManagedIdentity, ClientID: "kid"},
		{Method: WorkloadIdentity, TenantID: "t", ClientID: "c", TokenFile: tokenPath},
		{Method: ClientSecret, TenantID: "t", ClientID: "c", Secret: "s"},
		{Method: ClientCertificate, TenantID: "t", ClientID: "c", CertPath: certPath},
	} {
		if cred, err := a.Credential(azcore.ClientOptions{}); err != nil || cred == nil {
			t.Errorf("%s: %v", a.Method, err)
		}
	}
	if _, err := (Auth{Method: ClientCertificate, TenantID: "t", ClientID: "c", CertPath: tokenPath}).Credential(azcore.ClientOptions{}); err == nil {
		t.Error("a file without a certificate was accepted")
	}
}

func TestCloud(t *testing.T) {
	tests := []struct {
		name, cloudName, arm, aud, authority string
		wantARM, wantAuthority               string
		wantErr                              bool
	}{
		{name: "default public", wantARM: cloud.AzurePublic.Services[cloud.ResourceManager].Endpoint, wantAuthority: cloud.AzurePublic.ActiveDirectoryAuthorityHost},
		{name: "china by AKS name", cloudName: "AzureChinaCloud", wantARM: cloud.AzureChina.Services[cloud.ResourceManager].Endpoint, wantAuthority: cloud.AzureChina.ActiveDirectoryAuthorityHost},
		{name: "us government", cloudName: "AzureUSGovernmentCloud", wantARM: cloud.AzureGovernment.Services[cloud.ResourceManager].Endpoint, wantAuthority: cloud.AzureGovernment.ActiveDirectoryAuthorityHost},
		{name: "custom endpoints", arm: "https://arm.stack.local/", aud: "https://management.stack.local/", authority: "https://login.stack.local/",
			wantARM: "https://arm.stack.local/", wantAuthority: "https://login.stack.local/"},
		{name: "unknown", cloudName: "AzureGermanCloud", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Cloud(tc.cloudName, tc.arm, tc.aud, tc.authority)
			if tc.wantErr {
				if err == nil {
					t.Fatal("accepted")
				}
				return
			}
			if err != nil || c.Services[cloud.ResourceManager].Endpoint != tc.wantARM || c.ActiveDirectoryAuthorityHost != tc.wantAuthority {
				t.Fatalf("Cloud = %+v, %v", c, err)
			}
			if !strings.HasSuffix(ResourceManagerScope(c), "/.default") {
				t.Fatalf("scope %q", ResourceManagerScope(c))
			}
		})
	}
}
