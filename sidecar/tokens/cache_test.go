package tokens

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/podidentity/podidentity/internal/contract"
)

// fakeClock is a settable clock.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// countingFetcher issues tokens valid for lifetime from the clock, numbering them; gate, when set, blocks
// every fetch until closed.
type countingFetcher struct {
	clock    *fakeClock
	lifetime time.Duration
	calls    atomic.Int32
	gate     chan struct{}
	err      error
}

func (f *countingFetcher) Fetch(ctx context.Context, id contract.Identity, resource string) (Token, error) {
	n := f.calls.Add(1)
	if f.gate != nil {
		<-f.gate
	}
	if f.err != nil {
		return Token{}, f.err
	}
	return Token{AccessToken: fmt.Sprintf("t%d", n), ExpiresOn: f.clock.Now().Add(f.lifetime), Resource: resource, ClientID: id.ClientID}, nil
}

var web = contract.Identity{Namespace: "apps", Name: "web", ClientID: "11111111-1111-1111-1111-111111111111"}

func TestConcurrentColdRequestsCollapse(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	f := &countingFetcher{clock: clock, lifetime: 24 * time.Hour, gate: make(chan struct{})}
	c := NewCache(f, Options{Now: clock.Now})

	const n = 100
	var wg sync.WaitGroup
	var started sync.WaitGroup
	results := make([]Token, n)
	errs := make([]error, n)
	hits := make([]bool, n)
	started.Add(n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			started.Done()
			results[i], hits[i], errs[i] = c.Get(context.Background(), web, "https://management.azure.com/", false)
		}()
	}
	started.Wait()
	// Let every goroutine reach the cache before the single fetch completes.
	for f.calls.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	close(f.gate)
	wg.Wait()
	if got := f.calls.Load(); got != 1 {
		t.Fatalf("upstream calls = %d, want 1", got)
	}
	for i := range n {
		if errs[i] != nil || results[i].AccessToken != "t1" {
			t.Fatalf("request %d: token %q, err %v; want t1", i, results[i].AccessToken, errs[i])
		}
	}
	// Later requests are hits and make no call.
	if _, hit, _ := c.Get(context.Background(), web, "https://management.azure.com/", false); !hit || f.calls.Load() != 1 {
		t.Fatalf("warm request: hit=%v calls=%d, want hit and 1 call", hit, f.calls.Load())
	}
}

func TestLifecycle(t *testing.T) {
	const res = "https://vault.azure.net"
	tests := []struct {
		name      string
		lifetime  time.Duration
		advance   time.Duration
		wantHit   bool
		wantCalls int32 // after the second Get and any background refresh
		wantToken string
	}{
		{name: "fresh token is served from cache", lifetime: 24 * time.Hour, advance: time.Hour, wantHit: true, wantCalls: 1, wantToken: "t1"},
		{name: "inside refresh window: cached token served, refreshed in background", lifetime: 24 * time.Hour, advance: 24*time.Hour - 10*time.Minute, wantHit: true, wantCalls: 2, wantToken: "t1"},
		{name: "within 5 minutes of expiry: never served, fetched", lifetime: 24 * time.Hour, advance: 24*time.Hour - 4*time.Minute, wantHit: false, wantCalls: 2, wantToken: "t2"},
		{name: "expired: fetched", lifetime: time.Hour, advance: 2 * time.Hour, wantHit: false, wantCalls: 2, wantToken: "t2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
			f := &countingFetcher{clock: clock, lifetime: tt.lifetime}
			refreshed := make(chan error, 1)
			c := NewCache(f, Options{Now: clock.Now, OnRefresh: func(_ Key, err error) { refreshed <- err }})
			if _, hit, err := c.Get(context.Background(), web, res, false); err != nil || hit {
				t.Fatalf("cold Get: hit=%v err=%v", hit, err)
			}
			clock.Add(tt.advance)
			tok, hit, err := c.Get(context.Background(), web, res, false)
			if err != nil || hit != tt.wantHit || tok.AccessToken != tt.wantToken {
				t.Fatalf("Get after %s: token %q hit=%v err=%v; want %q hit=%v", tt.advance, tok.AccessToken, hit, err, tt.wantToken, tt.wantHit)
			}
			if tt.wantHit && tt.wantCalls == 2 {
				if err := <-refreshed; err != nil {
					t.Fatalf("background refresh: %v", err)
				}
				// The refreshed token replaces the old one.
				if tok, hit, _ := c.Get(context.Background(), web, res, false); !hit || tok.AccessToken != "t2" {
					t.Fatalf("after refresh: token %q hit=%v, want t2 from cache", tok.AccessToken, hit)
				}
			}
			if got := f.calls.Load(); got != tt.wantCalls {
				t.Fatalf("upstream calls = %d, want %d", got, tt.wantCalls)
			}
			if tok.ExpiresOn.Sub(clock.Now()) <= 5*time.Minute {
				t.Fatalf("served a token expiring in %s", tok.ExpiresOn.Sub(clock.Now()))
			}
		})
	}
}

func TestRefreshIsNotRetriedEveryRequest(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	f := &countingFetcher{clock: clock, lifetime: time.Hour}
	refreshed := make(chan error, 10)
	c := NewCache(f, Options{Now: clock.Now, OnRefresh: func(_ Key, err error) { refreshed <- err }})
	ctx := context.Background()
	_, _, _ = c.Get(ctx, web, "r", false)
	f.err = errors.New("IMDS down")
	clock.Add(50 * time.Minute) // in the refresh window
	for range 20 {
		if _, hit, err := c.Get(ctx, web, "r", false); err != nil || !hit {
			t.Fatalf("in refresh window with a failing upstream: hit=%v err=%v, want the cached token", hit, err)
		}
	}
	if err := <-refreshed; err == nil {
		t.Fatal("the background refresh against a failing upstream reported no error")
	}
	if got := f.calls.Load(); got != 2 {
		t.Fatalf("upstream calls = %d, want 2 (one background refresh per retry interval)", got)
	}
	clock.Add(31 * time.Second)
	_, _, _ = c.Get(ctx, web, "r", false)
	if err := <-refreshed; err == nil {
		t.Fatal("the second background refresh against a failing upstream reported no error")
	}
	if got := f.calls.Load(); got != 3 {
		t.Fatalf("upstream calls = %d after the retry interval, want 3", got)
	}
}

func TestErrorsAreNotCached(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	f := &countingFetcher{clock: clock, lifetime: time.Hour, err: &Error{Status: 503, Code: "temporarily_unavailable"}}
	c := NewCache(f, Options{Now: clock.Now})
	_, _, err := c.Get(context.Background(), web, "r", false)
	var te *Error
	if !errors.As(err, &te) || te.Status != 503 {
		t.Fatalf("err = %v, want the fetcher's *Error", err)
	}
	f.err = nil
	if tok, hit, err := c.Get(context.Background(), web, "r", false); err != nil || hit || tok.AccessToken != "t2" {
		t.Fatalf("after recovery: %q hit=%v err=%v, want a fresh t2", tok.AccessToken, hit, err)
	}
}

func TestKeysSeparateIdentitiesAndResources(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	f := &countingFetcher{clock: clock, lifetime: time.Hour}
	c := NewCache(f, Options{Now: clock.Now})
	rotated := web
	rotated.ClientID = "22222222-2222-2222-2222-222222222222"
	for _, q := range []struct {
		id  contract.Identity
		res string
	}{{web, "https://a"}, {web, "https://a/"}, {rotated, "https://a"}, {web, "https://a"}} {
		_, _, _ = c.Get(context.Background(), q.id, q.res, false)
	}
	if got := f.calls.Load(); got != 3 {
		t.Fatalf("upstream calls = %d, want 3 (resource spelled differently and a changed client ID are new keys)", got)
	}
}

func TestBypassCacheIsRateLimited(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	f := &countingFetcher{clock: clock, lifetime: time.Hour}
	c := NewCache(f, Options{Now: clock.Now})
	_, _, _ = c.Get(context.Background(), web, "r", false)
	if _, hit, _ := c.Get(context.Background(), web, "r", true); !hit {
		t.Fatal("bypass right after a fetch must be served from cache")
	}
	clock.Add(time.Minute)
	if _, hit, _ := c.Get(context.Background(), web, "r", true); hit {
		t.Fatal("bypass after the retry interval must fetch")
	}
	if got := f.calls.Load(); got != 2 {
		t.Fatalf("upstream calls = %d, want 2", got)
	}
}
