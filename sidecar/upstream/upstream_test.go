package upstream

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/podidentity/podidentity/sidecar/loopguard"
	"github.com/podidentity/podidentity/sidecar/tokens"
	"github.com/podidentity/podidentity/test/emulators/imds"
)

var web = imds.Identity{ClientID: "aaaaaaaa-0000-0000-0000-000000000001", ObjectID: "0b000000-0000-0000-0000-000000000001",
	ResourceID: "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/web"}

func newClient(t *testing.T, emu *imds.Server, maxWait time.Duration, sleep func(context.Context, time.Duration) error) *Client {
	t.Helper()
	srv := httptest.NewServer(emu)
	t.Cleanup(srv.Close)
	c, err := New(Options{Endpoint: srv.URL, MaxWait: maxWait, InitialBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond,
		RetryAfter: 7 * time.Second, Sleep: sleep})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestTokenRetries(t *testing.T) {
	tests := []struct {
		name    string
		faults  []imds.Fault
		attach  bool // attach the identity after the first attempt
		want    int  // status: 200 or the error's
		calls   int  // token requests IMDS saw
		wantErr string
	}{
		{name: "attached: one call", attach: false, faults: nil, want: 200, calls: 1},
		{name: "429 then success", faults: []imds.Fault{{Status: 429, Count: 2}}, want: 200, calls: 3},
		{name: "410 restarting then success", faults: []imds.Fault{{Status: 410, Count: 1}}, want: 200, calls: 2},
		{name: "5xx then success", faults: []imds.Fault{{Status: 500, Count: 1}, {Status: 503, Count: 1}}, want: 200, calls: 3},
		{name: "not attached yet, then attached", attach: true, want: 200, calls: 2},
		{name: "other 4xx passed through, not retried", faults: []imds.Fault{{Status: 403, Count: 1}}, want: 403, calls: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			emu := imds.New(imds.Options{RatePerSecond: -1})
			if !tt.attach {
				emu.SetAttached([]imds.Identity{web})
			}
			emu.InjectFaults(tt.faults...)
			sleep := func(ctx context.Context, d time.Duration) error {
				if tt.attach {
					emu.Attach(web) // the assigner attaches the identity while the sidecar waits
				}
				return nil
			}
			c := newClient(t, emu, time.Minute, sleep)
			tok, err := c.Token(context.Background(), web.ClientID, "https://vault.azure.net")
			status := 200
			var te *tokens.Error
			if errors.As(err, &te) {
				status = te.Status
			} else if err != nil {
				t.Fatal(err)
			}
			if status != tt.want {
				t.Fatalf("status %d (%v), want %d", status, err, tt.want)
			}
			if got := emu.Counters().TokenRequests; got != tt.calls {
				t.Fatalf("IMDS saw %d token requests, want %d", got, tt.calls)
			}
			if status == 200 && (tok.ClientID != web.ClientID || time.Until(tok.ExpiresOn) < 23*time.Hour || tok.AccessToken == "") {
				t.Fatalf("token %+v", tok)
			}
		})
	}
}

func TestNotAttachedTimesOutWith503(t *testing.T) {
	emu := imds.New(imds.Options{RatePerSecond: -1})
	c := newClient(t, emu, 300*time.Millisecond, nil)
	c.opts.Sleep = sleep // real waits, bounded by MaxWait
	_, err := c.Token(context.Background(), web.ClientID, "https://vault.azure.net")
	var te *tokens.Error
	if !errors.As(err, &te) || te.Status != http.StatusServiceUnavailable || te.RetryAfter != 7*time.Second ||
		!strings.Contains(te.Description, "not attached to this node yet") {
		t.Fatalf("err = %#v, want 503 with Retry-After 7s saying the identity is not attached yet", err)
	}
	if emu.Counters().TokenRequests < 2 {
		t.Fatalf("IMDS saw %d requests; the client must have retried", emu.Counters().TokenRequests)
	}
}

func TestRetryAfterIsCapped(t *testing.T) {
	c, err := New(Options{RetryAfter: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if c.opts.RetryAfter != MaxRetryAfter {
		t.Fatalf("RetryAfter %s, want capped at %s", c.opts.RetryAfter, MaxRetryAfter)
	}
	if _, err := New(Options{Endpoint: "169.254.169.254"}); err == nil {
		t.Fatal("an endpoint without scheme was accepted")
	}
}

func TestProxyAddsNoForwardedFor(t *testing.T) {
	var got http.Header
	var gotPath string
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, gotPath = r.Header.Clone(), r.URL.RequestURI()
		_, _ = io.WriteString(w, `{"ok":"yes"}`)
	}))
	defer upstream.Close()
	c, err := New(Options{Endpoint: upstream.URL})
	if err != nil {
		t.Fatal(err)
	}
	front := httptest.NewServer(c.Proxy())
	defer front.Close()
	req, _ := http.NewRequest(http.MethodGet, front.URL+"/metadata/instance?api-version=2021-02-01", nil)
	req.Header.Set("Metadata", "true")
	req.Header.Set("X-Forwarded-For", "10.1.2.3")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || gotPath != "/metadata/instance?api-version=2021-02-01" || got.Get("Metadata") != "true" {
		t.Fatalf("proxied %d %q %v", resp.StatusCode, gotPath, got)
	}
	for _, h := range []string{"X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "Forwarded"} {
		if v := got.Values(h); len(v) > 0 {
			t.Fatalf("IMDS received %s: %v", h, v)
		}
	}
}

// TestNonceOnEveryUpstreamRequest: token fetches, probes and proxied requests all carry the process's nonce (an
// app's own value for the header is replaced), so that the sidecar's server recognises every one of them when
// the redirect sends it back.
func TestNonceOnEveryUpstreamRequest(t *testing.T) {
	var mu sync.Mutex
	seen := map[string][]string{} // path -> nonce header values
	emu := imds.New(imds.Options{RatePerSecond: -1})
	emu.SetAttached([]imds.Identity{web})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen[r.URL.Path] = r.Header.Values(loopguard.Header)
		mu.Unlock()
		emu.ServeHTTP(w, r)
	}))
	defer srv.Close()
	c, err := New(Options{Endpoint: srv.URL, Nonce: "n0nce"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Token(context.Background(), web.ClientID, "https://vault.azure.net"); err != nil {
		t.Fatal(err)
	}
	if err := c.Probe(context.Background()); err != nil {
		t.Fatal(err)
	}
	req := httptest.NewRequest(http.MethodGet, "/metadata/instance?api-version=2021-02-01", nil)
	req.Header.Set("Metadata", "true")
	req.Header.Set(loopguard.Header, "the-app-s-own-value")
	rec := httptest.NewRecorder()
	c.Proxy().ServeHTTP(rec, req)
	if rec.Code != 200 {
		t.Fatalf("proxied: %d %s", rec.Code, rec.Body.String())
	}
	mu.Lock()
	defer mu.Unlock()
	for _, path := range []string{TokenPath, ProbePath, "/metadata/instance"} {
		if got := seen[path]; len(got) != 1 || got[0] != "n0nce" {
			t.Errorf("%s reached IMDS with nonce header %q, want exactly [n0nce]", path, got)
		}
	}
}

// TestLoopedTokenFetchFailsFast: when the redirect sends the token fetch back to the sidecar (exemption not
// installed), its server answers 508; retrying would loop again, so the app gets a 503 at once that says why.
func TestLoopedTokenFetchFailsFast(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusLoopDetected)
		_, _ = io.WriteString(w, `{"error":"`+loopguard.Code+`","error_description":"`+loopguard.Description+`"}`)
	}))
	defer srv.Close()
	c, err := New(Options{Endpoint: srv.URL, Nonce: "n", MaxWait: time.Minute, RetryAfter: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = c.Token(context.Background(), web.ClientID, "https://vault.azure.net")
	var te *tokens.Error
	if !errors.As(err, &te) || te.Status != http.StatusServiceUnavailable || te.RetryAfter != 3*time.Second ||
		!strings.Contains(te.Description, "exemption for the sidecar is not installed") {
		t.Fatalf("err = %#v, want 503 with Retry-After naming the missing exemption", err)
	}
	if n := calls.Load(); n != 1 || time.Since(start) > 5*time.Second {
		t.Fatalf("%d calls in %s: a loop must not be retried", n, time.Since(start))
	}
}

func TestProbe(t *testing.T) {
	answering := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != ProbePath || r.Header.Get("Metadata") != "true" {
			t.Errorf("probe %s with Metadata %q", r.URL.Path, r.Header.Get("Metadata"))
		}
		w.WriteHeader(http.StatusBadRequest) // any answer from IMDS proves it is reachable
	}))
	defer answering.Close()
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()
	for _, tt := range []struct {
		name, endpoint, wantErr string
	}{
		{"an answer, whatever its status", answering.URL, ""},
		{"connection refused", closed.URL, "connection refused"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := New(Options{Endpoint: tt.endpoint})
			if err != nil {
				t.Fatal(err)
			}
			err = c.Probe(context.Background())
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("Probe: %v, want %q", err, tt.wantErr)
			}
		})
	}
}
