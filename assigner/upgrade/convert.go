// Package upgrade rewrites AAD Pod Identity objects written before v1.6, whose spec and status fields were
// PascalCase (ClientID, Selector, ...), to the camelCase field names of aadpodidentity.k8s.io/v1 as served
// today, and records in a ConfigMap that it has done so, so that later starts skip the work.
package upgrade

import "k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

// Kind is one of the four AAD Pod Identity kinds the upgrade rewrites.
type Kind string

// The kinds, named as in the API.
const (
	AzureIdentity             Kind = "AzureIdentity"
	AzureIdentityBinding      Kind = "AzureIdentityBinding"
	AzureAssignedIdentity     Kind = "AzureAssignedIdentity"
	AzurePodIdentityException Kind = "AzurePodIdentityException"
)

// fieldNames maps, per kind, an old (pre-1.6) field name to today's, for spec and status.
type fieldNames struct{ spec, status map[string]string }

// renames is the table of every field whose JSON name changed in v1.6. Names that never changed
// (clientPassword's name/namespace, metadata) are absent. Note "nodename": today's JSON name is all lower case.
func renames(k Kind) (fieldNames, bool) {
	switch k {
	case AzureIdentity:
		return fieldNames{
			spec: map[string]string{"Type": "type", "ResourceID": "resourceID", "ClientID": "clientID",
				"ClientPassword": "clientPassword", "TenantID": "tenantID", "ADResourceID": "adResourceID",
				"ADEndpoint": "adEndpoint", "Replicas": "replicas"},
			status: map[string]string{"AvailableReplicas": "availableReplicas"},
		}, true
	case AzureIdentityBinding:
		return fieldNames{
			spec:   map[string]string{"AzureIdentity": "azureIdentity", "Selector": "selector", "Weight": "weight"},
			status: map[string]string{"AvailableReplicas": "availableReplicas"},
		}, true
	case AzureAssignedIdentity:
		return fieldNames{
			spec: map[string]string{"AzureIdentityRef": "azureIdentityRef", "AzureBindingRef": "azureBindingRef",
				"Pod": "pod", "PodNamespace": "podNamespace", "NodeName": "nodename", "Replicas": "replicas"},
			status: map[string]string{"Status": "status", "AvailableReplicas": "availableReplicas"},
		}, true
	case AzurePodIdentityException:
		return fieldNames{
			spec:   map[string]string{"PodLabels": "podLabels"},
			status: map[string]string{"Status": "status"},
		}, true
	}
	return fieldNames{}, false
}

// embedded names the kind of the objects an AzureAssignedIdentity embeds in its spec (copies of the identity
// and binding it was made from), whose own spec and status are upgraded too.
var embedded = map[string]Kind{"azureIdentityRef": AzureIdentity, "azureBindingRef": AzureIdentityBinding}

// Convert rewrites the PascalCase fields of obj's spec and status (and of the identity and binding an
// AzureAssignedIdentity embeds) to their camelCase names, in place. A camelCase field that is already set wins:
// its PascalCase twin is dropped, never copied over it, because a writer since v1.6 set the camelCase one.
// It reports whether anything changed; converting twice changes nothing the second time.
func Convert(k Kind, obj map[string]interface{}) bool {
	names, ok := renames(k)
	if !ok {
		return false
	}
	changed := false
	if spec, ok := obj["spec"].(map[string]interface{}); ok {
		changed = rename(spec, names.spec) || changed
		if k == AzureAssignedIdentity {
			for field, kind := range embedded {
				if ref, ok := spec[field].(map[string]interface{}); ok {
					changed = Convert(kind, ref) || changed
				}
			}
		}
	}
	if status, ok := obj["status"].(map[string]interface{}); ok {
		changed = rename(status, names.status) || changed
	}
	return changed
}

// ConvertObject is Convert on an unstructured object of its own kind.
func ConvertObject(u *unstructured.Unstructured) bool {
	return Convert(Kind(u.GetKind()), u.Object)
}

func rename(m map[string]interface{}, names map[string]string) bool {
	changed := false
	for old, current := range names {
		v, ok := m[old]
		if !ok {
			continue
		}
		delete(m, old)
		changed = true
		if _, set := m[current]; !set {
			m[current] = v
		}
	}
	return changed
}
