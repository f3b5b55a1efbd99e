package config

import (
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
)

// TestCustomAuthority: instance discovery is skipped exactly for authorities that are not a public or
// sovereign cloud's (the end-to-end proof is assigner/app's TestCredentialsAgainstEmulatedAzureAD, which
// cannot authenticate against an emulated Azure AD without it).
func TestCustomAuthority(t *testing.T) {
	tests := []struct {
		host string
		want bool
	}{
		{"", false},
		{cloud.AzurePublic.ActiveDirectoryAuthorityHost, false},
		{"https://LOGIN.microsoftonline.com", false},
		{cloud.AzureChina.ActiveDirectoryAuthorityHost, false},
		{cloud.AzureGovernment.ActiveDirectoryAuthorityHost, false},
		{"https://login.contoso-stack.local/", true},
		{"https://127.0.0.1:8443/", true},
	}
	for _, tc := range tests {
		if got := customAuthority(cloud.Configuration{ActiveDirectoryAuthorityHost: tc.host}); got != tc.want {
			t.Errorf("customAuthority(%q) = %v, want %v", tc.host, got, tc.want)
		}
	}
	c, err := Cloud("", "https://arm.contoso-stack.local", "", "https://login.contoso-stack.local/")
	if err != nil {
		t.Fatal(err)
	}
	if !customAuthority(c) {
		t.Error("a custom cloud from --arm-endpoint and --aad-authority is not treated as custom")
	}
	if pub, _ := Cloud("AzurePublicCloud", "", "", ""); customAuthority(pub) {
		t.Error("the public cloud is treated as custom")
	}
}
