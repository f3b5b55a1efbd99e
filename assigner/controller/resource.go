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
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/assigner/azure"
	"github.com/podidentity/podidentity/assigner/desired"
	"github.com/podidentity/podidentity/assigner/providerid"
	"github.com/podidentity/podidentity/internal/binding"
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
	arm    armState // the ARM side's knowledge, changed only through the decisions of decide.go
	loaded bool     // arm.owned was read from the ledger
	// graceSince: when each identity held for its grace period (graceHolds) was first seen held.
	graceSince map[string]time.Time
	// notAttached: the pods (by uid) told, with --federated-only, that their node identities are not attached;
	// only the pods of the last pass, so that each pod is told once while it stays so.
	notAttached map[types.UID]bool

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
	return writes(s.recent).has(key, status, why)
}

// pruned drops the recorded writes that the cache (have, by namespace/name) now shows or that are older than
// recentWriteTTL, and returns a copy of the others.
func (s *resourceState) pruned(have map[string]*aadv1.AzureAssignedIdentity, now time.Time) writes {
	s.mu.Lock()
	keys := make([]string, 0, len(s.recent))
	for k := range s.recent {
		keys = append(keys, k)
	}
	s.mu.Unlock()
	for _, k := range keys {
		s.forgetSeen(k, have[k], now)
	}
	return s.snapshot()
}

// snapshot copies the recorded writes.
func (s *resourceState) snapshot() writes {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(writes, len(s.recent))
	for k, w := range s.recent {
		out[k] = w
	}
	return out
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
	// subGates: subscriptions ARM throttled (case-folded id): until when, and for how long ARM said.
	subGates map[string]subGate
	// waiting and isolated: per resource, why its changes wait (one reason) and its identities ARM refused,
	// by reason; the gauges are the sums.
	waiting  map[string]string
	isolated map[string]map[string]int
	// unattached: per resource, its assignments whose identity is not attached, by reason (the gauge is
	// their sum).
	unattached map[string]map[string]int
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
		s = &resourceState{recent: map[string]recentWrite{}}
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
	if r.opts.Hold != nil {
		if err := r.opts.Hold(ctx); err != nil {
			log.V(1).Info("holding: no ARM call and no object write", "why", err.Error())
			return reconcile.Result{RequeueAfter: r.opts.HoldRetry}, nil
		}
	}
	start := time.Now()
	defer func() { r.metrics.passDuration.Observe(time.Since(start).Seconds()) }()

	// The pass only reads nodes and pods, so it reads the cache's own objects rather than deep copies
	// (nothing may write to them): a pass holds its pods until ARM has answered, and at a start, or while
	// many resources wait for PATCHes, the passes in flight together hold every pod of the cluster; deep
	// copies doubled the assigner's memory then.
	var nodes corev1.NodeList
	if err := r.c.List(ctx, &nodes, ctrl.MatchingFields{indexNodeResource: key}, ctrl.UnsafeDisableDeepCopy); err != nil {
		return reconcile.Result{}, err
	}
	if len(nodes.Items) > 0 {
		if spelled, err := providerid.Parse(nodes.Items[0].Spec.ProviderID); err == nil {
			res = spelled // ARM ignores case, but logs and events read better as the cloud spells it
		}
	}
	in := desired.Input{Options: r.opts.Binding, Pool: r.opts.Pool}
	in.Nodes = nodes.Items
	perNode := make([][]corev1.Pod, len(nodes.Items))
	total := 0
	for i := range nodes.Items {
		var pods corev1.PodList
		if err := r.c.List(ctx, &pods, ctrl.MatchingFields{indexPodNode: nodes.Items[i].Name}, ctrl.UnsafeDisableDeepCopy); err != nil {
			return reconcile.Result{}, err
		}
		perNode[i], total = pods.Items, total+len(pods.Items)
	}
	in.Pods = make([]corev1.Pod, 0, total)
	for _, pods := range perNode {
		in.Pods = append(in.Pods, pods...)
	}
	var assigned aadv1.AzureAssignedIdentityList
	if err := r.c.List(ctx, &assigned, ctrl.MatchingFields{indexAssignedByRes: key}); err != nil {
		return reconcile.Result{}, err
	}
	// The exceptions of the cluster (few), and of the bindings and identities only those this resource's pods
	// and objects name: a pass reads by key, so that its cost follows the resource, not the cluster.
	var el aadv1.AzurePodIdentityExceptionList
	if err := r.c.List(ctx, &el, ctrl.UnsafeDisableDeepCopy); err != nil {
		return reconcile.Result{}, err
	}
	in.Exceptions = el.Items
	if in.Bindings, in.Identities, err = r.relevant(ctx, in.Pods, assigned.Items); err != nil {
		return reconcile.Result{}, err
	}
	in.Injection = r.opts.Injection
	in.FederatedOnly = r.opts.FederatedOnly
	if in.NamespaceLabels, err = r.namespaceLabels(ctx, in.Pods); err != nil {
		return reconcile.Result{}, err
	}
	want := desired.Compute(in)
	s := r.state(key)
	if changed, err := r.confirmOptIn(ctx, newGrants(want, assigned.Items, s.arm.cur, r.opts.Managed), in.NamespaceLabels); err != nil {
		return reconcile.Result{}, err
	} else if changed {
		want = desired.Compute(in)
	}
	s.notAttached = r.reportNotAttached(ctx, want.NotAttached, in.Pods, s.notAttached)

	// Objects AAD Pod Identity's MIC left on this resource's nodes: adopted when wanted, released otherwise,
	// and what MIC attached for them taken into the ledger (handover.go).
	var mic []aadv1.AzureAssignedIdentity
	for i := range nodes.Items {
		var l aadv1.AzureAssignedIdentityList
		if err := r.c.List(ctx, &l, ctrl.MatchingFields{indexMICByNode: nodes.Items[i].Name}); err != nil {
			return reconcile.Result{}, err
		}
		mic = append(mic, l.Items...)
	}
	adopted, err := r.takeOver(ctx, res, key, s, planHandover(mic, want, in.Pods))
	if err != nil {
		return reconcile.Result{}, err
	}
	assigned.Items = append(assigned.Items, adopted...)

	var wantIDs map[string]string
	if ri := want.Resources[key]; ri != nil {
		wantIDs = ri.IDs
	}
	// Identities that running pods lost with their AzureIdentity or binding stay attached for a grace period
	// (a delete and re-create must not cut their tokens).
	graceNow := time.Now()
	hold, since, started, wake := graceHolds(graceCandidates(assigned.Items, want, in.Pods, in.Identities, in.Bindings), s.graceSince, graceNow, r.opts.DetachGrace)
	s.graceSince = since
	if len(started) > 0 {
		log.Info("AzureIdentity or binding deleted while pods use its identity; keeping it attached for the grace period", "identities", started, "grace", r.opts.DetachGrace.String())
	}
	// ARM goes first: its PATCH (often 30 s or more) is what everything waits for, so it must not queue
	// behind hundreds of object writes. Meanwhile only existing objects are touched (spec changes,
	// Unassigned). Missing objects are created once ARM has answered, in their final state: one write
	// each (Assigned, or Created saying why not) instead of a create and a status update. Only a PATCH that
	// outlasts PendingObjectsAfter has them created as Created meanwhile, so that a scale set stuck for
	// minutes shows its pending assignments.
	type armOutcome struct {
		view   armView
		result reconcile.Result
	}
	armDone := make(chan armOutcome, 1)
	go func() {
		view, result := r.syncARM(ctx, res, key, passView{res: res, want: wantIDs, hold: hold, keep: r.keep, wake: wake}, s, in.Identities)
		armDone <- armOutcome{view, result}
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
			created, _, requeueSoon, pendingErr = r.createObjects(ctx, s, missing, requeueSoon, func(desired.Assignment) (string, notice) {
				return aadv1.AssignedIDCreated, notice{}
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
	view, result := out.view, out.result
	r.setWaiting(key, view)
	created, announced, requeueSoon, err := r.createObjects(ctx, s, missing, requeueSoon, func(a desired.Assignment) (string, notice) {
		status, why, _ := assignmentStatus(a, view)
		return status, why
	})
	if err != nil {
		return reconcile.Result{}, err
	}
	tally, more, err := r.syncStatuses(ctx, want, append(objects, created...), s, view)
	r.setUnattached(key, tally)
	r.announce(res, append(announced, more...), in.Pods, in.Identities)
	if err != nil {
		return reconcile.Result{}, err
	}
	result.RequeueAfter = requeueAfter(result.RequeueAfter, requeueSoon, r.opts.Debounce)
	if wake > 0 {
		result.RequeueAfter = graceRequeue(result.RequeueAfter, graceNow.Add(wake), time.Now())
	}
	return result, nil
}

// relevant reads from the cache the bindings and identities a pass over these pods and objects reads: the
// bindings of each pod's selector and the identities they name (binding.Candidates, so that Resolve over them
// is Resolve over the whole cluster), and the identity and binding each AzureAssignedIdentity of the resource
// names, when they still exist (graceCandidates tells a deletion from a change by them). The objects are the
// cache's own: the pass only reads them, and Assignment.Object copies what it embeds.
func (r *resourceReconciler) relevant(ctx context.Context, pods []corev1.Pod, assigned []aadv1.AzureAssignedIdentity) ([]aadv1.AzureIdentityBinding, []aadv1.AzureIdentity, error) {
	bindings := map[string]aadv1.AzureIdentityBinding{}
	identities := map[string]aadv1.AzureIdentity{}
	looked := map[string]bool{} // selectors (and namespaces, when namespaced) already resolved
	for i := range pods {
		p := &pods[i]
		sel := binding.Selector(p)
		if sel == "" {
			continue
		}
		src := &binding.ReaderSource{Ctx: ctx, Reader: r.c}
		k := sel
		if r.opts.Binding.ForceNamespaced {
			src.Namespace, k = p.Namespace, p.Namespace+"/"+sel
		}
		if looked[k] {
			continue
		}
		looked[k] = true
		bl, il, err := binding.Candidates(p, src, r.opts.Binding)
		if err != nil {
			return nil, nil, err
		}
		for _, b := range bl {
			bindings[b.Namespace+"/"+b.Name] = b
		}
		for _, id := range il {
			identities[id.Namespace+"/"+id.Name] = id
		}
	}
	for i := range assigned {
		if ref := assigned[i].Spec.AzureIdentityRef; ref != nil {
			if err := getInto(ctx, r.c, ref.Namespace, ref.Name, identities, &aadv1.AzureIdentity{}); err != nil {
				return nil, nil, err
			}
		}
		if ref := assigned[i].Spec.AzureBindingRef; ref != nil {
			if err := getInto(ctx, r.c, ref.Namespace, ref.Name, bindings, &aadv1.AzureIdentityBinding{}); err != nil {
				return nil, nil, err
			}
		}
	}
	return sortedValues(bindings), sortedValues(identities), nil
}

// getInto reads namespace/name from the cache into m unless m has it already; a missing object is not an
// error.
func getInto[T any, PT interface {
	*T
	ctrl.Object
}](ctx context.Context, c ctrl.Reader, namespace, name string, m map[string]T, obj PT) error {
	k := namespace + "/" + name
	if _, ok := m[k]; ok || name == "" {
		return nil
	}
	switch err := c.Get(ctx, ctrl.ObjectKey{Namespace: namespace, Name: name}, obj, ctrl.UnsafeDisableDeepCopy); {
	case err == nil:
		m[k] = *obj
	case !apierrors.IsNotFound(err):
		return err
	}
	return nil
}

func sortedValues[T any](m map[string]T) []T {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]T, 0, len(m))
	for _, k := range keys {
		out = append(out, m[k])
	}
	return out
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
	plan := planObjects(want, have, s.pruned(have, time.Now()), r.opts.Managed)
	// Kubernetes writes of one resource go out in parallel: a scale set with hundreds of pods should not
	// spend its time in sequential round trips.
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(objectWriters)
	for _, obj := range plan.release {
		g.Go(func() error { return r.removeFinalizer(gctx, obj) })
	}
	for _, u := range plan.update {
		g.Go(func() error {
			// The cache holds a trimmed copy (cachetrim.Trimmer.AssignedIdentity): the spec is replaced against the
			// object as the API server has it, so that the patch also clears the fields the copy does not show.
			live := &aadv1.AzureAssignedIdentity{}
			if err := r.reader.Get(gctx, ctrl.ObjectKeyFromObject(u.obj), live); err != nil {
				return fmt.Errorf("reading AzureAssignedIdentity %s before updating its spec: %w", u.a.Key(), err)
			}
			patch := ctrl.MergeFrom(live.DeepCopy())
			live.Spec = u.a.Object().Spec
			if err := r.c.Patch(gctx, live, patch); err != nil {
				return fmt.Errorf("updating AzureAssignedIdentity %s: %w", u.a.Key(), err)
			}
			*u.obj = *live
			return nil
		})
	}
	for _, obj := range plan.unassign {
		g.Go(func() error { return r.setStatus(gctx, s, obj, aadv1.AssignedIDUnassigned, notice{}) })
	}
	if err := g.Wait(); err != nil {
		return nil, nil, false, err
	}
	created, _, requeue, err := r.createObjects(ctx, s, plan.ready, plan.requeue(), func(desired.Assignment) (string, notice) {
		return aadv1.AssignedIDAssigned, notice{}
	})
	if err != nil {
		return nil, nil, false, err
	}
	return append(objects, created...), plan.missing, requeue, nil
}

// announcement is a reason newly written to an assignment's object: the pod and the AzureIdentity get a
// Warning Event saying it.
type announcement struct {
	a   desired.Assignment
	why notice
}

// createObjects creates the AzureAssignedIdentity objects of the assignments, each in one write carrying
// its status (the CRD has no status subresource) and reason annotations as statusOf says. It returns the
// objects created and the reasons they announce; requeue comes back true when an object already exists (the
// cache has not seen it yet), so that a later pass checks it.
func (r *resourceReconciler) createObjects(ctx context.Context, s *resourceState, assignments []desired.Assignment, requeue bool, statusOf func(desired.Assignment) (string, notice)) ([]*aadv1.AzureAssignedIdentity, []announcement, bool, error) {
	if len(assignments) == 0 {
		return nil, nil, requeue, nil
	}
	sort.Slice(assignments, func(i, j int) bool { return assignments[i].Key() < assignments[j].Key() })
	var mu sync.Mutex // guards created, announced and requeue
	var created []*aadv1.AzureAssignedIdentity
	var announced []announcement
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(objectWriters)
	for _, a := range assignments {
		g.Go(func() error {
			o := a.Object()
			o.Finalizers = []string{Finalizer}
			status, why := statusOf(a)
			o.Status.Status = status
			setNotice(o, why)
			if err := r.c.Create(gctx, o); err != nil {
				if apierrors.IsAlreadyExists(err) {
					mu.Lock()
					requeue = true
					mu.Unlock()
					return nil
				}
				return fmt.Errorf("creating AzureAssignedIdentity %s: %w", a.Key(), err)
			}
			s.wrote(a.Key(), status, why.Message)
			mu.Lock()
			created = append(created, o)
			if why.Message != "" {
				announced = append(announced, announcement{a, why})
			}
			mu.Unlock()
			r.metrics.assignedObjects.WithLabelValues("created").Inc()
			return nil
		})
	}
	err := g.Wait()
	return created, announced, requeue, err
}

// syncARM carries out the decisions of decide.go for one resource until they say to stop: it reads and
// patches the resource, keeps the ledger, logs, counts, and records the Events of identities deleted in
// Azure. It returns what the object side needs to know, and when to come back.
func (r *resourceReconciler) syncARM(ctx context.Context, res providerid.Resource, key string, v passView, s *resourceState, identities []aadv1.AzureIdentity) (armView, reconcile.Result) {
	if r.opts.Managed {
		return viewOf(armState{}, v, true), reconcile.Result{}
	}
	log := loggerFor(ctx)
	ctx, cancel := context.WithTimeout(ctx, r.opts.ARMTimeout)
	defer cancel()
	if !s.loaded {
		owned, err := r.ledger.load(ctx, key)
		if err != nil {
			log.Error(err, "reading the record of attached identities")
			s.arm = deferred(s.arm, time.Now(), policyOf(r.opts))
		} else {
			s.arm.owned, s.loaded = owned, true
		}
	}
	for {
		v.now = time.Now()
		v.sub = r.subGate(res.SubscriptionID)
		var next step
		if !s.loaded {
			next = step{kind: stepWait, after: s.arm.notBefore.Sub(v.now)}
		} else {
			s.arm, next = decide(s.arm, v, policyOf(r.opts))
		}
		switch next.kind {
		case stepRead:
			s.arm.slot = time.Time{}
			r.read(ctx, res, key, s, &v)
		case stepPatch:
			s.arm.slot = time.Time{}
			r.patch(ctx, res, key, s, &v, next.patch, identities)
		default:
			if next.slot {
				s.arm.slot = r.claim(res.SubscriptionID, v.now)
				s.arm.notBefore = s.arm.slot
				next.after = s.arm.slot.Sub(v.now)
			}
			if next.kind == stepWait && s.arm.problem != nil {
				log.V(1).Info("not calling ARM for now", "reason", s.arm.problem.Reason, "for", next.after.Round(time.Millisecond).String())
			}
			return viewOf(s.arm, v, false), reconcile.Result{RequeueAfter: next.after}
		}
	}
}

// read GETs the resource and folds the answer in (afterRead).
func (r *resourceReconciler) read(ctx context.Context, res providerid.Resource, key string, s *resourceState, v *passView) {
	log := loggerFor(ctx)
	cur, err := r.arm.Get(ctx, res)
	r.metrics.armRequest("get", err)
	f := azure.Classify(err)
	v.now = time.Now()
	var note readNote
	s.arm, note = afterRead(s.arm, *v, cur, f, policyOf(r.opts))
	v.read = true
	switch {
	case f != nil && f.Kind == azure.NotFound:
		log.Info("resource no longer exists in ARM; forgetting its identities")
	case f != nil:
		log.Error(err, "reading the resource's identities from ARM", "failure", f.Kind.String(), "reason", s.arm.problem.orEmpty().Reason)
	case busyState(cur.ProvisioningState):
		log.Info("another operation is running on the resource; no PATCH until it ends", "provisioningState", cur.ProvisioningState)
	}
	if len(note.lost) > 0 {
		log.Info("identities disappeared from the resource; re-adding them", "identities", note.lost)
		r.metrics.driftRepairs.Add(float64(len(note.lost)))
	}
	r.throttle(s, res.SubscriptionID, note.subGate, v.now)
	if note.save {
		if err := r.ledger.save(ctx, key, s.arm.owned); err != nil {
			log.Error(err, "pruning the record of attached identities")
		}
	}
}

// patch records the identities p attaches (write-ahead), sends p and folds the answer in (afterPatch).
func (r *resourceReconciler) patch(ctx context.Context, res providerid.Resource, key string, s *resourceState, v *passView, p azure.Patch, identities []aadv1.AzureIdentity) {
	log := loggerFor(ctx)
	if next, changed := writeAhead(s.arm.owned, p); changed {
		if err := r.ledger.save(ctx, key, next); err != nil {
			log.Error(err, "recording identities about to be attached")
			s.arm = deferred(s.arm, time.Now(), policyOf(r.opts))
			return
		}
		s.arm.owned = next
	}
	log.Info("patching identities", "type", p.Type, "add", p.Add, "remove", p.Remove, "ifMatch", p.IfMatch != "")
	if p.Guarded && p.IfMatch == "" {
		log.Info("ARM gave the resource no etag, so this type change cannot be guarded with If-Match")
	}
	started := time.Now()
	after, err := r.arm.Patch(ctx, res, p)
	r.metrics.armRequest("patch", err)
	r.metrics.patchDuration.WithLabelValues(strings.ToLower(res.Kind.String())).Observe(time.Since(started).Seconds())
	f := azure.Classify(err)
	v.now = time.Now()
	var note patchNote
	s.arm, note = afterPatch(s.arm, *v, p, after, f, policyOf(r.opts))
	v.patches++
	if f != nil && f.Kind != azure.IdentityRejected {
		log.Error(err, "patching identities", "failure", f.Kind.String(), "reason", s.arm.problem.orEmpty().Reason)
	}
	for _, iso := range note.isolated {
		r.metrics.identityRejections.WithLabelValues(iso.code).Inc()
		if !iso.detach {
			log.Info("identity rejected by ARM; attaching the others without it", "identity", iso.id, "code", iso.code, "retryIn", policyOf(r.opts).isolationTTL.String())
			continue
		}
		log.Info("identity deleted in Azure but attached, and ARM refuses every change while it is; detaching it with the others' changes", "identity", iso.id, "code", iso.code)
		for i := range identities {
			if azID := &identities[i]; strings.EqualFold(azID.Spec.ResourceID, iso.id) {
				r.recorder.Eventf(azID, nil, corev1.EventTypeWarning, iso.notice.Reason, "DetachIdentity", eventDetachedNote, iso.id, res.ID())
			}
		}
	}
	if note.stuck {
		log.Info("ARM refused identities that are already left out; waiting before the next PATCH", "reason", s.arm.problem.orEmpty().Reason)
	}
	r.throttle(s, res.SubscriptionID, note.subGate, v.now)
	if note.save {
		if err := r.ledger.save(ctx, key, s.arm.owned); err != nil {
			log.Error(err, "recording detached identities")
		}
	}
}

// throttle records a 429 at now: the subscription's calls wait until `until` (a zero time changes
// nothing), then go one per turn; the resource that was refused claims the first.
func (r *resourceReconciler) throttle(s *resourceState, sub string, until, now time.Time) {
	if until.IsZero() {
		return
	}
	r.mu.Lock()
	k := strings.ToLower(sub)
	if r.subGates == nil {
		r.subGates = map[string]subGate{}
	}
	r.subGates[k] = r.subGates[k].throttled(until, now)
	r.mu.Unlock()
	s.arm.slot = r.claim(sub, now)
	s.arm.notBefore = latest(s.arm.notBefore, s.arm.slot)
}

// claim hands the next turn on the subscription out.
func (r *resourceReconciler) claim(sub string, now time.Time) time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	k := strings.ToLower(sub)
	if r.subGates == nil {
		r.subGates = map[string]subGate{}
	}
	at, g := r.subGates[k].claim(now)
	r.subGates[k] = g
	return at
}

func (r *resourceReconciler) subGate(sub string) subGate {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.subGates[strings.ToLower(sub)]
}

// syncStatuses moves AzureAssignedIdentity objects to Assigned when their identity is attached, records
// why one is not, and lets Unassigned ones go once nothing of theirs is left to detach. It returns the
// wanted assignments whose identity is not attached, by reason, and the reasons it newly wrote.
func (r *resourceReconciler) syncStatuses(ctx context.Context, want desired.State, existing []*aadv1.AzureAssignedIdentity, s *resourceState, view armView) (map[string]int, []announcement, error) {
	plan := planStatuses(want, existing, s.snapshot(), view, r.opts.Managed)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(objectWriters)
	for _, w := range plan.set {
		g.Go(func() error { return r.setStatus(gctx, s, w.obj, w.status, w.why) })
	}
	for _, obj := range plan.release {
		g.Go(func() error {
			if err := r.removeFinalizer(gctx, obj); err != nil {
				return err
			}
			k := obj.Namespace + "/" + obj.Name
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
	err := g.Wait()
	return plan.unattached, plan.announce, err
}

// setNotice writes why (or its absence) into the object's annotations.
func setNotice(obj *aadv1.AzureAssignedIdentity, why notice) {
	if why.Message == "" {
		delete(obj.Annotations, desired.ErrorAnnotation)
		delete(obj.Annotations, desired.ReasonAnnotation)
		return
	}
	if obj.Annotations == nil {
		obj.Annotations = map[string]string{}
	}
	obj.Annotations[desired.ErrorAnnotation] = why.Message
	obj.Annotations[desired.ReasonAnnotation] = why.Reason
}

func (r *resourceReconciler) setStatus(ctx context.Context, s *resourceState, obj *aadv1.AzureAssignedIdentity, status string, why notice) error {
	patch := ctrl.MergeFrom(obj.DeepCopy())
	obj.Status.Status = status
	setNotice(obj, why)
	switch err := r.c.Patch(ctx, obj, patch); {
	case apierrors.IsNotFound(err):
		// Gone (the cache was behind): nothing was written, so nothing is recorded; a record would have the
		// next pass wait for the object's creation event instead of creating it.
		return nil
	case err != nil:
		return fmt.Errorf("setting AzureAssignedIdentity %s/%s to %s: %w", obj.Namespace, obj.Name, status, err)
	}
	s.wrote(obj.Namespace+"/"+obj.Name, status, why.Message)
	return nil
}

// announce records, for each reason newly written, a Warning Event on the pod, and one per identity and
// reason on the AzureIdentity.
func (r *resourceReconciler) announce(res providerid.Resource, anns []announcement, pods []corev1.Pod, identities []aadv1.AzureIdentity) {
	if len(anns) == 0 {
		return
	}
	podsByKey := make(map[string]*corev1.Pod, len(pods))
	for i := range pods {
		podsByKey[pods[i].Namespace+"/"+pods[i].Name] = &pods[i]
	}
	idsByKey := make(map[string]*aadv1.AzureIdentity, len(identities))
	for i := range identities {
		idsByKey[identities[i].Namespace+"/"+identities[i].Name] = &identities[i]
	}
	sort.Slice(anns, func(i, j int) bool { return anns[i].a.Key() < anns[j].a.Key() })
	seen := map[string]bool{}
	for _, an := range anns {
		azID := idsByKey[an.a.Identity.Namespace+"/"+an.a.Identity.Name]
		pod := podsByKey[an.a.PodNamespace+"/"+an.a.Pod]
		if pod != nil {
			var related runtime.Object
			if azID != nil {
				related = azID
			}
			r.recorder.Eventf(pod, related, corev1.EventTypeWarning, an.why.Reason, "AttachIdentity", eventPodNote, an.a.Identity.Spec.ResourceID, res.ID(), an.why.Message)
		}
		if k := an.a.Identity.Namespace + "/" + an.a.Identity.Name + "\x00" + an.why.Message; azID != nil && !seen[k] {
			seen[k] = true
			var related runtime.Object
			if pod != nil {
				related = pod // one of the pods that wait: Events of one identity on two resources stay apart
			}
			r.recorder.Eventf(azID, related, corev1.EventTypeWarning, an.why.Reason, "AttachIdentity", eventIdentityNote, an.a.Identity.Spec.ResourceID, res.ID(), an.why.Message)
		}
	}
}

// setWaiting records why the resource's changes wait, if they do, and the identities ARM refused on it, and sets
// both gauges to the sums over resources.
func (r *resourceReconciler) setWaiting(key string, v armView) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.waiting == nil {
		r.waiting, r.isolated = map[string]string{}, map[string]map[string]int{}
	}
	if reason := waitingReason(v); reason != "" {
		r.waiting[key] = reason
	} else {
		delete(r.waiting, key)
	}
	iso := isolatedByReason(v)
	if len(iso) == 0 {
		delete(r.isolated, key)
	} else {
		r.isolated[key] = iso
	}
	waiting, isolated := map[string]int{}, map[string]int{}
	for _, reason := range r.waiting {
		waiting[reason]++
	}
	for _, t := range r.isolated {
		for reason, n := range t {
			isolated[reason] += n
		}
	}
	for _, reason := range reasons() {
		r.metrics.waiting.WithLabelValues(reason).Set(float64(waiting[reason]))
		r.metrics.isolated.WithLabelValues(reason).Set(float64(isolated[reason]))
	}
}

// setUnattached records the resource's unattached assignments by reason and sets the gauge to the sum over
// resources.
func (r *resourceReconciler) setUnattached(key string, tally map[string]int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.unattached == nil {
		r.unattached = map[string]map[string]int{}
	}
	if len(tally) == 0 {
		delete(r.unattached, key)
	} else {
		r.unattached[key] = tally
	}
	sum := map[string]int{}
	for _, t := range r.unattached {
		for reason, n := range t {
			sum[reason] += n
		}
	}
	for _, reason := range reasons() {
		r.metrics.unattached.WithLabelValues(reason).Set(float64(sum[reason]))
	}
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

// EventNodeIdentityNotAttached is the reason of the Warning Event on a pod bound to a node identity while the
// assigner runs with --federated-only.
const EventNodeIdentityNotAttached = "NodeIdentityNotAttached"

// reportNotAttached tells the pods bound to node identities that a --federated-only assigner attaches nothing:
// a Warning Event on the pod once (told: the pods already told) and a log line. It returns the pods told.
func (r *resourceReconciler) reportNotAttached(ctx context.Context, notAttached []desired.Skipped, pods []corev1.Pod, told map[types.UID]bool) map[types.UID]bool {
	if len(notAttached) == 0 {
		return nil
	}
	byKey := make(map[string]*corev1.Pod, len(pods))
	for i := range pods {
		byKey[pods[i].Namespace+"/"+pods[i].Name] = &pods[i]
	}
	now := map[types.UID]bool{}
	for _, n := range notAttached {
		pod := byKey[n.Pod]
		if pod == nil {
			continue
		}
		now[pod.UID] = true
		if told[pod.UID] {
			continue
		}
		loggerFor(ctx).Info("node identity not attached (--federated-only)", "pod", n.Pod, "reason", n.Reason)
		r.recorder.Eventf(pod, nil, corev1.EventTypeWarning, EventNodeIdentityNotAttached, "AttachIdentity", "%s", n.Reason)
	}
	return now
}
