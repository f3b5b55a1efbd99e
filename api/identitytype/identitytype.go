// Package identitytype defines AzureIdentity's spec.type values. It imports nothing from Kubernetes, so the
// token sidecar can name identity types without linking the API machinery (which costs it megabytes of
// memory); api/v1 re-exports it.
package identitytype

// IdentityType says how an AzureIdentity obtains tokens. The values are AAD Pod Identity's.
type IdentityType int

const (
	// UserAssignedMSI is a user-assigned managed identity: tokens come from the node's IMDS once the
	// assigner has attached the identity to the node's VM or scale set.
	UserAssignedMSI IdentityType = 0
	// ServicePrincipal is an Azure AD application with a client secret (spec.clientPassword).
	ServicePrincipal IdentityType = 1
	// ServicePrincipalCertificate is an Azure AD application with a certificate (spec.clientPassword names a
	// secret with the keys "certificate" and "password").
	ServicePrincipalCertificate IdentityType = 2
)

// String names the type as the documentation does.
func (t IdentityType) String() string {
	switch t {
	case UserAssignedMSI:
		return "UserAssignedMSI"
	case ServicePrincipal:
		return "ServicePrincipal"
	case ServicePrincipalCertificate:
		return "ServicePrincipalCertificate"
	}
	return "Unknown"
}
