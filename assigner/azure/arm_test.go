package azure

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"

	"github.com/podidentity/podidentity/assigner/providerid"
	"github.com/podidentity/podidentity/test/emulators/arm"
)

const (
	ssID = "/subscriptions/sub/resourceGroups/MC_rg/providers/Microsoft.Compute/virtualMachineScaleSets/pool1"
	vmID = "/subscriptions/sub/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1"
)

func uami(n string) string {
	return "/subscriptions/sub/resourceGroups/ids/providers/Microsoft.ManagedIdentity/userAssignedIdentities/" + n
}

func newTestARM(t *testing.T, opts arm.Options) (*arm.Server, *ARM) {
	srv := arm.New(t, opts)
	c := NewARM(arm.Credential{}, ARMOptions{Cloud: srv.Cloud(), Transport: srv.HTTPClient(), PollFrequency: 10 * time.Millisecond,
		Retry: policy.RetryOptions{MaxRetries: 2, RetryDelay: 5 * time.Millisecond, MaxRetryDelay: 20 * time.Millisecond, TryTimeout: 2 * time.Second}})
	return srv, c
}

func mustResource(t *testing.T, id string) providerid.Resource {
	r, err := providerid.ParseResourceID(id)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestARMPatchBothShapes(t *testing.T) {
	var mu sync.Mutex
	changes := map[string][]string{}
	srv, c := newTestARM(t, arm.Options{Latency: 50 * time.Millisecond, OnChange: func(id string, users []string) {
		mu.Lock()
		defer mu.Unlock()
		changes[id] = users
	}})
	srv.AddVMSS(ssID, true, uami("kubelet"))
	srv.AddVM(vmID, false)
	ctx := context.Background()
	for _, id := range []string{ssID, vmID} {
		t.Run(id[strings.LastIndex(id, "/")+1:], func(t *testing.T) {
			r := mustResource(t, id)
			cur, err := c.Get(ctx, r)
			if err != nil {
				t.Fatal(err)
			}
			goal := Goal{Want: ids(uami("a"), uami("b")), Owned: set(uami("a"), uami("b"))}
			for _, p := range Plan(cur, goal) {
				if cur, err = c.Patch(ctx, r, p); err != nil {
					t.Fatalf("patch %+v: %v", p, err)
				}
			}
			if !cur.Has(uami("a")) || !cur.Has(uami("b")) {
				t.Fatalf("after adding: %v", cur.UserAssigned)
			}
			system, users := srv.Identities(id)
			if system != (id == ssID) || len(users) != len(cur.UserAssigned) {
				t.Fatalf("emulator: system=%v users=%v; client saw %v", system, users, cur.UserAssigned)
			}
			// Drop everything we own: the kubelet identity (not owned) and the system identity survive.
			goal.Want = nil
			for _, p := range Plan(cur, goal) {
				if cur, err = c.Patch(ctx, r, p); err != nil {
					t.Fatalf("patch %+v: %v", p, err)
				}
			}
			system, users = srv.Identities(id)
			want := []string{}
			if id == ssID {
				want = []string{uami("kubelet")}
			}
			if system != (id == ssID) || strings.Join(users, ",") != strings.Join(want, ",") {
				t.Fatalf("after removing: system=%v users=%v, want %v", system, users, want)
			}
			if id == vmID && cur.ProvisioningState != "Succeeded" {
				t.Fatalf("VM provisioning state %q", cur.ProvisioningState)
			}
		})
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		mu.Lock()
		got := fmt.Sprint(changes[ssID], changes[vmID])
		mu.Unlock()
		if got == fmt.Sprint([]string{uami("kubelet")}, []string{}) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("OnChange last reported %s", got)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if c := srv.Counts(); c.Writes != 4 || c.AppliedWrites != 4 || c.Polls == 0 {
		t.Fatalf("counters %+v: want 4 writes and async polls", c)
	}
}

func TestARMFaultsAreClassified(t *testing.T) {
	srv, c := newTestARM(t, arm.Options{})
	srv.AddVMSS(ssID, false)
	r := mustResource(t, ssID)
	ctx := context.Background()
	add := Patch{Type: TypeUserAssigned, Add: []string{uami("ok"), uami("denied"), uami("gone")}}
	tests := []struct {
		name   string
		setup  func()
		kind   FailureKind
		check  func(*Failure) error
		ctxTTL time.Duration
	}{
		{name: "429 with Retry-After", setup: func() {
			srv.InjectFault(ssID, arm.Fault{Status: http.StatusTooManyRequests, Code: arm.CodeTooManyRequests, RetryAfter: 3 * time.Second})
		}, kind: Throttled, check: func(f *Failure) error {
			if f.RetryAfter != 3*time.Second {
				return fmt.Errorf("RetryAfter = %v", f.RetryAfter)
			}
			return nil
		}},
		{name: "409", setup: func() { srv.InjectFault(ssID, arm.Fault{Status: http.StatusConflict, Code: arm.CodeConflict}) }, kind: Conflict},
		{name: "5xx beyond the SDK's retries", setup: func() {
			for range 3 {
				srv.InjectFault(ssID, arm.Fault{Status: http.StatusServiceUnavailable})
			}
		}, kind: Transient},
		{name: "LinkedAuthorizationFailed names identities", setup: func() {
			srv.DenyIdentity(uami("denied"), arm.CodeLinkedAuthorizationFailed)
		}, kind: IdentityRejected, check: func(f *Failure) error {
			if len(f.Identities) != 1 || !strings.EqualFold(f.Identities[0], uami("denied")) || !strings.Contains(f.Reason(), "Managed Identity Operator") {
				return fmt.Errorf("identities %v reason %q", f.Identities, f.Reason())
			}
			return nil
		}},
		{name: "FailedIdentityOperation names the identity", setup: func() {
			srv.DenyIdentity(uami("denied"), "")
			srv.DenyIdentity(uami("gone"), arm.CodeFailedIdentityOperation)
		}, kind: IdentityRejected, check: func(f *Failure) error {
			if len(f.Identities) != 1 || !strings.EqualFold(f.Identities[0], uami("gone")) {
				return fmt.Errorf("identities %v", f.Identities)
			}
			return nil
		}},
		{name: "timeout", setup: func() {
			srv.DenyIdentity(uami("gone"), "")
			srv.InjectFault(ssID, arm.Fault{Hang: true})
		}, kind: Transient, ctxTTL: 300 * time.Millisecond},
		{name: "operation fails asynchronously", setup: func() {
			srv.InjectFault(ssID, arm.Fault{Async: true, Code: "InternalOperationError", Message: "boom"})
		}, kind: Permanent},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.setup()
			cctx := ctx
			if tc.ctxTTL > 0 {
				var cancel context.CancelFunc
				cctx, cancel = context.WithTimeout(ctx, tc.ctxTTL)
				defer cancel()
			}
			_, err := c.Patch(cctx, r, add)
			f := Classify(err)
			if f == nil || f.Kind != tc.kind {
				t.Fatalf("Classify(%v) = %v, want kind %v", err, f, tc.kind)
			}
			if tc.check != nil {
				if err := tc.check(f); err != nil {
					t.Fatal(err)
				}
			}
			if _, users := srv.Identities(ssID); len(users) != 0 {
				t.Fatalf("a failed patch changed the resource: %v", users)
			}
		})
	}
	if Classify(nil) != nil || Classify(errors.New("dial tcp: refused")).Kind != Transient {
		t.Fatal("plain errors must be transient")
	}
}

func TestARMIfMatchProtectsConcurrentAttach(t *testing.T) {
	srv, c := newTestARM(t, arm.Options{})
	srv.AddVM(vmID, false, uami("ours"))
	r := mustResource(t, vmID)
	cur, err := c.Get(context.Background(), r)
	if err != nil {
		t.Fatal(err)
	}
	srv.SetUserIdentities(vmID, uami("ours"), uami("someone-elses")) // attached after our read
	ps := Plan(cur, Goal{Owned: set(uami("ours"))})
	if len(ps) != 1 || ps[0].Type != TypeNone {
		t.Fatalf("plan %+v", ps)
	}
	_, err = c.Patch(context.Background(), r, ps[0])
	if f := Classify(err); f == nil || f.Kind != Stale || f.Code != arm.CodePreconditionFailed {
		t.Fatalf("want a stale etag (412), got %v", err)
	}
	_, users := srv.Identities(vmID)
	sort.Strings(users)
	if len(users) != 2 {
		t.Fatalf("the concurrently attached identity was dropped: %v", users)
	}
}

// TestARMRefusalsAreClassified: the refusals the assigner must tell apart, as ARM words them: a missing role
// on the resource group, the subscription's write limit, a deleted identity still attached (named by ARM
// although the PATCH does not name it), and a write while another operation runs.
func TestARMRefusalsAreClassified(t *testing.T) {
	srv, c := newTestARM(t, arm.Options{SubscriptionWrites: arm.Bucket{Size: 2, Refill: 0.001}})
	r := mustResource(t, ssID)
	ctx := context.Background()
	add := Patch{Type: TypeUserAssigned, Add: []string{uami("new")}}
	tests := []struct {
		name    string
		setup   func()
		kind    FailureKind
		code    string
		message string
		ids     []string
	}{
		{name: "no role on the node resource group", setup: func() {
			srv.AddVMSS(ssID, false, uami("dead"))
			srv.DenyWrites("/subscriptions/sub/resourceGroups/MC_rg", true)
		}, kind: Unauthorized, code: arm.CodeAuthorizationFailed, message: "does not have authorization to perform action 'Microsoft.Compute/virtualMachineScaleSets/write'"},
		{name: "a deleted identity stays attached", setup: func() {
			srv.DenyWrites("/subscriptions/sub/resourceGroups/MC_rg", false)
			srv.DeleteIdentity(uami("dead"))
		}, kind: IdentityRejected, code: CodeFailedIdentityOperation, message: "was not found", ids: []string{uami("dead")}},
		{name: "the subscription's write limit", setup: func() {}, kind: Throttled, code: arm.CodeSubscriptionRequestsThrottled, message: "Please try again after"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.setup()
			_, err := c.Patch(ctx, r, add)
			f := Classify(err)
			if f == nil || f.Kind != tc.kind || f.Code != tc.code || !strings.Contains(f.Message, tc.message) || fmt.Sprint(f.Identities) != fmt.Sprint(tc.ids) {
				t.Fatalf("Classify = %+v, want kind %v code %s message ~%q identities %v", f, tc.kind, tc.code, tc.message, tc.ids)
			}
			if tc.kind == Throttled && f.RetryAfter < time.Second {
				t.Fatalf("Retry-After %v: ARM says seconds", f.RetryAfter)
			}
		})
	}
	// Another client's operation: 409.
	srv2, c2 := newTestARM(t, arm.Options{})
	srv2.AddVMSS(ssID, false)
	srv2.StartOperation(ssID, time.Minute)
	_, err := c2.Patch(ctx, r, add)
	if f := Classify(err); f == nil || f.Kind != Conflict || !strings.HasPrefix(f.Message, "The request failed due to conflict with a concurrent request") {
		t.Fatalf("Classify = %+v, want a conflict", f)
	}
	cur, err := c2.Get(ctx, r)
	if err != nil || cur.ProvisioningState != "Updating" {
		t.Fatalf("GET during the operation: %q %v", cur.ProvisioningState, err)
	}
}
