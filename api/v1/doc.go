// Package v1 holds the aadpodidentity.k8s.io/v1 API: the four custom resources of AAD Pod Identity, kept
// field for field (v1.6+ camelCase JSON names) so that manifests written for AAD Pod Identity apply unchanged.
//
// Compatibility rule: the generated schemas never reject a manifest that AAD Pod Identity v1.8's CRDs
// accepted. Checks that would (the identity type's range, a resource ID's shape) are left to the components,
// which report them as Events and errors instead.
//
// +kubebuilder:object:generate=true
// +groupName=aadpodidentity.k8s.io
package v1
