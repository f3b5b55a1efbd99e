package imds

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/podidentity/podidentity/test/toolbox/jwttest"
)

var (
	idA = Identity{ClientID: "aaaaaaaa-0000-0000-0000-000000000001", ObjectID: "0b000000-0000-0000-0000-000000000001",
		ResourceID: "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/a"}
	idB = Identity{ClientID: "aaaaaaaa-0000-0000-0000-000000000002",
		ResourceID: "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/b"}
)

func get(t *testing.T, h http.Handler, target string, header map[string]string) (int, map[string]string) {
	t.Helper()
	req := httptest.NewRequest(http.MethodGet, target, nil)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	var body map[string]string
	_ = json.Unmarshal(rec.Body.Bytes(), &body)
	return rec.Code, body
}

func TestTokenWire(t *testing.T) {
	md := map[string]string{"Metadata": "true"}
	const tok = TokenPath + "?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F"
	tests := []struct {
		name     string
		attached []Identity
		target   string
		header   map[string]string
		status   int
		desc     string // error_description, or client_id of the token
	}{
		{"no metadata header", []Identity{idA}, tok, nil, 400, "Required metadata header not specified"},
		{"X-Forwarded-For refused", []Identity{idA}, tok, map[string]string{"Metadata": "true", "X-Forwarded-For": "10.0.0.1"}, 400, "Request contains X-Forwarded-For header"},
		{"no resource", []Identity{idA}, TokenPath + "?api-version=2018-02-01", md, 400, "Required audience parameter not specified"},
		{"nothing attached", nil, tok, md, 400, "Identity not found"},
		{"not attached yet", []Identity{idB}, tok + "&client_id=" + idA.ClientID, md, 400, "Identity not found"},
		{"single identity, no selector", []Identity{idA}, tok, md, 200, idA.ClientID},
		{"several, no selector", []Identity{idA, idB}, tok, md, 400, "Multiple user assigned identities exist, please specify the clientId / resourceId of the identity in the token request"},
		{"client_id, other case", []Identity{idA, idB}, tok + "&client_id=" + strings.ToUpper(idB.ClientID), md, 200, idB.ClientID},
		{"object_id", []Identity{idA, idB}, tok + "&object_id=" + idA.ObjectID, md, 200, idA.ClientID},
		{"msi_res_id", []Identity{idA, idB}, tok + "&msi_res_id=" + idB.ResourceID, md, 200, idB.ClientID},
		{"mi_res_id", []Identity{idA, idB}, tok + "&mi_res_id=" + idA.ResourceID, md, 200, idA.ClientID},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := New(Options{})
			s.SetAttached(tt.attached)
			status, body := get(t, s, tt.target, tt.header)
			if status != tt.status {
				t.Fatalf("status %d, want %d (body %v)", status, tt.status, body)
			}
			if status != 200 {
				if body["error_description"] != tt.desc || body["error"] == "" {
					t.Fatalf("body %v, want error_description %q", body, tt.desc)
				}
				return
			}
			if body["client_id"] != tt.desc || body["token_type"] != "Bearer" || body["resource"] != "https://management.azure.com/" ||
				body["expires_in"] != "86400" || body["refresh_token"] != "" || body["access_token"] == "" {
				t.Fatalf("token answer %v", body)
			}
			claims := jwttest.Claims(t, body["access_token"])
			if claims["appid"] != tt.desc || claims["aud"] != "https://management.azure.com/" {
				t.Fatalf("token claims %v", claims)
			}
			if got := s.Counters().TokensByClientID[tt.desc]; got != 1 {
				t.Fatalf("counter for %s = %d, want 1", tt.desc, got)
			}
		})
	}
}

func TestOtherPaths(t *testing.T) {
	s := New(Options{TenantID: "tenant-1"})
	md := map[string]string{"Metadata": "true"}
	if status, body := get(t, s, "/metadata/identity/info", md); status != 200 || body["tenantId"] != "tenant-1" {
		t.Fatalf("identity info: %d %v", status, body)
	}
	if status, _ := get(t, s, "/metadata/instance?api-version=2021-02-01", nil); status != 400 {
		t.Fatalf("instance without header: %d, want 400", status)
	}
	if status, body := get(t, s, "/metadata/instance", md); status != 400 || !strings.Contains(body["error_description"], "api-version") {
		t.Fatalf("instance without api-version: %d %v", status, body)
	}
	req := httptest.NewRequest(http.MethodGet, "/metadata/instance?api-version=2021-02-01", nil)
	req.Header.Set("Metadata", "true")
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, req)
	var inst struct {
		Compute struct {
			ResourceID string `json:"resourceId"`
		} `json:"compute"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &inst); err != nil || !strings.HasSuffix(inst.Compute.ResourceID, "/virtualMachines/node-0") {
		t.Fatalf("instance metadata: %d %s", rec.Code, rec.Body)
	}
	if c := s.Counters(); c.Other != 4 || c.TokenRequests != 0 {
		t.Fatalf("counters %+v", c)
	}
}

func TestThrottling(t *testing.T) {
	t.Run("rate", func(t *testing.T) {
		now := time.Unix(1_700_000_000, 0)
		s := New(Options{Now: func() time.Time { return now }, MaxConcurrent: -1})
		s.SetAttached([]Identity{idA})
		var codes []int
		for range 25 {
			status, _ := get(t, s, TokenPath+"?resource=r", map[string]string{"Metadata": "true"})
			codes = append(codes, status)
		}
		c := s.Counters()
		if c.Tokens != 20 || c.Throttled != 5 || codes[19] != 200 || codes[20] != 429 {
			t.Fatalf("within one second: %d tokens, %d throttled (%v); want 20 and 5", c.Tokens, c.Throttled, codes)
		}
		now = now.Add(time.Second)
		if status, _ := get(t, s, TokenPath+"?resource=r", map[string]string{"Metadata": "true"}); status != 200 {
			t.Fatalf("next second: %d, want 200", status)
		}
	})
	t.Run("concurrency", func(t *testing.T) {
		s := New(Options{RatePerSecond: -1, Latency: 200 * time.Millisecond})
		s.SetAttached([]Identity{idA})
		srv := httptest.NewServer(s)
		defer srv.Close()
		var wg sync.WaitGroup
		for range 12 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				req, _ := http.NewRequest(http.MethodGet, srv.URL+TokenPath+"?resource=r", nil)
				req.Header.Set("Metadata", "true")
				resp, err := http.DefaultClient.Do(req)
				if err == nil {
					resp.Body.Close()
				}
			}()
		}
		wg.Wait()
		c := s.Counters()
		if c.Tokens > 5 || c.Throttled == 0 || c.Tokens+c.Throttled != 12 || c.ByStatus[429] != c.Throttled {
			t.Fatalf("12 concurrent requests: %d tokens, %d throttled; want at most 5 tokens, the rest 429", c.Tokens, c.Throttled)
		}
	})
}

func TestFaults(t *testing.T) {
	s := New(Options{})
	s.SetAttached([]Identity{idA})
	s.InjectFaults(Fault{Status: 410, Count: 2}, Fault{Status: 429, Count: 1, RetryAfter: 3})
	md := map[string]string{"Metadata": "true"}
	var got []int
	for range 4 {
		status, _ := get(t, s, TokenPath+"?resource=r", md)
		got = append(got, status)
	}
	if want := []int{410, 410, 429, 200}; !equal(got, want) {
		t.Fatalf("statuses %v, want %v", got, want)
	}
}

func equal(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestAdminAPI(t *testing.T) {
	s := New(Options{})
	admin := httptest.NewServer(s.AdminHandler())
	defer admin.Close()
	do := func(method, path, body string) (int, string) {
		req, _ := http.NewRequest(method, admin.URL+path, bytes.NewBufferString(body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	a, _ := json.Marshal([]Identity{idA, idB})
	if code, body := do(http.MethodPut, "/attached", string(a)); code != 200 || len(s.Attached()) != 2 {
		t.Fatalf("PUT /attached: %d %s", code, body)
	}
	if code, _ := do(http.MethodDelete, "/attached/"+idA.ClientID, ""); code != 200 || len(s.Attached()) != 1 || s.Attached()[0].ClientID != idB.ClientID {
		t.Fatalf("DELETE: %d, attached %v", code, s.Attached())
	}
	one, _ := json.Marshal(idA)
	if code, _ := do(http.MethodPost, "/attached", string(one)); code != 200 || len(s.Attached()) != 2 {
		t.Fatalf("POST: %d, attached %v", code, s.Attached())
	}
	if code, body := do(http.MethodPut, "/attached", `[{"resourceID":"x"}]`); code != 400 || !strings.Contains(body, "clientID") {
		t.Fatalf("PUT without clientID: %d %s", code, body)
	}
	if code, _ := do(http.MethodPut, "/attached", `{"bogus":1}`); code != 400 {
		t.Fatalf("PUT with a bad body: %d", code)
	}
	if code, _ := do(http.MethodPost, "/faults", `[{"status":500,"count":1}]`); code != 204 {
		t.Fatalf("POST /faults: %d", code)
	}
	if status, _ := get(t, s, TokenPath+"?resource=r&client_id="+idA.ClientID, map[string]string{"Metadata": "true"}); status != 500 {
		t.Fatalf("after fault injection: %d, want 500", status)
	}
	code, body := do(http.MethodGet, "/counters", "")
	var c Counters
	if err := json.Unmarshal([]byte(body), &c); code != 200 || err != nil || c.TokenRequests != 1 || c.ByStatus[500] != 1 {
		t.Fatalf("GET /counters: %d %s", code, body)
	}
}
