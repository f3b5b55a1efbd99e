// The pod annotation IdentitiesAnnotation (podidentity.io/identities): the identities a pod is bound to, as the
// webhook and the assigner record them and the pod's token sidecar reads them (through a downward-API file).

package contract

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/podidentity/podidentity/api/identitytype"
)

// Identity is one identity a pod may obtain tokens for, as recorded in the pod annotation
// podidentity.io/identities. It names credentials; it never carries a secret.
type Identity struct {
	// Name and Namespace of the AzureIdentity.
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
	// Type is the AzureIdentity's spec.type (0 user-assigned MI, 1 SP secret, 2 SP certificate).
	Type       identitytype.IdentityType `json:"type"`
	ClientID   string                    `json:"clientID,omitempty"`
	ResourceID string                    `json:"resourceID,omitempty"`
	// TenantID, AuxiliaryTenantIDs, ADEndpoint and ADResourceID are set for service principals.
	TenantID           string   `json:"tenantID,omitempty"`
	AuxiliaryTenantIDs []string `json:"auxiliaryTenantIDs,omitempty"`
	ADEndpoint         string   `json:"adEndpoint,omitempty"`
	ADResourceID       string   `json:"adResourceID,omitempty"`
	// SecretName names the Secret (in the pod's namespace) that a service principal's credential is mounted
	// from into the sidecar only. Empty for managed identities.
	SecretName string `json:"secretName,omitempty"`
	// Backend is "federated" for an identity whose tokens the sidecar obtains by workload identity federation
	// (exchanging the pod's projected service account token at Azure AD, tenant TenantID, authority ADEndpoint
	// or the sidecar's default); empty otherwise (the node's IMDS for type 0, the mounted secret for types 1
	// and 2). Annotations written before federation existed have no backend and keep their meaning.
	Backend string `json:"backend,omitempty"`
	// Binding is the AzureIdentityBinding (namespace/name) that bound the pod, and Weight its weight.
	Binding string `json:"binding"`
	Weight  int    `json:"weight,omitempty"`
}

// BackendFederated is the value of Identity.Backend for a federated identity.
const BackendFederated = "federated"

// Federated reports whether the identity's tokens come from workload identity federation.
func (id Identity) Federated() bool { return id.Backend == BackendFederated }

// EncodeIdentities renders identities as the value of IdentitiesAnnotation: a JSON list, stable for equal
// input, "[]" when empty.
func EncodeIdentities(ids []Identity) string {
	if ids == nil {
		ids = []Identity{}
	}
	b, err := json.Marshal(ids)
	if err != nil {
		panic(err) // only strings, ints and slices: cannot fail
	}
	return string(b)
}

// DecodeIdentities parses the value of IdentitiesAnnotation. An empty value means no identities.
func DecodeIdentities(s string) ([]Identity, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, nil
	}
	var ids []Identity
	if err := json.Unmarshal([]byte(s), &ids); err != nil {
		return nil, fmt.Errorf("annotation podidentity.io/identities is not a JSON list of identities: %w", err)
	}
	return ids, nil
}
