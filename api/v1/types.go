package v1

import (
	"github.com/podidentity/podidentity/api/identitytype"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// IdentityType says how an AzureIdentity obtains tokens: 0 user-assigned managed identity, 1 service principal
// with a secret, 2 service principal with a certificate (defined in api/identitytype, which has no Kubernetes
// dependencies).
type IdentityType = identitytype.IdentityType

// The identity types.
const (
	UserAssignedMSI             = identitytype.UserAssignedMSI
	ServicePrincipal            = identitytype.ServicePrincipal
	ServicePrincipalCertificate = identitytype.ServicePrincipalCertificate
)

// Well-known labels, annotations and values shared with AAD Pod Identity.
const (
	// PodLabelBinding is the pod label whose value is matched against AzureIdentityBinding.spec.selector.
	PodLabelBinding = "aadpodidbinding"
	// BehaviorAnnotation on an AzureIdentity with the value BehaviorNamespaced restricts it to pods of its
	// own namespace.
	BehaviorAnnotation = "aadpodidentity.k8s.io/Behavior"
	// BehaviorNamespaced is the value of BehaviorAnnotation that makes an identity namespaced.
	BehaviorNamespaced = "namespaced"
)

// podidentity's own annotations on the AAD Pod Identity objects. Both are optional and unknown to AAD Pod
// Identity: an object without them behaves exactly as before, so every existing manifest keeps its meaning.
const (
	// BackendAnnotation on an AzureIdentity chooses how the pod's token sidecar obtains its tokens. Absent (or
	// BackendNode) is the behaviour of AAD Pod Identity: a type 0 identity is attached to the node by the
	// assigner and its tokens come from the node's IMDS; a type 1 or 2 service principal authenticates with its
	// mounted secret. BackendFederated is workload identity federation: the sidecar exchanges the pod's
	// projected service account token at Azure AD (spec.tenantID, authority spec.adEndpoint or the sidecar's
	// --aad-authority-host) for spec.clientID's token; nothing is attached to a node and no secret is mounted.
	BackendAnnotation = "podidentity.io/backend"
	// BackendNode and BackendFederated are the values of BackendAnnotation.
	BackendNode      = "node"
	BackendFederated = "federated"
	// ServiceAccountsAnnotation on an AzureIdentityBinding narrows it to pods that run as one of the listed
	// service accounts, comma-separated, each "<namespace>/<name>" or "<name>" (a service account of the
	// binding's namespace). The pod must still carry the aadpodidbinding label of spec.selector: both must
	// match. Absent, the binding selects by the label alone, as in AAD Pod Identity.
	ServiceAccountsAnnotation = "podidentity.io/service-accounts"
)

// Values of AzureAssignedIdentityStatus.Status.
const (
	AssignedIDCreated    = "Created"
	AssignedIDAssigned   = "Assigned"
	AssignedIDUnassigned = "Unassigned"
)

// LegacyMetadata is accepted where AAD Pod Identity's schema had a "metadata" object inside a spec or status
// (an artifact of its Go types). It exists only so that strict field validation does not reject manifests
// that carry it; its contents are stored as given and never read.
type LegacyMetadata = runtime.RawExtension

// AzureIdentity is an Azure identity that pods may be bound to: a user-assigned managed identity or a
// service principal.
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:path=azureidentities,singular=azureidentity,scope=Namespaced,categories=podidentity
// +kubebuilder:metadata:annotations="api-approved.kubernetes.io=unapproved, kept from AAD Pod Identity for compatibility"
// +kubebuilder:printcolumn:name="Type",type=integer,JSONPath=".spec.type",description="0 user-assigned MI, 1 SP secret, 2 SP certificate"
// +kubebuilder:printcolumn:name="ClientID",type=string,JSONPath=".spec.clientID"
// +kubebuilder:printcolumn:name="ResourceID",type=string,JSONPath=".spec.resourceID",priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=".metadata.creationTimestamp"
type AzureIdentity struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   AzureIdentitySpec   `json:"spec,omitempty"`
	Status AzureIdentityStatus `json:"status,omitempty"`
}

// AzureIdentitySpec describes the identity's credentials in Azure.
type AzureIdentitySpec struct {
	// Metadata is accepted for compatibility and ignored.
	// +optional
	Metadata *LegacyMetadata `json:"metadata,omitempty"`
	// Type is 0 (user-assigned managed identity), 1 (service principal with a secret) or 2 (service
	// principal with a certificate).
	// +optional
	Type IdentityType `json:"type"`
	// ResourceID is the ARM resource ID of a user-assigned managed identity (type 0), e.g.
	// /subscriptions/<sub>/resourcegroups/<rg>/providers/Microsoft.ManagedIdentity/userAssignedIdentities/<name>.
	// +optional
	ResourceID string `json:"resourceID,omitempty"`
	// ClientID is the client (application) ID of the managed identity or service principal.
	// +optional
	ClientID string `json:"clientID,omitempty"`
	// ClientPassword references the secret of a service principal (types 1 and 2).
	// +optional
	ClientPassword corev1.SecretReference `json:"clientPassword,omitempty"`
	// TenantID is the service principal's home tenant.
	// +optional
	TenantID string `json:"tenantID,omitempty"`
	// AuxiliaryTenantIDs are further tenants a service principal gets tokens for.
	// +optional
	// +nullable
	AuxiliaryTenantIDs []string `json:"auxiliaryTenantIDs,omitempty"`
	// ADResourceID is the resource a service principal's token is requested for by default.
	// +optional
	ADResourceID string `json:"adResourceID,omitempty"`
	// ADEndpoint overrides the Azure AD authority host for a service principal.
	// +optional
	ADEndpoint string `json:"adEndpoint,omitempty"`
	// Replicas is kept for compatibility; unused.
	// +optional
	// +nullable
	Replicas *int32 `json:"replicas,omitempty"`
}

// AzureIdentityStatus is kept for compatibility.
type AzureIdentityStatus struct {
	// Metadata is accepted for compatibility and ignored.
	// +optional
	Metadata *LegacyMetadata `json:"metadata,omitempty"`
	// +optional
	AvailableReplicas int32 `json:"availableReplicas"`
}

// AzureIdentityList is a list of AzureIdentity.
//
// +kubebuilder:object:root=true
type AzureIdentityList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []AzureIdentity `json:"items"`
}

// AzureIdentityBinding binds an AzureIdentity to the pods whose label aadpodidbinding equals its selector.
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:path=azureidentitybindings,singular=azureidentitybinding,scope=Namespaced,categories=podidentity
// +kubebuilder:metadata:annotations="api-approved.kubernetes.io=unapproved, kept from AAD Pod Identity for compatibility"
// +kubebuilder:printcolumn:name="AzureIdentity",type=string,JSONPath=".spec.azureIdentity"
// +kubebuilder:printcolumn:name="Selector",type=string,JSONPath=".spec.selector"
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=".metadata.creationTimestamp"
type AzureIdentityBinding struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   AzureIdentityBindingSpec   `json:"spec,omitempty"`
	Status AzureIdentityBindingStatus `json:"status,omitempty"`
}

// AzureIdentityBindingSpec names the identity and the pod label value that selects pods.
type AzureIdentityBindingSpec struct {
	// Metadata is accepted for compatibility and ignored.
	// +optional
	Metadata *LegacyMetadata `json:"metadata,omitempty"`
	// AzureIdentity is the name of an AzureIdentity in the binding's namespace.
	// +optional
	AzureIdentity string `json:"azureIdentity"`
	// Selector is matched against the value of the pod label aadpodidbinding.
	// +optional
	Selector string `json:"selector"`
	// Weight orders identities when a pod is bound to several: higher first.
	// +optional
	Weight int `json:"weight"`
}

// AzureIdentityBindingStatus is kept for compatibility.
type AzureIdentityBindingStatus struct {
	// Metadata is accepted for compatibility and ignored.
	// +optional
	Metadata *LegacyMetadata `json:"metadata,omitempty"`
	// +optional
	AvailableReplicas int32 `json:"availableReplicas"`
}

// AzureIdentityBindingList is a list of AzureIdentityBinding.
//
// +kubebuilder:object:root=true
type AzureIdentityBindingList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []AzureIdentityBinding `json:"items"`
}

// AzureAssignedIdentity records that an identity is assigned to the node of one pod through one binding.
// The assigner owns these objects.
//
// There is deliberately no status subresource: AAD Pod Identity's controller writes status through the main
// resource, and both must be able to run side by side during a migration.
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:path=azureassignedidentities,singular=azureassignedidentity,scope=Namespaced,categories=podidentity
// +kubebuilder:metadata:annotations="api-approved.kubernetes.io=unapproved, kept from AAD Pod Identity for compatibility"
// +kubebuilder:printcolumn:name="Pod",type=string,JSONPath=".spec.pod"
// +kubebuilder:printcolumn:name="PodNamespace",type=string,JSONPath=".spec.podNamespace"
// +kubebuilder:printcolumn:name="Node",type=string,JSONPath=".spec.nodename"
// +kubebuilder:printcolumn:name="Identity",type=string,JSONPath=".spec.azureIdentityRef.metadata.name"
// +kubebuilder:printcolumn:name="Status",type=string,JSONPath=".status.status"
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=".metadata.creationTimestamp"
type AzureAssignedIdentity struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   AzureAssignedIdentitySpec   `json:"spec,omitempty"`
	Status AzureAssignedIdentityStatus `json:"status,omitempty"`
}

// AzureAssignedIdentitySpec names the identity, binding, pod and node of one assignment.
type AzureAssignedIdentitySpec struct {
	// Metadata is accepted for compatibility and ignored.
	// +optional
	Metadata *LegacyMetadata `json:"metadata,omitempty"`
	// AzureIdentityRef is a copy of the AzureIdentity the pod is bound to.
	// +optional
	// +kubebuilder:validation:EmbeddedResource
	AzureIdentityRef *AzureIdentity `json:"azureIdentityRef,omitempty"`
	// AzureBindingRef is a copy of the AzureIdentityBinding that bound the pod.
	// +optional
	// +kubebuilder:validation:EmbeddedResource
	AzureBindingRef *AzureIdentityBinding `json:"azureBindingRef,omitempty"`
	// Pod is the name of the pod.
	// +optional
	Pod string `json:"pod,omitempty"`
	// PodNamespace is the namespace of the pod.
	// +optional
	PodNamespace string `json:"podNamespace,omitempty"`
	// NodeName is the node the pod runs on.
	// +optional
	NodeName string `json:"nodename,omitempty"`
	// Replicas is kept for compatibility; unused.
	// +optional
	// +nullable
	Replicas *int32 `json:"replicas,omitempty"`
}

// AzureAssignedIdentityStatus says how far the assignment has come.
type AzureAssignedIdentityStatus struct {
	// Metadata is accepted for compatibility and ignored.
	// +optional
	Metadata *LegacyMetadata `json:"metadata,omitempty"`
	// Status is Created, Assigned or Unassigned.
	// +optional
	Status string `json:"status,omitempty"`
	// +optional
	AvailableReplicas int32 `json:"availableReplicas"`
}

// AzureAssignedIdentityList is a list of AzureAssignedIdentity.
//
// +kubebuilder:object:root=true
type AzureAssignedIdentityList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []AzureAssignedIdentity `json:"items"`
}

// AzurePodIdentityException exempts pods of its namespace that carry any one of its labels: they are not
// injected and are not given identities.
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:path=azurepodidentityexceptions,singular=azurepodidentityexception,scope=Namespaced,categories=podidentity
// +kubebuilder:metadata:annotations="api-approved.kubernetes.io=unapproved, kept from AAD Pod Identity for compatibility"
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=".metadata.creationTimestamp"
type AzurePodIdentityException struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   AzurePodIdentityExceptionSpec   `json:"spec,omitempty"`
	Status AzurePodIdentityExceptionStatus `json:"status,omitempty"`
}

// AzurePodIdentityExceptionSpec lists the pod labels that exempt a pod.
type AzurePodIdentityExceptionSpec struct {
	// Metadata is accepted for compatibility and ignored.
	// +optional
	Metadata *LegacyMetadata `json:"metadata,omitempty"`
	// PodLabels: a pod with any one of these labels (key and value) is exempt.
	// +optional
	PodLabels map[string]string `json:"podLabels,omitempty"`
}

// AzurePodIdentityExceptionStatus is kept for compatibility.
type AzurePodIdentityExceptionStatus struct {
	// Metadata is accepted for compatibility and ignored.
	// +optional
	Metadata *LegacyMetadata `json:"metadata,omitempty"`
	// +optional
	Status string `json:"status,omitempty"`
}

// AzurePodIdentityExceptionList is a list of AzurePodIdentityException.
//
// +kubebuilder:object:root=true
type AzurePodIdentityExceptionList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []AzurePodIdentityException `json:"items"`
}
