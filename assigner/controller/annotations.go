package controller

import (
	"context"
	"fmt"

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
	"github.com/podidentity/podidentity/internal/defaults"
)

// annotationReconciler keeps podidentity.io/identities current on pods that carry it (the webhook put it
// there for the sidecar, which reads it through the downward API and so sees changes without a restart).
type annotationReconciler struct {
	c       client.Client
	opts    Options
	metrics *metrics
}

func hasIdentitiesAnnotation(o client.Object) bool {
	_, ok := o.GetAnnotations()[defaults.IdentitiesAnnotation]
	return ok
}

func setupAnnotations(mgr ctrl.Manager, opts Options, m *metrics) error {
	ar := &annotationReconciler{c: mgr.GetClient(), opts: opts, metrics: m}
	c := mgr.GetClient()
	allPods := func(ctx context.Context, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
		var pods corev1.PodList
		if err := c.List(ctx, &pods); err != nil {
			return
		}
		for i := range pods.Items {
			if hasIdentitiesAnnotation(&pods.Items[i]) {
				q.Add(reconcile.Request{NamespacedName: types.NamespacedName{Namespace: pods.Items[i].Namespace, Name: pods.Items[i].Name}})
			}
		}
	}
	cache := mgr.GetCache()
	return ctrl.NewControllerManagedBy(mgr).Named("pod-identities-annotation").
		WithOptions(controller.Options{MaxConcurrentReconciles: 4}).
		For(&corev1.Pod{}, builder.WithPredicates(predicate.NewPredicateFuncs(hasIdentitiesAnnotation))).
		WatchesRawSource(source.Kind(cache, &aadv1.AzureIdentityBinding{}, allOf[*aadv1.AzureIdentityBinding](allPods))).
		WatchesRawSource(source.Kind(cache, &aadv1.AzureIdentity{}, allOf[*aadv1.AzureIdentity](allPods))).
		WatchesRawSource(source.Kind(cache, &aadv1.AzurePodIdentityException{}, allOf[*aadv1.AzurePodIdentityException](allPods))).
		Complete(ar)
}

// Reconcile rewrites one pod's annotation when the bindings say something else now.
func (a *annotationReconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	var pod corev1.Pod
	if err := a.c.Get(ctx, req.NamespacedName, &pod); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	current, ok := pod.Annotations[defaults.IdentitiesAnnotation]
	if !ok || pod.DeletionTimestamp != nil {
		return reconcile.Result{}, nil
	}
	var bl aadv1.AzureIdentityBindingList
	var il aadv1.AzureIdentityList
	var el aadv1.AzurePodIdentityExceptionList
	for _, l := range []client.ObjectList{&bl, &il, &el} {
		if err := a.c.List(ctx, l); err != nil {
			return reconcile.Result{}, err
		}
	}
	var ids []binding.Identity
	if _, excepted := binding.Excepted(&pod, el.Items); !excepted {
		ids, _ = binding.Resolve(&pod, bl.Items, il.Items, a.opts.Binding)
	}
	want := binding.Encode(ids)
	if want == current {
		return reconcile.Result{}, nil
	}
	patch := client.MergeFrom(pod.DeepCopy())
	pod.Annotations[defaults.IdentitiesAnnotation] = want
	if err := a.c.Patch(ctx, &pod, patch); err != nil {
		if apierrors.IsNotFound(err) {
			return reconcile.Result{}, nil
		}
		return reconcile.Result{}, fmt.Errorf("updating annotation %s of pod %s: %w", defaults.IdentitiesAnnotation, req, err)
	}
	a.metrics.annotationUpdates.Inc()
	ctrl.LoggerFrom(ctx).Info("pod identities annotation updated", "identities", len(ids))
	return reconcile.Result{}, nil
}
