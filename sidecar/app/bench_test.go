package app

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sort"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr"

	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/test/emulators/imds"
)

// BenchmarkCachedToken measures a cached token request over loopback HTTP with a keep-alive client, through
// the whole sidecar (path guard, router, parsing, authorization, cache, audit log to a discarding logger,
// metrics). It reports the latency percentiles of the individual requests.
func BenchmarkCachedToken(b *testing.B) {
	h := startBench(b)
	benchmarkCached(b, h, webMI.ClientID)
	if n := h.emu.Counters().TokenRequests; n != 1 {
		b.Fatalf("IMDS saw %d token requests, want 1", n)
	}
}

// BenchmarkCachedTokenFederated is BenchmarkCachedToken for a federated identity: the first request exchanges
// a real API server's service account token at the emulated Azure AD over TLS; the measured ones are served
// from the sidecar's cache, as the node path's are (needs kube-apiserver and etcd: skipped under -short).
func BenchmarkCachedTokenFederated(b *testing.B) {
	f := newFederation(b, func(s setup) *harness { return startBenchWith(b, s) })
	benchmarkCached(b, f.h, f.fedA.ClientID)
	if n := f.aad.Exchanges(f.fedA.ClientID); n != 1 {
		b.Fatalf("Azure AD saw %d exchanges, want 1", n)
	}
	if n := f.h.emu.Counters().TokenRequests; n != 0 {
		b.Fatalf("IMDS saw %d token requests for a federated identity, want 0", n)
	}
}

// benchmarkCached fills the cache for clientID, then measures cached requests.
func benchmarkCached(b *testing.B, h *harness, clientID string) {
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1, DisableCompression: true}}
	url := "http://" + h.addr + tokenTarget("&client_id="+clientID)
	do := func() {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		req.Header.Set("Metadata", "true")
		resp, err := client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			b.Fatalf("status %d", resp.StatusCode)
		}
	}
	do() // fill the cache
	lat := make([]time.Duration, 0, b.N)
	cpu0 := cpuTime()
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		do()
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	b.ReportMetric(float64((cpuTime()-cpu0).Nanoseconds())/float64(b.N), "cpu-ns/op(client+sidecar)")
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-us")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-us")
}

// BenchmarkUpstreamCallsPerLifetime spreads b.N requests evenly over one token's servable lifetime (24 h of a
// shared fake clock, up to the refresh window 15 min before expiry) and reports the IMDS calls made.
func BenchmarkUpstreamCallsPerLifetime(b *testing.B) {
	clock := &testClock{now: time.Unix(1_800_000_000, 0)}
	h := startBenchWith(b, setup{bound: []contract.Identity{web}, attached: []imds.Identity{webMI},
		emu: imds.Options{Now: clock.Now, TokenLifetime: 24 * time.Hour}, cfg: func(c *Config) { c.Now = clock.Now }})
	client := &http.Client{}
	url := "http://" + h.addr + tokenTarget("")
	step := (24*time.Hour - 16*time.Minute) / time.Duration(b.N)
	failed := 0
	b.ResetTimer()
	for range b.N {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		req.Header.Set("Metadata", "true")
		resp, err := client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			failed++
		}
		clock.Add(step)
	}
	b.ReportMetric(float64(h.emu.Counters().TokenRequests), "imds-calls/lifetime")
	b.ReportMetric(float64(failed), "failed-requests")
}

func startBench(b *testing.B) *harness {
	return startBenchWith(b, setup{bound: []contract.Identity{web}, attached: []imds.Identity{webMI}})
}

// startBenchWith starts the harness for a benchmark, with a discarding logger.
func startBenchWith(b *testing.B, s setup) *harness {
	b.Helper()
	return startTB(b, s, logr.Discard())
}

// BenchmarkTokenHandler measures the sidecar's own work for a cached token (no network): the handler chain
// called directly, with one request built once and a response writer that only keeps the status, so that the
// figures are the handler's and not httptest's. The audit line is either discarded by logr or formatted by the
// production handler (slog JSON) into io.Discard; its write syscall is not counted here.
func BenchmarkTokenHandler(b *testing.B) {
	for _, bc := range []struct {
		name string
		log  logr.Logger
	}{
		{"audit=discarded", logr.Discard()},
		{"audit=slog-json", logr.FromSlogHandler(slog.NewJSONHandler(io.Discard, nil))},
	} {
		b.Run(bc.name, func(b *testing.B) {
			h := startTB(b, setup{bound: []contract.Identity{web}, attached: []imds.Identity{webMI}}, bc.log)
			handler := h.app.Server.Handler()
			req := httptest.NewRequest(http.MethodGet, tokenTarget("&client_id="+webMI.ClientID), nil)
			req.Header.Set("Metadata", "true")
			w := &statusWriter{header: http.Header{}}
			serve := func() int {
				clear(w.header)
				w.status = 0
				handler.ServeHTTP(w, req)
				if w.status == 0 {
					return http.StatusOK
				}
				return w.status
			}
			if code := serve(); code != 200 {
				b.Fatalf("first request failed: %d", code)
			}
			b.ReportAllocs()
			cpu0 := cpuTime()
			b.ResetTimer()
			for range b.N {
				if serve() != 200 {
					b.Fatal("request failed")
				}
			}
			b.StopTimer()
			b.ReportMetric(float64((cpuTime()-cpu0).Nanoseconds())/float64(b.N), "cpu-ns/op")
		})
	}
}

// statusWriter is a ResponseWriter that discards the body and keeps the status.
type statusWriter struct {
	header http.Header
	status int
}

func (w *statusWriter) Header() http.Header         { return w.header }
func (w *statusWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *statusWriter) WriteHeader(status int)      { w.status = status }

// cpuTime is the CPU time (user + system) this process has used: on a shared, oversubscribed machine it
// shows the work per request where wall-clock figures mostly show waiting for a CPU.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
