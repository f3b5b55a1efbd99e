package app

import (
	"io"
	"net/http"
	"net/http/httptest"
	"sort"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr"

	"github.com/podidentity/podidentity/internal/annotation"
	"github.com/podidentity/podidentity/test/imds"
)

// BenchmarkCachedToken measures a cached token request over loopback HTTP with a keep-alive client, through
// the whole sidecar (path guard, router, parsing, authorization, cache, audit log to a discarding logger,
// metrics). It reports the latency percentiles of the individual requests.
func BenchmarkCachedToken(b *testing.B) {
	h := startBench(b)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1, DisableCompression: true}}
	url := "http://" + h.addr + tokenTarget("&client_id="+webMI.ClientID)
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
	if n := h.emu.Counters().TokenRequests; n != 1 {
		b.Fatalf("IMDS saw %d token requests, want 1", n)
	}
}

// BenchmarkUpstreamCallsPerLifetime spreads b.N requests evenly over one token's servable lifetime (24 h of a
// shared fake clock, up to the refresh window 15 min before expiry) and reports the IMDS calls made.
func BenchmarkUpstreamCallsPerLifetime(b *testing.B) {
	clock := &testClock{now: time.Unix(1_800_000_000, 0)}
	h := startBenchWith(b, setup{bound: []annotation.Identity{web}, attached: []imds.Identity{webMI},
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
	return startBenchWith(b, setup{bound: []annotation.Identity{web}, attached: []imds.Identity{webMI}})
}

// startBenchWith starts the harness for a benchmark, with a discarding logger.
func startBenchWith(b *testing.B, s setup) *harness {
	b.Helper()
	return startTB(b, s, logr.Discard())
}

// BenchmarkTokenHandler measures the sidecar's own work for a cached token (no network): the handler chain
// called directly.
func BenchmarkTokenHandler(b *testing.B) {
	h := startBench(b)
	handler := h.app.Server.Handler()
	target := tokenTarget("&client_id=" + webMI.ClientID)
	serve := func() int {
		req := httptest.NewRequest(http.MethodGet, target, nil)
		req.Header.Set("Metadata", "true")
		rec := httptest.NewRecorder()
		handler.ServeHTTP(rec, req)
		return rec.Code
	}
	if serve() != 200 {
		b.Fatalf("first request failed: %d", serve())
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
}

// cpuTime is the CPU time (user + system) this process has used: on a shared, oversubscribed machine it
// shows the work per request where wall-clock figures mostly show waiting for a CPU.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
