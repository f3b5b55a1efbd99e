package arm

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

const vm = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm"

func patch(t *testing.T, s *Server, path, body, ifMatch string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPatch, s.URL()+path+"?api-version=x", strings.NewReader(body))
	if ifMatch != "" {
		req.Header.Set("If-Match", ifMatch)
	}
	resp, err := s.HTTPClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

func TestPatchSemantics(t *testing.T) {
	tests := []struct {
		name       string
		system     bool
		users      []string
		body       string
		wantStatus int
		wantSystem bool
		wantUsers  string
	}{
		{name: "merge adds", users: []string{"/a"}, body: `{"identity":{"type":"UserAssigned","userAssignedIdentities":{"/b":{}}}}`,
			wantStatus: 200, wantUsers: "/a,/b"},
		{name: "null removes, case-insensitively", users: []string{"/A", "/b"}, body: `{"identity":{"type":"UserAssigned","userAssignedIdentities":{"/a":null}}}`,
			wantStatus: 200, wantUsers: "/b"},
		{name: "SystemAssigned drops user identities", system: true, users: []string{"/a"}, body: `{"identity":{"type":"SystemAssigned"}}`,
			wantStatus: 200, wantSystem: true},
		{name: "UserAssigned type with nothing left is rejected", users: []string{"/a"}, body: `{"identity":{"type":"UserAssigned","userAssignedIdentities":{"/a":null}}}`,
			wantStatus: 400, wantUsers: "/a"},
		{name: "user map with type None is rejected", users: []string{"/a"}, body: `{"identity":{"type":"None","userAssignedIdentities":{"/b":{}}}}`,
			wantStatus: 400, wantUsers: "/a"},
		{name: "type is required", body: `{"identity":{"userAssignedIdentities":{"/b":{}}}}`, wantStatus: 400},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := New(t, Options{})
			s.AddVM(vm, tc.system, tc.users...)
			if resp := patch(t, s, vm, tc.body, ""); resp.StatusCode != tc.wantStatus {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.wantStatus)
			}
			time.Sleep(10 * time.Millisecond)
			system, users := s.Identities(vm)
			if system != tc.wantSystem || strings.ToLower(strings.Join(users, ",")) != tc.wantUsers {
				t.Fatalf("system=%v users=%v; want %v %q", system, users, tc.wantSystem, tc.wantUsers)
			}
		})
	}
}

func TestBusyEtagAndOnChange(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	s := New(t, Options{Latency: 200 * time.Millisecond, OnChange: func(id string, users []string) {
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, id+"="+strings.Join(users, ","))
	}})
	s.AddVM(vm, false)
	add := `{"identity":{"type":"UserAssigned","userAssignedIdentities":{"/a":{}}}}`
	if r := patch(t, s, vm, add, `"9"`); r.StatusCode != http.StatusPreconditionFailed {
		t.Fatalf("stale etag: %d", r.StatusCode)
	}
	if r := patch(t, s, vm, add, `"1"`); r.StatusCode != http.StatusOK {
		t.Fatalf("current etag: %d", r.StatusCode)
	}
	if r := patch(t, s, vm, add, ""); r.StatusCode != http.StatusConflict {
		t.Fatalf("while busy: %d, want 409", r.StatusCode)
	}
	resp, err := s.HTTPClient().Get(s.URL() + strings.ToUpper(vm))
	if err != nil {
		t.Fatal(err)
	}
	var body struct {
		Properties struct{ ProvisioningState string } `json:"properties"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&body)
	resp.Body.Close()
	if body.Properties.ProvisioningState != "Updating" || resp.Header.Get("retry-after-ms") == "" {
		t.Fatalf("GET during the operation: state %q, retry-after-ms %q", body.Properties.ProvisioningState, resp.Header.Get("retry-after-ms"))
	}
	deadline := time.Now().Add(2 * time.Second)
	for s.Busy(vm) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	if strings.Join(seen, ";") != vm+"=;"+vm+"=/a" {
		t.Fatalf("OnChange calls: %q", seen)
	}
	if c := s.Counts(); c.Writes != 3 || c.AppliedWrites != 1 || c.Reads != 1 {
		t.Fatalf("counters %+v", c)
	}
}

func TestAuthorizeAndConcurrentWrites(t *testing.T) {
	const token = "Bearer issued-by-the-test"
	s := New(t, Options{Latency: 100 * time.Millisecond, Authorize: func(r *http.Request) error {
		if r.Header.Get("Authorization") != token {
			return errors.New("not the token the test issued")
		}
		return nil
	}})
	s.AddVM(vm, false)
	add := `{"identity":{"type":"UserAssigned","userAssignedIdentities":{"/a":{}}}}`
	send := func(auth string) *http.Response {
		req, _ := http.NewRequest(http.MethodPatch, s.URL()+vm+"?api-version=x", strings.NewReader(add))
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := s.HTTPClient().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	tests := []struct {
		name       string
		auth       string
		wantStatus int
		wantMax    int // MaxConcurrentWrites after the request
	}{
		{name: "no token", wantStatus: http.StatusUnauthorized, wantMax: 0},
		{name: "another token", auth: "Bearer forged", wantStatus: http.StatusUnauthorized, wantMax: 0},
		{name: "the issued token starts an operation", auth: token, wantStatus: http.StatusOK, wantMax: 1},
		{name: "a second writer while it runs overlaps", auth: token, wantStatus: http.StatusConflict, wantMax: 2},
	}
	for _, tc := range tests {
		if resp := send(tc.auth); resp.StatusCode != tc.wantStatus {
			t.Fatalf("%s: status %d, want %d", tc.name, resp.StatusCode, tc.wantStatus)
		}
		if got := s.MaxConcurrentWrites(vm); got != tc.wantMax {
			t.Fatalf("%s: MaxConcurrentWrites = %d, want %d", tc.name, got, tc.wantMax)
		}
	}
	if c := s.Counts(); c.Writes != 2 {
		t.Fatalf("unauthorized requests reached the resource: %d writes counted, want 2", c.Writes)
	}
	// Sequential writers, each waiting for its operation, never overlap.
	seq := New(t, Options{Latency: 20 * time.Millisecond})
	seq.AddVM(vm, false)
	for i := range 3 {
		if r := patch(t, seq, vm, add, ""); r.StatusCode != http.StatusOK {
			t.Fatalf("write %d: %d", i, r.StatusCode)
		}
		for deadline := time.Now().Add(2 * time.Second); seq.Busy(vm) && time.Now().Before(deadline); {
			time.Sleep(5 * time.Millisecond)
		}
	}
	if got := seq.MaxConcurrentWrites(""); got != 1 {
		t.Fatalf("sequential writes: MaxConcurrentWrites = %d, want 1", got)
	}
}

// do sends a request and returns the answer with its body read.
func do(t *testing.T, s *Server, method, path, body, ifMatch string) (*http.Response, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(method, s.URL()+path+"?api-version=x", strings.NewReader(body))
	if ifMatch != "" {
		req.Header.Set("If-Match", ifMatch)
	}
	resp, err := s.HTTPClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp, out
}

func errorOf(body map[string]any) (code, message string) {
	e, _ := body["error"].(map[string]any)
	code, _ = e["code"].(string)
	message, _ = e["message"].(string)
	return code, message
}

const (
	ss       = "/subscriptions/s/resourceGroups/MC_rg/providers/Microsoft.Compute/virtualMachineScaleSets/pool"
	deadID   = "/subscriptions/s/resourceGroups/ids/providers/Microsoft.ManagedIdentity/userAssignedIdentities/dead"
	liveID   = "/subscriptions/s/resourceGroups/ids/providers/Microsoft.ManagedIdentity/userAssignedIdentities/live"
	otherSub = "/subscriptions/t/resourceGroups/MC_rg/providers/Microsoft.Compute/virtualMachineScaleSets/pool"
)

// TestDeletedIdentity: a deleted identity that is still attached fails every PATCH that would leave it on
// the resource with 400 FailedIdentityOperation naming it, whatever the PATCH changes; detaching it (alone or
// along with other changes) goes through; adding a deleted identity fails the same way.
func TestDeletedIdentity(t *testing.T) {
	tests := []struct {
		name       string
		body       string
		wantStatus int
		wantUsers  string
	}{
		{name: "adding another identity", body: `{"identity":{"type":"UserAssigned","userAssignedIdentities":{"` + liveID + `":{}}}}`,
			wantStatus: 400, wantUsers: "/kubelet," + deadID},
		{name: "removing another identity", body: `{"identity":{"type":"UserAssigned","userAssignedIdentities":{"/kubelet":null}}}`,
			wantStatus: 400, wantUsers: "/kubelet," + deadID},
		{name: "detaching it along with adding another", body: `{"identity":{"type":"UserAssigned","userAssignedIdentities":{"` + strings.ToUpper(deadID) + `":null,"` + liveID + `":{}}}}`,
			wantStatus: 200, wantUsers: "/kubelet," + liveID},
		{name: "a type without UserAssigned drops it", body: `{"identity":{"type":"None"}}`, wantStatus: 200},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := New(t, Options{})
			s.AddVMSS(ss, false, deadID, "/kubelet")
			s.DeleteIdentity(deadID)
			resp, body := do(t, s, http.MethodPatch, ss, tc.body, "")
			if resp.StatusCode != tc.wantStatus {
				t.Fatalf("status %d, want %d (%v)", resp.StatusCode, tc.wantStatus, body)
			}
			if tc.wantStatus == 400 {
				code, msg := errorOf(body)
				if code != CodeFailedIdentityOperation || resp.Header.Get("x-ms-error-code") != code ||
					!strings.Contains(msg, "Resource '"+deadID+"' was not found.") || !strings.Contains(msg, "Identity operation for resource '"+ss+"'") {
					t.Fatalf("error %q %q, header %q", code, msg, resp.Header.Get("x-ms-error-code"))
				}
			}
			for deadline := time.Now().Add(2 * time.Second); s.Busy(ss) && time.Now().Before(deadline); {
				time.Sleep(5 * time.Millisecond)
			}
			_, users := s.Identities(ss)
			if strings.Join(users, ",") != tc.wantUsers {
				t.Fatalf("users %v, want %s", users, tc.wantUsers)
			}
		})
	}
	// Adding a deleted identity fails too; re-created, it can be attached.
	s := New(t, Options{})
	s.AddVMSS(ss, false)
	s.DeleteIdentity(deadID)
	add := `{"identity":{"type":"UserAssigned","userAssignedIdentities":{"` + deadID + `":{}}}}`
	if resp, _ := do(t, s, http.MethodPatch, ss, add, ""); resp.StatusCode != 400 {
		t.Fatalf("adding a deleted identity: %d", resp.StatusCode)
	}
	s.DenyIdentity(deadID, "")
	if resp, _ := do(t, s, http.MethodPatch, ss, add, ""); resp.StatusCode != 200 {
		t.Fatalf("adding it once re-created: %d", resp.StatusCode)
	}
	if c := s.Counts(); c.Writes != 2 || c.Refused != 1 {
		t.Fatalf("counters %+v", c)
	}
}

// TestForeignOperation: while another client's operation runs, the resource reads Updating and refuses
// PATCHes with Compute's 409; afterwards it is Succeeded, with a new etag.
func TestForeignOperation(t *testing.T) {
	s := New(t, Options{})
	s.AddVMSS(ss, false, "/kubelet")
	s.StartOperation(ss, 300*time.Millisecond)
	state := func() (string, string) {
		resp, body := do(t, s, http.MethodGet, ss, "", "")
		props, _ := body["properties"].(map[string]any)
		st, _ := props["provisioningState"].(string)
		return st, resp.Header.Get("ETag")
	}
	if st, etag := state(); st != "Updating" || etag != `"1"` {
		t.Fatalf("during the operation: %s %s", st, etag)
	}
	add := `{"identity":{"type":"UserAssigned","userAssignedIdentities":{"/a":{}}}}`
	resp, body := do(t, s, http.MethodPatch, ss, add, "")
	if code, msg := errorOf(body); resp.StatusCode != http.StatusConflict || code != CodeConflict || !strings.HasPrefix(msg, "The request failed due to conflict with a concurrent request.") {
		t.Fatalf("PATCH during the operation: %d %s %s", resp.StatusCode, code, msg)
	}
	for deadline := time.Now().Add(2 * time.Second); s.Busy(ss) && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	if st, etag := state(); st != "Succeeded" || etag != `"2"` {
		t.Fatalf("after the operation: %s %s", st, etag)
	}
	if resp, _ := do(t, s, http.MethodPatch, ss, add, `"2"`); resp.StatusCode != http.StatusOK {
		t.Fatalf("PATCH after the operation: %d", resp.StatusCode)
	}
	log := s.WriteLog(ss)
	if len(log) != 2 || log[0].Status != 409 || log[0].Code != CodeConflict || log[1].Status != 200 || log[1].IfMatch != `"2"` {
		t.Fatalf("write log %+v", log)
	}
}

// TestSubscriptionWriteThrottling: writes beyond the subscription's bucket are refused with 429
// SubscriptionRequestsThrottled, Retry-After in seconds and the remaining-writes header; the bucket refills;
// another subscription has its own.
func TestSubscriptionWriteThrottling(t *testing.T) {
	s := New(t, Options{SubscriptionWrites: Bucket{Size: 2, Refill: 4}})
	s.AddVMSS(ss, false)
	s.AddVMSS(otherSub, false)
	body := func(id string) string {
		return `{"identity":{"type":"UserAssigned","userAssignedIdentities":{"` + id + `":{}}}}`
	}
	tests := []struct {
		resource   string
		wantStatus int
		remaining  string
	}{
		{ss, 200, "1"},
		{ss, 200, "0"},
		{ss, 429, "0"},
		{otherSub, 200, "1"},
	}
	for i, tc := range tests {
		resp, b := do(t, s, http.MethodPatch, tc.resource, body(fmt.Sprintf("/id%d", i)), "")
		if resp.StatusCode != tc.wantStatus || resp.Header.Get("x-ms-ratelimit-remaining-subscription-writes") != tc.remaining {
			t.Fatalf("write %d: %d, remaining %q; want %d, %q (%v)", i, resp.StatusCode, resp.Header.Get("x-ms-ratelimit-remaining-subscription-writes"), tc.wantStatus, tc.remaining, b)
		}
		if tc.wantStatus == 429 {
			code, msg := errorOf(b)
			if code != CodeSubscriptionRequestsThrottled || resp.Header.Get("Retry-After") != "1" || resp.Header.Get("retry-after-ms") != "" ||
				!strings.Contains(msg, "Number of 'write' requests for subscription 's'") || !strings.Contains(msg, "Please try again after '1' seconds.") {
				t.Fatalf("throttled answer: %s %q, Retry-After %q", code, msg, resp.Header.Get("Retry-After"))
			}
		}
		for deadline := time.Now().Add(2 * time.Second); s.Busy(tc.resource) && time.Now().Before(deadline); {
			time.Sleep(5 * time.Millisecond)
		}
	}
	time.Sleep(300 * time.Millisecond) // a token back at 4/s
	if resp, _ := do(t, s, http.MethodPatch, ss, body("/later"), ""); resp.StatusCode != 200 {
		t.Fatalf("after the refill: %d", resp.StatusCode)
	}
	if c := s.Counts(); c.Throttled != 1 || c.Refused != 1 || c.Writes != 5 {
		t.Fatalf("counters %+v", c)
	}
}

// TestDenyWrites: without a role on the resource group, PATCHes are refused with 403 AuthorizationFailed
// naming the action and scope; reads still work.
func TestDenyWrites(t *testing.T) {
	s := New(t, Options{})
	s.AddVMSS(ss, false)
	s.DenyWrites("/subscriptions/s/resourcegroups/mc_rg", true)
	resp, body := do(t, s, http.MethodPatch, ss, `{"identity":{"type":"UserAssigned","userAssignedIdentities":{"/a":{}}}}`, "")
	code, msg := errorOf(body)
	if resp.StatusCode != http.StatusForbidden || code != CodeAuthorizationFailed ||
		!strings.Contains(msg, "does not have authorization to perform action 'Microsoft.Compute/virtualMachineScaleSets/write' over scope '"+ss+"'") {
		t.Fatalf("%d %s %q", resp.StatusCode, code, msg)
	}
	if resp, _ := do(t, s, http.MethodGet, ss, "", ""); resp.StatusCode != http.StatusOK {
		t.Fatalf("read: %d", resp.StatusCode)
	}
	s.DenyWrites("/subscriptions/s/resourceGroups/MC_rg", false)
	if resp, _ := do(t, s, http.MethodPatch, ss, `{"identity":{"type":"UserAssigned","userAssignedIdentities":{"/a":{}}}}`, ""); resp.StatusCode != http.StatusOK {
		t.Fatalf("after the grant: %d", resp.StatusCode)
	}
}
