package controller

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/binding"
	"github.com/podidentity/podidentity/internal/contract"
)

// annotationReconciler keeps podidentity.io/identities current on pods that carry it (the webhook put it
// there for the sidecar, which reads it through the downward API and so sees changes without a restart).
type annotationReconciler struct {
	c       client.Client
	opts    Options
	metrics *metrics

	mu sync.Mutex
	// lostSince: per pod (namespace/name), when each identity it lost to a deletion was first seen lost, for
	// the detach grace period (keepLost). In memory: a restarted assigner starts the grace over, so it only
	// ever runs longer, as on the VM.
	lostSince map[string]podLoss
}

// podLoss is lostSince of one pod, tied to its UID so that a re-created pod of the same name starts afresh.
type podLoss struct {
	uid   types.UID
	since map[string]time.Time
}

func hasIdentitiesAnnotation(o client.Object) bool {
	_, ok := o.GetAnnotations()[contract.IdentitiesAnnotation]
	return ok
}

func setupAnnotations(mgr ctrl.Manager, opts Options, m *metrics) error {
	ar := &annotationReconciler{c: mgr.GetClient(), opts: opts, metrics: m, lostSince: map[string]podLoss{}}
	c := mgr.GetClient()
	allPods := func(ctx context.Context, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
		var pods corev1.PodList
		if err := c.List(ctx, &pods, client.UnsafeDisableDeepCopy); err != nil { // names read, nothing kept
			return
		}
		for i := range pods.Items {
			if hasIdentitiesAnnotation(&pods.Items[i]) {
				q.Add(reconcile.Request{NamespacedName: types.NamespacedName{Namespace: pods.Items[i].Namespace, Name: pods.Items[i].Name}})
			}
		}
	}
	cache := mgr.GetCache()
	everyPod := newFanOut(allPods)
	return ctrl.NewControllerManagedBy(mgr).Named("pod-identities-annotation").
		WithOptions(controller.Options{MaxConcurrentReconciles: 4}).
		For(&corev1.Pod{}, builder.WithPredicates(predicate.NewPredicateFuncs(hasIdentitiesAnnotation))).
		WatchesRawSource(source.Kind(cache, &aadv1.AzureIdentityBinding{}, allOf[*aadv1.AzureIdentityBinding](everyPod))).
		WatchesRawSource(source.Kind(cache, &aadv1.AzureIdentity{}, allOf[*aadv1.AzureIdentity](everyPod))).
		WatchesRawSource(source.Kind(cache, &aadv1.AzurePodIdentityException{}, allOf[*aadv1.AzurePodIdentityException](everyPod))).
		Complete(ar)
}

// Reconcile rewrites one pod's annotation when the bindings say something else now.
func (a *annotationReconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	var pod corev1.Pod
	if err := a.c.Get(ctx, req.NamespacedName, &pod); err != nil {
		if apierrors.IsNotFound(err) {
			a.forget(req.String())
		}
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	current, ok := pod.Annotations[contract.IdentitiesAnnotation]
	if !ok || pod.DeletionTimestamp != nil {
		a.forget(req.String())
		return reconcile.Result{}, nil
	}
	// Keyed reads only (the pod's namespace's exceptions, its selector's bindings, the identities they and the
	// annotation name): a change of one binding brings every annotated pod of the cluster here, and a walk of
	// every binding for each made that quadratic.
	var el aadv1.AzurePodIdentityExceptionList
	if err := a.c.List(ctx, &el, client.InNamespace(pod.Namespace), client.UnsafeDisableDeepCopy); err != nil {
		return reconcile.Result{}, err
	}
	var ids []binding.Identity
	if _, excepted := binding.Excepted(&pod, el.Items); !excepted {
		src := &binding.ReaderSource{Ctx: ctx, Reader: a.c}
		if a.opts.Binding.ForceNamespaced {
			src.Namespace = pod.Namespace
		}
		bl, il, err := binding.Candidates(&pod, src, a.opts.Binding)
		if err != nil {
			return reconcile.Result{}, err
		}
		ids, _ = binding.Resolve(&pod, bl, il, a.opts.Binding)
		ids = binding.Servable(&pod, ids)
	}
	// Identities the pod lost because their AzureIdentity or binding was deleted stay for the grace period,
	// as they stay on the VM: a delete and re-create (a GitOps prune, kubectl replace) must not cut its tokens.
	had, _ := binding.Decode(current) // an unreadable value is replaced
	il, bl, err := a.stillThere(ctx, had)
	if err != nil {
		return reconcile.Result{}, err
	}
	keep, wake := a.keepLost(req.String(), pod.UID, had, ids, il, bl, time.Now())
	want := binding.Encode(append(ids, keep...))
	result := reconcile.Result{RequeueAfter: wake}
	if want == current {
		return result, nil
	}
	patch := client.MergeFrom(pod.DeepCopy())
	pod.Annotations[contract.IdentitiesAnnotation] = want
	if err := a.c.Patch(ctx, &pod, patch); err != nil {
		if apierrors.IsNotFound(err) {
			return reconcile.Result{}, nil
		}
		return reconcile.Result{}, fmt.Errorf("updating annotation %s of pod %s: %w", contract.IdentitiesAnnotation, req, err)
	}
	a.metrics.annotationUpdates.Inc()
	ctrl.LoggerFrom(ctx).Info("pod identities annotation updated", "identities", len(ids), "keptForGrace", len(keep))
	return result, nil
}

// stillThere reads the AzureIdentities and bindings the annotation names that still exist: all lostIdentities
// needs to tell an identity lost to a deletion from one lost to a label or selector change.
func (a *annotationReconciler) stillThere(ctx context.Context, had []binding.Identity) ([]aadv1.AzureIdentity, []aadv1.AzureIdentityBinding, error) {
	var ids []aadv1.AzureIdentity
	var binds []aadv1.AzureIdentityBinding
	for _, h := range had {
		var id aadv1.AzureIdentity
		switch err := a.c.Get(ctx, client.ObjectKey{Namespace: h.Namespace, Name: h.Name}, &id, client.UnsafeDisableDeepCopy); {
		case err == nil:
			ids = append(ids, id)
		case !apierrors.IsNotFound(err):
			return nil, nil, err
		}
		ns, name, ok := strings.Cut(h.Binding, "/")
		if !ok {
			continue
		}
		var b aadv1.AzureIdentityBinding
		switch err := a.c.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &b, client.UnsafeDisableDeepCopy); {
		case err == nil:
			binds = append(binds, b)
		case !apierrors.IsNotFound(err):
			return nil, nil, err
		}
	}
	return ids, binds, nil
}

// keepLost runs lostIdentities against this pod's remembered times and stores what it returns.
func (a *annotationReconciler) keepLost(pod string, uid types.UID, had, resolved []binding.Identity, identities []aadv1.AzureIdentity, bindings []aadv1.AzureIdentityBinding, now time.Time) ([]binding.Identity, time.Duration) {
	a.mu.Lock()
	defer a.mu.Unlock()
	prev := a.lostSince[pod]
	if prev.uid != uid {
		prev = podLoss{uid: uid}
	}
	keep, since, wake := lostIdentities(had, resolved, identities, bindings, prev.since, now, a.opts.DetachGrace)
	if len(since) == 0 {
		delete(a.lostSince, pod)
	} else {
		a.lostSince[pod] = podLoss{uid: uid, since: since}
	}
	return keep, wake
}

func (a *annotationReconciler) forget(pod string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.lostSince, pod)
}

// lostIdentities decides which identities a pod's annotation keeps although its bindings no longer resolve
// them: those of had (the annotation now) that resolved lacks because their AzureIdentity or the binding that
// bound them was deleted, for grace from when each was first seen lost (since, carried between calls). An
// identity lost because the pod's labels or a binding's selector changed goes at once, as on the VM
// (graceCandidates). It returns the identities kept, the since to carry on, and when the first grace ends
// (0: none running).
func lostIdentities(had, resolved []binding.Identity, identities []aadv1.AzureIdentity, bindings []aadv1.AzureIdentityBinding, since map[string]time.Time, now time.Time, grace time.Duration) ([]binding.Identity, map[string]time.Time, time.Duration) {
	if grace <= 0 {
		return nil, nil, 0
	}
	present := map[string]bool{}
	for _, id := range resolved {
		present[id.Namespace+"/"+id.Name] = true
	}
	ids, binds := map[string]bool{}, map[string]bool{}
	for i := range identities {
		ids[identities[i].Namespace+"/"+identities[i].Name] = true
	}
	for i := range bindings {
		binds[bindings[i].Namespace+"/"+bindings[i].Name] = true
	}
	var keep []binding.Identity
	next := map[string]time.Time{}
	var wake time.Duration
	for _, id := range had {
		key := id.Namespace + "/" + id.Name
		if present[key] || (ids[key] && binds[id.Binding]) {
			continue // still resolved, or lost to a label or selector change
		}
		t, ok := since[key]
		if !ok {
			t = now
		}
		next[key] = t
		if left := t.Add(grace).Sub(now); left > 0 {
			keep = append(keep, id)
			if wake == 0 || left < wake {
				wake = left
			}
		}
	}
	return keep, next, wake
}
