// Package desired computes, from Kubernetes objects alone, what the assigner wants to exist: one
// AzureAssignedIdentity per (pod, identity) and, per VM or scale set, the user-assigned identities its pods
// need. It is pure: objects in, decision out; nothing here talks to Kubernetes or Azure.
package desired

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/assigner/providerid"
	"github.com/podidentity/podidentity/internal/binding"
)

// Input is a snapshot of the objects that decide assignments. Pods and Nodes may be a subset (for example
// the nodes of one scale set and the pods on them); bindings, identities and exceptions must be complete.
type Input struct {
	Pods       []corev1.Pod
	Nodes      []corev1.Node
	Bindings   []aadv1.AzureIdentityBinding
	Identities []aadv1.AzureIdentity
	Exceptions []aadv1.AzurePodIdentityException
	Options    binding.Options
	// Pool, when set (guard mode), keeps user-assigned identities off every VM or scale set that is not made
	// only of pool nodes; Nodes must then hold every node of the resources concerned.
	Pool *Pool
	// NamespaceLabels are the labels of the pods' namespaces, by namespace name. A pod whose namespace is
	// missing counts as not injected: a cache that has not seen the namespace yet must not attach identities
	// (the caller reconsiders the pod when the namespace shows up).
	NamespaceLabels map[string]map[string]string
	// Injection: which bound pods get attachments (by default only those the webhook injected).
	Injection Injection
	// FederatedOnly (--federated-only): the assigner has no Azure credentials and attaches nothing; a node
	// identity (type 0 without podidentity.io/backend: federated) bound to a pod gets no assignment and is
	// listed in State.NotAttached instead, with what to do.
	FederatedOnly bool
}

// Assignment is one desired AzureAssignedIdentity.
type Assignment struct {
	// Name and Namespace of the AzureAssignedIdentity: AAD Pod Identity's <pod>-<podNamespace>-<identity>,
	// in the identity's namespace.
	Name, Namespace   string
	Pod, PodNamespace string
	NodeName          string
	Identity          *aadv1.AzureIdentity
	Binding           *aadv1.AzureIdentityBinding
	// Resource is the VM or scale set of the pod's node.
	Resource providerid.Resource
	// NeedsARM is true for user-assigned managed identities (type 0), which must be attached to Resource;
	// service principals need nothing in Azure.
	NeedsARM bool
}

// Key is namespace/name of the AzureAssignedIdentity.
func (a Assignment) Key() string { return a.Namespace + "/" + a.Name }

// IdentityKey is the case-folded resource id of the identity (empty for service principals).
func (a Assignment) IdentityKey() string {
	if !a.NeedsARM {
		return ""
	}
	return strings.ToLower(a.Identity.Spec.ResourceID)
}

// ResourceIdentities is the set of user-assigned identities one VM or scale set needs.
type ResourceIdentities struct {
	Resource providerid.Resource
	// IDs maps the case-folded identity resource id to its spelling in the AzureIdentity.
	IDs map[string]string
}

// Skipped records a pod that needs identities but cannot get them yet, and why.
type Skipped struct {
	Pod    string
	Reason string
}

// State is the desired state computed from an Input.
type State struct {
	// Assignments by Key().
	Assignments map[string]Assignment
	// Resources by providerid.Resource.Key(); every resource with at least one desired identity is present.
	Resources map[string]*ResourceIdentities
	Skipped   []Skipped
	// Refused lists pods whose user-assigned identities guard mode keeps off their node, with what to do.
	Refused []Skipped
	// Uninjected lists bound pods that get no assignment at all because the webhook did not inject them
	// (empty with Injection.AttachUninjected).
	Uninjected []Uninjected
	// NotAttached lists, with FederatedOnly, pods bound to node identities that are not attached, with what to
	// do. Federated identities never appear anywhere in State: they are not attached to nodes and get no
	// AzureAssignedIdentity (an object that would say "Assigned" for something that is on no node).
	NotAttached []Skipped
}

// NeedsIdentities reports whether the pod is one the assigner acts for: scheduled, still running or about
// to, and labelled aadpodidbinding. Exceptions are checked separately.
func NeedsIdentities(pod *corev1.Pod) bool {
	if pod.Spec.NodeName == "" || binding.Selector(pod) == "" {
		return false
	}
	return pod.Status.Phase != corev1.PodSucceeded && pod.Status.Phase != corev1.PodFailed
}

// Compute derives the desired state.
func Compute(in Input) State {
	st := State{Assignments: map[string]Assignment{}, Resources: map[string]*ResourceIdentities{}}
	nodes := make(map[string]*corev1.Node, len(in.Nodes))
	for i := range in.Nodes {
		nodes[in.Nodes[i].Name] = &in.Nodes[i]
	}
	identities := map[string]*aadv1.AzureIdentity{}
	for i := range in.Identities {
		identities[in.Identities[i].Namespace+"/"+in.Identities[i].Name] = &in.Identities[i]
	}
	outside := outsidePool(in.Pool, nodes, func(n *corev1.Node) string {
		r, err := providerid.Parse(n.Spec.ProviderID)
		if err != nil {
			return ""
		}
		return r.Key()
	})
	bindings := map[string]*aadv1.AzureIdentityBinding{}
	for i := range in.Bindings {
		bindings[in.Bindings[i].Namespace+"/"+in.Bindings[i].Name] = &in.Bindings[i]
	}
	for i := range in.Pods {
		pod := &in.Pods[i]
		ids := bound(pod, &in)
		if len(ids) == 0 {
			continue
		}
		if u, ok := uninjected(pod, ids, &in); ok {
			// No AzureAssignedIdentity either, service principals included: the assigner acts only for
			// pods the webhook isolated (an existing object is marked Unassigned like any unwanted one).
			st.Uninjected = append(st.Uninjected, u)
			continue
		}
		node, ok := nodes[pod.Spec.NodeName]
		if !ok {
			st.Skipped = append(st.Skipped, Skipped{pod.Namespace + "/" + pod.Name, "node " + pod.Spec.NodeName + " not found"})
			continue
		}
		res, err := providerid.Parse(node.Spec.ProviderID)
		if err != nil {
			st.Skipped = append(st.Skipped, Skipped{pod.Namespace + "/" + pod.Name, "node " + node.Name + ": " + err.Error()})
			continue
		}
		outsider := outside[res.Key()]
		var refused, notAttached []string
		for _, id := range ids {
			if id.Federated() {
				// Served by the pod's sidecar through workload identity federation: nothing on the node, nothing to
				// record (the pod's identities annotation says which identities it is served).
				continue
			}
			azID := identities[id.Namespace+"/"+id.Name]
			b := bindings[id.Binding]
			if azID == nil || b == nil {
				continue // Resolve only returns identities and bindings from the input
			}
			if in.FederatedOnly && azID.Spec.Type == aadv1.UserAssignedMSI {
				notAttached = append(notAttached, azID.Namespace+"/"+azID.Name)
				continue
			}
			if outsider != "" && azID.Spec.Type == aadv1.UserAssignedMSI {
				// Service principals are not attached to the node, so guard mode leaves them alone.
				refused = append(refused, azID.Namespace+"/"+azID.Name)
				continue
			}
			a := Assignment{
				Name:      AssignedIdentityName(pod.Name, pod.Namespace, azID.Name),
				Namespace: azID.Namespace,
				Pod:       pod.Name, PodNamespace: pod.Namespace, NodeName: node.Name,
				Identity: azID, Binding: b, Resource: res,
				NeedsARM: azID.Spec.Type == aadv1.UserAssignedMSI,
			}
			st.Assignments[a.Key()] = a
			if !a.NeedsARM {
				continue
			}
			r := st.Resources[res.Key()]
			if r == nil {
				r = &ResourceIdentities{Resource: res, IDs: map[string]string{}}
				st.Resources[res.Key()] = r
			}
			r.IDs[a.IdentityKey()] = azID.Spec.ResourceID
		}
		if len(refused) > 0 {
			st.Refused = append(st.Refused, Skipped{pod.Namespace + "/" + pod.Name, refusal(*in.Pool, node.Name, outsider, res.ID(), refused)})
		}
		if len(notAttached) > 0 {
			st.NotAttached = append(st.NotAttached, Skipped{pod.Namespace + "/" + pod.Name, fmt.Sprintf(
				"node identities %s are not attached: the assigner runs with --federated-only (no Azure credentials, no ARM writes); "+
					"annotate each AzureIdentity %s: %s (with spec.tenantID and a federated credential for the pod's service account) and recreate the pod, "+
					"or run the assigner with Azure credentials (chart: assigner.federatedOnly=false)",
				strings.Join(notAttached, ", "), aadv1.BackendAnnotation, aadv1.BackendFederated)})
		}
	}
	sort.Slice(st.NotAttached, func(i, j int) bool { return st.NotAttached[i].Pod < st.NotAttached[j].Pod })
	sort.Slice(st.Skipped, func(i, j int) bool { return st.Skipped[i].Pod < st.Skipped[j].Pod })
	sort.Slice(st.Refused, func(i, j int) bool { return st.Refused[i].Pod < st.Refused[j].Pod })
	sort.Slice(st.Uninjected, func(i, j int) bool { return st.Uninjected[i].Pod < st.Uninjected[j].Pod })
	return st
}

// AssignedIdentityName is AAD Pod Identity's name for the assignment of identity to a pod, shortened with a
// hash when it would exceed the 253 characters Kubernetes allows.
func AssignedIdentityName(pod, podNamespace, identity string) string {
	name := pod + "-" + podNamespace + "-" + identity
	if len(name) <= 253 {
		return name
	}
	sum := sha256.Sum256([]byte(name))
	return name[:253-17] + "-" + hex.EncodeToString(sum[:8])
}

// Object renders the desired AzureAssignedIdentity (status left empty: the controller owns it).
func (a Assignment) Object() *aadv1.AzureAssignedIdentity {
	id := a.Identity.DeepCopy()
	b := a.Binding.DeepCopy()
	// The copies are embedded objects: server-set metadata would only go stale in them.
	id.ManagedFields, id.ResourceVersion, id.UID, id.Generation = nil, "", "", 0
	b.ManagedFields, b.ResourceVersion, b.UID, b.Generation = nil, "", "", 0
	id.TypeMeta.Kind, id.TypeMeta.APIVersion = "AzureIdentity", aadv1.GroupVersion.String()
	b.TypeMeta.Kind, b.TypeMeta.APIVersion = "AzureIdentityBinding", aadv1.GroupVersion.String()
	return &aadv1.AzureAssignedIdentity{
		ObjectMeta: metaFor(a),
		Spec: aadv1.AzureAssignedIdentitySpec{
			AzureIdentityRef: id, AzureBindingRef: b,
			Pod: a.Pod, PodNamespace: a.PodNamespace, NodeName: a.NodeName,
		},
	}
}

// Annotations the assigner sets on AzureAssignedIdentity objects.
const (
	// ResourceAnnotation records the ARM resource id the assignment lives on.
	ResourceAnnotation = "podidentity.io/arm-resource"
	// ErrorAnnotation says why an identity is not attached, and what to do (absent when it is attached).
	ErrorAnnotation = "podidentity.io/assignment-error"
	// ReasonAnnotation is the reason in one word (IdentityNotAuthorized, IdentityNotFound,
	// ResourceNotAuthorized, ResourceNotFound, ResourceBusy, ResourceBlocked, Throttled, ARMError), set
	// together with ErrorAnnotation; the status stays Created (AAD Pod Identity's API has no conditions).
	ReasonAnnotation = "podidentity.io/assignment-reason"
)

func (a Assignment) String() string {
	return fmt.Sprintf("%s (pod %s/%s on %s)", a.Key(), a.PodNamespace, a.Pod, a.Resource.ID())
}
