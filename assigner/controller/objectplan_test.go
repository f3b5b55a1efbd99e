package controller

import (
	"reflect"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/assigner/azure"
	"github.com/podidentity/podidentity/assigner/desired"
)

// The object side's decisions (objectplan.go), tested as functions of what is wanted, what exists, what
// ARM said and the worker's recent writes. No Kubernetes.

// planAssignment is the assignment of pod p to the uami() identity id (a service principal when !arm).
func planAssignment(p, id string, arm bool) desired.Assignment {
	typ := aadv1.UserAssignedMSI
	if !arm {
		typ = aadv1.ServicePrincipal
	}
	return desired.Assignment{Name: p + "-apps-" + id, Namespace: "apps", Pod: p, PodNamespace: "apps", NodeName: "node-0", NeedsARM: arm,
		Identity: &aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: id},
			Spec: aadv1.AzureIdentitySpec{Type: typ, ResourceID: uami(id), ClientID: id + "-client"}},
		Binding: &aadv1.AzureIdentityBinding{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: id}}}
}

// objectOf is a's object as the API server would hold it, with a status and, when why is set, its reason.
func objectOf(a desired.Assignment, status string, why notice) *aadv1.AzureAssignedIdentity {
	o := a.Object()
	o.Status.Status = status
	setNotice(o, why)
	return o
}

func wantOf(as ...desired.Assignment) desired.State {
	s := desired.State{Assignments: map[string]desired.Assignment{}}
	for _, a := range as {
		s.Assignments[a.Key()] = a
	}
	return s
}

func keysOf(objs []*aadv1.AzureAssignedIdentity) []string {
	var out []string
	for _, o := range objs {
		out = append(out, o.Namespace+"/"+o.Name)
	}
	return out
}

func assignmentKeys(as []desired.Assignment) []string {
	var out []string
	for _, a := range as {
		out = append(out, a.Key())
	}
	return out
}

func TestPlanObjects(t *testing.T) {
	msi, sp, other := planAssignment("p", "msi", true), planAssignment("p", "sp", false), planAssignment("q", "msi", true)
	moved := other
	moved.NodeName = "node-1"
	deleting := objectOf(msi, aadv1.AssignedIDAssigned, notice{})
	deleting.DeletionTimestamp = &metav1.Time{Time: t0}
	rebound := objectOf(msi, aadv1.AssignedIDAssigned, notice{})
	rebound.Spec.AzureBindingRef.Name = "old"
	type result struct{ release, update, unassign, ready, missing []string }
	tests := []struct {
		name    string
		want    desired.State
		have    []*aadv1.AzureAssignedIdentity
		recent  writes
		managed bool
		out     result
	}{
		{name: "nothing wanted, nothing there"},
		{name: "missing: an identity waits for ARM, a service principal is ready now",
			want: wantOf(msi, sp), out: result{ready: []string{sp.Key()}, missing: []string{msi.Key()}}},
		{name: "managed mode: nothing waits for ARM",
			want: wantOf(msi, sp), managed: true, out: result{ready: []string{msi.Key(), sp.Key()}}},
		{name: "created moments ago, the cache does not show it yet: left alone",
			want: wantOf(msi), recent: writes{msi.Key(): {status: aadv1.AssignedIDCreated}}},
		{name: "up to date: nothing to do",
			want: wantOf(msi), have: []*aadv1.AzureAssignedIdentity{objectOf(msi, aadv1.AssignedIDAssigned, notice{})}},
		{name: "wanted but deleted by someone: released, to be created afresh",
			want: wantOf(msi), have: []*aadv1.AzureAssignedIdentity{deleting}, out: result{release: []string{msi.Key()}}},
		{name: "pod moved node: spec updated",
			want: wantOf(moved), have: []*aadv1.AzureAssignedIdentity{objectOf(other, aadv1.AssignedIDAssigned, notice{})}, out: result{update: []string{other.Key()}}},
		{name: "binding renamed: spec updated",
			want: wantOf(msi), have: []*aadv1.AzureAssignedIdentity{rebound}, out: result{update: []string{msi.Key()}}},
		{name: "no longer wanted: marked Unassigned",
			have: []*aadv1.AzureAssignedIdentity{objectOf(msi, aadv1.AssignedIDAssigned, notice{}), objectOf(other, aadv1.AssignedIDCreated, notice{})},
			out:  result{unassign: []string{msi.Key(), other.Key()}}},
		{name: "already Unassigned, or just written so: not again",
			have:   []*aadv1.AzureAssignedIdentity{objectOf(msi, aadv1.AssignedIDUnassigned, notice{}), objectOf(other, aadv1.AssignedIDAssigned, notice{})},
			recent: writes{other.Key(): {status: aadv1.AssignedIDUnassigned}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			have := map[string]*aadv1.AzureAssignedIdentity{}
			for _, o := range tc.have {
				have[o.Namespace+"/"+o.Name] = o
			}
			want := tc.want
			if want.Assignments == nil {
				want = wantOf()
			}
			p := planObjects(want, have, tc.recent, tc.managed)
			var updates []string
			for _, u := range p.update {
				if u.obj.Name != u.a.Name {
					t.Errorf("update pairs object %s with assignment %s", u.obj.Name, u.a.Name)
				}
				updates = append(updates, u.a.Key())
			}
			got := result{keysOf(p.release), updates, keysOf(p.unassign), assignmentKeys(p.ready), assignmentKeys(p.missing)}
			if !reflect.DeepEqual(got, tc.out) {
				t.Fatalf("planObjects = %+v, want %+v", got, tc.out)
			}
			if p.requeue() != (len(tc.out.release) > 0) {
				t.Fatalf("requeue = %v with %d released", p.requeue(), len(tc.out.release))
			}
		})
	}
}

func TestPlanStatuses(t *testing.T) {
	on, refused, pending, sp := planAssignment("p", "on", true), planAssignment("p", "refused", true), planAssignment("p", "new", true), planAssignment("p", "sp", false)
	gone, kept := planAssignment("q", "gone", true), planAssignment("q", "on", true)
	problem := &notice{ReasonThrottled, "throttled"}
	refusal := notice{ReasonIdentityNotAuthorized, "no role"}
	known := armView{cur: *attached(`"1"`, "Succeeded", "on", "gone"), known: true, problem: problem,
		isolated: map[string]isolation{strings.ToLower(uami("refused")): {notice: refusal}},
		goal:     azure.Goal{Want: idmap("on", "refused", "new"), Owned: idset("on", "gone")}}
	unknown := armView{problem: problem}
	deleting := objectOf(gone, aadv1.AssignedIDUnassigned, notice{})
	deleting.DeletionTimestamp = &metav1.Time{Time: t0}
	type set struct {
		key, status, reason string
	}
	tests := []struct {
		name       string
		want       desired.State
		existing   []*aadv1.AzureAssignedIdentity
		recent     writes
		view       armView
		managed    bool
		set        []set
		release    []string
		unattached map[string]int
		announce   []string
	}{
		{name: "attached: Assigned", want: wantOf(on), view: known,
			existing: []*aadv1.AzureAssignedIdentity{objectOf(on, aadv1.AssignedIDCreated, *problem)},
			set:      []set{{on.Key(), aadv1.AssignedIDAssigned, ""}}, unattached: map[string]int{}},
		{name: "already Assigned: no write", want: wantOf(on), view: known,
			existing:   []*aadv1.AzureAssignedIdentity{objectOf(on, aadv1.AssignedIDAssigned, notice{})},
			unattached: map[string]int{}},
		{name: "refused by ARM: Created with the reason, announced once", want: wantOf(refused, pending), view: known,
			existing:   []*aadv1.AzureAssignedIdentity{objectOf(refused, aadv1.AssignedIDCreated, notice{}), objectOf(pending, aadv1.AssignedIDCreated, *problem)},
			set:        []set{{refused.Key(), aadv1.AssignedIDCreated, ReasonIdentityNotAuthorized}},
			unattached: map[string]int{ReasonIdentityNotAuthorized: 1, ReasonThrottled: 1},
			announce:   []string{refused.Key()}},
		{name: "just written so: not again, not announced", want: wantOf(refused), view: known,
			existing:   []*aadv1.AzureAssignedIdentity{objectOf(refused, aadv1.AssignedIDCreated, notice{})},
			recent:     writes{refused.Key(): {status: aadv1.AssignedIDCreated, why: refusal.Message}},
			unattached: map[string]int{ReasonIdentityNotAuthorized: 1}},
		{name: "ARM's state unknown: an Assigned object stays so", want: wantOf(on, pending), view: unknown,
			existing:   []*aadv1.AzureAssignedIdentity{objectOf(on, aadv1.AssignedIDAssigned, notice{}), objectOf(pending, aadv1.AssignedIDCreated, notice{})},
			set:        []set{{pending.Key(), aadv1.AssignedIDCreated, ReasonThrottled}},
			unattached: map[string]int{ReasonThrottled: 1}, announce: []string{pending.Key()}},
		{name: "service principal: Assigned whatever ARM says", want: wantOf(sp), view: unknown,
			existing: []*aadv1.AzureAssignedIdentity{objectOf(sp, aadv1.AssignedIDCreated, notice{})},
			set:      []set{{sp.Key(), aadv1.AssignedIDAssigned, ""}}, unattached: map[string]int{}},
		{name: "wanted but being deleted: left to planObjects", want: wantOf(gone), view: known,
			existing: []*aadv1.AzureAssignedIdentity{deleting}, unattached: map[string]int{}},
		{name: "unwanted: kept while its identity waits to be detached, let go once detached", view: known,
			existing: []*aadv1.AzureAssignedIdentity{objectOf(gone, aadv1.AssignedIDUnassigned, notice{}), objectOf(pending, aadv1.AssignedIDUnassigned, notice{})},
			release:  []string{pending.Key()}, unattached: map[string]int{}},
		{name: "unwanted, ARM's state unknown: kept", view: unknown,
			existing: []*aadv1.AzureAssignedIdentity{objectOf(gone, aadv1.AssignedIDUnassigned, notice{})}, unattached: map[string]int{}},
		{name: "unwanted, managed mode: let go at once", view: unknown, managed: true,
			existing: []*aadv1.AzureAssignedIdentity{objectOf(gone, aadv1.AssignedIDUnassigned, notice{}), deleting},
			release:  []string{gone.Key(), gone.Key()}, unattached: map[string]int{}},
		{name: "unwanted service principal: let go at once; one deleted moments ago: not again", view: unknown,
			existing: []*aadv1.AzureAssignedIdentity{objectOf(sp, aadv1.AssignedIDUnassigned, notice{}), objectOf(kept, aadv1.AssignedIDUnassigned, notice{})},
			recent:   writes{kept.Key(): {status: deletedByUs}, sp.Key(): {status: aadv1.AssignedIDUnassigned}},
			release:  []string{sp.Key()}, unattached: map[string]int{}},
		// The cache behind the worker's own writes (TestDeleteAndRecreateIdentity under load).
		{name: "cache behind our Unassigned: Assigned written again", want: wantOf(on), view: known,
			existing: []*aadv1.AzureAssignedIdentity{objectOf(on, aadv1.AssignedIDAssigned, notice{})},
			recent:   writes{on.Key(): {status: aadv1.AssignedIDUnassigned}},
			set:      []set{{on.Key(), aadv1.AssignedIDAssigned, ""}}, unattached: map[string]int{}},
		{name: "deleted by us, still in the cache, wanted again: nothing written to it", want: wantOf(on), view: known,
			existing: []*aadv1.AzureAssignedIdentity{objectOf(on, aadv1.AssignedIDUnassigned, notice{})},
			recent:   writes{on.Key(): {status: deletedByUs}}, unattached: map[string]int{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			want := tc.want
			if want.Assignments == nil {
				want = wantOf()
			}
			p := planStatuses(want, tc.existing, tc.recent, tc.view, tc.managed)
			var got []set
			for _, w := range p.set {
				got = append(got, set{w.obj.Namespace + "/" + w.obj.Name, w.status, w.why.Reason})
			}
			var announced []string
			for _, a := range p.announce {
				announced = append(announced, a.a.Key())
			}
			if !reflect.DeepEqual(got, tc.set) {
				t.Errorf("set = %v, want %v", got, tc.set)
			}
			if r := keysOf(p.release); !reflect.DeepEqual(r, tc.release) {
				t.Errorf("release = %v, want %v", r, tc.release)
			}
			if !reflect.DeepEqual(p.unattached, tc.unattached) {
				t.Errorf("unattached = %v, want %v", p.unattached, tc.unattached)
			}
			if !reflect.DeepEqual(announced, tc.announce) {
				t.Errorf("announce = %v, want %v", announced, tc.announce)
			}
		})
	}
}

func TestIsolatedByReason(t *testing.T) {
	v := armView{
		isolated: map[string]isolation{
			strings.ToLower(uami("a")):    {notice: notice{Reason: ReasonIdentityNotAuthorized}},
			strings.ToLower(uami("b")):    {notice: notice{Reason: ReasonIdentityNotAuthorized}},
			strings.ToLower(uami("gone")): {notice: notice{Reason: ReasonIdentityNotAuthorized}},
			strings.ToLower(uami("dead")): {notice: notice{Reason: ReasonIdentityNotFound}, detach: true},
		},
		goal: azure.Goal{Want: idmap("a", "b", "dead")},
	}
	got := isolatedByReason(v)
	if want := map[string]int{ReasonIdentityNotAuthorized: 2}; !reflect.DeepEqual(got, want) {
		t.Fatalf("isolatedByReason = %v, want %v (not the one no pod wants, not the one being detached)", got, want)
	}
	if n := len(isolatedByReason(armView{})); n != 0 {
		t.Fatalf("isolatedByReason of nothing = %d reasons", n)
	}
	if r := waitingReason(armView{problem: &notice{Reason: ReasonThrottled}}); r != ReasonThrottled {
		t.Fatalf("waitingReason = %q", r)
	}
	if r := waitingReason(armView{}); r != "" {
		t.Fatalf("waitingReason with no problem = %q", r)
	}
}

func TestRequeueAfter(t *testing.T) {
	tests := []struct {
		name     string
		arm      time.Duration
		soon     bool
		debounce time.Duration
		want     time.Duration
	}{
		{"ARM says when", 30 * time.Second, false, time.Second, 30 * time.Second},
		{"nothing to come back for", 0, false, time.Second, 0},
		{"objects left: after the debounce", 0, true, time.Second, time.Second},
		{"objects left, ARM later: the debounce first", 30 * time.Second, true, time.Second, time.Second},
		{"objects left, ARM sooner: ARM", 500 * time.Millisecond, true, time.Second, 500 * time.Millisecond},
		{"no debounce: at least 10 ms", 0, true, 0, 10 * time.Millisecond},
	}
	for _, tc := range tests {
		if got := requeueAfter(tc.arm, tc.soon, tc.debounce); got != tc.want {
			t.Errorf("%s: requeueAfter = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestGraceRequeue(t *testing.T) {
	end := t0.Add(5 * time.Second)
	for _, tc := range []struct {
		name  string
		after time.Duration
		now   time.Time
		want  time.Duration
	}{
		{"quick pass: the grace's end", time.Minute, t0.Add(10 * time.Millisecond), 4990 * time.Millisecond},
		{"pass took 3 s: 2 s left, not 5", 5 * time.Second, t0.Add(3 * time.Second), 2 * time.Second},
		{"pass outlasted the grace: at once", 5 * time.Second, t0.Add(7 * time.Second), 10 * time.Millisecond},
		{"ARM's side comes back sooner", time.Second, t0, time.Second},
		{"nothing else to come back for", 0, t0, 5 * time.Second},
	} {
		if got := graceRequeue(tc.after, end, tc.now); got != tc.want {
			t.Errorf("%s: graceRequeue(%v) = %v, want %v", tc.name, tc.after, got, tc.want)
		}
	}
}
