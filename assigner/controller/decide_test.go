package controller

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/assigner/azure"
	"github.com/podidentity/podidentity/assigner/desired"
	"github.com/podidentity/podidentity/assigner/providerid"
	"github.com/podidentity/podidentity/internal/binding"
)

// The decisions of decide.go, tested as what they are: functions of a state, a view and a clock. No
// Kubernetes, no ARM, no sleeping: time is a value the tests set.

var t0 = time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)

// realPolicy is the binary's timing.
var realPolicy = armPolicy{resync: 10 * time.Minute, baseBackoff: time.Second, maxBackoff: 5 * time.Minute,
	busyBackoff: 10 * time.Second, busyMaxBackoff: 2 * time.Minute, isolationTTL: 5 * time.Minute, maxPatches: 20}

func testResource() providerid.Resource {
	r, err := providerid.ParseResourceID(ssID("pool"))
	if err != nil {
		panic(err)
	}
	return r
}

// idset is a case-folded set of the uami() ids of names.
func idset(names ...string) map[string]bool {
	m := map[string]bool{}
	for _, n := range names {
		m[strings.ToLower(uami(n))] = true
	}
	return m
}

// idmap is a want map of the uami() ids of names.
func idmap(names ...string) map[string]string {
	m := map[string]string{}
	for _, n := range names {
		m[strings.ToLower(uami(n))] = uami(n)
	}
	return m
}

// attached is a resource state with the uami() identities of names, an etag and a provisioning state.
func attached(etag, state string, names ...string) *azure.ResourceIdentity {
	r := &azure.ResourceIdentity{UserAssigned: map[string]string{}, ClientIDs: map[string]string{}, ETag: etag, ProvisioningState: state}
	for _, n := range names {
		r.UserAssigned[strings.ToLower(uami(n))] = uami(n)
	}
	return r
}

func view(want map[string]string) passView {
	return passView{now: t0, res: testResource(), want: want}
}

func names(ids []string) string {
	var out []string
	for _, id := range ids {
		out = append(out, id[strings.LastIndex(id, "/")+1:])
	}
	sort.Strings(out)
	return strings.Join(out, ",")
}

func TestDecide(t *testing.T) {
	known := func(st armState) armState { st.readAt, st.fromARM = t0.Add(-time.Minute), true; return st }
	tests := []struct {
		name string
		st   armState
		v    func(passView) passView
		want map[string]string

		kind        stepKind
		after       time.Duration
		slot        bool
		add, remove string // names, for stepPatch
		ifMatch     string
		problem     string // reason left in the state
		busy        int
	}{
		{name: "nothing wanted, nothing owned: no ARM call, problems forgotten",
			st:   armState{problem: &notice{Reason: ReasonThrottled}, failures: 3},
			kind: stepDone},
		{name: "state unknown: read", want: idmap("a"), kind: stepRead},
		{name: "state older than the resync: read", want: idmap("a"),
			st: armState{cur: attached(`"1"`, "Succeeded", "a"), readAt: t0.Add(-11 * time.Minute)}, kind: stepRead},
		{name: "known state, something to add: patch", want: idmap("a", "b"),
			st: known(armState{cur: attached(`"1"`, "Succeeded", "a")}), kind: stepPatch, add: "b"},
		{name: "known state, nothing to do: done until the resync", want: idmap("a"),
			st: known(armState{cur: attached(`"1"`, "Succeeded", "a"), problem: &notice{Reason: ReasonARMError}, failures: 2}), kind: stepDone, after: 10 * time.Minute},
		{name: "a delay is running: wait for its end, no ARM call", want: idmap("a"),
			st: armState{notBefore: t0.Add(7 * time.Second), problem: &notice{Reason: ReasonARMError}}, kind: stepWait, after: 7 * time.Second, problem: ReasonARMError},
		{name: "the subscription is throttled: wait for a turn, and say why", want: idmap("a"),
			st: known(armState{cur: attached(`"1"`, "Succeeded")}),
			v: func(v passView) passView {
				v.sub = subGate{until: t0.Add(3 * time.Second), span: 2 * time.Second}
				return v
			},
			kind: stepWait, after: 3 * time.Second, slot: true, problem: ReasonThrottled},
		{name: "throttled, turns handed out up to 5 s later: wait for a turn after them", want: idmap("a"),
			st: known(armState{cur: attached(`"1"`, "Succeeded")}),
			v: func(v passView) passView {
				v.sub = subGate{until: t0.Add(time.Second), span: time.Second, next: t0.Add(6 * time.Second)}
				return v
			},
			kind: stepWait, after: 5 * time.Second, slot: true, problem: ReasonThrottled},
		{name: "throttled, and its turn has come: go", want: idmap("a", "b"),
			st: known(armState{cur: attached(`"1"`, "Succeeded", "a"), slot: t0, notBefore: t0}),
			v: func(v passView) passView {
				v.sub = subGate{until: t0.Add(-time.Second), span: time.Second, next: t0.Add(4 * time.Second)}
				return v
			},
			kind: stepPatch, add: "b"},
		{name: "the resource was Updating when read before: read again", want: idmap("a", "b"),
			st: known(armState{cur: attached(`"1"`, "Updating", "a")}), kind: stepRead},
		{name: "read Updating in this pass, something to patch: no PATCH, wait 10 s", want: idmap("a", "b"),
			st: known(armState{cur: attached(`"1"`, "Updating", "a")}), v: func(v passView) passView { v.read = true; return v },
			kind: stepWait, after: 10 * time.Second, problem: ReasonResourceBusy, busy: 1},
		{name: "still Updating at the 5th look: wait 2 min (the cap), not 4 s", want: idmap("a", "b"),
			st: known(armState{cur: attached(`"1"`, "Updating", "a"), busy: 4}), v: func(v passView) passView { v.read = true; return v },
			kind: stepWait, after: 2 * time.Minute, problem: ReasonResourceBusy, busy: 5},
		{name: "Updating but nothing to patch: no waiting at all", want: idmap("a"),
			st: known(armState{cur: attached(`"1"`, "Updating", "a")}), v: func(v passView) passView { v.read = true; return v },
			kind: stepDone, after: 10 * time.Minute},
		{name: "Updating when last read, nothing to patch: not even a read", want: idmap("a"),
			st: known(armState{cur: attached(`"1"`, "Updating", "a")}), kind: stepDone, after: 10 * time.Minute},
		{name: "being deleted: leave it alone", want: idmap("a"),
			st: known(armState{cur: attached(`"1"`, "Deleting")}), kind: stepDone, after: 10 * time.Minute},
		{name: "last identity of ours goes: guarded with ARM's etag", want: nil,
			st: known(armState{cur: attached(`"7"`, "Succeeded", "a"), owned: idset("a")}), kind: stepPatch, ifMatch: `"7"`},
		{name: "last identity goes but the state was computed, not read: read rather than drop the guard",
			st: armState{cur: attached("", "Succeeded", "a"), owned: idset("a"), readAt: t0}, kind: stepRead},
		{name: "the resource has no etag at all (read from ARM): the change goes without a guard",
			st: known(armState{cur: attached("", "Succeeded", "a"), owned: idset("a")}), kind: stepPatch},
		{name: "an identity refused until later is not added", want: idmap("a", "b", "c"),
			st: known(armState{cur: attached(`"1"`, "Succeeded", "a"), isolated: map[string]isolation{
				strings.ToLower(uami("b")): {until: t0.Add(time.Minute)}}}),
			kind: stepPatch, add: "c"},
		{name: "its isolation over, it is tried again", want: idmap("a", "b"),
			st: known(armState{cur: attached(`"1"`, "Succeeded", "a"), isolated: map[string]isolation{
				strings.ToLower(uami("b")): {until: t0}}}),
			kind: stepPatch, add: "b"},
		{name: "a deleted identity still attached is detached in the same PATCH as the others' changes, even foreign and wanted",
			want: idmap("dead", "new"),
			st: known(armState{cur: attached(`"1"`, "Succeeded", "dead"), isolated: map[string]isolation{
				strings.ToLower(uami("dead")): {until: t0.Add(time.Minute), detach: true}}}),
			kind: stepPatch, add: "new", remove: "dead"},
		{name: "held for its grace period: not detached",
			st: known(armState{cur: attached(`"1"`, "Succeeded", "a", "b"), owned: idset("a", "b")}),
			v:  func(v passView) passView { v.hold = idset("a"); return v }, want: nil,
			kind: stepPatch, remove: "b"},
		{name: "too many PATCHes in one pass: wait", want: idmap("a", "b"),
			st: known(armState{cur: attached(`"1"`, "Succeeded", "a")}), v: func(v passView) passView { v.patches = 20; return v },
			kind: stepWait, after: time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v := view(tc.want)
			if tc.v != nil {
				v = tc.v(v)
			}
			st, got := decide(tc.st, v, realPolicy)
			if got.kind != tc.kind || got.after != tc.after || got.slot != tc.slot {
				t.Fatalf("decide = %v after %v (slot %v), want %v after %v (slot %v)", got.kind, got.after, got.slot, tc.kind, tc.after, tc.slot)
			}
			if tc.kind == stepPatch {
				if names(got.patch.Add) != tc.add || names(got.patch.Remove) != tc.remove || got.patch.IfMatch != tc.ifMatch {
					t.Fatalf("patch %+v, want add %q remove %q If-Match %q", got.patch, tc.add, tc.remove, tc.ifMatch)
				}
			}
			if st.problem.orEmpty().Reason != tc.problem || st.busy != tc.busy {
				t.Fatalf("state after: problem %q busy %d, want %q %d", st.problem.orEmpty().Reason, st.busy, tc.problem, tc.busy)
			}
		})
	}
}

// TestDecideDetachesTheDeadIdentity: the PATCH after the refusal names the deleted identity with null.
func TestDecideDetachesTheDeadIdentity(t *testing.T) {
	st := armState{cur: attached(`"1"`, "Succeeded", "dead", "kubelet"), readAt: t0, fromARM: true, isolated: map[string]isolation{
		strings.ToLower(uami("dead")): {until: t0.Add(time.Minute), detach: true}}}
	v := view(idmap("dead", "new"))
	v.keep = func(k, _ string) bool { return k == strings.ToLower(uami("kubelet")) }
	var got []azure.Patch
	for range 3 {
		var s step
		st, s = decide(st, v, realPolicy)
		if s.kind != stepPatch {
			break
		}
		got = append(got, s.patch)
		st, _ = afterPatch(st, v, s.patch, azure.Apply(*st.cur, s.patch), nil, realPolicy)
	}
	if len(got) != 1 || names(got[0].Add) != "new" || names(got[0].Remove) != "dead" {
		t.Fatalf("patches %+v: want the addition and the deleted identity's detach in one PATCH", got)
	}
	if st.cur.Has(uami("dead")) || !st.cur.Has(uami("kubelet")) || !st.cur.Has(uami("new")) {
		t.Fatalf("after: %v", st.cur.UserAssigned)
	}
}

func failure(kind azure.FailureKind, code string, retryAfter time.Duration, ids ...string) *azure.Failure {
	return &azure.Failure{Kind: kind, Code: code, RetryAfter: retryAfter, Identities: ids, Message: "ARM says no", Err: errors.New(code)}
}

func TestAfterRead(t *testing.T) {
	want := idmap("a")
	tests := []struct {
		name    string
		st      armState
		cur     *azure.ResourceIdentity
		f       *azure.Failure
		check   func(armState, readNote) error
		problem string
	}{
		{name: "read: state known, from ARM; drift reported; owned pruned of what is not attached",
			st: armState{cur: attached(`"1"`, "Succeeded", "a", "b"), owned: idset("a", "b", "c")}, cur: attached(`"2"`, "Succeeded", "b"),
			check: func(st armState, n readNote) error {
				if !st.fromARM || st.cur.ETag != `"2"` || names(n.lost) != "a" || !n.save || !reflect.DeepEqual(st.owned, idset("b")) {
					return fmt.Errorf("state %+v note %+v", st, n)
				}
				return nil
			}},
		{name: "read while an operation runs: owned kept (the operation may be ours and attach them yet)",
			st: armState{owned: idset("a", "c")}, cur: attached(`"2"`, "Updating", "b"),
			check: func(st armState, n readNote) error {
				if n.save || len(st.owned) != 2 {
					return fmt.Errorf("owned %v save %v", st.owned, n.save)
				}
				return nil
			}},
		{name: "the resource is gone: nothing attached, nothing owned, look again at the resync",
			st: armState{owned: idset("a")}, f: failure(azure.NotFound, "ResourceNotFound", 0), problem: ReasonResourceNotFound,
			check: func(st armState, n readNote) error {
				if !st.gone || st.cur != nil || len(st.owned) != 0 || !n.save || !st.notBefore.Equal(t0.Add(10*time.Minute)) {
					return fmt.Errorf("state %+v note %+v", st, n)
				}
				return nil
			}},
		{name: "throttled: the whole subscription waits Retry-After",
			f: failure(azure.Throttled, "SubscriptionRequestsThrottled", 17*time.Second), problem: ReasonThrottled,
			check: func(st armState, n readNote) error {
				if !n.subGate.Equal(t0.Add(17*time.Second)) || !st.notBefore.Equal(n.subGate) {
					return fmt.Errorf("gate %v notBefore %v", n.subGate, st.notBefore)
				}
				return nil
			}},
		{name: "no role on the resource group: said so, and a growing delay",
			st: armState{failures: 2}, f: failure(azure.Unauthorized, "AuthorizationFailed", 0), problem: ReasonResourceNotAuthorized,
			check: func(st armState, _ readNote) error {
				if st.failures != 3 || !st.notBefore.Equal(t0.Add(4*time.Second)) {
					return fmt.Errorf("failures %d notBefore %v", st.failures, st.notBefore)
				}
				return nil
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var cur azure.ResourceIdentity
			if tc.cur != nil {
				cur = *tc.cur
			}
			st, note := afterRead(tc.st, view(want), cur, tc.f, realPolicy)
			if st.problem.orEmpty().Reason != tc.problem {
				t.Fatalf("problem %q, want %q", st.problem.orEmpty().Reason, tc.problem)
			}
			if err := tc.check(st, note); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestAfterPatch(t *testing.T) {
	base := func() armState {
		return armState{cur: attached(`"1"`, "Succeeded", "dead", "kubelet"), readAt: t0, fromARM: true, owned: idset("old")}
	}
	add := azure.Patch{Type: azure.TypeUserAssigned, Add: []string{uami("new")}}
	keepKubelet := func(k, _ string) bool { return k == strings.ToLower(uami("kubelet")) }
	tests := []struct {
		name    string
		st      func() armState
		after   *azure.ResourceIdentity
		f       *azure.Failure
		check   func(armState, patchNote) error
		problem string
	}{
		{name: "accepted: ARM's answer (and etag) is the state; delays and problems reset",
			st: func() armState {
				st := base()
				st.failures, st.busy, st.problem = 3, 2, &notice{Reason: ReasonResourceBusy}
				return st
			}, after: attached(`"2"`, "Succeeded", "dead", "kubelet", "new"),
			check: func(st armState, n patchNote) error {
				if st.cur.ETag != `"2"` || !st.fromARM || st.failures != 0 || st.busy != 0 {
					return fmt.Errorf("state %+v", st)
				}
				return nil
			}},
		{name: "accepted without identities in the answer: computed, so no etag is trusted",
			st: base, after: &azure.ResourceIdentity{},
			check: func(st armState, _ patchNote) error {
				if st.fromARM || st.cur.ETag != "" || !st.cur.Has(uami("new")) {
					return fmt.Errorf("state %+v", st.cur)
				}
				return nil
			}},
		{name: "a deleted identity already attached is named: isolated to be detached, no delay",
			st: base, f: failure(azure.IdentityRejected, azure.CodeFailedIdentityOperation, 0, uami("dead")),
			check: func(st armState, n patchNote) error {
				iso := st.isolated[strings.ToLower(uami("dead"))]
				if !iso.detach || iso.notice.Reason != ReasonIdentityNotFound || !iso.until.Equal(t0.Add(5*time.Minute)) || n.stuck || len(n.isolated) != 1 || !st.notBefore.IsZero() {
					return fmt.Errorf("isolation %+v note %+v", iso, n)
				}
				return nil
			}},
		{name: "the identity being added is refused: isolated, not detached",
			st: base, f: failure(azure.IdentityRejected, azure.CodeLinkedAuthorizationFailed, 0, uami("new")),
			check: func(st armState, n patchNote) error {
				iso := st.isolated[strings.ToLower(uami("new"))]
				if iso.detach || iso.notice.Reason != ReasonIdentityNotAuthorized || n.stuck {
					return fmt.Errorf("isolation %+v note %+v", iso, n)
				}
				return nil
			}},
		{name: "ARM names only identities already left out: no progress, so no retry storm: a growing delay",
			st: func() armState {
				st := base()
				st.isolated = map[string]isolation{strings.ToLower(uami("dead")): {until: t0.Add(time.Minute), detach: true}}
				return st
			}, f: failure(azure.IdentityRejected, azure.CodeFailedIdentityOperation, 0, uami("dead")), problem: ReasonARMError,
			check: func(st armState, n patchNote) error {
				if !n.stuck || st.failures != 1 || !st.notBefore.Equal(t0.Add(time.Second)) {
					return fmt.Errorf("note %+v failures %d notBefore %v", n, st.failures, st.notBefore)
				}
				return nil
			}},
		{name: "409: another operation runs; read before the next PATCH, after a delay that grows to minutes",
			st: func() armState { st := base(); st.busy = 3; return st }, f: failure(azure.Conflict, "Conflict", 0), problem: ReasonResourceBusy,
			check: func(st armState, _ patchNote) error {
				if st.cur != nil || st.busy != 4 || !st.notBefore.Equal(t0.Add(80*time.Second)) {
					return fmt.Errorf("cur %v busy %d notBefore %v", st.cur, st.busy, st.notBefore)
				}
				return nil
			}},
		{name: "412: read again at once",
			st: base, f: failure(azure.Stale, "PreconditionFailed", 0),
			check: func(st armState, _ patchNote) error {
				if st.cur != nil || st.failures != 1 || st.notBefore.After(t0) {
					return fmt.Errorf("cur %v failures %d notBefore %v", st.cur, st.failures, st.notBefore)
				}
				return nil
			}},
		{name: "429 on a write: the subscription waits Retry-After",
			st: base, f: failure(azure.Throttled, "SubscriptionRequestsThrottled", 9*time.Second), problem: ReasonThrottled,
			check: func(st armState, n patchNote) error {
				if st.cur != nil || !n.subGate.Equal(t0.Add(9*time.Second)) {
					return fmt.Errorf("cur %v gate %v", st.cur, n.subGate)
				}
				return nil
			}},
		{name: "5xx after the SDK's retries: a growing delay, at least Retry-After",
			st: func() armState { st := base(); st.failures = 1; return st }, f: failure(azure.Transient, "", 30*time.Second), problem: ReasonARMError,
			check: func(st armState, _ patchNote) error {
				if st.failures != 2 || !st.notBefore.Equal(t0.Add(30*time.Second)) {
					return fmt.Errorf("failures %d notBefore %v", st.failures, st.notBefore)
				}
				return nil
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v := view(idmap("dead", "new"))
			v.keep = keepKubelet
			var after azure.ResourceIdentity
			if tc.after != nil {
				after = *tc.after
			}
			before := tc.st()
			st, note := afterPatch(before, v, add, after, tc.f, realPolicy)
			if st.problem.orEmpty().Reason != tc.problem {
				t.Fatalf("problem %q, want %q", st.problem.orEmpty().Reason, tc.problem)
			}
			if err := tc.check(st, note); err != nil {
				t.Fatal(err)
			}
			if fresh := tc.st(); !reflect.DeepEqual(before, fresh) {
				t.Fatalf("afterPatch changed the state it was given: %+v", before)
			}
		})
	}
	// A deleted identity the assigner may not detach (immutable) blocks the resource: said so, with a delay.
	v := view(idmap("new"))
	v.keep = func(k, _ string) bool { return k == strings.ToLower(uami("dead")) }
	st, note := afterPatch(base(), v, add, azure.ResourceIdentity{}, failure(azure.IdentityRejected, azure.CodeFailedIdentityOperation, 0, uami("dead")), realPolicy)
	if !note.stuck || st.problem.orEmpty().Reason != ReasonResourceBlocked || !strings.Contains(st.problem.Message, "--immutable-user-msis") {
		t.Fatalf("immutable deleted identity: note %+v problem %+v", note, st.problem)
	}
}

func TestGrowing(t *testing.T) {
	var got []time.Duration
	for n := range 9 {
		got = append(got, growing(10*time.Second, 2*time.Minute, n))
	}
	want := []time.Duration{0, 10 * time.Second, 20 * time.Second, 40 * time.Second, 80 * time.Second, 2 * time.Minute, 2 * time.Minute, 2 * time.Minute, 2 * time.Minute}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("growing = %v, want %v", got, want)
	}
	// The delay after 409s grows past the 4 s at which the assigner used to stop.
	st := armState{cur: attached(`"1"`, "Succeeded")}
	for range 6 {
		st.cur = attached(`"1"`, "Succeeded")
		st, _ = afterPatch(st, view(nil), azure.Patch{}, azure.ResourceIdentity{}, failure(azure.Conflict, "Conflict", 0), realPolicy)
	}
	if d := st.notBefore.Sub(t0); d != 2*time.Minute {
		t.Fatalf("after six 409s the next try is %v away, want 2m", d)
	}
}

// TestSubGate: after a 429 with Retry-After 2 s, the resources waiting on the subscription get turns 2 s
// apart from the end of the Retry-After, in the order they claim them; a later 429 pushes the gate.
func TestSubGate(t *testing.T) {
	g := subGate{}.throttled(t0.Add(2*time.Second), t0)
	if !g.closedUntil().Equal(t0.Add(2*time.Second)) || g.span != 2*time.Second {
		t.Fatalf("gate %+v", g)
	}
	var turns []time.Duration
	for range 3 {
		var at time.Time
		at, g = g.claim(t0.Add(500 * time.Millisecond))
		turns = append(turns, at.Sub(t0))
	}
	if fmt.Sprint(turns) != "[2s 4s 6s]" || !g.closedUntil().Equal(t0.Add(6*time.Second)) {
		t.Fatalf("turns %v, closed until %v", turns, g.closedUntil().Sub(t0))
	}
	// Long after: no wait.
	if at, _ := g.claim(t0.Add(time.Minute)); !at.Equal(t0.Add(time.Minute)) {
		t.Fatalf("claim after the turns: %v", at.Sub(t0))
	}
	// A shorter Retry-After does not shorten the gate.
	if g2 := g.throttled(t0.Add(time.Second), t0); !g2.until.Equal(g.until) {
		t.Fatalf("gate shortened: %+v", g2)
	}
}

func TestAssignmentStatus(t *testing.T) {
	a := func(name string, arm bool) desired.Assignment {
		return desired.Assignment{Name: "p-ns-" + name, Namespace: "ns", NeedsARM: arm,
			Identity: &aadv1.AzureIdentity{Spec: aadv1.AzureIdentitySpec{ResourceID: uami(name)}}}
	}
	problem := &notice{ReasonThrottled, "throttled"}
	isolated := map[string]isolation{
		strings.ToLower(uami("refused")): {notice: notice{ReasonIdentityNotAuthorized, "no role"}},
		strings.ToLower(uami("dead")):    {notice: notice{ReasonIdentityNotFound, "deleted"}, detach: true},
	}
	cur := *attached(`"1"`, "Succeeded", "on", "dead")
	tests := []struct {
		name   string
		a      desired.Assignment
		v      armView
		status string
		reason string
		sure   bool
	}{
		{"service principal", a("sp", false), armView{}, aadv1.AssignedIDAssigned, "", true},
		{"managed mode", a("x", true), armView{managed: true}, aadv1.AssignedIDAssigned, "", true},
		{"attached", a("on", true), armView{cur: cur, known: true, problem: problem}, aadv1.AssignedIDAssigned, "", true},
		{"attached but deleted in Azure: no token from it", a("dead", true), armView{cur: cur, known: true, isolated: isolated}, aadv1.AssignedIDCreated, ReasonIdentityNotFound, true},
		{"refused", a("refused", true), armView{cur: cur, known: true, isolated: isolated, problem: problem}, aadv1.AssignedIDCreated, ReasonIdentityNotAuthorized, true},
		{"pending while the resource is throttled", a("new", true), armView{cur: cur, known: true, problem: problem}, aadv1.AssignedIDCreated, ReasonThrottled, true},
		{"pending, nothing wrong", a("new", true), armView{cur: cur, known: true}, aadv1.AssignedIDCreated, "", true},
		{"state unknown: not sure (an Assigned object stays so)", a("on", true), armView{problem: problem}, aadv1.AssignedIDCreated, ReasonThrottled, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, why, sure := assignmentStatus(tc.a, tc.v)
			if status != tc.status || why.Reason != tc.reason || sure != tc.sure {
				t.Fatalf("assignmentStatus = %s %q %v, want %s %q %v", status, why.Reason, sure, tc.status, tc.reason, tc.sure)
			}
		})
	}
}

func TestGraceCandidates(t *testing.T) {
	identity := func(name string) aadv1.AzureIdentity {
		return aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: "ids", Name: name}, Spec: aadv1.AzureIdentitySpec{Type: aadv1.UserAssignedMSI, ResourceID: uami(name)}}
	}
	bindingOf := func(name string) aadv1.AzureIdentityBinding {
		return aadv1.AzureIdentityBinding{ObjectMeta: metav1.ObjectMeta{Namespace: "ids", Name: "b-" + name}}
	}
	assignment := func(pod, node, id string) aadv1.AzureAssignedIdentity {
		i, b := identity(id), bindingOf(id)
		return aadv1.AzureAssignedIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: "ids", Name: pod + "-apps-" + id},
			Spec: aadv1.AzureAssignedIdentitySpec{Pod: pod, PodNamespace: "apps", NodeName: node, AzureIdentityRef: &i, AzureBindingRef: &b}}
	}
	pod := func(name, node string, phase corev1.PodPhase, labelled bool) corev1.Pod {
		p := corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: name}, Spec: corev1.PodSpec{NodeName: node}, Status: corev1.PodStatus{Phase: phase}}
		if labelled {
			p.Labels = map[string]string{aadv1.PodLabelBinding: "sel"}
		}
		return p
	}
	existing := []aadv1.AzureAssignedIdentity{
		assignment("running", "n0", "deleted-identity"),
		assignment("running", "n0", "deleted-binding"),
		assignment("running", "n0", "still-there"), // unwanted for another reason (e.g. excepted): no grace
		assignment("gone", "n0", "deleted-identity2"),
		assignment("moved", "n0", "deleted-identity3"),
		assignment("finished", "n0", "deleted-identity4"),
		assignment("unlabelled", "n0", "deleted-identity5"),
		assignment("wanted", "n0", "wanted"),
	}
	pods := []corev1.Pod{pod("running", "n0", corev1.PodRunning, true), pod("moved", "n1", corev1.PodRunning, true),
		pod("finished", "n0", corev1.PodSucceeded, true), pod("unlabelled", "n0", corev1.PodRunning, false), pod("wanted", "n0", corev1.PodRunning, true)}
	identities := []aadv1.AzureIdentity{identity("deleted-binding"), identity("still-there"), identity("wanted")}
	bindings := []aadv1.AzureIdentityBinding{bindingOf("deleted-identity"), bindingOf("still-there"), bindingOf("wanted")}
	want := desired.State{Assignments: map[string]desired.Assignment{"ids/wanted-apps-wanted": {}}}
	got := graceCandidates(existing, want, pods, identities, bindings)
	if !reflect.DeepEqual(got, idset("deleted-identity", "deleted-binding")) {
		t.Fatalf("graceCandidates = %v", got)
	}
}

func TestGraceHolds(t *testing.T) {
	k := func(n string) string { return strings.ToLower(uami(n)) }
	tests := []struct {
		name        string
		candidates  map[string]bool
		since       map[string]time.Time
		grace       time.Duration
		hold        map[string]bool
		started     string
		wake        time.Duration
		nextEntries int
	}{
		{name: "no grace configured: nothing held", candidates: idset("a"), grace: -1},
		{name: "a new candidate is held for the whole grace", candidates: idset("a"), grace: 30 * time.Second,
			hold: idset("a"), started: "a", wake: 30 * time.Second, nextEntries: 1},
		{name: "held from when it was first seen", candidates: idset("a", "b"), since: map[string]time.Time{k("a"): t0.Add(-20 * time.Second), k("b"): t0.Add(-40 * time.Second)},
			grace: 30 * time.Second, hold: idset("a"), wake: 10 * time.Second, nextEntries: 2},
		{name: "candidates that are no more are forgotten", candidates: map[string]bool{}, since: map[string]time.Time{k("a"): t0}, grace: 30 * time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			hold, next, started, wake := graceHolds(tc.candidates, tc.since, t0, tc.grace)
			if len(hold) != len(tc.hold) || (len(hold) > 0 && !reflect.DeepEqual(hold, tc.hold)) || names(started) != tc.started || wake != tc.wake || len(next) != tc.nextEntries {
				t.Fatalf("graceHolds = %v %v %v %v", hold, next, started, wake)
			}
		})
	}
}

// TestNotices: every message says what to do, and none varies between retries of the same cause (so an
// unchanged cause is written and announced once).
func TestNotices(t *testing.T) {
	res := testResource()
	tests := []struct {
		n      notice
		reason string
		says   []string
	}{
		{resourceNotice(res, failure(azure.Unauthorized, "AuthorizationFailed", 0), 5*time.Minute), ReasonResourceNotAuthorized, []string{"Virtual Machine Contributor", "resource group MC_rg", res.ID()}},
		{resourceNotice(res, failure(azure.NotFound, "ResourceNotFound", 0), 5*time.Minute), ReasonResourceNotFound, []string{"spec.providerID", "subscription sub"}},
		{resourceNotice(res, failure(azure.Throttled, "SubscriptionRequestsThrottled", 3*time.Second), 5*time.Minute), ReasonThrottled, []string{"subscription sub", "Retry-After"}},
		{resourceNotice(res, failure(azure.Conflict, "Conflict", 0), 2*time.Minute), ReasonResourceBusy, []string{"another operation", "2m0s"}},
		{resourceNotice(res, failure(azure.Transient, "", 0), 5*time.Minute), ReasonARMError, []string{"ARM says no", "retries"}},
		{identityNotice(&azure.Failure{Code: azure.CodeLinkedAuthorizationFailed}), ReasonIdentityNotAuthorized, []string{"Managed Identity Operator"}},
		{identityNotice(&azure.Failure{Code: azure.CodeFailedIdentityOperation}), ReasonIdentityNotFound, []string{"deleted", "recreate"}},
		{blockedNotice(res, uami("dead")), ReasonResourceBlocked, []string{"identity remove", uami("dead")}},
	}
	for _, tc := range tests {
		if tc.n.Reason != tc.reason {
			t.Errorf("%q: reason %s, want %s", tc.n.Message, tc.n.Reason, tc.reason)
		}
		for _, s := range tc.says {
			if !strings.Contains(tc.n.Message, s) {
				t.Errorf("%s: %q does not say %q", tc.reason, tc.n.Message, s)
			}
		}
	}
	a := resourceNotice(res, failure(azure.Throttled, "x", 3*time.Second), time.Minute)
	b := resourceNotice(res, failure(azure.Throttled, "x", 70*time.Second), time.Minute)
	if a != b {
		t.Errorf("the throttled message varies with Retry-After: %q vs %q", a.Message, b.Message)
	}
}

func TestLostIdentities(t *testing.T) {
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	grace := 30 * time.Second
	a := binding.Identity{Namespace: "apps", Name: "a", Binding: "apps/bind-a"}
	b := binding.Identity{Namespace: "apps", Name: "b", Binding: "apps/bind-b"}
	idents := func(names ...string) []aadv1.AzureIdentity {
		var out []aadv1.AzureIdentity
		for _, n := range names {
			out = append(out, aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: n}})
		}
		return out
	}
	binds := func(names ...string) []aadv1.AzureIdentityBinding {
		var out []aadv1.AzureIdentityBinding
		for _, n := range names {
			out = append(out, aadv1.AzureIdentityBinding{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: n}})
		}
		return out
	}
	for _, tc := range []struct {
		name       string
		had        []binding.Identity
		resolved   []binding.Identity
		identities []aadv1.AzureIdentity
		bindings   []aadv1.AzureIdentityBinding
		since      map[string]time.Time
		grace      time.Duration
		wantKeep   []string
		wantWake   time.Duration
	}{
		{name: "nothing lost", had: []binding.Identity{a}, resolved: []binding.Identity{a}, identities: idents("a"), bindings: binds("bind-a"), grace: grace},
		{name: "AzureIdentity deleted: kept, grace starts", had: []binding.Identity{a, b}, resolved: []binding.Identity{b}, identities: idents("b"), bindings: binds("bind-a", "bind-b"), grace: grace,
			wantKeep: []string{"a"}, wantWake: grace},
		{name: "binding deleted: kept", had: []binding.Identity{a}, identities: idents("a"), grace: grace, wantKeep: []string{"a"}, wantWake: grace},
		{name: "grace running: kept until its end", had: []binding.Identity{a}, identities: idents("a"), grace: grace,
			since: map[string]time.Time{"apps/a": now.Add(-20 * time.Second)}, wantKeep: []string{"a"}, wantWake: 10 * time.Second},
		{name: "grace over: gone", had: []binding.Identity{a}, grace: grace, since: map[string]time.Time{"apps/a": now.Add(-31 * time.Second)}},
		{name: "label or selector changed: gone at once", had: []binding.Identity{a}, identities: idents("a"), bindings: binds("bind-a"), grace: grace},
		{name: "no grace period: gone at once", had: []binding.Identity{a}, grace: 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			keep, since, wake := lostIdentities(tc.had, tc.resolved, tc.identities, tc.bindings, tc.since, now, tc.grace)
			var names []string
			for _, id := range keep {
				names = append(names, id.Name)
			}
			if !slices.Equal(names, tc.wantKeep) || wake != tc.wantWake {
				t.Errorf("kept %v, wake %v; want %v, %v", names, wake, tc.wantKeep, tc.wantWake)
			}
			for _, n := range names {
				if _, ok := since["apps/"+n]; !ok {
					t.Errorf("since lacks %s, whose grace runs: %v", n, since)
				}
			}
		})
	}
}
