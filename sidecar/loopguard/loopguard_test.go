package loopguard

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"
)

func TestOwn(t *testing.T) {
	g := WithNonce("n0nce")
	tests := []struct {
		name   string
		header http.Header
		want   bool
	}{
		{"no header", http.Header{}, false},
		{"own nonce", http.Header{Header: {"n0nce"}}, true},
		{"another process's nonce", http.Header{Header: {"other"}}, false},
		{"a prefix of the nonce", http.Header{Header: {"n0nc"}}, false},
		{"own nonce among others", http.Header{Header: {"other", "n0nce"}}, true},
		{"empty value", http.Header{Header: {""}}, false},
		{"the nonce under another header", http.Header{"X-Other": {"n0nce"}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := g.Own(tt.header); got != tt.want {
				t.Fatalf("Own(%v) = %v, want %v", tt.header, got, tt.want)
			}
		})
	}
	// A request parsed by net/http carries canonical keys, whatever the client sent: the constant must be one.
	if http.CanonicalHeaderKey(Header) != Header {
		t.Fatalf("Header %q is not canonical (%q): Own's map lookup would never match", Header, http.CanonicalHeaderKey(Header))
	}
}

func TestNoncesAreRandom(t *testing.T) {
	a, b := New().Nonce(), New().Nonce()
	if a == b || len(a) < 20 {
		t.Fatalf("nonces %q and %q: want two different, unguessable values", a, b)
	}
}

func TestRecordLogsAtMostOncePerInterval(t *testing.T) {
	g := WithNonce("n")
	t0 := time.Unix(1_800_000_000, 0)
	logged := 0
	for i := range 100 { // one looped request per second for 100 s
		if g.Record(t0.Add(time.Duration(i) * time.Second)) {
			logged++
		}
	}
	if g.Loops() != 100 {
		t.Fatalf("Loops() = %d, want 100", g.Loops())
	}
	if logged != 4 { // at 0, 30, 60 and 90 s
		t.Fatalf("logged %d of 100 loops over 100 s, want 4 (once per %s)", logged, DefaultLogInterval)
	}
}

// fakeClock advances only when the check sleeps.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Sleep(_ context.Context, d time.Duration) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	return nil
}

// lines collects log lines.
type lines struct {
	mu  sync.Mutex
	all []string
}

func (l *lines) logger() logr.Logger {
	return funcr.New(func(prefix, args string) {
		l.mu.Lock()
		defer l.mu.Unlock()
		l.all = append(l.all, args)
	}, funcr.Options{})
}

func (l *lines) count(substr string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, s := range l.all {
		if strings.Contains(s, substr) {
			n++
		}
	}
	return n
}

// TestCheck: the check is ready only after a probe got an answer that did not come back to the sidecar; a
// loop or a failed connection keeps it not ready with the reason, logged at most once per interval.
func TestCheck(t *testing.T) {
	refused := errors.New("dial tcp 169.254.169.254:80: connect: connection refused")
	tests := []struct {
		name string
		// outcomes are the probes' results in order: "loop" (the server saw the probe), "refused", "answer".
		outcomes   []string
		wantReady  bool
		wantReason string
		wantProbes int
		// wantLogs counts "not ready" lines: the probes take about 2 min of fake time, logged every 30 s.
		wantLogs int
	}{
		// Confirmed once and for all: Run returns and never probes again, so a later outage of the node's IMDS
		// does not make a serving sidecar unready (and restarted) while it still has cached tokens.
		{name: "answer at once", outcomes: []string{"answer"}, wantReady: true, wantProbes: 1},
		{name: "loops until the exemption is installed", outcomes: []string{"loop", "loop", "loop", "answer"}, wantReady: true, wantProbes: 4, wantLogs: 1},
		{name: "loops for ever", outcomes: repeat("loop", 30), wantReason: "the redirect's exemption for the sidecar is not installed", wantProbes: 30, wantLogs: 5},
		{name: "connection refused for ever", outcomes: repeat("refused", 30), wantReason: "connection refused", wantProbes: 30, wantLogs: 5},
		{name: "refused, then looping", outcomes: append(repeat("refused", 3), repeat("loop", 3)...), wantReason: "exemption for the sidecar is not installed", wantProbes: 6, wantLogs: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := WithNonce("n")
			clock := &fakeClock{now: time.Unix(1_800_000_000, 0)}
			logs := &lines{}
			probes := 0
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			probe := func(context.Context) error {
				probes++
				if probes == len(tt.outcomes) && tt.outcomes[probes-1] != "answer" {
					defer cancel() // the last scripted probe: stop as a shutdown would
				}
				switch tt.outcomes[probes-1] {
				case "loop":
					g.Record(clock.Now()) // what the token server does when the probe reaches it
					return nil            // the probe got the server's 508: an answer, but its own
				case "refused":
					return refused
				}
				return nil
			}
			c := NewCheck(CheckOptions{Probe: probe, Guard: g, Upstream: "http://169.254.169.254", Log: logs.logger(),
				Now: clock.Now, Sleep: clock.Sleep})
			if ok, why := c.Ready(); ok || !strings.Contains(why, "first check under way") {
				t.Fatalf("before any probe: %v %q, want not ready, checking", ok, why)
			}
			c.Run(ctx)
			ok, why := c.Ready()
			if ok != tt.wantReady || !strings.Contains(why, tt.wantReason) {
				t.Fatalf("Ready() = %v %q, want %v with %q", ok, why, tt.wantReady, tt.wantReason)
			}
			if probes != tt.wantProbes {
				t.Fatalf("%d probes, want %d (no probe after the confirmation)", probes, tt.wantProbes)
			}
			if n := logs.count("not ready: node IMDS not confirmed"); n != tt.wantLogs {
				t.Fatalf("%d \"not ready\" log lines for %d probes, want %d:\n%s", n, probes, tt.wantLogs, strings.Join(logs.all, "\n"))
			}
			if tt.wantReady && logs.count("node IMDS reachable") != 1 {
				t.Fatalf("no confirmation logged:\n%s", strings.Join(logs.all, "\n"))
			}
		})
	}
}

func repeat(s string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = s
	}
	return out
}

// BenchmarkOwn is the loop guard's cost on every token request (an app's request: no nonce header).
func BenchmarkOwn(b *testing.B) {
	g := New()
	h := http.Header{"Metadata": {"true"}, "User-Agent": {"azsdk-go"}, "Accept": {"*/*"}}
	b.ReportAllocs()
	for range b.N {
		if g.Own(h) {
			b.Fatal("an app's request taken for the sidecar's own")
		}
	}
}
