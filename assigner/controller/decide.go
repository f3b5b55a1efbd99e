package controller

import (
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/assigner/azure"
	"github.com/podidentity/podidentity/assigner/desired"
	"github.com/podidentity/podidentity/assigner/providerid"
)

// The per-resource decisions, as pure functions of what the assigner knows about a VM or scale set
// (armState) and what this pass wants (passView): which ARM call comes next and when (decide), what an
// answer changes (afterRead, afterPatch, writeAhead), what an AzureAssignedIdentity says (assignmentStatus),
// and which identities a grace period keeps attached (graceCandidates, graceHolds). syncARM in resource.go
// executes them: it makes the calls, writes the ledger, logs and records Events, and decides nothing.

// armPolicy is the timing the decisions follow.
type armPolicy struct {
	resync                      time.Duration
	baseBackoff, maxBackoff     time.Duration // after failures: 1 s doubling to 5 min
	busyBackoff, busyMaxBackoff time.Duration // while another client's operation runs: 10 s doubling to 2 min
	isolationTTL                time.Duration
	// maxPatches bounds the PATCHes of one pass (chunks of 150, isolations): a guard, never reached by a
	// pass that makes progress.
	maxPatches int
}

func policyOf(o Options) armPolicy {
	return armPolicy{resync: o.Resync, baseBackoff: o.BaseBackoff, maxBackoff: o.MaxBackoff, busyBackoff: o.BusyBackoff,
		busyMaxBackoff: o.BusyMaxBackoff, isolationTTL: o.IsolationTTL, maxPatches: 20}
}

// armState is what the assigner knows about one resource between passes. The decisions return a new
// value and never change the maps of the one they are given.
type armState struct {
	cur    *azure.ResourceIdentity // last known identities; nil: unknown, read before deciding
	readAt time.Time
	// fromARM: cur is ARM's own answer (a read, or a PATCH's final state), so its ETag is the resource's;
	// false after a PATCH whose answer had no identities (cur was then computed, without an etag).
	fromARM bool
	// gone: ARM said the resource does not exist (nothing attached, nothing to detach).
	gone     bool
	owned    map[string]bool      // identities the assigner attached (mirrors the ledger ConfigMap)
	isolated map[string]isolation // identities ARM refused, by case-folded id
	// failures counts consecutive failed calls; busy consecutive signs of another client's operation (409
	// answers, reads showing Updating). Each sets its own growing delay.
	failures, busy int
	// notBefore: no ARM call on this resource before then (backoff, Retry-After, another operation).
	notBefore time.Time
	// slot: the resource's turn on its throttled subscription (subGate.claim); zero once used.
	slot time.Time
	// problem is why the resource's pending identities are not attached while the assigner waits.
	problem *notice
}

// isolation is an identity ARM refused: left out of PATCHes until `until`. detach marks one that was
// deleted in Azure but is still attached: ARM refuses every change of the resource until it is detached.
type isolation struct {
	code   string
	notice notice
	until  time.Time
	detach bool
}

// passView is what one pass wants and what it has done so far.
type passView struct {
	now  time.Time
	res  providerid.Resource
	want map[string]string         // identities pods on the resource need (case-folded id -> spelling)
	hold map[string]bool           // identities kept attached for their grace period
	keep func(string, string) bool // immutable identities (never removed)
	// sub is the throttling state of the resource's subscription (shared by its resources).
	sub     subGate
	wake    time.Duration // another reason to come back (a grace period's end); 0: none
	read    bool          // the resource was read during this pass
	patches int           // PATCHes sent during this pass
}

type stepKind int

const (
	stepDone  stepKind = iota // nothing (more) to do now
	stepWait                  // not now: a delay is running
	stepRead                  // GET the resource
	stepPatch                 // PATCH it
)

func (k stepKind) String() string { return [...]string{"done", "wait", "read", "patch"}[k] }

// step is the next ARM call of a pass, or when to come back (after; 0: only on an event). slot: the wait is
// for a throttled subscription, and the resource needs a turn (subGate.claim).
type step struct {
	kind  stepKind
	patch azure.Patch
	after time.Duration
	slot  bool
}

// subGate is how ARM throttles one subscription: no call before until (its Retry-After), and then calls
// one per span (the Retry-After ARM gave) in the order resources claimed their turn, so that the resources
// waiting do not all call at once when the time is up and get refused again.
type subGate struct {
	until time.Time
	span  time.Duration
	next  time.Time // the first turn not yet claimed
}

// throttled is the gate after a 429 at now with Retry-After until.
func (g subGate) throttled(until, now time.Time) subGate {
	if until.After(g.until) {
		g.until, g.span = until, until.Sub(now)
	}
	return g
}

// closedUntil is when a resource without a turn may call ARM.
func (g subGate) closedUntil() time.Time {
	if g.next.IsZero() {
		return g.until
	}
	return latest(g.until, g.next.Add(-g.span))
}

// claim hands out the next turn: when the claiming resource may call ARM.
func (g subGate) claim(now time.Time) (time.Time, subGate) {
	at := latest(latest(g.until, g.next), now)
	g.next = at.Add(max(g.span, time.Millisecond))
	return at, g
}

// busyState tells whether a provisioning state means that an operation runs on the resource.
func busyState(state string) bool {
	return strings.EqualFold(state, "Updating") || strings.EqualFold(state, "Creating")
}

// growing is base doubled n-1 times, at most max (0 for n <= 0).
func growing(base, max time.Duration, n int) time.Duration {
	if n <= 0 {
		return 0
	}
	d := base
	for i := 1; i < n && d < max; i++ {
		d *= 2
	}
	return min(d, max)
}

func latest(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// goal is what Plan works toward: isolated identities are neither added nor (unless deleted in Azure and
// still attached) removed; held ones are not removed.
func (st armState) goal(v passView) azure.Goal {
	g := azure.Goal{Want: v.want, Owned: st.owned, Keep: v.keep, Hold: v.hold, Skip: map[string]bool{}, Detach: map[string]bool{}}
	for k, iso := range st.isolated {
		if v.now.Before(iso.until) {
			g.Skip[k] = true
			if iso.detach {
				g.Detach[k] = true
			}
		}
	}
	return g
}

// decide returns the next step of a pass and the state it leaves.
func decide(st armState, v passView, pol armPolicy) (armState, step) {
	if len(v.want) == 0 && len(st.owned) == 0 {
		// Nothing to attach and nothing of ours to detach: no ARM call at all.
		return atGoal(st, v.now), step{kind: stepDone}
	}
	gate, slot := st.notBefore, false
	if closed := v.sub.closedUntil(); st.slot.IsZero() && closed.After(gate) {
		// The subscription is throttled: take a turn (the executor hands out slots, one per Retry-After).
		gate, slot = closed, true
	}
	if v.now.Before(gate) {
		if slot {
			n := throttledNotice(v.res)
			st.problem = &n
		}
		return st, step{kind: stepWait, after: gate.Sub(v.now), slot: slot}
	}
	if st.cur == nil || v.now.Sub(st.readAt) >= pol.resync {
		return st, step{kind: stepRead}
	}
	cur := *st.cur
	if strings.EqualFold(cur.ProvisioningState, "Deleting") {
		return st, step{kind: stepDone, after: pol.resync} // leave its identities alone
	}
	plan := azure.Plan(cur, st.goal(v))
	if len(plan) == 0 {
		st = atGoal(st, v.now)
		return st, step{kind: stepDone, after: st.wake(v, pol)}
	}
	if busyState(cur.ProvisioningState) {
		if !v.read {
			return st, step{kind: stepRead} // an operation ran when last read: has it ended?
		}
		// Another client's operation (an upgrade, a scale-out) runs: ARM would refuse a PATCH with 409.
		// Look again later, less and less often, and write nothing meanwhile.
		st = waitForOperation(st, v, pol)
		return st, step{kind: stepWait, after: st.notBefore.Sub(v.now)}
	}
	if v.patches >= pol.maxPatches {
		st.failures++
		d := growing(pol.baseBackoff, pol.maxBackoff, st.failures)
		st.notBefore = v.now.Add(d)
		return st, step{kind: stepWait, after: d}
	}
	p := plan[0]
	if p.Guarded && p.IfMatch == "" && !st.fromARM {
		// The state was computed after a PATCH, without ARM's etag: read it rather than drop the guard.
		return st, step{kind: stepRead}
	}
	return st, step{kind: stepPatch, patch: p}
}

// waitForOperation records another sign of another client's operation: the wait grows with each.
func waitForOperation(st armState, v passView, pol armPolicy) armState {
	st.busy++
	st.notBefore = v.now.Add(growing(pol.busyBackoff, pol.busyMaxBackoff, st.busy))
	n := busyNotice(v.res, pol.busyMaxBackoff)
	st.problem = &n
	return st
}

// atGoal is the state once the resource is where the pass wants it: delays reset, expired isolations
// forgotten (identities still isolated keep their notice).
func atGoal(st armState, now time.Time) armState {
	st.failures, st.busy, st.problem, st.slot = 0, 0, nil, time.Time{}
	var keep map[string]isolation
	for k, iso := range st.isolated {
		if now.Before(iso.until) {
			if keep == nil {
				keep = map[string]isolation{}
			}
			keep[k] = iso
		}
	}
	st.isolated = keep
	return st
}

// wake is when a settled resource should be looked at again: the resync, an isolation's end, v.wake.
func (st armState) wake(v passView, pol armPolicy) time.Duration {
	d := pol.resync
	for _, iso := range st.isolated {
		d = min(d, max(iso.until.Sub(v.now), 10*time.Millisecond))
	}
	if v.wake > 0 {
		d = min(d, v.wake)
	}
	return d
}

// deferred is the state after a failure on the assigner's side (the ledger could not be read or written):
// no ARM call until a growing delay has passed.
func deferred(st armState, now time.Time, pol armPolicy) armState {
	st.failures++
	st.notBefore = now.Add(growing(pol.baseBackoff, pol.maxBackoff, st.failures))
	return st
}

// readNote is what the executor does after a read besides keeping the new state.
type readNote struct {
	lost    []string  // wanted identities that disappeared since the last read (drift): logged, counted
	save    bool      // owned changed: write the ledger
	subGate time.Time // throttled: the subscription's calls wait until then
}

// afterRead folds the answer of a GET (cur, or the classified failure f) into the state.
func afterRead(st armState, v passView, cur azure.ResourceIdentity, f *azure.Failure, pol armPolicy) (armState, readNote) {
	var note readNote
	if f == nil {
		if st.cur != nil {
			note.lost = missing(*st.cur, cur, v.want)
		}
		st.cur, st.readAt, st.fromARM, st.gone = &cur, v.now, true, false
		// Forget identities recorded as ours that are not attached (a PATCH that failed after the
		// write-ahead), but not while an operation runs: it may be ours (from before a restart, or one
		// whose answer was lost) and attach them yet.
		if !busyState(cur.ProvisioningState) {
			pruned := map[string]bool{}
			for k := range st.owned {
				if cur.Has(k) {
					pruned[k] = true
				}
			}
			if len(pruned) != len(st.owned) {
				st.owned, note.save = pruned, true
			}
		}
		return st, note
	}
	st.cur = nil
	st, note.subGate, note.save = failed(st, v, f, pol)
	return st, note
}

// failed folds a failed call that left the resource as it was, or unknown, into the state. It returns the
// time until which the subscription is throttled (zero unless it is) and whether owned changed.
func failed(st armState, v passView, f *azure.Failure, pol armPolicy) (armState, time.Time, bool) {
	var subGate time.Time
	save := false
	switch f.Kind {
	case azure.NotFound:
		// The VM or scale set is gone, and its identities with it: nothing to detach, nothing to record.
		save = len(st.owned) > 0
		st.cur, st.gone, st.owned, st.failures = nil, true, map[string]bool{}, 0
		st.notBefore = v.now.Add(pol.resync)
	case azure.Throttled:
		// ARM said when, for the whole subscription: honour it on every resource of it.
		subGate = v.now.Add(max(f.RetryAfter, pol.baseBackoff))
		st.notBefore = subGate
	case azure.Conflict:
		return waitForOperation(st, v, pol), subGate, save
	case azure.Stale:
		// Someone changed the resource since it was read: read again at once, then wait if it repeats.
		st.failures++
		st.notBefore = v.now.Add(growing(pol.baseBackoff, pol.maxBackoff, st.failures-1))
		return st, subGate, save
	default:
		st.failures++
		st.notBefore = v.now.Add(max(growing(pol.baseBackoff, pol.maxBackoff, st.failures), f.RetryAfter))
	}
	n := resourceNotice(v.res, f, pol.maxBackoff)
	st.problem = &n
	return st, subGate, save
}

// isolatedNow is an identity an answer isolated, for the executor's logs, metrics and Events.
type isolatedNow struct {
	id     string // as ARM spelled it
	code   string
	notice notice
	detach bool
}

// patchNote is what the executor does after a PATCH besides keeping the new state.
type patchNote struct {
	save     bool // owned changed: write the ledger
	isolated []isolatedNow
	subGate  time.Time
	// stuck: ARM refused identities that were already left out (or that may not be detached): no progress.
	stuck bool
}

// writeAhead is the record of owned identities to save before p is sent, so that a crash after the PATCH
// never leaves an identity the assigner attached looking like someone else's; changed is false when p
// attaches nothing new.
func writeAhead(owned map[string]bool, p azure.Patch) (map[string]bool, bool) {
	next := copySet(owned)
	for _, id := range p.Add {
		next[strings.ToLower(id)] = true
	}
	return next, len(next) != len(owned)
}

// afterPatch folds the answer of a PATCH planned from st.cur (after: the resource as ARM answered, or f)
// into the state.
func afterPatch(st armState, v passView, p azure.Patch, after azure.ResourceIdentity, f *azure.Failure, pol armPolicy) (armState, patchNote) {
	var note patchNote
	cur := *st.cur
	if f == nil {
		st.fromARM = after.UserAssigned != nil
		if !st.fromARM {
			after = azure.Apply(cur, p) // no etag: a guarded PATCH will read first
		}
		next := copySet(st.owned)
		for k := range cur.UserAssigned {
			if !after.Has(k) {
				delete(next, k) // detached: ours no more
			}
		}
		note.save = len(next) != len(st.owned)
		st.owned = next
		st.cur, st.readAt, st.gone = &after, v.now, false
		st.failures, st.busy, st.problem = 0, 0, nil
		iso := map[string]isolation{}
		for k, i := range st.isolated {
			if after.Has(k) && !i.detach {
				continue // attached after all
			}
			if i.detach && !after.Has(k) {
				i.detach = false // detached; still refused when added
			}
			iso[k] = i
		}
		st.isolated = iso
		return st, note
	}
	if f.Kind != azure.IdentityRejected {
		st.cur = nil // whatever failed (a 429 may come from polling an accepted PATCH), read before the next PATCH
		st, note.subGate, note.save = failed(st, v, f, pol)
		return st, note
	}
	iso := make(map[string]isolation, len(st.isolated)+len(f.Identities))
	for k, i := range st.isolated {
		iso[k] = i
	}
	progress, blocked := false, ""
	for _, id := range f.Identities {
		k := strings.ToLower(id)
		dead := f.Code == azure.CodeFailedIdentityOperation && cur.Has(k)
		if dead && v.keep != nil && v.keep(k, cur.ClientIDs[k]) {
			blocked = id
		}
		prev, ok := iso[k]
		if !ok || !v.now.Before(prev.until) || prev.detach != dead {
			progress = true
		}
		n := identityNotice(f)
		iso[k] = isolation{code: f.Code, notice: n, until: v.now.Add(pol.isolationTTL), detach: dead}
		note.isolated = append(note.isolated, isolatedNow{id: id, code: f.Code, notice: n, detach: dead})
	}
	st.isolated = iso
	if progress && blocked == "" {
		return st, note // the next PATCH leaves them out (and detaches the deleted ones)
	}
	note.stuck = true
	st.failures++
	st.notBefore = v.now.Add(growing(pol.baseBackoff, pol.maxBackoff, st.failures))
	n := resourceNotice(v.res, f, pol.maxBackoff)
	if blocked != "" {
		n = blockedNotice(v.res, blocked)
	}
	st.problem = &n
	return st, note
}

// armView is what the object side needs to know of the resource after the ARM side's pass.
type armView struct {
	cur      azure.ResourceIdentity
	known    bool // cur is the resource's state as far as the assigner knows
	isolated map[string]isolation
	problem  *notice
	goal     azure.Goal // without grace holds: what is still to be detached
	managed  bool
}

func viewOf(st armState, v passView, managed bool) armView {
	out := armView{isolated: st.isolated, problem: st.problem, managed: managed}
	switch {
	case st.cur != nil:
		out.cur, out.known = *st.cur, true
	case st.gone || (len(v.want) == 0 && len(st.owned) == 0):
		out.cur, out.known = azure.ResourceIdentity{UserAssigned: map[string]string{}}, true
	}
	out.goal = st.goal(v)
	out.goal.Hold = nil
	return out
}

// assignmentStatus is the status an assignment's object should have after this pass and, when not
// Assigned, why. sure is false when ARM's state is unknown and the identity needs ARM: an object that is
// Assigned then stays so.
func assignmentStatus(a desired.Assignment, v armView) (status string, why notice, sure bool) {
	if !a.NeedsARM || v.managed {
		return aadv1.AssignedIDAssigned, notice{}, true
	}
	iso, isolated := v.isolated[a.IdentityKey()]
	switch {
	case isolated && iso.detach:
		return aadv1.AssignedIDCreated, iso.notice, true // attached, but deleted in Azure: serves no token
	case v.known && v.cur.Has(a.Identity.Spec.ResourceID):
		return aadv1.AssignedIDAssigned, notice{}, true
	case isolated:
		return aadv1.AssignedIDCreated, iso.notice, true
	}
	return aadv1.AssignedIDCreated, v.problem.orEmpty(), v.known
}

// pendingRemovals lists (case-folded) the identities still to be detached from the resource, grace holds
// included; nil when the resource's state is unknown.
func pendingRemovals(v armView) map[string]bool {
	if !v.known {
		return nil
	}
	_, remove := azure.Delta(v.cur, v.goal)
	out := map[string]bool{}
	for _, id := range remove {
		out[strings.ToLower(id)] = true
	}
	return out
}

// graceCandidates lists (case-folded) the user-assigned identities that running pods on the resource lost
// because their AzureIdentity or AzureIdentityBinding was deleted: an AzureAssignedIdentity that is no
// longer wanted, whose pod still runs on its node with its binding label, and whose identity or binding is
// gone. A GitOps prune or kubectl replace deletes and re-creates them; detaching at once would cut the
// pods' tokens for as long as the two PATCHes take.
func graceCandidates(existing []aadv1.AzureAssignedIdentity, want desired.State, pods []corev1.Pod, identities []aadv1.AzureIdentity, bindings []aadv1.AzureIdentityBinding) map[string]bool {
	ids, binds, running := map[string]bool{}, map[string]bool{}, map[string]string{}
	for i := range identities {
		ids[identities[i].Namespace+"/"+identities[i].Name] = true
	}
	for i := range bindings {
		binds[bindings[i].Namespace+"/"+bindings[i].Name] = true
	}
	for i := range pods {
		if p := &pods[i]; desired.NeedsIdentities(p) && p.DeletionTimestamp == nil {
			running[p.Namespace+"/"+p.Name] = p.Spec.NodeName
		}
	}
	out := map[string]bool{}
	for i := range existing {
		o := &existing[i]
		ref := o.Spec.AzureIdentityRef
		if _, wanted := want.Assignments[o.Namespace+"/"+o.Name]; wanted || ref == nil || ref.Spec.Type != aadv1.UserAssignedMSI || ref.Spec.ResourceID == "" {
			continue
		}
		if node, ok := running[o.Spec.PodNamespace+"/"+o.Spec.Pod]; !ok || node != o.Spec.NodeName {
			continue // the pod went (or moved): detach at once
		}
		identityGone := !ids[ref.Namespace+"/"+ref.Name]
		bindingGone := o.Spec.AzureBindingRef != nil && !binds[o.Spec.AzureBindingRef.Namespace+"/"+o.Spec.AzureBindingRef.Name]
		if identityGone || bindingGone {
			out[strings.ToLower(ref.Spec.ResourceID)] = true
		}
	}
	return out
}

// graceHolds keeps each candidate attached for grace from when it was first seen (since, carried between
// passes): it returns the identities held now, the since to carry on (candidates only), the identities
// whose grace starts now, and when the first hold ends (0: none).
func graceHolds(candidates map[string]bool, since map[string]time.Time, now time.Time, grace time.Duration) (hold map[string]bool, next map[string]time.Time, started []string, wake time.Duration) {
	if grace <= 0 || len(candidates) == 0 {
		return nil, nil, nil, 0
	}
	hold, next = map[string]bool{}, map[string]time.Time{}
	for k := range candidates {
		t, ok := since[k]
		if !ok {
			t = now
			started = append(started, k)
		}
		next[k] = t
		if left := t.Add(grace).Sub(now); left > 0 {
			hold[k] = true
			if wake == 0 || left < wake {
				wake = left
			}
		}
	}
	return hold, next, started, wake
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
