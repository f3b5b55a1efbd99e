package controller

import (
	"sort"
	"strings"
	"time"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/assigner/desired"
)

// The object side's decisions for one resource: which AzureAssignedIdentity objects a pass creates, updates,
// marks Unassigned, writes a status to or lets go, as functions of what is wanted, what exists, what ARM said
// (armView) and the worker's own recent writes. resource.go carries them out.

// writes is a copy of a resource's recent writes (resourceState.recent), taken once the cache's view has
// pruned them (resourceState.forgetSeen).
type writes map[string]recentWrite

// has tells whether the assigner recently wrote exactly this status and reason message to the object (which
// the cache may not show yet).
func (w writes) has(key, status, why string) bool {
	r, ok := w[key]
	return ok && r.status == status && r.why == why
}

// objectUpdate is an existing object whose spec is no longer its assignment's.
type objectUpdate struct {
	obj *aadv1.AzureAssignedIdentity
	a   desired.Assignment
}

// objectPlan is what a pass does to the resource's objects before ARM answers.
type objectPlan struct {
	// release: wanted, but someone deleted them: their finalizer goes, and a later pass creates them afresh.
	release []*aadv1.AzureAssignedIdentity
	update  []objectUpdate
	// unassign: no longer wanted and not yet Unassigned.
	unassign []*aadv1.AzureAssignedIdentity
	// ready: missing, and needing nothing from ARM (a service principal, or managed mode): created Assigned now.
	ready []desired.Assignment
	// missing: missing, and needing ARM: created once ARM has answered, in their final state.
	missing []desired.Assignment
}

// requeue tells whether a later pass must come back for objects this one cannot finish.
func (p objectPlan) requeue() bool { return len(p.release) > 0 }

// planObjects decides what happens to the objects (have, by namespace/name) before ARM answers. An
// assignment whose object the worker created moments ago (recent has it) and the cache does not show yet is
// left alone: the cache's creation event brings the resource back.
func planObjects(want desired.State, have map[string]*aadv1.AzureAssignedIdentity, recent writes, managed bool) objectPlan {
	var p objectPlan
	keys := make([]string, 0, len(want.Assignments))
	for k := range want.Assignments {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		a, obj := want.Assignments[k], have[k]
		_, justCreated := recent[k]
		switch {
		case obj == nil && justCreated:
		case obj == nil && a.NeedsARM && !managed:
			p.missing = append(p.missing, a)
		case obj == nil:
			p.ready = append(p.ready, a)
		case obj.DeletionTimestamp != nil:
			p.release = append(p.release, obj)
		case specDiffers(obj, a):
			p.update = append(p.update, objectUpdate{obj, a})
		}
	}
	unwanted := make([]string, 0, len(have))
	for k := range have {
		unwanted = append(unwanted, k)
	}
	sort.Strings(unwanted)
	for _, k := range unwanted {
		obj := have[k]
		if _, ok := want.Assignments[k]; ok || obj.Status.Status == aadv1.AssignedIDUnassigned || recent.has(k, aadv1.AssignedIDUnassigned, "") {
			continue
		}
		p.unassign = append(p.unassign, obj)
	}
	return p
}

// specDiffers tells whether the object no longer says what its assignment says: node, identity or binding.
func specDiffers(obj *aadv1.AzureAssignedIdentity, a desired.Assignment) bool {
	return obj.Spec.NodeName != a.NodeName || obj.Spec.AzureIdentityRef == nil ||
		obj.Spec.AzureIdentityRef.Spec.ResourceID != a.Identity.Spec.ResourceID ||
		obj.Spec.AzureIdentityRef.Spec.ClientID != a.Identity.Spec.ClientID ||
		obj.Spec.AzureBindingRef == nil || obj.Spec.AzureBindingRef.Name != a.Binding.Name
}

// statusWrite is a status and reason an object gets.
type statusWrite struct {
	obj    *aadv1.AzureAssignedIdentity
	status string
	why    notice
}

// statusPlan is what a pass does to the resource's objects once ARM has answered.
type statusPlan struct {
	set []statusWrite
	// release: no longer wanted and nothing of theirs left to detach: their finalizer goes and, unless being
	// deleted already, they are deleted.
	release []*aadv1.AzureAssignedIdentity
	// unattached: the wanted assignments whose identity is not attached, by reason.
	unattached map[string]int
	// announce: the reasons newly written, for Events on the pod and the AzureIdentity.
	announce []announcement
}

// planStatuses decides, after ARM's side of the pass (view), the status of each existing object: Assigned
// when its identity is attached, Created saying why not otherwise; an object no longer wanted is let go once
// its identity is not waiting to be detached (in managed mode, nothing is).
func planStatuses(want desired.State, existing []*aadv1.AzureAssignedIdentity, recent writes, view armView, managed bool) statusPlan {
	pending := pendingRemovals(view)
	p := statusPlan{unattached: map[string]int{}}
	for _, obj := range existing {
		k := obj.Namespace + "/" + obj.Name
		a, wanted := want.Assignments[k]
		if wanted && obj.DeletionTimestamp == nil {
			// What the object says now: the worker's own write when the cache does not show it yet (the
			// cache is behind it), else the cache's. Deciding on the cache alone skipped a needed write
			// (Unassigned written, Assigned wanted again, the cache still showing the first Assigned), and
			// wrote to an object the worker had deleted, which left it waiting for an event that never came.
			status, why, sure := assignmentStatus(a, view)
			cur, curWhy := obj.Status.Status, obj.Annotations[desired.ErrorAnnotation]
			if w, ok := recent[k]; ok {
				if w.status == deletedByUs {
					continue // gone; its deletion's event brings the resource back to create it afresh
				}
				cur, curWhy = w.status, w.why
			}
			if !sure && cur == aadv1.AssignedIDAssigned {
				continue // ARM's state is unknown this pass: keep what was last known
			}
			if status != aadv1.AssignedIDAssigned && why.Reason != "" {
				p.unattached[why.Reason]++
			}
			if cur != status || curWhy != why.Message {
				if why.Message != "" && why.Message != curWhy {
					p.announce = append(p.announce, announcement{a, why})
				}
				p.set = append(p.set, statusWrite{obj, status, why})
			}
			continue
		}
		if wanted {
			continue // being recreated (planObjects)
		}
		idKey := ""
		if obj.Spec.AzureIdentityRef != nil && obj.Spec.AzureIdentityRef.Spec.Type == aadv1.UserAssignedMSI {
			idKey = strings.ToLower(obj.Spec.AzureIdentityRef.Spec.ResourceID)
		}
		if idKey != "" && !managed && (pending == nil || pending[idKey]) {
			continue
		}
		if recent.has(k, deletedByUs, "") {
			continue // deleted moments ago; the cache is behind
		}
		p.release = append(p.release, obj)
	}
	return p
}

// waitingReason is why the resource's changes wait, if they do ("" when they do not).
func waitingReason(v armView) string {
	if v.problem == nil {
		return ""
	}
	return v.problem.Reason
}

// isolatedByReason counts the identities ARM refused on the resource that a pod still waits for, by reason:
// one refused for a pod that is gone is nobody's problem, and one detached because it was deleted in Azure
// is not waiting.
func isolatedByReason(v armView) map[string]int {
	out := map[string]int{}
	for k, i := range v.isolated {
		if _, wanted := v.goal.Want[k]; wanted && !i.detach {
			out[i.notice.Reason]++
		}
	}
	return out
}

// requeueAfter is when the resource comes back: when ARM's side says (armAfter, 0 for no return), or after
// the debounce (at least 10 ms) when objects are left for a later pass (soon), whichever is first.
func requeueAfter(armAfter time.Duration, soon bool, debounce time.Duration) time.Duration {
	if soon && (armAfter == 0 || armAfter > debounce) {
		return max(debounce, 10*time.Millisecond)
	}
	return armAfter
}

// graceRequeue is when a pass during a grace period comes back: by the end of the first grace (end), measured
// from now, the pass's end, rather than from when the pass computed it; a pass that took long (a slow API
// server) would otherwise postpone the detach by its own length.
func graceRequeue(after time.Duration, end, now time.Time) time.Duration {
	left := max(end.Sub(now), 10*time.Millisecond)
	if after == 0 || left < after {
		return left
	}
	return after
}
