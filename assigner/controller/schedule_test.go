package controller

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/podidentity/podidentity/assigner/azure"
)

// The decisions of decide.go run here for hours of fake time against simARM, a model of one resource as
// ARM answers for it (the emulator in test/emulators/arm models the same on the wire; the integration tests use it).
// A fake clock makes the counts exact and the tests instant: nothing sleeps.

// simARM is one VM or scale set as ARM answers for it.
type simARM struct {
	system    bool
	users     map[string]string
	etag      int
	busyFrom  time.Time       // another client's operation runs from busyFrom
	busyUntil time.Time       // until busyUntil
	dead      map[string]bool // identities deleted in Azure
	noBody    bool            // PATCH answers carry no identities

	reads, writes, refused int
	writeLog               []simWrite
}

type simWrite struct {
	at      time.Time
	ifMatch string
	status  int
}

func newSimARM(system bool, names ...string) *simARM {
	a := &simARM{system: system, users: map[string]string{}, etag: 1, dead: map[string]bool{}}
	for _, n := range names {
		a.users[strings.ToLower(uami(n))] = uami(n)
	}
	return a
}

func (a *simARM) state(now time.Time) azure.ResourceIdentity {
	out := azure.ResourceIdentity{SystemAssigned: a.system, UserAssigned: map[string]string{}, ClientIDs: map[string]string{},
		ETag: strconv.Quote(strconv.Itoa(a.etag)), ProvisioningState: "Succeeded"}
	for k, v := range a.users {
		out.UserAssigned[k] = v
	}
	if a.busy(now) {
		out.ProvisioningState = "Updating"
	}
	return out
}

func (a *simARM) busy(now time.Time) bool { return !now.Before(a.busyFrom) && now.Before(a.busyUntil) }

func (a *simARM) get(now time.Time) (azure.ResourceIdentity, *azure.Failure) {
	a.reads++
	return a.state(now), nil
}

func (a *simARM) patch(now time.Time, p azure.Patch) (azure.ResourceIdentity, *azure.Failure) {
	a.writes++
	refuse := func(status int, f *azure.Failure) (azure.ResourceIdentity, *azure.Failure) {
		a.refused++
		a.writeLog = append(a.writeLog, simWrite{now, p.IfMatch, status})
		f.StatusCode, f.Err = status, errors.New(f.Code)
		return azure.ResourceIdentity{}, f
	}
	if a.busy(now) {
		return refuse(409, &azure.Failure{Kind: azure.Conflict, Code: "Conflict"})
	}
	if p.IfMatch != "" && p.IfMatch != strconv.Quote(strconv.Itoa(a.etag)) {
		return refuse(412, &azure.Failure{Kind: azure.Stale, Code: "PreconditionFailed"})
	}
	next := azure.Apply(a.state(now), p)
	if p.Type == azure.TypeUserAssigned || p.Type == azure.TypeSystemAssignedUserAssigned {
		for k, spelled := range next.UserAssigned {
			if a.dead[k] {
				return refuse(400, &azure.Failure{Kind: azure.IdentityRejected, Code: azure.CodeFailedIdentityOperation, Identities: []string{spelled}})
			}
		}
	}
	a.users, a.system = next.UserAssigned, next.SystemAssigned
	a.etag++
	a.writeLog = append(a.writeLog, simWrite{now, p.IfMatch, 200})
	if a.noBody {
		return azure.ResourceIdentity{}, nil
	}
	return a.state(now), nil
}

// simPass is syncARM's loop without Kubernetes: it returns the state and when to come back (0: on events).
func simPass(st armState, v passView, pol armPolicy, a *simARM) (armState, time.Duration) {
	for {
		var s step
		st, s = decide(st, v, pol)
		switch s.kind {
		case stepRead:
			cur, f := a.get(v.now)
			st, _ = afterRead(st, v, cur, f, pol)
			v.read = true
		case stepPatch:
			st.owned, _ = writeAhead(st.owned, s.patch)
			after, f := a.patch(v.now, s.patch)
			st, _ = afterPatch(st, v, s.patch, after, f, pol)
			v.patches++
		default:
			return st, s.after
		}
	}
}

// simulate runs passes from start to end: one at start, one at each event (a pod created, deleted...), and
// one whenever the previous pass asked to come back. want is what pods need at a time.
func simulate(st armState, a *simARM, pol armPolicy, start, end time.Time, events []time.Time, want func(time.Time) map[string]string) armState {
	now := start
	for !now.After(end) {
		var after time.Duration
		st, after = simPass(st, passView{now: now, res: testResource(), want: want(now)}, pol, a)
		next := end.Add(time.Nanosecond)
		if after > 0 {
			next = now.Add(after)
		}
		for _, e := range events {
			if e.After(now) && e.Before(next) {
				next = e
				break
			}
		}
		now = next
	}
	return st
}

func everyFrom(start time.Time, every time.Duration, n int) []time.Time {
	var out []time.Time
	for i := range n {
		out = append(out, start.Add(time.Duration(i)*every))
	}
	return out
}

// TestForeignOperationSchedule: an AKS upgrade runs 16 minutes on the scale set; pods come and go every
// 30 s, and the first of them needs a new identity. The assigner writes at most once during the operation
// (the PATCH it had no reason to hold back finds the operation and is refused), then only reads, less and
// less often, and attaches the identity within busyMaxBackoff of the operation's end. Restarted during the
// operation, it writes nothing until it ends.
func TestForeignOperationSchedule(t *testing.T) {
	opStart, opLen := t0.Add(time.Second), 16*time.Minute
	opEnd := opStart.Add(opLen)
	events := everyFrom(t0.Add(30*time.Second), 30*time.Second, 40) // pods rescheduled during the upgrade
	want := func(now time.Time) map[string]string {
		if now.Before(events[0]) {
			return idmap("a")
		}
		return idmap("a", "b")
	}
	for _, tc := range []struct {
		name          string
		from          time.Time
		st            armState
		maxWritesOpen int
	}{
		// Running all along: its last read (before the operation) is fresh, so the first pod's PATCH goes.
		{name: "running all along", from: t0, st: armState{owned: idset("a")}, maxWritesOpen: 1},
		// Restarted 5 minutes into the operation: it reads first, sees Updating, and waits.
		{name: "restarted during the operation", from: opStart.Add(5 * time.Minute), st: armState{owned: idset("a")}, maxWritesOpen: 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := newSimARM(false, "a")
			a.busyFrom, a.busyUntil = opStart, opEnd
			st := tc.st
			if tc.from.Equal(t0) {
				st, _ = simPass(st, passView{now: t0.Add(-time.Minute), res: testResource(), want: idmap("a")}, realPolicy, a) // read before
			}
			readsBefore := a.reads
			simulate(st, a, realPolicy, tc.from, opEnd.Add(10*time.Minute), events, want)
			writesDuring, attachedAt := 0, time.Time{}
			for _, w := range a.writeLog {
				if w.at.Before(opEnd) {
					writesDuring++
				} else if w.status == 200 && attachedAt.IsZero() {
					attachedAt = w.at
				}
			}
			if writesDuring > tc.maxWritesOpen {
				t.Errorf("%d ARM writes during the 16-minute operation, want at most %d", writesDuring, tc.maxWritesOpen)
			}
			if attachedAt.IsZero() || attachedAt.Sub(opEnd) > realPolicy.busyMaxBackoff {
				t.Errorf("identity attached %v after the operation's end, want within %v", attachedAt.Sub(opEnd), realPolicy.busyMaxBackoff)
			}
			if !a.state(opEnd).Has(uami("b")) && attachedAt.IsZero() {
				t.Error("never attached")
			}
			t.Logf("16-minute foreign operation, %d pod events: %d ARM writes during it (%d refused in all), %d reads; identity attached %v after it ended",
				len(events), writesDuring, a.refused, a.reads-readsBefore, attachedAt.Sub(opEnd))
		})
	}
}

// TestChunkedRemovalSchedule: removing 160 identities (the last of the resource's) takes two PATCHes, the
// second guarded with the etag ARM gave after the first: no refused write. When ARM's answer carries no
// identities, the resource is read before the guarded PATCH rather than the guard dropped.
func TestChunkedRemovalSchedule(t *testing.T) {
	var all []string
	for i := range 160 {
		all = append(all, fmt.Sprintf("id%03d", i))
	}
	for _, noBody := range []bool{false, true} {
		t.Run(fmt.Sprintf("answer without identities=%v", noBody), func(t *testing.T) {
			a := newSimARM(true, all...)
			a.noBody = noBody
			st := armState{owned: idset(all...)}
			st, _ = simPass(st, passView{now: t0, res: testResource(), want: idmap(all...)}, realPolicy, a)
			simulate(st, a, realPolicy, t0.Add(time.Second), t0.Add(time.Hour), nil, func(time.Time) map[string]string { return nil })
			if a.refused != 0 || a.writes != 2 || len(a.users) != 0 || !a.system {
				t.Fatalf("%d writes (%d refused), %d identities left, system-assigned %v: %+v", a.writes, a.refused, len(a.users), a.system, a.writeLog)
			}
			if last := a.writeLog[1]; last.ifMatch != `"2"` {
				t.Fatalf("the type change was sent with If-Match %q, want the etag after the first chunk", last.ifMatch)
			}
			t.Logf("160 identities removed with %d writes, %d refused, %d reads", a.writes, a.refused, a.reads)
		})
	}
}

// TestRefusedAttachedIdentitySchedule: an identity someone else attached is deleted in Azure, and a pod still
// uses it; another pod needs a new identity. The first PATCH is refused naming the deleted one; the next
// detaches it and attaches the new one. Afterwards the deleted identity is tried once per isolation TTL (one
// refused write each), never in a storm.
func TestRefusedAttachedIdentitySchedule(t *testing.T) {
	a := newSimARM(false, "dead", "kubelet")
	a.dead[strings.ToLower(uami("dead"))] = true
	st := simulate(armState{}, a, realPolicy, t0, t0.Add(40*time.Second), nil, func(time.Time) map[string]string { return idmap("dead", "new") })
	if a.writes != 2 || a.refused != 1 || !a.state(t0).Has(uami("new")) || a.state(t0).Has(uami("dead")) || !a.state(t0).Has(uami("kubelet")) {
		t.Fatalf("first 40 s: %d writes, %d refused, identities %v", a.writes, a.refused, a.users)
	}
	if iso := st.isolated[strings.ToLower(uami("dead"))]; iso.notice.Reason != ReasonIdentityNotFound {
		t.Fatalf("the deleted identity's reason: %+v", iso)
	}
	first := a.writes
	simulate(st, a, realPolicy, t0.Add(40*time.Second), t0.Add(time.Hour), nil, func(time.Time) map[string]string { return idmap("dead", "new") })
	perHour := a.writes - first
	if want := int(time.Hour / realPolicy.isolationTTL); perHour > want {
		t.Fatalf("%d writes in the next hour, want at most one per isolation TTL (%d)", perHour, want)
	}
	t.Logf("deleted identity attached by someone else: %d writes in the first 40 s (%d refused); then %d refused writes per hour (one per %v)",
		first, 1, perHour, realPolicy.isolationTTL)
}
