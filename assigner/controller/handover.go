package controller

import (
	"context"
	"fmt"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	ctrl "sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/assigner/desired"
	"github.com/podidentity/podidentity/assigner/providerid"
)

// MICFinalizer is the finalizer AAD Pod Identity's MIC put on every AzureAssignedIdentity it created. Once
// MIC is gone nothing removes it, so such an object that anyone deletes stays Terminating forever unless the
// assigner takes it over.
const MICFinalizer = "azureassignedidentity.finalizers.aadpodidentity.k8s.io"

// fromMIC says whether an AzureAssignedIdentity was left by AAD Pod Identity's MIC rather than created by
// this assigner: every object the assigner creates carries the resource annotation, MIC's never do.
func fromMIC(o *aadv1.AzureAssignedIdentity) bool {
	_, ours := o.Annotations[desired.ResourceAnnotation]
	return !ours
}

// micNode is the index value of an AzureAssignedIdentity MIC left: its node (none for the assigner's own).
func micNode(o ctrl.Object) []string {
	if a := o.(*aadv1.AzureAssignedIdentity); fromMIC(a) && a.Spec.NodeName != "" {
		return []string{a.Spec.NodeName}
	}
	return nil
}

// handover is what to do with the AzureAssignedIdentity objects MIC left on one VM or scale set.
type handover struct {
	// adopt are wanted by a pod now (same name, so the same assignment): they get the assigner's annotation
	// and finalizer in place of MIC's and are maintained from then on, with no ARM write and no new object.
	adopt []*aadv1.AzureAssignedIdentity
	// release are not wanted (their pod is gone, is not injected, or they are being deleted): MIC's
	// finalizer comes off and they are deleted. Nothing reads them for tokens.
	release []*aadv1.AzureAssignedIdentity
	// owned are the identities (case-folded resource ids) MIC attached for these objects that the assigner
	// takes into its ledger: from then on they are detached once no pod on the resource needs them, as MIC
	// would have done. Without this, what MIC attached would stay on the nodes forever.
	owned []string
	// kept are identities MIC attached for pods that still run but that the assigner does not serve (not
	// injected): such a pod may still be using the identity through the node's IMDS, so the assigner never
	// takes it over and never detaches it.
	kept []string
}

// planHandover decides, for MIC's objects on one resource, which to adopt and which to release, and which
// of MIC's identities become the assigner's to detach. pods are the pods on the resource's nodes.
//
// MIC named its objects as the assigner does (<pod>-<podNamespace>-<identity>) but put them in "default"
// unless the identity was namespaced, where the assigner uses the identity's namespace; so an object is
// adopted in place only when its namespace and name are those of a wanted assignment, and otherwise released
// while the assigner creates its own. Whether the pod still needs the identity is judged by pod and identity,
// not by name.
func planHandover(mic []aadv1.AzureAssignedIdentity, want desired.State, pods []corev1.Pod) handover {
	var h handover
	running := map[string]bool{}
	for i := range pods {
		p := &pods[i]
		if p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed {
			running[p.Namespace+"/"+p.Name] = true
		}
	}
	wanted := map[string]bool{} // pod namespace/name/identity namespace/name
	for _, a := range want.Assignments {
		wanted[a.PodNamespace+"/"+a.Pod+"/"+a.Identity.Namespace+"/"+a.Identity.Name] = true
	}
	owned, kept := map[string]bool{}, map[string]bool{}
	for i := range mic {
		obj := &mic[i]
		ref := obj.Spec.AzureIdentityRef
		needed := false
		if ref != nil {
			needed = wanted[obj.Spec.PodNamespace+"/"+obj.Spec.Pod+"/"+ref.Namespace+"/"+ref.Name]
		}
		if _, same := want.Assignments[obj.Namespace+"/"+obj.Name]; same && needed && obj.DeletionTimestamp == nil {
			h.adopt = append(h.adopt, obj)
		} else {
			h.release = append(h.release, obj)
		}
		if ref == nil || ref.Spec.Type != aadv1.UserAssignedMSI || ref.Spec.ResourceID == "" {
			continue // nothing on the resource: service principals, or a record too broken to name one
		}
		id := strings.ToLower(strings.TrimRight(ref.Spec.ResourceID, "/"))
		if !needed && running[obj.Spec.PodNamespace+"/"+obj.Spec.Pod] {
			kept[id] = true
		} else {
			owned[id] = true
		}
	}
	for id := range kept {
		h.kept = append(h.kept, id)
	}
	for id := range owned {
		if !kept[id] {
			h.owned = append(h.owned, id)
		}
	}
	sort.Strings(h.owned)
	sort.Strings(h.kept)
	return h
}

// takeOver carries out h for the resource: first the ledger (so that a crash after the object writes cannot
// lose what MIC attached), then the objects. It returns the adopted objects as they are now.
func (r *resourceReconciler) takeOver(ctx context.Context, res providerid.Resource, key string, s *resourceState, h handover) ([]aadv1.AzureAssignedIdentity, error) {
	if len(h.adopt) == 0 && len(h.release) == 0 {
		return nil, nil
	}
	log := loggerFor(ctx)
	if len(h.owned) > 0 && !r.opts.Managed {
		if !s.loaded {
			owned, err := r.ledger.load(ctx, key)
			if err != nil {
				return nil, err
			}
			s.arm.owned, s.loaded = owned, true
		}
		next := copySet(s.arm.owned)
		for _, id := range h.owned {
			next[id] = true
		}
		if len(next) != len(s.arm.owned) {
			if err := r.ledger.save(ctx, key, next); err != nil {
				return nil, fmt.Errorf("recording the identities AAD Pod Identity's MIC attached: %w", err)
			}
			s.arm.owned = next
		}
	}
	var adopted []aadv1.AzureAssignedIdentity
	for _, obj := range h.adopt {
		patch := ctrl.MergeFrom(obj.DeepCopy())
		if obj.Annotations == nil {
			obj.Annotations = map[string]string{}
		}
		obj.Annotations[desired.ResourceAnnotation] = res.ID()
		controllerutil.RemoveFinalizer(obj, MICFinalizer)
		controllerutil.AddFinalizer(obj, Finalizer)
		if err := r.c.Patch(ctx, obj, patch); err != nil {
			if apierrors.IsNotFound(err) {
				continue
			}
			return nil, fmt.Errorf("adopting AzureAssignedIdentity %s/%s left by AAD Pod Identity's MIC: %w", obj.Namespace, obj.Name, err)
		}
		adopted = append(adopted, *obj)
		r.metrics.assignedObjects.WithLabelValues("adopted").Inc()
	}
	released := 0
	for _, obj := range h.release {
		// A pass whose cache still shows an object released moments ago repeats these calls; they then
		// answer NotFound and count nothing.
		done := false
		if controllerutil.ContainsFinalizer(obj, MICFinalizer) {
			patch := ctrl.MergeFrom(obj.DeepCopy())
			controllerutil.RemoveFinalizer(obj, MICFinalizer)
			err := r.c.Patch(ctx, obj, patch)
			if err != nil && !apierrors.IsNotFound(err) {
				return nil, fmt.Errorf("removing AAD Pod Identity's finalizer from AzureAssignedIdentity %s/%s: %w", obj.Namespace, obj.Name, err)
			}
			done = err == nil && obj.DeletionTimestamp != nil
		}
		if obj.DeletionTimestamp == nil {
			err := r.c.Delete(ctx, obj)
			if err != nil && !apierrors.IsNotFound(err) {
				return nil, fmt.Errorf("deleting AzureAssignedIdentity %s/%s left by AAD Pod Identity's MIC: %w", obj.Namespace, obj.Name, err)
			}
			done = err == nil
		}
		if done {
			released++
			r.metrics.assignedObjects.WithLabelValues("released").Inc()
		}
	}
	if len(adopted)+released > 0 {
		log.Info("took over AzureAssignedIdentities AAD Pod Identity's MIC left",
			"adopted", len(adopted), "released", released, "identitiesNowManaged", h.owned, "identitiesLeftAlone", h.kept)
	}
	return adopted, nil
}

// micOrphans releases the AzureAssignedIdentities MIC left for nodes that no longer exist: no resource pass
// ever sees them (a resource is found through its nodes). The identities MIC attached for them stay where
// they are: without the node the assigner cannot tell which VM or scale set they are on.
type micOrphans struct {
	c       ctrl.Client
	reader  ctrl.Reader // the node is read live: a node the cache has not seen yet is not gone
	metrics *metrics
}

func (m *micOrphans) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	var obj aadv1.AzureAssignedIdentity
	if err := m.c.Get(ctx, req.NamespacedName, &obj); err != nil {
		return reconcile.Result{}, ctrl.IgnoreNotFound(err)
	}
	if !fromMIC(&obj) || obj.Spec.NodeName == "" {
		return reconcile.Result{}, nil
	}
	err := m.reader.Get(ctx, ctrl.ObjectKey{Name: obj.Spec.NodeName}, &corev1.Node{})
	if err == nil || !apierrors.IsNotFound(err) {
		return reconcile.Result{}, err // the node exists: its resource's pass takes the object over
	}
	if controllerutil.ContainsFinalizer(&obj, MICFinalizer) {
		patch := ctrl.MergeFrom(obj.DeepCopy())
		controllerutil.RemoveFinalizer(&obj, MICFinalizer)
		if err := m.c.Patch(ctx, &obj, patch); err != nil {
			return reconcile.Result{}, ctrl.IgnoreNotFound(err)
		}
	}
	if obj.DeletionTimestamp == nil {
		if err := m.c.Delete(ctx, &obj); err != nil {
			return reconcile.Result{}, ctrl.IgnoreNotFound(err)
		}
	}
	m.metrics.assignedObjects.WithLabelValues("released").Inc()
	loggerFor(ctx).Info("released an AzureAssignedIdentity AAD Pod Identity's MIC left for a node that no longer exists; "+
		"if its identity is still attached to that node's VM or scale set, remove it there once no pod needs it",
		"object", req.String(), "node", obj.Spec.NodeName, "identity", identityOf(&obj))
	return reconcile.Result{}, nil
}

func identityOf(o *aadv1.AzureAssignedIdentity) string {
	if o.Spec.AzureIdentityRef == nil {
		return ""
	}
	return o.Spec.AzureIdentityRef.Spec.ResourceID
}
