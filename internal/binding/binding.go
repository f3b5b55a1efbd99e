// Package binding decides which Azure identities a pod is bound to. It is pure: objects in, decision out;
// Candidates picks, by key from a Source, the few objects a pod's decision reads. The webhook uses it at
// admission and the assigner to attach identities and keep the pod annotation (package contract) current.
package binding

import (
	"fmt"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/contract"
)

// Identity is one identity a pod may obtain tokens for (see package contract, which defines the format).
type Identity = contract.Identity

// Options changes how bindings match.
type Options struct {
	// ForceNamespaced makes every identity behave as if annotated aadpodidentity.k8s.io/Behavior: namespaced:
	// only bindings and identities of the pod's own namespace match.
	ForceNamespaced bool
}

// Problem explains why a binding that selects the pod did not bind an identity. Callers turn problems into
// admission warnings and Events.
type Problem struct {
	Binding string
	Reason  string
}

func (p Problem) String() string {
	return fmt.Sprintf("AzureIdentityBinding %s: %s", p.Binding, p.Reason)
}

// Selector returns the pod's aadpodidbinding label value, or "" when it has none.
func Selector(pod *corev1.Pod) string { return pod.Labels[aadv1.PodLabelBinding] }

// Resolve returns the identities bound to the pod, highest weight first, then by namespace and name; an
// identity reached through several bindings appears once, with its highest-weight binding. The order is the
// sidecar's order of preference when a request names no identity.
func Resolve(pod *corev1.Pod, bindings []aadv1.AzureIdentityBinding, identities []aadv1.AzureIdentity, opts Options) ([]Identity, []Problem) {
	sel := Selector(pod)
	if sel == "" {
		return nil, nil
	}
	byKey := make(map[string]*aadv1.AzureIdentity, len(identities))
	for i := range identities {
		id := &identities[i]
		byKey[id.Namespace+"/"+id.Name] = id
	}
	chosen := map[string]Identity{}
	var problems []Problem
	for i := range bindings {
		b := &bindings[i]
		if b.Spec.Selector != sel {
			continue
		}
		bkey := b.Namespace + "/" + b.Name
		if opts.ForceNamespaced && b.Namespace != pod.Namespace {
			continue // another namespace's binding: invisible in namespaced mode, not a problem
		}
		if b.Spec.AzureIdentity == "" {
			problems = append(problems, Problem{bkey, "spec.azureIdentity is empty"})
			continue
		}
		id, ok := byKey[b.Namespace+"/"+b.Spec.AzureIdentity]
		if !ok {
			problems = append(problems, Problem{bkey, fmt.Sprintf("AzureIdentity %s/%s not found", b.Namespace, b.Spec.AzureIdentity)})
			continue
		}
		if (opts.ForceNamespaced || IsNamespaced(id)) && (id.Namespace != pod.Namespace || b.Namespace != pod.Namespace) {
			continue // namespaced identity used from another namespace: not bound
		}
		if accounts, ok := b.Annotations[aadv1.ServiceAccountsAnnotation]; ok && !ServiceAccountAllowed(accounts, b.Namespace, pod) {
			problems = append(problems, Problem{bkey, fmt.Sprintf("the pod runs as service account %s/%s, which annotation %s (%q) does not list; the pod is not bound to AzureIdentity %s/%s: run it as a listed service account, or add its service account to the annotation",
				pod.Namespace, ServiceAccountName(pod), aadv1.ServiceAccountsAnnotation, accounts, b.Namespace, b.Spec.AzureIdentity)})
			continue
		}
		if err := Validate(id); err != nil {
			problems = append(problems, Problem{bkey, err.Error()})
			continue
		}
		entry := fromAzureIdentity(id, bkey, b.Spec.Weight)
		k := id.Namespace + "/" + id.Name
		if prev, ok := chosen[k]; ok && (prev.Weight > entry.Weight || (prev.Weight == entry.Weight && prev.Binding < entry.Binding)) {
			continue
		}
		chosen[k] = entry
	}
	out := make([]Identity, 0, len(chosen))
	for _, v := range chosen {
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Weight != out[j].Weight {
			return out[i].Weight > out[j].Weight
		}
		if out[i].Namespace != out[j].Namespace {
			return out[i].Namespace < out[j].Namespace
		}
		return out[i].Name < out[j].Name
	})
	sort.Slice(problems, func(i, j int) bool { return problems[i].Binding < problems[j].Binding })
	return out, problems
}

// Source answers, by key, the two questions Resolve asks of the cluster: which bindings have a given
// spec.selector, and which AzureIdentity has a given namespace and name. An informer cache with an index on
// spec.selector answers both without walking every object (webhook/admission), so admission costs the
// same with one binding or a hundred thousand.
type Source interface {
	// BindingsWithSelector returns the bindings whose spec.selector is exactly selector (case-sensitive, no
	// prefix: AAD Pod Identity's semantics, as in Resolve). A source may return others too; they are ignored.
	// The slice is the caller's (Candidates filters it in place); the objects in it are only read.
	BindingsWithSelector(selector string) ([]aadv1.AzureIdentityBinding, error)
	// Identity returns the AzureIdentity namespace/name, or nil (and no error) when there is none.
	Identity(namespace, name string) (*aadv1.AzureIdentity, error)
}

// Candidates returns the part of the cluster Resolve reads for the pod, looked up in src by key instead of
// walked: the bindings whose spec.selector is the pod's aadpodidbinding label, and the identities they name
// (each in its binding's namespace). With ForceNamespaced, bindings of other namespaces are left out (Resolve
// ignores them without a problem). Resolve(pod, bindings, identities, opts) over what it returns is the same
// as Resolve over every binding and identity src holds: same identities, order, weights and problems. Its
// cost grows with the bindings of the pod's selector only. A pod without the label needs nothing: nil, nil.
func Candidates(pod *corev1.Pod, src Source, opts Options) ([]aadv1.AzureIdentityBinding, []aadv1.AzureIdentity, error) {
	sel := Selector(pod)
	if sel == "" {
		return nil, nil, nil
	}
	found, err := src.BindingsWithSelector(sel)
	if err != nil {
		return nil, nil, err
	}
	bindings := found[:0]
	var identities []aadv1.AzureIdentity
	looked := map[[2]string]bool{} // namespace and name of the identities looked up
	for i := range found {
		b := found[i]
		if b.Spec.Selector != sel || (opts.ForceNamespaced && b.Namespace != pod.Namespace) {
			continue // Resolve would skip it before looking for its identity
		}
		bindings = append(bindings, b)
		if b.Spec.AzureIdentity == "" {
			continue // a problem for Resolve; nothing to look up
		}
		key := [2]string{b.Namespace, b.Spec.AzureIdentity}
		if looked[key] {
			continue
		}
		looked[key] = true
		id, err := src.Identity(b.Namespace, b.Spec.AzureIdentity)
		if err != nil {
			return nil, nil, err
		}
		if id != nil {
			identities = append(identities, *id)
		}
	}
	return bindings, identities, nil
}

// IsNamespaced reports whether the identity carries aadpodidentity.k8s.io/Behavior: namespaced.
func IsNamespaced(id *aadv1.AzureIdentity) bool {
	return strings.EqualFold(id.Annotations[aadv1.BehaviorAnnotation], aadv1.BehaviorNamespaced)
}

// ServiceAccountName is the pod's service account: spec.serviceAccountName, or "default" when unset (the API
// server's ServiceAccount admission sets it before any webhook runs; a decision on an object that skipped it
// assumes the same).
func ServiceAccountName(pod *corev1.Pod) string {
	if pod.Spec.ServiceAccountName != "" {
		return pod.Spec.ServiceAccountName
	}
	return "default"
}

// ServiceAccountAllowed reports whether the pod's service account is in list, the value of a binding's
// podidentity.io/service-accounts annotation: comma-separated "<namespace>/<name>", or "<name>" for a service
// account of the binding's namespace (bindingNamespace). Names compare exactly, as Kubernetes names do. An
// empty list allows no pod: an annotation that names nobody binds nobody (it never widens a binding).
func ServiceAccountAllowed(list, bindingNamespace string, pod *corev1.Pod) bool {
	want := pod.Namespace + "/" + ServiceAccountName(pod)
	for _, item := range strings.Split(list, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		if !strings.Contains(item, "/") {
			item = bindingNamespace + "/" + item
		}
		if item == want {
			return true
		}
	}
	return false
}

// Backend returns the identity's backend from annotation podidentity.io/backend: aadv1.BackendFederated, or
// aadv1.BackendNode when absent. Values compare case-insensitively; anything else is returned as written, for
// Validate to refuse.
func Backend(id *aadv1.AzureIdentity) string {
	v, ok := id.Annotations[aadv1.BackendAnnotation]
	switch {
	case !ok || strings.EqualFold(strings.TrimSpace(v), aadv1.BackendNode):
		return aadv1.BackendNode
	case strings.EqualFold(strings.TrimSpace(v), aadv1.BackendFederated):
		return aadv1.BackendFederated
	}
	return v
}

// Validate says what is wrong with an identity that cannot be served, in words a user can act on.
func Validate(id *aadv1.AzureIdentity) error {
	switch Backend(id) {
	case aadv1.BackendNode:
	case aadv1.BackendFederated:
		return validateFederated(id)
	default:
		return fmt.Errorf("AzureIdentity %s/%s has annotation %s: %q; use %q (workload identity federation) or %q (the default: the node's IMDS, or the service principal's secret), or remove it",
			id.Namespace, id.Name, aadv1.BackendAnnotation, id.Annotations[aadv1.BackendAnnotation], aadv1.BackendFederated, aadv1.BackendNode)
	}
	switch id.Spec.Type {
	case aadv1.UserAssignedMSI:
		if id.Spec.ClientID == "" || id.Spec.ResourceID == "" {
			return fmt.Errorf("AzureIdentity %s/%s is type 0 (user-assigned managed identity) and needs both spec.clientID and spec.resourceID", id.Namespace, id.Name)
		}
		if !strings.Contains(strings.ToLower(id.Spec.ResourceID), "/providers/microsoft.managedidentity/userassignedidentities/") {
			return fmt.Errorf("AzureIdentity %s/%s: spec.resourceID %q is not a user-assigned identity's resource ID (/subscriptions/<sub>/resourceGroups/<rg>/providers/Microsoft.ManagedIdentity/userAssignedIdentities/<name>)", id.Namespace, id.Name, id.Spec.ResourceID)
		}
	case aadv1.ServicePrincipal, aadv1.ServicePrincipalCertificate:
		if id.Spec.ClientID == "" || id.Spec.TenantID == "" || id.Spec.ClientPassword.Name == "" {
			return fmt.Errorf("AzureIdentity %s/%s is type %d (service principal) and needs spec.clientID, spec.tenantID and spec.clientPassword.name", id.Namespace, id.Name, id.Spec.Type)
		}
	default:
		return fmt.Errorf("AzureIdentity %s/%s has spec.type %d; use 0 (user-assigned managed identity), 1 (service principal with secret) or 2 (service principal with certificate)", id.Namespace, id.Name, id.Spec.Type)
	}
	return nil
}

// validateFederated checks a federated identity: the application (client ID) and its tenant name what Azure AD
// exchanges the service account token for; the type says what kind of Azure AD object carries the federated
// credential (0 a user-assigned managed identity, 1 or 2 an app registration) and no secret is used.
func validateFederated(id *aadv1.AzureIdentity) error {
	switch id.Spec.Type {
	case aadv1.UserAssignedMSI, aadv1.ServicePrincipal, aadv1.ServicePrincipalCertificate:
	default:
		return fmt.Errorf("AzureIdentity %s/%s has spec.type %d; use 0 (user-assigned managed identity) or 1 (app registration) with %s: %s", id.Namespace, id.Name, id.Spec.Type, aadv1.BackendAnnotation, aadv1.BackendFederated)
	}
	if id.Spec.ClientID == "" || id.Spec.TenantID == "" {
		return fmt.Errorf("AzureIdentity %s/%s is federated (%s: %s) and needs spec.clientID (the managed identity's or application's client ID) and spec.tenantID (its Azure AD tenant)", id.Namespace, id.Name, aadv1.BackendAnnotation, aadv1.BackendFederated)
	}
	if id.Spec.ResourceID != "" && !strings.Contains(strings.ToLower(id.Spec.ResourceID), "/providers/microsoft.managedidentity/userassignedidentities/") {
		return fmt.Errorf("AzureIdentity %s/%s: spec.resourceID %q is not a user-assigned identity's resource ID; a federated identity may leave it empty (apps then select it by client_id)", id.Namespace, id.Name, id.Spec.ResourceID)
	}
	return nil
}

func fromAzureIdentity(id *aadv1.AzureIdentity, binding string, weight int) Identity {
	out := Identity{
		Name: id.Name, Namespace: id.Namespace, Type: id.Spec.Type,
		ClientID: id.Spec.ClientID, Binding: binding, Weight: weight,
	}
	if Backend(id) == aadv1.BackendFederated {
		// No secret, no auxiliary tenants: the exchange is for the one tenant that holds the federated credential.
		out.Backend = contract.BackendFederated
		out.ResourceID = id.Spec.ResourceID
		out.TenantID = id.Spec.TenantID
		out.ADEndpoint = id.Spec.ADEndpoint
		return out
	}
	if id.Spec.Type == aadv1.UserAssignedMSI {
		out.ResourceID = id.Spec.ResourceID
		return out
	}
	out.TenantID = id.Spec.TenantID
	out.AuxiliaryTenantIDs = append([]string(nil), id.Spec.AuxiliaryTenantIDs...)
	out.ADEndpoint = id.Spec.ADEndpoint
	out.ADResourceID = id.Spec.ADResourceID
	out.SecretName = id.Spec.ClientPassword.Name
	return out
}

// Excepted returns the name of the first AzurePodIdentityException (by name) of the pod's namespace that
// exempts the pod: one whose podLabels share any one key and value with the pod's labels. The key must be the
// same; the value is compared case-insensitively (strings.EqualFold), as AAD Pod Identity's NMI compared it
// (pkg/pod.IsPodExcepted: a map lookup by key, then EqualFold on the value), so an exception that exempted a
// pod under NMI exempts it here too.
func Excepted(pod *corev1.Pod, exceptions []aadv1.AzurePodIdentityException) (string, bool) {
	names := make([]string, 0, len(exceptions))
	byName := map[string]*aadv1.AzurePodIdentityException{}
	for i := range exceptions {
		e := &exceptions[i]
		if e.Namespace != pod.Namespace {
			continue
		}
		names = append(names, e.Name)
		byName[e.Name] = e
	}
	sort.Strings(names)
	for _, n := range names {
		for k, v := range byName[n].Spec.PodLabels {
			if pv, ok := pod.Labels[k]; ok && strings.EqualFold(pv, v) {
				return n, true
			}
		}
	}
	return "", false
}

// Encode renders identities as the annotation value (contract.EncodeIdentities).
func Encode(ids []Identity) string { return contract.EncodeIdentities(ids) }

// Decode parses the annotation value (contract.DecodeIdentities).
func Decode(s string) ([]Identity, error) { return contract.DecodeIdentities(s) }

// Servable keeps the identities the pod's sidecar can serve: every node managed identity, a federated identity
// only when the pod projects the service account token as the webhook does (FederatedTokenProjected), and a
// service principal only when the pod mounts its secret as the webhook does (volume podidentity-sp-<name> of
// that Secret). The
// webhook leaves out service principals whose secret the pod cannot mount (another namespace: see
// webhook/inject), and the volumes of a pod never change, so whoever rewrites the identities annotation later
// (the assigner, after a binding changes) must not list a service principal the pod has no volume for: its
// sidecar would answer a configuration error instead of "not bound".
func Servable(pod *corev1.Pod, ids []Identity) []Identity {
	mounted := map[string]string{} // volume -> Secret
	for _, v := range pod.Spec.Volumes {
		if v.Secret != nil && strings.HasPrefix(v.Name, contract.SecretVolumePrefix) {
			mounted[v.Name] = v.Secret.SecretName
		}
	}
	projected := FederatedTokenProjected(pod)
	out := ids[:0:0]
	for _, id := range ids {
		if id.Federated() {
			if projected {
				out = append(out, id)
			}
			continue
		}
		if id.Type == aadv1.UserAssignedMSI {
			out = append(out, id)
			continue
		}
		if secret, ok := mounted[contract.SecretVolumePrefix+id.Name]; ok && secret == id.SecretName {
			out = append(out, id)
		}
	}
	return out
}

// FederatedTokenProjected reports whether the pod has the webhook's service account token volume
// (contract.FederatedTokenVolumeName: a projected token for contract.FederatedAudience). The webhook adds it
// only to pods bound to a federated identity at admission, and a pod's volumes never change, so a federated
// identity bound later is served only to pods created after it.
func FederatedTokenProjected(pod *corev1.Pod) bool {
	for _, v := range pod.Spec.Volumes {
		if v.Name != contract.FederatedTokenVolumeName || v.Projected == nil {
			continue
		}
		for _, src := range v.Projected.Sources {
			if src.ServiceAccountToken != nil && src.ServiceAccountToken.Audience == contract.FederatedAudience {
				return true
			}
		}
	}
	return false
}
