package controller

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	ctrl "sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/assigner/azure"
	"github.com/podidentity/podidentity/assigner/desired"
	"github.com/podidentity/podidentity/assigner/providerid"
)

// objectWriters bounds the parallel Kubernetes writes of one resource's pass.
const objectWriters = 8

// recentWriteTTL is how long the assigner trusts its own write of an AzureAssignedIdentity over an informer
// cache that does not show it yet. Without it, the pass that its own writes trigger would create the same
// objects again (answered 409 AlreadyExists) and repeat status updates: 1,589 extra API writes for 2,000
// objects in BenchmarkScale. If the cache has still not caught up after this long, the write is repeated.
const recentWriteTTL = time.Minute

// resourceState is what the reconciler remembers about one ARM resource between passes. Only the worker
// of that resource touches it (the work queue never runs one key twice at once), except recent, which the
// event handlers read too; the map holding the states is guarded by resourceReconciler.mu.
type resourceState struct {
	cur      *azure.ResourceIdentity // last known identities; nil when unknown
	readAt   time.Time
	owned    map[string]bool // identities the assigner attached (mirrors the ledger ConfigMap)
	loaded   bool
	isolated map[string]isolation
	failures int

	// recent holds this worker's own writes of AzureAssignedIdentity objects (by namespace/name) until the
	// informer cache shows them; guarded by mu, as a pass writes objects in parallel.
	mu     sync.Mutex
	recent map[string]recentWrite
}

// deletedByUs is the recentWrite status of an object the assigner deleted.
const deletedByUs = "\x00deleted"

// recentWrite is a status (and error annotation) the assigner wrote to an object, and when.
type recentWrite struct {
	status, why string
	at          time.Time
}

// wrote records a write of the object's status.
func (s *resourceState) wrote(key, status, why string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.recent[key] = recentWrite{status: status, why: why, at: time.Now()}
}

// alreadyWrote tells whether the assigner recently wrote exactly this status and annotation to the object
// (which the cache may not show yet).
func (s *resourceState) alreadyWrote(key, status, why string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	w, ok := s.recent[key]
	return ok && w.status == status && w.why == why
}

// recentKeys lists the objects with recorded writes.
func (s *resourceState) recentKeys() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	keys := make([]string, 0, len(s.recent))
	for k := range s.recent {
		keys = append(keys, k)
	}
	return keys
}

// forgetSeen drops recorded writes that the cache now shows (obj as cached, nil when absent) or that are
// older than recentWriteTTL, and tells whether a write of the object is still recorded.
func (s *resourceState) forgetSeen(key string, obj *aadv1.AzureAssignedIdentity, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	w, ok := s.recent[key]
	if !ok {
		return false
	}
	seen := obj != nil && obj.Status.Status == w.status && obj.Annotations[desired.ErrorAnnotation] == w.why
	if w.status == deletedByUs {
		seen = obj == nil
	}
	if now.Sub(w.at) > recentWriteTTL || seen {
		delete(s.recent, key)
		return false
	}
	return true
}

type isolation struct {
	code, reason string
	until        time.Time
}

type resourceReconciler struct {
	c        ctrl.Client
	reader   ctrl.Reader
	arm      azure.Client
	opts     Options
	metrics  *metrics
	recorder Recorder
	ledger   *ledger
	keep     func(id, clientID string) bool

	mu     sync.Mutex
	states map[string]*resourceState
}

// ownWrite tells whether obj, as the informer shows it, is exactly what this assigner last wrote to it.
func (r *resourceReconciler) ownWrite(obj *aadv1.AzureAssignedIdentity) bool {
	r.mu.Lock()
	s := r.states[assignedResourceKey(obj)]
	r.mu.Unlock()
	return s != nil && s.alreadyWrote(obj.Namespace+"/"+obj.Name, obj.Status.Status, obj.Annotations[desired.ErrorAnnotation])
}

func (r *resourceReconciler) state(key string) *resourceState {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.states[key]
	if s == nil {
		s = &resourceState{isolated: map[string]isolation{}, recent: map[string]recentWrite{}}
		r.states[key] = s
	}
	return s
}

// Reconcile brings one VM or scale set, and the AzureAssignedIdentity objects on it, to the desired state.
func (r *resourceReconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	key := req.Name
	log := loggerFor(ctx).WithValues("resource", key)
	ctx = logr.NewContext(ctx, log)
	res, err := providerid.ParseResourceID(key)
	if err != nil {
		log.Error(err, "work item is not an ARM resource id; dropping it")
		return reconcile.Result{}, nil
	}
	start := time.Now()
	defer func() { r.metrics.passDuration.Observe(time.Since(start).Seconds()) }()

	var nodes corev1.NodeList
	if err := r.c.List(ctx, &nodes, ctrl.MatchingFields{indexNodeResource: key}); err != nil {
		return reconcile.Result{}, err
	}
	if len(nodes.Items) > 0 {
		if spelled, err := providerid.Parse(nodes.Items[0].Spec.ProviderID); err == nil {
			res = spelled // ARM ignores case, but logs and events read better as the cloud spells it
		}
	}
	in := desired.Input{Options: r.opts.Binding, Pool: r.opts.Pool}
	in.Nodes = nodes.Items
	for i := range nodes.Items {
		var pods corev1.PodList
		if err := r.c.List(ctx, &pods, ctrl.MatchingFields{indexPodNode: nodes.Items[i].Name}); err != nil {
			return reconcile.Result{}, err
		}
		in.Pods = append(in.Pods, pods.Items...)
	}
	var bl aadv1.AzureIdentityBindingList
	var il aadv1.AzureIdentityList
	var el aadv1.AzurePodIdentityExceptionList
	for _, l := range []ctrl.ObjectList{&bl, &il, &el} {
		if err := r.c.List(ctx, l); err != nil {
			return reconcile.Result{}, err
		}
	}
	in.Bindings, in.Identities, in.Exceptions = bl.Items, il.Items, el.Items
	in.Injection = r.opts.Injection
	if in.NamespaceLabels, err = r.namespaceLabels(ctx, in.Pods); err != nil {
		return reconcile.Result{}, err
	}
	want := desired.Compute(in)
	var assigned aadv1.AzureAssignedIdentityList
	if err := r.c.List(ctx, &assigned, ctrl.MatchingFields{indexAssignedByRes: key}); err != nil {
		return reconcile.Result{}, err
	}
	s := r.state(key)
	if changed, err := r.confirmOptIn(ctx, newGrants(want, assigned.Items, s.cur, r.opts.Managed), in.NamespaceLabels); err != nil {
		return reconcile.Result{}, err
	} else if changed {
		want = desired.Compute(in)
	}

	var wantIDs map[string]string
	if ri := want.Resources[key]; ri != nil {
		wantIDs = ri.IDs
	}
	// ARM goes first: its PATCH (often 30 s or more) is what everything waits for, so it must not queue
	// behind hundreds of object writes. Meanwhile only existing objects are touched (spec changes,
	// Unassigned). Missing objects are created once ARM has answered, in their final state: one write
	// each (Assigned, or Created saying why not) instead of a create and a status update. Only a PATCH that
	// outlasts PendingObjectsAfter has them created as Created meanwhile, so that a scale set stuck for
	// minutes shows its pending assignments.
	type armOutcome struct {
		cur    azure.ResourceIdentity
		known  bool
		result reconcile.Result
	}
	armDone := make(chan armOutcome, 1)
	go func() {
		cur, known, result := r.syncARM(ctx, res, key, wantIDs, s, in.Identities)
		armDone <- armOutcome{cur, known, result}
	}()
	objects, missing, requeueSoon, objErr := r.syncObjects(ctx, s, want, assigned.Items)
	var out armOutcome
	var pendingErr error
	if objErr == nil && len(missing) > 0 {
		pending := time.NewTimer(r.opts.PendingObjectsAfter)
		select {
		case out = <-armDone:
		case <-pending.C:
			var created []*aadv1.AzureAssignedIdentity
			created, requeueSoon, pendingErr = r.createObjects(ctx, s, missing, requeueSoon, func(desired.Assignment) (string, string) {
				return aadv1.AssignedIDCreated, ""
			})
			objects, missing = append(objects, created...), nil
			out = <-armDone
		}
		pending.Stop()
	} else {
		out = <-armDone
	}
	if err := errors.Join(objErr, pendingErr); err != nil {
		return reconcile.Result{}, err
	}
	cur, known, result := out.cur, out.known, out.result
	created, requeueSoon, err := r.createObjects(ctx, s, missing, requeueSoon, func(a desired.Assignment) (string, string) {
		status, why, _ := r.statusOf(a, s, cur, known)
		return status, why
	})
	if err != nil {
		return reconcile.Result{}, err
	}
	if err := r.syncStatuses(ctx, want, append(objects, created...), key, s, cur, known); err != nil {
		return reconcile.Result{}, err
	}
	if requeueSoon && (result.RequeueAfter == 0 || result.RequeueAfter > r.opts.Debounce) {
		result.RequeueAfter = max(r.opts.Debounce, 10*time.Millisecond)
	}
	return result, nil
}

// namespaceLabels returns, from the cache, the labels of the namespaces of the pods that may need identities;
// a namespace the cache does not have is left out (its pods count as not injected for now, and the namespace
// watch brings the resource back when it shows up).
func (r *resourceReconciler) namespaceLabels(ctx context.Context, pods []corev1.Pod) (map[string]map[string]string, error) {
	out := map[string]map[string]string{}
	for i := range pods {
		p := &pods[i]
		if _, done := out[p.Namespace]; done || !desired.NeedsIdentities(p) {
			continue
		}
		var ns corev1.Namespace
		err := r.c.Get(ctx, ctrl.ObjectKey{Name: p.Namespace}, &ns)
		switch {
		case apierrors.IsNotFound(err):
			continue
		case err != nil:
			return nil, fmt.Errorf("reading namespace %s from the cache (the assigner needs get/list/watch on namespaces): %w", p.Namespace, err)
		}
		out[p.Namespace] = ns.Labels
	}
	return out, nil
}

// newGrants lists the namespaces of the pods that this pass would give something they do not have yet: an
// AzureAssignedIdentity that does not exist, or (unless managed: then nothing is attached by us) a
// user-assigned identity that is not known to be on the resource (cur, the last state read from ARM; nil
// when unknown).
func newGrants(want desired.State, existing []aadv1.AzureAssignedIdentity, cur *azure.ResourceIdentity, managed bool) map[string]bool {
	have := make(map[string]bool, len(existing))
	for i := range existing {
		have[existing[i].Namespace+"/"+existing[i].Name] = true
	}
	out := map[string]bool{}
	for k, a := range want.Assignments {
		if !have[k] || (a.NeedsARM && !managed && (cur == nil || !cur.Has(a.Identity.Spec.ResourceID))) {
			out[a.PodNamespace] = true
		}
	}
	return out
}

// confirmOptIn re-reads from the API server the namespaces in grants, which the cache says are opted in, and
// writes what it read into labels. An opted-in namespace is what lets a pod's identities onto its node: a
// cache that still shows a label just removed must not attach anything new (pods created after the removal
// were not seen by the webhook, so their identities annotation may be forged). Namespaces whose pods only
// keep what they have are not re-read: losing an opt-in is then handled like any removal, when the cache
// catches up. It reports whether labels changed, so that the caller decides again.
func (r *resourceReconciler) confirmOptIn(ctx context.Context, grants map[string]bool, labels map[string]map[string]string) (bool, error) {
	if r.opts.Injection.AttachUninjected {
		return false, nil // the namespace does not decide anything
	}
	changed := false
	for name := range grants {
		var ns corev1.Namespace
		err := r.reader.Get(ctx, ctrl.ObjectKey{Name: name}, &ns)
		switch {
		case apierrors.IsNotFound(err):
			delete(labels, name)
			changed = true
			continue
		case err != nil:
			// Not deciding is the safe way: deciding without the namespace would detach the identities of
			// its running pods over a failed read.
			return false, fmt.Errorf("confirming that namespace %s is opted in to injection before attaching identities for its pods (the assigner needs get on namespaces): %w", name, err)
		}
		label := r.opts.Injection.LabelKey()
		if desired.OptedIn(ns.Labels, label) != desired.OptedIn(labels[name], label) {
			loggerFor(ctx).Info("namespace opt-in differs between the cache and the API server; deciding on the API server's", "namespace", name, "optedIn", desired.OptedIn(ns.Labels, label))
			changed = true
		}
		labels[name] = ns.Labels
	}
	return changed, nil
}

// syncObjects brings existing AzureAssignedIdentity objects up to date and marks the ones no longer wanted
// Unassigned. It creates missing objects that need nothing from ARM (service principals, managed mode)
// as Assigned, and returns the other missing ones for the caller to create once ARM has answered. It
// returns the objects as they are now, the missing assignments, and whether a deleted-but-wanted object
// must be recreated in a later pass.
func (r *resourceReconciler) syncObjects(ctx context.Context, s *resourceState, want desired.State, existing []aadv1.AzureAssignedIdentity) ([]*aadv1.AzureAssignedIdentity, []desired.Assignment, bool, error) {
	have := map[string]*aadv1.AzureAssignedIdentity{}
	var objects []*aadv1.AzureAssignedIdentity
	for i := range existing {
		have[existing[i].Namespace+"/"+existing[i].Name] = &existing[i]
		objects = append(objects, &existing[i])
	}
	now := time.Now()
	for _, k := range s.recentKeys() {
		s.forgetSeen(k, have[k], now)
	}
	var mu sync.Mutex // guards objects and requeue below
	requeue := false
	keys := make([]string, 0, len(want.Assignments))
	var missing, ready []desired.Assignment
	for k, a := range want.Assignments {
		switch {
		case have[k] != nil:
			keys = append(keys, k)
		case s.forgetSeen(k, nil, now):
			// Created by this worker moments ago; the cache will show it (and its creation event bring
			// the resource back) soon.
		case a.NeedsARM && !r.opts.Managed:
			missing = append(missing, a)
		default:
			ready = append(ready, a)
		}
	}
	sort.Strings(keys)
	// Kubernetes writes of one resource go out in parallel: a scale set with hundreds of pods should not
	// spend its time in sequential round trips.
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(objectWriters)
	for _, k := range keys {
		a := want.Assignments[k]
		obj := have[k]
		g.Go(func() error {
			switch {
			case obj.DeletionTimestamp != nil:
				// Someone deleted an assignment that is still wanted: let it go and create it afresh.
				if err := r.removeFinalizer(gctx, obj); err != nil {
					return err
				}
				mu.Lock()
				requeue = true
				mu.Unlock()
			case obj.Spec.NodeName != a.NodeName || obj.Spec.AzureIdentityRef == nil ||
				obj.Spec.AzureIdentityRef.Spec.ResourceID != a.Identity.Spec.ResourceID ||
				obj.Spec.AzureIdentityRef.Spec.ClientID != a.Identity.Spec.ClientID ||
				obj.Spec.AzureBindingRef == nil || obj.Spec.AzureBindingRef.Name != a.Binding.Name:
				patch := ctrl.MergeFrom(obj.DeepCopy())
				obj.Spec = a.Object().Spec
				if err := r.c.Patch(gctx, obj, patch); err != nil {
					return fmt.Errorf("updating AzureAssignedIdentity %s: %w", k, err)
				}
			}
			return nil
		})
	}
	for k, obj := range have {
		if _, ok := want.Assignments[k]; ok || obj.Status.Status == aadv1.AssignedIDUnassigned || s.alreadyWrote(k, aadv1.AssignedIDUnassigned, "") {
			continue
		}
		g.Go(func() error { return r.setStatus(gctx, s, obj, aadv1.AssignedIDUnassigned, "") })
	}
	if err := g.Wait(); err != nil {
		return nil, nil, false, err
	}
	created, requeue, err := r.createObjects(ctx, s, ready, requeue, func(desired.Assignment) (string, string) {
		return aadv1.AssignedIDAssigned, ""
	})
	if err != nil {
		return nil, nil, false, err
	}
	return append(objects, created...), missing, requeue, nil
}

// createObjects creates the AzureAssignedIdentity objects of the assignments, each in one write carrying
// its status (the CRD has no status subresource) and error annotation as statusOf says. requeue comes
// back true when an object already exists (the cache has not seen it yet), so that a later pass checks it.
func (r *resourceReconciler) createObjects(ctx context.Context, s *resourceState, assignments []desired.Assignment, requeue bool, statusOf func(desired.Assignment) (status, why string)) ([]*aadv1.AzureAssignedIdentity, bool, error) {
	if len(assignments) == 0 {
		return nil, requeue, nil
	}
	sort.Slice(assignments, func(i, j int) bool { return assignments[i].Key() < assignments[j].Key() })
	var mu sync.Mutex // guards created and requeue
	var created []*aadv1.AzureAssignedIdentity
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(objectWriters)
	for _, a := range assignments {
		g.Go(func() error {
			o := a.Object()
			o.Finalizers = []string{Finalizer}
			status, why := statusOf(a)
			o.Status.Status = status
			if why != "" {
				if o.Annotations == nil {
					o.Annotations = map[string]string{}
				}
				o.Annotations[desired.ErrorAnnotation] = why
			}
			if err := r.c.Create(gctx, o); err != nil {
				if apierrors.IsAlreadyExists(err) {
					mu.Lock()
					requeue = true
					mu.Unlock()
					return nil
				}
				return fmt.Errorf("creating AzureAssignedIdentity %s: %w", a.Key(), err)
			}
			s.wrote(a.Key(), status, why)
			mu.Lock()
			created = append(created, o)
			mu.Unlock()
			r.metrics.assignedObjects.WithLabelValues("created").Inc()
			return nil
		})
	}
	err := g.Wait()
	return created, requeue, err
}

// syncARM reads the resource when needed and PATCHes it toward the wanted identities. It returns the
// resource's identities after the pass, whether they are known, and when to come back.
func (r *resourceReconciler) syncARM(ctx context.Context, res providerid.Resource, key string, want map[string]string, s *resourceState, identities []aadv1.AzureIdentity) (azure.ResourceIdentity, bool, reconcile.Result) {
	log := loggerFor(ctx)
	if r.opts.Managed {
		return azure.ResourceIdentity{}, false, reconcile.Result{}
	}
	ctx, cancel := context.WithTimeout(ctx, r.opts.ARMTimeout)
	defer cancel()
	if !s.loaded {
		owned, err := r.ledger.load(ctx, key)
		if err != nil {
			log.Error(err, "reading the record of attached identities")
			return azure.ResourceIdentity{}, false, r.backoff(s)
		}
		s.owned, s.loaded = owned, true
	}
	if len(want) == 0 && len(s.owned) == 0 {
		// Nothing to attach and nothing of ours to detach: no ARM call at all.
		s.failures = 0
		return azure.ResourceIdentity{UserAssigned: map[string]string{}}, true, reconcile.Result{}
	}
	now := time.Now()
	for k, iso := range s.isolated {
		if now.After(iso.until) {
			delete(s.isolated, k)
		}
	}
	fresh := false
	if s.cur == nil || now.Sub(s.readAt) >= r.opts.Resync {
		fresh = true
		cur, err := r.arm.Get(ctx, res)
		r.metrics.armRequest("get", err)
		if err != nil {
			f := azure.Classify(err)
			if f.Kind == azure.NotFound {
				// The VM or scale set is gone, and its identities with it: nothing to detach, nothing to record.
				log.Info("resource no longer exists in ARM; forgetting its identities")
				if err := r.ledger.save(ctx, key, nil); err != nil {
					return azure.ResourceIdentity{}, false, r.backoff(s)
				}
				s.owned, s.cur, s.failures = map[string]bool{}, nil, 0
				return azure.ResourceIdentity{UserAssigned: map[string]string{}}, true, reconcile.Result{RequeueAfter: r.opts.Resync}
			}
			log.Error(err, "reading the resource's identities from ARM", "failure", f.Kind.String())
			return azure.ResourceIdentity{}, false, r.afterFailure(s, f)
		}
		if s.cur != nil {
			if lost := missing(*s.cur, cur, want); len(lost) > 0 {
				log.Info("identities disappeared from the resource; re-adding them", "identities", lost)
				r.metrics.driftRepairs.Add(float64(len(lost)))
			}
		}
		s.cur, s.readAt = &cur, time.Now()
	}
	cur := *s.cur
	if strings.EqualFold(cur.ProvisioningState, "Deleting") {
		log.Info("resource is being deleted; leaving its identities alone")
		return cur, true, reconcile.Result{RequeueAfter: r.opts.Resync}
	}
	// Forget identities recorded as ours that are not attached (a PATCH that failed after the write-ahead).
	// Only on a state just read from ARM, and not while an operation runs: it may be ours (from before a
	// restart, or one whose answer we lost) and attach them yet.
	if fresh && !strings.EqualFold(cur.ProvisioningState, "Updating") {
		pruned := map[string]bool{}
		for k := range s.owned {
			if cur.Has(k) {
				pruned[k] = true
			}
		}
		if len(pruned) != len(s.owned) {
			if err := r.ledger.save(ctx, key, pruned); err != nil {
				log.Error(err, "pruning the record of attached identities")
			} else {
				s.owned = pruned
			}
		}
	}
	for attempt := 0; ; attempt++ {
		skip := map[string]bool{}
		for k := range s.isolated {
			skip[k] = true
		}
		plan := azure.Plan(cur, azure.Goal{Want: want, Owned: s.owned, Keep: r.keep, Skip: skip})
		if len(plan) == 0 {
			break
		}
		if attempt > 10 {
			log.Info("giving up this pass after repeated identity rejections")
			return cur, true, r.backoff(s)
		}
		rejected := false
		for _, p := range plan {
			if len(p.Add) > 0 {
				// Write ahead: record ownership before ARM can act, so a crash after the PATCH never leaves
				// an identity we attached looking like someone else's.
				next := copySet(s.owned)
				for _, id := range p.Add {
					next[strings.ToLower(id)] = true
				}
				if err := r.ledger.save(ctx, key, next); err != nil {
					log.Error(err, "recording identities about to be attached")
					return cur, true, r.backoff(s)
				}
				s.owned = next
			}
			log.Info("patching identities", "type", p.Type, "add", p.Add, "remove", p.Remove, "ifMatch", p.IfMatch != "")
			started := time.Now()
			after, err := r.arm.Patch(ctx, res, p)
			r.metrics.armRequest("patch", err)
			r.metrics.patchDuration.WithLabelValues(strings.ToLower(res.Kind.String())).Observe(time.Since(started).Seconds())
			if err != nil {
				f := azure.Classify(err)
				if f.Kind == azure.IdentityRejected {
					r.isolate(ctx, res, s, f, identities)
					rejected = true
					break
				}
				log.Error(err, "patching identities", "failure", f.Kind.String())
				// Even a 429 may come from polling a PATCH ARM accepted: whatever failed, the resource
				// must be read before the next PATCH.
				s.cur = nil
				return cur, false, r.afterFailure(s, f)
			}
			if after.UserAssigned == nil {
				after = azure.Apply(cur, p)
			}
			// Forget ownership of what is gone now.
			next := copySet(s.owned)
			for k := range cur.UserAssigned {
				if _, still := after.UserAssigned[k]; !still {
					delete(next, k)
				}
			}
			if len(next) != len(s.owned) {
				if err := r.ledger.save(ctx, key, next); err != nil {
					log.Error(err, "recording detached identities")
				} else {
					s.owned = next
				}
			}
			cur = after
			s.cur, s.readAt = &after, time.Now()
		}
		if !rejected {
			break
		}
	}
	s.failures = 0
	result := reconcile.Result{RequeueAfter: r.opts.Resync}
	for _, iso := range s.isolated {
		if d := time.Until(iso.until); d < result.RequeueAfter {
			result.RequeueAfter = max(d, 10*time.Millisecond)
		}
	}
	return cur, true, result
}

// isolate leaves out the identities ARM rejected and tells their owners why.
func (r *resourceReconciler) isolate(ctx context.Context, res providerid.Resource, s *resourceState, f *azure.Failure, identities []aadv1.AzureIdentity) {
	log := loggerFor(ctx)
	reason := f.Reason()
	for _, id := range f.Identities {
		k := strings.ToLower(id)
		s.isolated[k] = isolation{code: f.Code, reason: reason, until: time.Now().Add(r.opts.IsolationTTL)}
		r.metrics.identityRejections.WithLabelValues(f.Code).Inc()
		log.Info("identity rejected by ARM; attaching the others without it", "identity", id, "code", f.Code, "retryIn", r.opts.IsolationTTL.String())
		for i := range identities {
			azID := &identities[i]
			if strings.EqualFold(azID.Spec.ResourceID, id) {
				r.recorder.Eventf(azID, nil, corev1.EventTypeWarning, "IdentityAssignmentFailed", "AttachIdentity",
					"identity %s could not be attached to %s: %s", id, res.ID(), reason)
			}
		}
	}
}

// syncStatuses moves AzureAssignedIdentity objects to Assigned when their identity is attached, records
// why an isolated one is not, and lets Unassigned ones go once nothing of theirs is left to detach.
func (r *resourceReconciler) syncStatuses(ctx context.Context, want desired.State, existing []*aadv1.AzureAssignedIdentity, key string, s *resourceState, cur azure.ResourceIdentity, known bool) error {
	var pendingRemoval map[string]bool
	if known {
		wantIDs := map[string]string{}
		if ri := want.Resources[key]; ri != nil {
			wantIDs = ri.IDs
		}
		_, remove := azure.Delta(cur, azure.Goal{Want: wantIDs, Owned: s.owned, Keep: r.keep, Skip: isolatedSet(s)})
		pendingRemoval = map[string]bool{}
		for _, id := range remove {
			pendingRemoval[strings.ToLower(id)] = true
		}
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(objectWriters)
	for _, obj := range existing {
		k := obj.Namespace + "/" + obj.Name
		a, wanted := want.Assignments[k]
		if wanted && obj.DeletionTimestamp == nil {
			status, why, sure := r.statusOf(a, s, cur, known)
			if !sure && obj.Status.Status == aadv1.AssignedIDAssigned {
				continue // ARM could not be read this pass: keep what was last known
			}
			if (obj.Status.Status != status || obj.Annotations[desired.ErrorAnnotation] != why) && !s.alreadyWrote(k, status, why) {
				g.Go(func() error { return r.setStatus(gctx, s, obj, status, why) })
			}
			continue
		}
		if wanted {
			continue // being recreated (syncObjects)
		}
		// Not wanted: done once its identity is not waiting to be detached.
		idKey := ""
		if obj.Spec.AzureIdentityRef != nil && obj.Spec.AzureIdentityRef.Spec.Type == aadv1.UserAssignedMSI {
			idKey = strings.ToLower(obj.Spec.AzureIdentityRef.Spec.ResourceID)
		}
		if idKey != "" && !r.opts.Managed && (!known || pendingRemoval[idKey]) {
			continue
		}
		if s.alreadyWrote(k, deletedByUs, "") {
			continue // deleted moments ago; the cache is behind
		}
		g.Go(func() error {
			if err := r.removeFinalizer(gctx, obj); err != nil {
				return err
			}
			if obj.DeletionTimestamp == nil {
				if err := r.c.Delete(gctx, obj); err != nil && !apierrors.IsNotFound(err) {
					return fmt.Errorf("deleting AzureAssignedIdentity %s: %w", k, err)
				}
				r.metrics.assignedObjects.WithLabelValues("deleted").Inc()
			}
			s.wrote(k, deletedByUs, "")
			return nil
		})
	}
	return g.Wait()
}

// statusOf is the status an assignment's object should have after this pass, and why it is not Assigned
// (the isolation reason, if any). sure is false when ARM's state is unknown this pass and the identity
// needs ARM: Created is then only a default.
func (r *resourceReconciler) statusOf(a desired.Assignment, s *resourceState, cur azure.ResourceIdentity, known bool) (status, why string, sure bool) {
	switch {
	case !a.NeedsARM || r.opts.Managed:
		return aadv1.AssignedIDAssigned, "", true
	case known && cur.Has(a.Identity.Spec.ResourceID):
		return aadv1.AssignedIDAssigned, "", true
	}
	if iso, ok := s.isolated[a.IdentityKey()]; ok {
		why = iso.reason
	}
	return aadv1.AssignedIDCreated, why, known
}

func (r *resourceReconciler) setStatus(ctx context.Context, s *resourceState, obj *aadv1.AzureAssignedIdentity, status, why string) error {
	patch := ctrl.MergeFrom(obj.DeepCopy())
	obj.Status.Status = status
	if why == "" {
		delete(obj.Annotations, desired.ErrorAnnotation)
	} else {
		if obj.Annotations == nil {
			obj.Annotations = map[string]string{}
		}
		obj.Annotations[desired.ErrorAnnotation] = why
	}
	if err := r.c.Patch(ctx, obj, patch); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("setting AzureAssignedIdentity %s/%s to %s: %w", obj.Namespace, obj.Name, status, err)
	}
	s.wrote(obj.Namespace+"/"+obj.Name, status, why)
	return nil
}

func (r *resourceReconciler) removeFinalizer(ctx context.Context, obj *aadv1.AzureAssignedIdentity) error {
	if !controllerutil.ContainsFinalizer(obj, Finalizer) {
		return nil
	}
	patch := ctrl.MergeFrom(obj.DeepCopy())
	controllerutil.RemoveFinalizer(obj, Finalizer)
	if err := r.c.Patch(ctx, obj, patch); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("removing the finalizer of AzureAssignedIdentity %s/%s: %w", obj.Namespace, obj.Name, err)
	}
	return nil
}

func (r *resourceReconciler) afterFailure(s *resourceState, f *azure.Failure) reconcile.Result {
	switch f.Kind {
	case azure.Throttled:
		// ARM said when: honour it for this resource only.
		return reconcile.Result{RequeueAfter: max(f.RetryAfter, r.opts.BaseBackoff)}
	case azure.Conflict:
		// Another operation runs on the resource; it usually ends within seconds.
		s.failures = min(s.failures+1, 3)
		return r.backoffNoIncrement(s)
	}
	res := r.backoff(s)
	if f.RetryAfter > res.RequeueAfter {
		res.RequeueAfter = f.RetryAfter
	}
	return res
}

func (r *resourceReconciler) backoff(s *resourceState) reconcile.Result {
	s.failures++
	return r.backoffNoIncrement(s)
}

func (r *resourceReconciler) backoffNoIncrement(s *resourceState) reconcile.Result {
	d := r.opts.BaseBackoff
	for i := 1; i < s.failures && d < r.opts.MaxBackoff; i++ {
		d *= 2
	}
	return reconcile.Result{RequeueAfter: min(d, r.opts.MaxBackoff)}
}

func isolatedSet(s *resourceState) map[string]bool {
	out := map[string]bool{}
	for k := range s.isolated {
		out[k] = true
	}
	return out
}

func copySet(m map[string]bool) map[string]bool {
	out := make(map[string]bool, len(m))
	for k, v := range m {
		if v {
			out[k] = true
		}
	}
	return out
}

// missing lists wanted identities that were attached before and are not any more.
func missing(before, now azure.ResourceIdentity, want map[string]string) []string {
	var out []string
	for k, spelled := range want {
		if before.Has(k) && !now.Has(k) {
			out = append(out, spelled)
		}
	}
	sort.Strings(out)
	return out
}
