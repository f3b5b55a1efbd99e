// Package cachetrim keeps the assigner's informer cache to what the assigner reads.
//
// The assigner watches every Pod and Node of the cluster. Cached in full, its memory grows with the size of
// every pod spec (environment, probes, volumes, managed fields) and every node status (image lists), which is
// what made AAD Pod Identity's MIC grow into gigabytes on large clusters. The assigner reads a handful of
// fields: Pods and Nodes enter the cache reduced to them, every other kind without managedFields.
//
// The trim is an allow-list, so a field the assigner starts to read must be added here; TestDecisionsAgree
// compares every decision the assigner takes on a pod, full against trimmed, over the injector's golden pods.
// Writes are unaffected: the assigner changes pods only through merge patches computed between two copies of
// the same cached object, which carry only the field it changed.
package cachetrim

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/podidentity/podidentity/internal/contract"
)

// LastAppliedAnnotation is kubectl's copy of the whole applied manifest: as big as the spec, and never read.
const LastAppliedAnnotation = "kubectl.kubernetes.io/last-applied-configuration"

// Options are the cache options of the assigner's manager: Pods and Nodes trimmed, managedFields dropped
// from everything else.
func Options() cache.Options {
	return cache.Options{
		DefaultTransform: cache.TransformStripManagedFields(),
		ByObject: map[client.Object]cache.ByObject{
			&corev1.Pod{}:  {Transform: transform(Pod)},
			&corev1.Node{}: {Transform: transform(Node)},
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
//   - its containers' names, images and restart policy (is it injected, is the sidecar genuine) and its
//     Secret volumes (which service principals its sidecar can serve) and the audience of the webhook's
//     service account token volume (whether it can serve federated identities);
//   - its phase (finished pods need no identity).
func Pod(p *corev1.Pod) *corev1.Pod {
	out := &corev1.Pod{TypeMeta: p.TypeMeta, ObjectMeta: trimMeta(p.ObjectMeta)}
	out.Spec = corev1.PodSpec{
		NodeName:           p.Spec.NodeName,
		HostNetwork:        p.Spec.HostNetwork,
		NodeSelector:       p.Spec.NodeSelector,
		ServiceAccountName: p.Spec.ServiceAccountName,
		OS:                 p.Spec.OS,
		InitContainers:     containers(p.Spec.InitContainers),
		Containers:         containers(p.Spec.Containers),
	}
	for _, v := range p.Spec.Volumes {
		if v.Secret != nil {
			out.Spec.Volumes = append(out.Spec.Volumes, corev1.Volume{Name: v.Name,
				VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: v.Secret.SecretName}}})
		}
		if v.Name == contract.FederatedTokenVolumeName && v.Projected != nil {
			// Only its service account token's audience: whether the sidecar can serve federated identities.
			var sources []corev1.VolumeProjection
			for _, src := range v.Projected.Sources {
				if src.ServiceAccountToken != nil {
					sources = append(sources, corev1.VolumeProjection{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Audience: src.ServiceAccountToken.Audience}})
				}
			}
			out.Spec.Volumes = append(out.Spec.Volumes, corev1.Volume{Name: v.Name,
				VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: sources}}})
		}
	}
	out.Status.Phase = p.Status.Phase
	return out
}

func containers(in []corev1.Container) []corev1.Container {
	if in == nil {
		return nil
	}
	out := make([]corev1.Container, len(in))
	for i, c := range in {
		out[i] = corev1.Container{Name: c.Name, Image: c.Image, RestartPolicy: c.RestartPolicy}
	}
	return out
}

// Node is the part of a node the assigner reads: metadata (the identity pool's label) and the provider ID (its
// VM or scale set). Its spec's other fields and its status (conditions, images, addresses) is dropped: on a large
// cluster the image lists alone outweigh the rest.
func Node(n *corev1.Node) *corev1.Node {
	return &corev1.Node{TypeMeta: n.TypeMeta, ObjectMeta: trimMeta(n.ObjectMeta), Spec: corev1.NodeSpec{ProviderID: n.Spec.ProviderID}}
}

func trimMeta(m metav1.ObjectMeta) metav1.ObjectMeta {
	m.ManagedFields = nil
	if _, ok := m.Annotations[LastAppliedAnnotation]; ok {
		a := make(map[string]string, len(m.Annotations)-1)
		for k, v := range m.Annotations {
			if k != LastAppliedAnnotation {
				a[k] = v
			}
		}
		m.Annotations = a
	}
	return m
}
