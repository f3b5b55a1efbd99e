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
//
// A Trimmer also shares, between the objects of one cache, the parts that many of them repeat (see Trimmer).
package cachetrim

import (
	"hash/maphash"
	"reflect"
	"slices"
	"strconv"
	"sync"
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

// Options are the cache options of the assigner's manager: Pods, Nodes and AzureAssignedIdentities trimmed by
// one Trimmer, managedFields dropped from everything else.
func Options() cache.Options {
	t := &Trimmer{}
	return cache.Options{
		DefaultTransform: cache.TransformStripManagedFields(),
		ByObject: map[client.Object]cache.ByObject{
			&corev1.Pod{}:                  {Transform: transform(t.Pod)},
			&corev1.Node{}:                 {Transform: transform(t.Node)},
			&aadv1.AzureAssignedIdentity{}: {Transform: transform(t.AssignedIdentity)},
		},
	}
}

// Trimmer trims the objects of one cache. Besides dropping what is not read, it gives every object that repeats
// a part another already holds the same copy of it: the pods of a ReplicaSet carry equal labels, annotations,
// owner and podidentity containers, and the AzureAssignedIdentities of an identity equal references to it and
// to its binding, so that on a large cluster those parts are stored once per ReplicaSet or identity rather than
// once per pod (BenchmarkCachedBytes).
//
// Sharing is safe because nothing writes to the cache's objects: readers get deep copies, or, where they ask
// for the cache's own objects (client.UnsafeDisableDeepCopy), only read them, as they must already for the
// object itself. Each table is bounded (maxShared entries): a full table starts over, so parts unique to each
// object (a StatefulSet pod's own labels) cost a bounded table rather than a growing one, and only later
// objects lose the sharing of what was dropped. The zero Trimmer is ready to use; it is safe for concurrent
// use by the informers.
type Trimmer struct {
	seedOnce sync.Once
	seed     maphash.Seed

	mu         sync.Mutex
	labels     map[uint64]map[string]string // labels and node selectors
	notes      map[uint64]map[string]string // annotations
	ctrs       map[uint64][]corev1.Container
	vols       map[uint64][]corev1.Volume
	owners     map[uint64][]metav1.OwnerReference
	strs       map[uint64][]string
	identities map[uint64]*aadv1.AzureIdentity
	bindings   map[uint64]*aadv1.AzureIdentityBinding
}

// maxShared bounds each of a Trimmer's tables: more than the ReplicaSets, nodes, identities and bindings a large
// cluster holds at once. An entry costs a hash and a reference (the value itself is shared with the objects), so
// a full table is about 1 MiB.
const maxShared = 1 << 15

// share returns the table's value for key when it equals the fresh one (built from the object being trimmed),
// and otherwise the fresh one, which it stores when key has no value yet. A table is emptied when full. The
// equality check makes a hash collision cost only the sharing, never a wrong value.
func share[V any](t *Trimmer, table *map[uint64]V, key uint64, fresh V) V {
	t.mu.Lock()
	defer t.mu.Unlock()
	if v, ok := (*table)[key]; ok {
		if reflect.DeepEqual(v, fresh) {
			return v
		}
		return fresh
	}
	if *table == nil || len(*table) >= maxShared {
		*table = map[uint64]V{}
	}
	(*table)[key] = fresh
	return fresh
}

// hasher hashes the fields of a part to share; every field is written with its length, so that different
// values give different inputs.
type hasher struct{ h maphash.Hash }

// hasher is a hasher with the Trimmer's seed (a value: each part hashed on an informer event costs no
// allocation).
func (t *Trimmer) hasher() hasher {
	t.seedOnce.Do(func() { t.seed = maphash.MakeSeed() })
	var k hasher
	k.h.SetSeed(t.seed)
	return k
}

func (k *hasher) add(fields ...string) {
	for _, f := range fields {
		k.h.WriteString(strconv.Itoa(len(f)))
		k.h.WriteByte(':')
		k.h.WriteString(f)
	}
}

func (k *hasher) bool(b *bool) {
	switch {
	case b == nil:
		k.h.WriteByte('-')
	case *b:
		k.h.WriteByte('t')
	default:
		k.h.WriteByte('f')
	}
}

// sharedMap is the shared copy, from table, of a string map without its key drop, with interned keys and values
// (nil for nil).
func (t *Trimmer) sharedMap(table *map[uint64]map[string]string, m map[string]string, drop string) map[string]string {
	if m == nil {
		return nil
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		if k != drop {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	kw := t.hasher()
	out := make(map[string]string, len(keys))
	for _, k := range keys {
		kw.add(k, m[k])
		out[intern(k)] = intern(m[k])
	}
	return share(t, table, kw.h.Sum64(), out)
}

// sharedStrings is the shared copy of a string slice (finalizers).
func (t *Trimmer) sharedStrings(in []string) []string {
	if in == nil {
		return nil
	}
	kw := t.hasher()
	kw.add(in...)
	out := make([]string, len(in))
	for i, s := range in {
		out[i] = intern(s)
	}
	return share(t, &t.strs, kw.h.Sum64(), out)
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
func (t *Trimmer) Pod(p *corev1.Pod) *corev1.Pod {
	out := &corev1.Pod{TypeMeta: p.TypeMeta, ObjectMeta: t.meta(p.ObjectMeta)}
	out.Spec = corev1.PodSpec{
		NodeName:           intern(p.Spec.NodeName),
		HostNetwork:        p.Spec.HostNetwork,
		NodeSelector:       t.sharedMap(&t.labels, p.Spec.NodeSelector, ""),
		ServiceAccountName: intern(p.Spec.ServiceAccountName),
		OS:                 p.Spec.OS,
		InitContainers:     t.containers(p.Spec.InitContainers),
		Containers:         t.containers(p.Spec.Containers),
		Volumes:            t.volumes(p.Spec.Volumes),
	}
	out.Status.Phase = p.Status.Phase
	return out
}

// volumes keeps the Secret volumes (their names and Secrets) and, of the webhook's service account token
// volume, its token's audience only: whether the sidecar can serve federated identities.
func (t *Trimmer) volumes(in []corev1.Volume) []corev1.Volume {
	kw := t.hasher()
	var out []corev1.Volume
	for _, v := range in {
		if v.Secret != nil {
			kw.add("s", v.Name, v.Secret.SecretName)
			out = append(out, corev1.Volume{Name: intern(v.Name),
				VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: intern(v.Secret.SecretName)}}})
		}
		if v.Name == contract.FederatedTokenVolumeName && v.Projected != nil {
			kw.add("p", v.Name)
			var sources []corev1.VolumeProjection
			for _, src := range v.Projected.Sources {
				if src.ServiceAccountToken != nil {
					kw.add(src.ServiceAccountToken.Audience)
					sources = append(sources, corev1.VolumeProjection{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Audience: intern(src.ServiceAccountToken.Audience)}})
				}
			}
			out = append(out, corev1.Volume{Name: intern(v.Name),
				VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: sources}}})
		}
	}
	if out == nil {
		return nil
	}
	return share(t, &t.vols, kw.h.Sum64(), out)
}

// containers keeps podidentity's own containers (the init container and the sidecar, whichever list they are
// in, in their order): the decisions look containers up by these names only. The app's containers, most of a
// pod's containers and all of an un-injected pod's, are dropped.
func (t *Trimmer) containers(in []corev1.Container) []corev1.Container {
	kw := t.hasher()
	var out []corev1.Container
	for _, c := range in {
		if c.Name == contract.InitContainerName || c.Name == contract.SidecarContainerName {
			var policy string
			if c.RestartPolicy != nil {
				policy = "=" + string(*c.RestartPolicy)
			}
			kw.add(c.Name, c.Image, policy)
			out = append(out, corev1.Container{Name: intern(c.Name), Image: intern(c.Image), RestartPolicy: c.RestartPolicy})
		}
	}
	if out == nil {
		return nil
	}
	return share(t, &t.ctrs, kw.h.Sum64(), out)
}

// Node is the part of a node the assigner reads: metadata (the identity pool's label) and the provider ID (its
// VM or scale set). Its spec's other fields and its status (conditions, images, addresses) is dropped: on a large
// cluster the image lists alone outweigh the rest.
func (t *Trimmer) Node(n *corev1.Node) *corev1.Node {
	return &corev1.Node{TypeMeta: n.TypeMeta, ObjectMeta: t.meta(n.ObjectMeta), Spec: corev1.NodeSpec{ProviderID: n.Spec.ProviderID}}
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
func (t *Trimmer) AssignedIdentity(a *aadv1.AzureAssignedIdentity) *aadv1.AzureAssignedIdentity {
	out := &aadv1.AzureAssignedIdentity{TypeMeta: a.TypeMeta, ObjectMeta: t.meta(a.ObjectMeta)}
	out.Spec = aadv1.AzureAssignedIdentitySpec{Pod: a.Spec.Pod, PodNamespace: intern(a.Spec.PodNamespace), NodeName: intern(a.Spec.NodeName)}
	if ref := a.Spec.AzureIdentityRef; ref != nil {
		kw := t.hasher()
		kw.add(ref.Namespace, ref.Name, strconv.Itoa(int(ref.Spec.Type)), ref.Spec.ResourceID, ref.Spec.ClientID)
		out.Spec.AzureIdentityRef = share(t, &t.identities, kw.h.Sum64(), &aadv1.AzureIdentity{
			ObjectMeta: metav1.ObjectMeta{Namespace: intern(ref.Namespace), Name: intern(ref.Name)},
			Spec:       aadv1.AzureIdentitySpec{Type: ref.Spec.Type, ResourceID: intern(ref.Spec.ResourceID), ClientID: intern(ref.Spec.ClientID)},
		})
	}
	if ref := a.Spec.AzureBindingRef; ref != nil {
		kw := t.hasher()
		kw.add(ref.Namespace, ref.Name)
		out.Spec.AzureBindingRef = share(t, &t.bindings, kw.h.Sum64(),
			&aadv1.AzureIdentityBinding{ObjectMeta: metav1.ObjectMeta{Namespace: intern(ref.Namespace), Name: intern(ref.Name)}})
	}
	out.Status.Status = intern(a.Status.Status)
	return out
}

// meta drops managedFields and kubectl's copy, interns the strings many objects repeat (intern) and shares
// the maps and lists they repeat (Trimmer).
func (t *Trimmer) meta(m metav1.ObjectMeta) metav1.ObjectMeta {
	m.ManagedFields = nil
	m.Namespace, m.GenerateName = intern(m.Namespace), intern(m.GenerateName)
	m.Labels = t.sharedMap(&t.labels, m.Labels, "")
	m.Annotations = t.sharedMap(&t.notes, m.Annotations, LastAppliedAnnotation)
	m.Finalizers = t.sharedStrings(m.Finalizers)
	if len(m.OwnerReferences) > 0 {
		kw := t.hasher()
		refs := make([]metav1.OwnerReference, len(m.OwnerReferences))
		for i, r := range m.OwnerReferences {
			kw.add(r.APIVersion, r.Kind, r.Name, string(r.UID))
			kw.bool(r.Controller)
			kw.bool(r.BlockOwnerDeletion)
			r.APIVersion, r.Kind, r.Name, r.UID = intern(r.APIVersion), intern(r.Kind), intern(r.Name), types.UID(intern(string(r.UID)))
			refs[i] = r
		}
		m.OwnerReferences = share(t, &t.owners, kw.h.Sum64(), refs)
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
