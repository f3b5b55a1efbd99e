package arm

import (
	"encoding/json"
	"errors"
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
