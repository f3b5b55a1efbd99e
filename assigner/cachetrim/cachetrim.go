// Package cachetrim keeps the assigner's informer cache to what the assigner reads.
//
// The assigner watches every Pod and Node of the cluster, and every AzureAssignedIdentity (one per bound pod
// and identity). Cached in full, its memory grows with the size of every pod spec (environment, probes,
// volumes, managed fields), every node status (image lists) and, for each assignment, the copies of its
// AzureIdentity and AzureIdentityBinding that the object embeds, which is what made AAD Pod Identity's MIC grow
// into gigabytes on large clusters. The assigner reads a handful of fields: Pods, Nodes and
// AzureAssignedIdentities enter the cache reduced to them, every other kind without managedFields.
//
// The trim is an allow-list, so a field the assigner starts to read must be added here; TestDecisionsAgree
// compares every decision the assigner takes on a pod or an AzureAssignedIdentity, full against trimmed.
// Writes: the assigner changes pods, and the status, annotations and finalizers of AzureAssignedIdentities,
// only through merge patches computed between two copies of the same cached object, which carry only the field
// it changed; the one write that replaces an AzureAssignedIdentity's spec reads the object from the API server
// first (assigner/controller), so that the patch also clears what the trimmed copy no longer shows.
package cachetrim

import (
	"unique"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/contract"
)

// LastAppliedAnnotation is kubectl's copy of the whole applied manifest: as big as the spec, and never read.
const LastAppliedAnnotation = "kubectl.kubernetes.io/last-applied-configuration"

// Options are the cache options of the assigner's manager: Pods, Nodes and AzureAssignedIdentities trimmed,
// managedFields dropped
// from everything else.
func Options() cache.Options {
	return cache.Options{
		DefaultTransform: cache.TransformStripManagedFields(),
		ByObject: map[client.Object]cache.ByObject{
			&corev1.Pod{}:                  {Transform: transform(Pod)},
			&corev1.Node{}:                 {Transform: transform(Node)},
			&aadv1.AzureAssignedIdentity{}: {Transform: transform(AssignedIdentity)},
		},
	}
}

// transform adapts a typed trim to the informer's signature; anything else (a tombstone) only loses its
// managedFields.
func transform[T any](trim func(*T) *T) toolscache.TransformFunc {
	strip := cache.TransformStripManagedFields()
	return func(in any) (any, error) {
		if o, ok := in.(*T); ok {
			return trim(o), nil
		}
		return strip(in)
	}
}

// Pod is the part of a pod the assigner reads:
//   - metadata but managedFields and kubectl's last-applied copy (labels select bindings and exceptions,
//     annotations carry the webhook's identities and security warnings, owners name the Event target);
//   - where it runs and how: node name, host network, OS and the Windows node selector, service account
//     (guard mode's trusted accounts);
//   - of podidentity's own containers, their names, images and restart policy (is it injected, is the
//     sidecar genuine; the app's containers are not read), and its
//     Secret volumes (which service principals its sidecar can serve) and the audience of the webhook's
//     service account token volume (whether it can serve federated identities);
//   - its phase (finished pods need no identity).
func Pod(p *corev1.Pod) *corev1.Pod {
	out := &corev1.Pod{TypeMeta: p.TypeMeta, ObjectMeta: trimMeta(p.ObjectMeta)}
	out.Spec = corev1.PodSpec{
		NodeName:           intern(p.Spec.NodeName),
		HostNetwork:        p.Spec.HostNetwork,
		NodeSelector:       internMap(p.Spec.NodeSelector),
		ServiceAccountName: intern(p.Spec.ServiceAccountName),
		OS:                 p.Spec.OS,
		InitContainers:     containers(p.Spec.InitContainers),
		Containers:         containers(p.Spec.Containers),
	}
	for _, v := range p.Spec.Volumes {
		if v.Secret != nil {
			out.Spec.Volumes = append(out.Spec.Volumes, corev1.Volume{Name: intern(v.Name),
				VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: intern(v.Secret.SecretName)}}})
		}
		if v.Name == contract.FederatedTokenVolumeName && v.Projected != nil {
			// Only its service account token's audience: whether the sidecar can serve federated identities.
			var sources []corev1.VolumeProjection
			for _, src := range v.Projected.Sources {
				if src.ServiceAccountToken != nil {
					sources = append(sources, corev1.VolumeProjection{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Audience: intern(src.ServiceAccountToken.Audience)}})
				}
			}
			out.Spec.Volumes = append(out.Spec.Volumes, corev1.Volume{Name: intern(v.Name),
				VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: sources}}})
		}
	}
	out.Status.Phase = p.Status.Phase
	return out
}

// containers keeps podidentity's own containers (the init container and the sidecar, whichever list they are
// in, in their order): the decisions look containers up by these names only. The app's containers, most of a
// pod's containers and all of an un-injected pod's, are dropped.
func containers(in []corev1.Container) []corev1.Container {
	var out []corev1.Container
	for _, c := range in {
		if c.Name == contract.InitContainerName || c.Name == contract.SidecarContainerName {
			out = append(out, corev1.Container{Name: intern(c.Name), Image: intern(c.Image), RestartPolicy: c.RestartPolicy})
		}
	}
	return out
}

// Node is the part of a node the assigner reads: metadata (the identity pool's label) and the provider ID (its
// VM or scale set). Its spec's other fields and its status (conditions, images, addresses) is dropped: on a large
// cluster the image lists alone outweigh the rest.
func Node(n *corev1.Node) *corev1.Node {
	return &corev1.Node{TypeMeta: n.TypeMeta, ObjectMeta: trimMeta(n.ObjectMeta), Spec: corev1.NodeSpec{ProviderID: n.Spec.ProviderID}}
}

// AssignedIdentity is the part of an AzureAssignedIdentity the assigner reads:
//   - metadata but managedFields and kubectl's last-applied copy (the resource annotation says which VM or
//     scale set it lives on, the reason annotations what was last written, the finalizers and deletion
//     timestamp whether it is being let go, the creation time its age in the metrics);
//   - its pod, pod namespace and node;
//   - of the embedded AzureIdentity: its namespace and name (is it still there), its type, resource id and
//     client id (what is attached, and whether the object still says what its assignment says); of the
//     embedded binding: its namespace and name;
//   - its status.
//
// The embedded copies' other fields (their metadata, the service principal's tenant and secret reference, the
// binding's selector) and the legacy metadata are dropped: on a large cluster they are most of the object.
func AssignedIdentity(a *aadv1.AzureAssignedIdentity) *aadv1.AzureAssignedIdentity {
	out := &aadv1.AzureAssignedIdentity{TypeMeta: a.TypeMeta, ObjectMeta: trimMeta(a.ObjectMeta)}
	out.Spec = aadv1.AzureAssignedIdentitySpec{Pod: a.Spec.Pod, PodNamespace: intern(a.Spec.PodNamespace), NodeName: intern(a.Spec.NodeName)}
	if ref := a.Spec.AzureIdentityRef; ref != nil {
		out.Spec.AzureIdentityRef = &aadv1.AzureIdentity{
			ObjectMeta: metav1.ObjectMeta{Namespace: intern(ref.Namespace), Name: intern(ref.Name)},
			Spec:       aadv1.AzureIdentitySpec{Type: ref.Spec.Type, ResourceID: intern(ref.Spec.ResourceID), ClientID: intern(ref.Spec.ClientID)},
		}
	}
	if ref := a.Spec.AzureBindingRef; ref != nil {
		out.Spec.AzureBindingRef = &aadv1.AzureIdentityBinding{ObjectMeta: metav1.ObjectMeta{Namespace: intern(ref.Namespace), Name: intern(ref.Name)}}
	}
	out.Status.Status = intern(a.Status.Status)
	return out
}

// trimMeta drops managedFields and kubectl's copy, and interns what many objects repeat (intern).
func trimMeta(m metav1.ObjectMeta) metav1.ObjectMeta {
	m.ManagedFields = nil
	m.Namespace, m.GenerateName = intern(m.Namespace), intern(m.GenerateName)
	m.Labels = internMap(m.Labels)
	var a map[string]string
	if m.Annotations != nil {
		a = make(map[string]string, len(m.Annotations))
		for k, v := range m.Annotations {
			if k != LastAppliedAnnotation {
				a[intern(k)] = intern(v)
			}
		}
	}
	m.Annotations = a
	if len(m.OwnerReferences) > 0 {
		refs := make([]metav1.OwnerReference, len(m.OwnerReferences))
		for i, r := range m.OwnerReferences {
			r.APIVersion, r.Kind, r.Name, r.UID = intern(r.APIVersion), intern(r.Kind), intern(r.Name), types.UID(intern(string(r.UID)))
			refs[i] = r
		}
		m.OwnerReferences = refs
	}
	return m
}

// intern returns the one copy of s that every cached object shares: the pods of a Deployment repeat their
// namespace, labels, the webhook's identities annotation, their owner, images and container names, and the
// AzureAssignedIdentities of an identity repeat its resource id. A value seen once costs a little more
// (the interning table's entry); one repeated is stored once. Names and uids, unique to each object, are
// not interned.
func intern(s string) string {
	if s == "" {
		return s
	}
	return unique.Make(s).Value()
}

// internMap is a copy of m with interned keys and values (m itself, shared with the informer's decoded
// object, is left alone).
func internMap(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[intern(k)] = intern(v)
	}
	return out
}
