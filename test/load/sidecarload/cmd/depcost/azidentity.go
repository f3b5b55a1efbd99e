//go:build depcost_azidentity

package main

import (
	"os"

	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
)

// The sidecar links azidentity for service-principal identities and builds a credential only when one asks for
// a token: linked, not run at idle.
func init() {
	if os.Getenv("DEPCOST_RUN") == "azidentity" {
		_, _ = azidentity.NewClientSecretCredential("tenant", "client", "secret", nil)
	}
}
