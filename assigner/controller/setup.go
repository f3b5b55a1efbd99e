// Package controller is the assigner's control loop. Two reconcilers run in one controller-runtime manager:
//
//   - one work item per ARM resource (VM or scale set): it derives the desired AzureAssignedIdentity objects
//     and identities of that resource (package desired: only for pods the webhook injected, in namespaces
//     opted in to injection), PATCHes the difference through ARM (package azure)
//     and moves the AzureAssignedIdentity objects through Created -> Assigned -> Unassigned. Work items of
//     different resources run in parallel, so a slow or failing scale set never delays another; events that
//     arrive while a PATCH is in flight mark the item dirty and are coalesced into the next pass.
//   - one work item per pod carrying the podidentity.io/identities annotation: it keeps the annotation equal
//     to what the bindings say, so running sidecars learn about new identities.
//
// Both are level-triggered: every pass recomputes from the cache and ARM, so a restart loses nothing.
package controller

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	crmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/assigner/azure"
	"github.com/podidentity/podidentity/assigner/desired"
	"github.com/podidentity/podidentity/assigner/providerid"
	"github.com/podidentity/podidentity/internal/binding"
)

// Finalizer is set on every AzureAssignedIdentity the assigner creates, so that it can detach the identity
// before the object goes away.
const Finalizer = "podidentity.io/assigner"

// Client-side rate limits the assigner's Kubernetes client should have (the binary's --kube-api-qps and
// --kube-api-burst defaults). Each pod bound to an identity costs about one write (its
// AzureAssignedIdentity) when its node's identities are attached: 2,000 pods on a fresh cluster or after
// a failover are 2,000 writes at once, which wait for nothing but the API server once ARM has answered.
// At client-go's default of 5 (or controller-runtime's 20) queries per second that is 100 to 400 s of
// throttling; at 200 with a burst of 400 it was still 8 s, the whole of the time BenchmarkScale measured
// after the attach; at 500 with a burst of 1,000 the API server's own write rate bounds it (about 3 s there).
// Server-side API Priority and Fairness (on in every Kubernetes release the chart supports) still protects
// the API server: what it does not admit is answered 429 and retried by the client.
const (
	DefaultKubeAPIQPS   = 500
	DefaultKubeAPIBurst = 1000
)

// DefaultDetachGrace is the default of Options.DetachGrace (the binary's --detach-grace-period).
const DefaultDetachGrace = 30 * time.Second

// Options configure the controllers.
type Options struct {
	// Namespace holds the assigner's bookkeeping ConfigMaps (which identities it attached to which resource).
	Namespace string
	// Immutable identities are never removed: resource ids or client ids (AAD Pod Identity's
	// --immutable-user-msis took client ids), including the cluster's own identity.
	Immutable []string
	// Binding options (ForceNamespaced).
	Binding binding.Options
	// Pool (guard mode): attach identities only to VMs and scale sets whose nodes all carry this label.
	Pool *desired.Pool
	// Injection: attach identities only for pods the webhook injected (namespace opt-in label), unless
	// AttachUninjected.
	Injection desired.Injection
	// Managed: identities are attached by someone else; never call ARM.
	Managed bool
	// FederatedOnly (--federated-only): no Azure credentials; never call ARM (as Managed), attach nothing and
	// create no AzureAssignedIdentity for node identities, and tell their pods so (Warning Event
	// NodeIdentityNotAttached). Federated identities are never attached in any mode.
	FederatedOnly bool
	// Hold, when set, is asked before every pass over a VM or scale set: while it answers an error the pass
	// does nothing (no ARM call, no AzureAssignedIdentity write) and is tried again after HoldRetry. The
	// binary holds while AAD Pod Identity's MIC still runs.
	Hold func(context.Context) error
	// HoldRetry is how soon a pass that Hold stopped is tried again (default 10s).
	HoldRetry time.Duration
	// Workers is the number of ARM resources worked on at once (default 100). A resource waiting for a
	// long PATCH occupies one worker, so this bounds how many slow resources can be absorbed.
	Workers int
	// Resync is how often each resource in use is read back from ARM to repair drift (default 10m).
	Resync time.Duration
	// Debounce delays a resource's pass after an event so that a burst becomes one PATCH (default 500ms).
	Debounce time.Duration
	// IsolationTTL is how long an identity ARM rejected is left out before it is tried again (default 5m).
	IsolationTTL time.Duration
	// BaseBackoff and MaxBackoff bound the per-resource retry delay after failures (defaults 1s, 5m).
	BaseBackoff, MaxBackoff time.Duration
	// BusyBackoff and BusyMaxBackoff bound the delay before looking again at a resource on which another
	// client's operation runs (ARM shows it Updating, or refused a PATCH with 409): no PATCH is sent
	// meanwhile, and the delay doubles with each sign of the operation (defaults 10s, 2m).
	BusyBackoff, BusyMaxBackoff time.Duration
	// DetachGrace is how long an identity stays attached after the AzureIdentity or AzureIdentityBinding
	// that running pods use was deleted, so that a delete and re-create (a GitOps prune, kubectl replace)
	// does not cut their tokens (default 30s; negative: detach at once).
	DetachGrace time.Duration
	// ARMTimeout bounds one pass's ARM calls, PATCH polling included (default 30m).
	ARMTimeout time.Duration
	// PendingObjectsAfter: new AzureAssignedIdentity objects are created once ARM has answered, in their
	// final state (one write each); a PATCH still running after this long has them created as Created
	// meanwhile, so that a slow scale set shows its pending assignments (default 1m: longer than a typical
	// 30-60 s scale-set PATCH).
	PendingObjectsAfter time.Duration
	// Registerer receives the metrics (default: controller-runtime's registry, served on /metrics).
	Registerer prometheus.Registerer
	// Recorder emits Events; default: the manager's recorder.
	Recorder Recorder
}

// Recorder is the part of an events recorder the controller uses.
type Recorder interface {
	Eventf(regarding, related runtime.Object, eventtype, reason, action, note string, args ...interface{})
}

func (o *Options) defaults() {
	if o.Workers <= 0 {
		o.Workers = 100
	}
	if o.Resync <= 0 {
		o.Resync = 10 * time.Minute
	}
	if o.Debounce < 0 {
		o.Debounce = 0
	} else if o.Debounce == 0 {
		o.Debounce = 500 * time.Millisecond
	}
	if o.IsolationTTL <= 0 {
		o.IsolationTTL = 5 * time.Minute
	}
	if o.BaseBackoff <= 0 {
		o.BaseBackoff = time.Second
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = 5 * time.Minute
	}
	if o.BusyBackoff <= 0 {
		o.BusyBackoff = 10 * time.Second
	}
	if o.BusyMaxBackoff <= 0 {
		o.BusyMaxBackoff = 2 * time.Minute
	}
	if o.HoldRetry <= 0 {
		o.HoldRetry = 10 * time.Second
	}
	if o.DetachGrace == 0 {
		o.DetachGrace = DefaultDetachGrace
	}
	if o.ARMTimeout <= 0 {
		o.ARMTimeout = 30 * time.Minute
	}
	if o.PendingObjectsAfter <= 0 {
		o.PendingObjectsAfter = time.Minute
	}
	if o.Namespace == "" {
		o.Namespace = "kube-system"
	}
}

// Field indexes on the manager's cache.
const (
	indexPodNode       = "spec.nodeName"
	indexNodeResource  = "podidentity.resource"
	indexAssignedByRes = "podidentity.resource"
	// indexMICByNode: AzureAssignedIdentity objects AAD Pod Identity's MIC left, by spec.nodeName (MIC's
	// objects carry no resource annotation; their node says which resource they belong to).
	indexMICByNode = "podidentity.micnode"
)

func nodeResourceKey(n *corev1.Node) string {
	r, err := providerid.Parse(n.Spec.ProviderID)
	if err != nil {
		return ""
	}
	return r.Key()
}

func assignedResourceKey(a *aadv1.AzureAssignedIdentity) string {
	r, err := providerid.ParseResourceID(a.Annotations[desired.ResourceAnnotation])
	if err != nil {
		return ""
	}
	return r.Key()
}

// index is one field index of the assigner's cache.
type index struct {
	obj     client.Object
	field   string
	extract client.IndexerFunc
}

// indexes are the cache's field indexes; tests that stand a fake client in for the cache build it with them.
func indexes() []index {
	return []index{
		{&corev1.Pod{}, indexPodNode, func(o client.Object) []string { return []string{o.(*corev1.Pod).Spec.NodeName} }},
		{&corev1.Node{}, indexNodeResource, func(o client.Object) []string { return []string{nodeResourceKey(o.(*corev1.Node))} }},
		{&aadv1.AzureAssignedIdentity{}, indexAssignedByRes, func(o client.Object) []string {
			return []string{assignedResourceKey(o.(*aadv1.AzureAssignedIdentity))}
		}},
		{&aadv1.AzureAssignedIdentity{}, indexMICByNode, micNode},
		// A pass reads the bindings of its pods' selectors only (binding.Candidates), as do pod annotations.
		{&aadv1.AzureIdentityBinding{}, binding.SelectorField, binding.IndexSelector},
	}
}

// Setup adds the controllers to mgr. arm may be nil in managed mode.
func Setup(ctx context.Context, mgr ctrl.Manager, arm azure.Client, opts Options) error {
	opts.defaults()
	if opts.FederatedOnly {
		opts.Managed = true // no ARM client: nothing is attached, nothing detached
	}
	if arm == nil && !opts.Managed {
		return fmt.Errorf("an ARM client is required unless --managed or --federated-only is set")
	}
	for _, ix := range indexes() {
		if err := mgr.GetFieldIndexer().IndexField(ctx, ix.obj, ix.field, ix.extract); err != nil {
			return err
		}
	}
	m := newMetrics(opts.Registerer)
	reg := opts.Registerer
	if reg == nil {
		reg = crmetrics.Registry
	}
	_ = reg.Register(newAssignmentsCollector(mgr.GetClient())) // a second registration (a restarted manager in tests) keeps the first
	rec := opts.Recorder
	if rec == nil {
		rec = mgr.GetEventRecorder("podidentity-assigner")
	}
	rr := &resourceReconciler{
		c: mgr.GetClient(), reader: mgr.GetAPIReader(), arm: arm, opts: opts, metrics: m, recorder: rec,
		ledger: &ledger{c: mgr.GetClient(), reader: mgr.GetAPIReader(), namespace: opts.Namespace},
		keep:   immutableSet(opts.Immutable), states: map[string]*resourceState{},
		subGates: map[string]subGate{}, unattached: map[string]map[string]int{},
	}
	c := mgr.GetClient()
	cache := mgr.GetCache()
	enqueue := func(q workqueue.TypedRateLimitingInterface[reconcile.Request], key string) {
		if key != "" {
			q.AddAfter(reconcile.Request{NamespacedName: types.NamespacedName{Name: key}}, opts.Debounce)
		}
	}
	// enqueueCreated is enqueue for a create event. An object of the cache's initial list is not debounced:
	// the controller's workers start only once every cache it watches has synced, so the start-up's events
	// are one burst already, and the delay would only postpone the first pass of every start and failover.
	enqueueCreated := func(q workqueue.TypedRateLimitingInterface[reconcile.Request], key string, initial bool) {
		if key == "" {
			return
		}
		if initial {
			q.Add(reconcile.Request{NamespacedName: types.NamespacedName{Name: key}})
			return
		}
		enqueue(q, key)
	}
	// podKey is the resource of a pod's node. A node the cache does not hold yet gives no key, and that is no
	// decision on a stale cache: the node's own create event, when the cache gets it, enqueues the resource,
	// whose pass lists the node's pods and so finds this one.
	podKey := func(ctx context.Context, p *corev1.Pod) string {
		if p.Spec.NodeName == "" {
			return ""
		}
		var n corev1.Node
		if err := c.Get(ctx, client.ObjectKey{Name: p.Spec.NodeName}, &n); err != nil {
			return ""
		}
		return nodeResourceKey(&n)
	}
	// assignedKey is the resource of an AzureAssignedIdentity: from our annotation, or for an object MIC
	// left, from its node.
	assignedKey := func(ctx context.Context, a *aadv1.AzureAssignedIdentity) string {
		if !fromMIC(a) {
			return assignedResourceKey(a)
		}
		var n corev1.Node
		if a.Spec.NodeName == "" || c.Get(ctx, client.ObjectKey{Name: a.Spec.NodeName}, &n) != nil {
			return ""
		}
		return nodeResourceKey(&n)
	}
	relevantPod := func(p *corev1.Pod) bool { return binding.Selector(p) != "" && p.Spec.NodeName != "" }
	allResources := func(ctx context.Context, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
		var nodes corev1.NodeList
		if err := c.List(ctx, &nodes, client.UnsafeDisableDeepCopy); err == nil { // keys read, nothing kept
			seen := map[string]bool{}
			for i := range nodes.Items {
				if k := nodeResourceKey(&nodes.Items[i]); k != "" && !seen[k] {
					seen[k] = true
					enqueue(q, k)
				}
			}
		}
		var aais aadv1.AzureAssignedIdentityList
		if err := c.List(ctx, &aais, client.UnsafeDisableDeepCopy); err == nil {
			for i := range aais.Items {
				enqueue(q, assignedKey(ctx, &aais.Items[i]))
			}
		}
	}
	podHandler := handler.TypedFuncs[*corev1.Pod, reconcile.Request]{
		CreateFunc: func(ctx context.Context, e event.TypedCreateEvent[*corev1.Pod], q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			if relevantPod(e.Object) {
				enqueueCreated(q, podKey(ctx, e.Object), e.IsInInitialList)
			}
		},
		UpdateFunc: func(ctx context.Context, e event.TypedUpdateEvent[*corev1.Pod], q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			o, n := e.ObjectOld, e.ObjectNew
			if !relevantPod(o) && !relevantPod(n) {
				return
			}
			if binding.Selector(o) == binding.Selector(n) && o.Spec.NodeName == n.Spec.NodeName &&
				o.Status.Phase == n.Status.Phase && labelsEqual(o.Labels, n.Labels) &&
				hasIdentitiesAnnotation(o) == hasIdentitiesAnnotation(n) {
				return // nothing the desired state depends on changed
			}
			enqueue(q, podKey(ctx, o))
			enqueue(q, podKey(ctx, n))
		},
		DeleteFunc: func(ctx context.Context, e event.TypedDeleteEvent[*corev1.Pod], q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			if relevantPod(e.Object) {
				enqueue(q, podKey(ctx, e.Object))
			}
		},
	}
	nodeHandler := handler.TypedFuncs[*corev1.Node, reconcile.Request]{
		CreateFunc: func(_ context.Context, e event.TypedCreateEvent[*corev1.Node], q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			enqueueCreated(q, nodeResourceKey(e.Object), e.IsInInitialList)
		},
		UpdateFunc: func(_ context.Context, e event.TypedUpdateEvent[*corev1.Node], q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			if e.ObjectOld.Spec.ProviderID != e.ObjectNew.Spec.ProviderID ||
				(opts.Pool != nil && opts.Pool.Contains(e.ObjectOld) != opts.Pool.Contains(e.ObjectNew)) {
				enqueue(q, nodeResourceKey(e.ObjectOld))
				enqueue(q, nodeResourceKey(e.ObjectNew))
			}
		},
		DeleteFunc: func(_ context.Context, e event.TypedDeleteEvent[*corev1.Node], q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			enqueue(q, nodeResourceKey(e.Object))
		},
	}
	// A namespace that is opted in or out changes whether its pods count as injected: bring back the
	// resources its bound pods run on. Other namespace changes do not matter.
	optedIn := func(ns *corev1.Namespace) bool { return desired.OptedIn(ns.Labels, opts.Injection.LabelKey()) }
	namespacePods := func(ctx context.Context, ns string, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
		var pods corev1.PodList
		if err := c.List(ctx, &pods, client.InNamespace(ns)); err != nil {
			loggerFor(ctx).Error(err, "listing the pods of a namespace whose opt-in label changed; they are reconsidered at the next resync", "namespace", ns)
			return
		}
		seen := map[string]bool{}
		for i := range pods.Items {
			if p := &pods.Items[i]; relevantPod(p) {
				if k := podKey(ctx, p); !seen[k] {
					seen[k] = true
					enqueue(q, k)
				}
			}
		}
	}
	namespaceHandler := handler.TypedFuncs[*corev1.Namespace, reconcile.Request]{
		// Without the label a namespace counts as if it were absent, so only an opted-in one matters here.
		// A namespace of the initial list needs no enumeration: each of its pods' own initial-list event
		// enqueues the pod's resource, and the enumeration would copy every pod of the namespace at start-up.
		CreateFunc: func(ctx context.Context, e event.TypedCreateEvent[*corev1.Namespace], q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			if !e.IsInInitialList && optedIn(e.Object) {
				namespacePods(ctx, e.Object.Name, q)
			}
		},
		UpdateFunc: func(ctx context.Context, e event.TypedUpdateEvent[*corev1.Namespace], q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			if optedIn(e.ObjectOld) != optedIn(e.ObjectNew) {
				namespacePods(ctx, e.ObjectNew.Name, q)
			}
		},
		DeleteFunc: func(ctx context.Context, e event.TypedDeleteEvent[*corev1.Namespace], q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			if optedIn(e.Object) {
				namespacePods(ctx, e.Object.Name, q)
			}
		},
	}
	assignedHandler := handler.TypedFuncs[*aadv1.AzureAssignedIdentity, reconcile.Request]{
		// Creation: mostly our own doing, but after a restart it is how a resource whose nodes are all gone
		// gets its leftover assignments cleaned up. Deletion requests and deletions bring the resource back.
		CreateFunc: func(ctx context.Context, e event.TypedCreateEvent[*aadv1.AzureAssignedIdentity], q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			if rr.ownWrite(e.Object) {
				// Created by a pass that already accounted for it: another pass would only burn CPU that
				// the remaining object writes need (2,000 of them after a scale set's PATCH).
				return
			}
			enqueueCreated(q, assignedKey(ctx, e.Object), e.IsInInitialList)
		},
		UpdateFunc: func(ctx context.Context, e event.TypedUpdateEvent[*aadv1.AzureAssignedIdentity], q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			if e.ObjectNew.DeletionTimestamp != nil && e.ObjectOld.DeletionTimestamp == nil {
				enqueue(q, assignedKey(ctx, e.ObjectNew))
			}
		},
		DeleteFunc: func(ctx context.Context, e event.TypedDeleteEvent[*aadv1.AzureAssignedIdentity], q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			enqueue(q, assignedKey(ctx, e.Object))
		},
	}
	everyResource := newFanOut(allResources)
	err := ctrl.NewControllerManagedBy(mgr).Named("arm-resource").
		WithOptions(controller.Options{MaxConcurrentReconciles: opts.Workers}).
		WatchesRawSource(source.Kind(cache, &corev1.Pod{}, podHandler)).
		WatchesRawSource(source.Kind(cache, &corev1.Node{}, nodeHandler)).
		WatchesRawSource(source.Kind(cache, &corev1.Namespace{}, namespaceHandler)).
		WatchesRawSource(source.Kind(cache, &aadv1.AzureAssignedIdentity{}, assignedHandler)).
		WatchesRawSource(source.Kind(cache, &aadv1.AzureIdentityBinding{}, allOf[*aadv1.AzureIdentityBinding](everyResource))).
		WatchesRawSource(source.Kind(cache, &aadv1.AzureIdentity{}, allOf[*aadv1.AzureIdentity](everyResource))).
		WatchesRawSource(source.Kind(cache, &aadv1.AzurePodIdentityException{}, allOf[*aadv1.AzurePodIdentityException](everyResource))).
		Complete(rr)
	if err != nil {
		return err
	}
	// MIC's objects for nodes that are gone; a node's deletion brings back MIC's objects for it.
	err = ctrl.NewControllerManagedBy(mgr).Named("mic-orphans").
		WatchesRawSource(source.Kind(cache, &aadv1.AzureAssignedIdentity{}, handler.TypedFuncs[*aadv1.AzureAssignedIdentity, reconcile.Request]{
			CreateFunc: func(_ context.Context, e event.TypedCreateEvent[*aadv1.AzureAssignedIdentity], q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
				if fromMIC(e.Object) {
					q.Add(reconcile.Request{NamespacedName: client.ObjectKeyFromObject(e.Object)})
				}
			},
		})).
		WatchesRawSource(source.Kind(cache, &corev1.Node{}, handler.TypedFuncs[*corev1.Node, reconcile.Request]{
			DeleteFunc: func(ctx context.Context, e event.TypedDeleteEvent[*corev1.Node], q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
				var l aadv1.AzureAssignedIdentityList
				if err := c.List(ctx, &l, client.MatchingFields{indexMICByNode: e.Object.Name}); err != nil {
					loggerFor(ctx).Error(err, "listing the AzureAssignedIdentities AAD Pod Identity's MIC left for a deleted node; they are released when the assigner restarts", "node", e.Object.Name)
					return
				}
				for i := range l.Items {
					q.Add(reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&l.Items[i])})
				}
			},
		})).
		Complete(&micOrphans{c: c, reader: mgr.GetAPIReader(), metrics: m})
	if err != nil {
		return err
	}
	return setupAnnotations(mgr, opts, m)
}

// allOf enqueues everything on any change of an object of type T, once per burst of changes: a cache sync of
// 10,000 bindings is 10,000 create events, and an enumeration of every node and AzureAssignedIdentity for
// each (or of every annotated pod) made the start-up quadratic and kept the controllers' caches from
// reporting synced within their timeout.
func allOf[T client.Object](f *fanOut) handler.TypedEventHandler[T, reconcile.Request] {
	return handler.TypedFuncs[T, reconcile.Request]{
		// An object of the initial list needs no enumeration. Both enumerations enqueue work items that the
		// controller's own initial-list events enqueue already (the resources of every node and
		// AzureAssignedIdentity; every annotated pod), and its workers start only once all its caches have
		// synced. One more enumeration could enqueue a resource again while its first pass waits for a PATCH,
		// and so run a second pass.
		CreateFunc: func(ctx context.Context, e event.TypedCreateEvent[T], q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			if !e.IsInInitialList {
				f.trigger(ctx, q)
			}
		},
		UpdateFunc: func(ctx context.Context, _ event.TypedUpdateEvent[T], q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			f.trigger(ctx, q)
		},
		DeleteFunc: func(ctx context.Context, _ event.TypedDeleteEvent[T], q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			f.trigger(ctx, q)
		},
	}
}

// fanOut runs an enumeration of every work item at most once at a time, and once more for all the changes
// that arrive while it waits to run. No change is missed: a handler runs after the cache holds its change, and
// an enumeration lists the cache only after it cleared pending, so a change that found pending set is seen
// by the enumeration it was folded into, and one that did not starts its own.
type fanOut struct {
	all     func(context.Context, workqueue.TypedRateLimitingInterface[reconcile.Request])
	mu      sync.Mutex
	pending bool
}

func newFanOut(all func(context.Context, workqueue.TypedRateLimitingInterface[reconcile.Request])) *fanOut {
	return &fanOut{all: all}
}

func (f *fanOut) trigger(ctx context.Context, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
	f.mu.Lock()
	if f.pending {
		f.mu.Unlock()
		return
	}
	f.pending = true
	f.mu.Unlock()
	go func() {
		f.mu.Lock()
		f.pending = false
		f.mu.Unlock()
		f.all(ctx, q)
	}()
}

func labelsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if bv, ok := b[k]; !ok || bv != v {
			return false
		}
	}
	return true
}

// immutableSet returns the Keep function of azure.Goal for the given resource ids and client ids.
func immutableSet(entries []string) func(string, string) bool {
	ids, clients := map[string]bool{}, map[string]bool{}
	for _, e := range entries {
		e = strings.ToLower(strings.TrimSpace(e))
		if e == "" {
			continue
		}
		if strings.HasPrefix(e, "/subscriptions/") {
			ids[strings.TrimRight(e, "/")] = true
		} else {
			clients[e] = true
		}
	}
	return func(id, clientID string) bool {
		return ids[id] || (clientID != "" && clients[strings.ToLower(clientID)])
	}
}

func loggerFor(ctx context.Context) logr.Logger { return ctrl.LoggerFrom(ctx) }
