// Package sidecarload measures the real podidentity-sidecar binary: it runs it against an in-process IMDS
// emulator on loopback, drives token requests at a fixed rate over keep-alive connections, and reports latency
// percentiles, upstream calls, resident memory (VmRSS from /proc) idle and under load, and the binary's size.
package sidecarload

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/podidentity/podidentity/api/identitytype"
	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/test/emulators/imds"
)

// Options of a run.
type Options struct {
	// Binary is the sidecar binary to measure.
	Binary string
	// Rate is the target request rate (requests per second) and Duration how long it is held.
	Rate     int
	Duration time.Duration
	// Connections is the number of keep-alive connections (and pacing workers).
	Connections int
	// Idle is how long the sidecar idles (after one token) before idle memory is read.
	Idle time.Duration
	// Client is the load generator's HTTP client: ClientRaw (default) or ClientNetHTTP.
	Client string
	// MemoryCgroup, when set, runs the sidecar in a new memory cgroup under this directory (as the kubelet runs
	// each container in one) and reports what that cgroup is charged when idle. Cold evicts the binary from the
	// page cache first, so the sidecar pays for reading it: the first sidecar of a node; without Cold, the
	// binary's pages are already cached, as for every further sidecar of a node.
	MemoryCgroup string
	Cold         bool
	// SidecarEnv is added to the sidecar's environment (e.g. GOMAXPROCS=1, GOGC=200), for experiments.
	SidecarEnv []string
}

// The load generator's clients. The generator shares the machine's CPUs with the sidecar, so its own cost
// raises the sidecar's latency: net/http's Transport (two goroutines per connection and a hand-off for every
// request) costs 1.3 to 1.6 times the CPU per request of a minimal HTTP/1.1 client that owns one connection and
// reads each response on the sending goroutine, which is the default (sidecar/BENCHMARKS.md).
const (
	ClientRaw     = "raw"
	ClientNetHTTP = "net/http"
)

// Result of a run.
type Result struct {
	Options
	BinaryBytes              int64
	Requests, Errors         int
	Achieved                 float64 // requests per second actually sent
	P50, P90, P99, P999, Max time.Duration
	IdleRSSKiB, LoadRSSKiB   int64 // VmRSS idle, and the highest sample under load
	// IdleAnonKiB and IdleFileKiB split the idle VmRSS: anonymous memory (heap, stacks, runtime) is the
	// pod's own; file-backed pages are the binary's, which every sidecar of a node started from the same image
	// layer shares through the page cache.
	IdleAnonKiB, IdleFileKiB int64
	// IdleCgroup is the sidecar's memory cgroup when idle (with Options.MemoryCgroup).
	IdleCgroup *CgroupMemory
	// IdleCPU is the CPU time the sidecar used while idle (Options.Idle, after its first token): what a pod
	// that asks for no token costs, at the kernel's 10 ms accounting granularity.
	IdleCPU time.Duration
	// PeakCgroupKiB is the highest charge of that cgroup over the whole run, load included.
	PeakCgroupKiB        int64
	UpstreamCalls        int
	SidecarStartupRSSKiB int64
	// SidecarCPU is the CPU time (user + system) the sidecar used during the load phase, and GeneratorCPU the
	// load generator's (this process, IMDS emulator included; it is idle during the load).
	SidecarCPU, GeneratorCPU time.Duration
	// LoadAvg is /proc/loadavg at the end of the run: the contention that dominates latency on a shared host.
	LoadAvg string
}

// Run performs one measurement.
func Run(ctx context.Context, o Options) (Result, error) {
	if o.Client == "" {
		o.Client = ClientRaw
	}
	if o.Client != ClientRaw && o.Client != ClientNetHTTP {
		return Result{Options: o}, fmt.Errorf("client %q: use %q or %q", o.Client, ClientRaw, ClientNetHTTP)
	}
	if o.Rate <= 0 || o.Connections <= 0 || o.Duration <= 0 {
		return Result{Options: o}, errors.New("rate, connections and duration must be positive")
	}
	res := Result{Options: o}
	st, err := os.Stat(o.Binary)
	if err != nil {
		return res, fmt.Errorf("sidecar binary: %w (build it with `make build` or pass --binary)", err)
	}
	res.BinaryBytes = st.Size()

	mi := imds.Identity{ClientID: "aaaaaaaa-1111-4111-8111-000000000001",
		ResourceID: "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/web"}
	emu := imds.New(imds.Options{})
	emu.SetAttached([]imds.Identity{mi})
	emuLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return res, err
	}
	emuSrv := &http.Server{Handler: emu, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = emuSrv.Serve(emuLn) }()
	defer emuSrv.Close()

	dir, err := os.MkdirTemp("", "sidecarload")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	// A sidecar started as root serves as its own uid (15078): the identities file must stay readable to it.
	if err := os.Chmod(dir, 0o755); err != nil {
		return res, err
	}
	idFile := filepath.Join(dir, "identities")
	ids := []contract.Identity{{Namespace: "apps", Name: "web", Type: identitytype.UserAssignedMSI, ClientID: mi.ClientID, ResourceID: mi.ResourceID, Binding: "apps/web"}}
	if err := os.WriteFile(idFile, []byte(contract.EncodeIdentities(ids)), 0o644); err != nil {
		return res, err
	}
	tokenAddr, healthAddr := freePort(), freePort()
	argv := []string{o.Binary, "--listen-address=" + tokenAddr, "--health-address=" + healthAddr,
		"--identities-file=" + idFile, "--imds-endpoint=http://" + emuLn.Addr().String(), "--secrets-dir=" + dir}
	if o.Cold {
		if err := dropFromPageCache(o.Binary); err != nil {
			return res, err
		}
	}
	var cg *memoryCgroup
	if o.MemoryCgroup != "" {
		if cg, err = newMemoryCgroup(o.MemoryCgroup, fmt.Sprintf("sidecar-%d", os.Getpid())); err != nil {
			return res, err
		}
		// Removed after the process is killed and reaped (deferred calls run last-in, first-out).
		defer func() { _ = cg.remove() }()
		argv = cg.wrap(argv)
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(append(os.Environ(), "POD_NAME=load-0", "POD_NAMESPACE=apps"), o.SidecarEnv...)
	// Stdout and stderr (the audit log, one line per token) go to /dev/null: nil, not a pipe to drain.
	if err := cmd.Start(); err != nil {
		return res, err
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	pid := cmd.Process.Pid
	if err := waitReady("http://" + healthAddr + "/readyz"); err != nil {
		return res, err
	}
	res.SidecarStartupRSSKiB, _ = rss(pid)

	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: o.Connections, MaxConnsPerHost: o.Connections, DisableCompression: true}}
	url := "http://" + tokenAddr + tokenTarget
	if _, err := getNetHTTP(client, url); err != nil {
		return res, fmt.Errorf("first token: %w", err)
	}
	idleCPU0, _ := cpuTime(pid)
	time.Sleep(o.Idle)
	if idleCPU1, err := cpuTime(pid); err == nil {
		res.IdleCPU = idleCPU1 - idleCPU0
	}
	res.IdleRSSKiB, _ = rss(pid)
	res.IdleAnonKiB, _ = statusKiB(pid, "RssAnon:")
	res.IdleFileKiB, _ = statusKiB(pid, "RssFile:")
	if cg != nil {
		m, err := cg.usage()
		if err != nil {
			return res, fmt.Errorf("reading the sidecar's memory cgroup: %w", err)
		}
		res.IdleCgroup = &m
	}

	// Load: each worker owns one connection and sends on a fixed schedule.
	interval := time.Duration(int64(time.Second) * int64(o.Connections) / int64(o.Rate))
	var mu sync.Mutex
	var lat []time.Duration
	stop := make(chan struct{})
	var peak int64
	var sampler sync.WaitGroup
	sampler.Add(1)
	go func() {
		defer sampler.Done()
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				if v, err := rss(pid); err == nil && v > peak {
					peak = v
				}
			}
		}
	}()
	// One client per worker, connected before the clock starts.
	type getter struct {
		get  func() error
		done func()
	}
	getters := make([]getter, o.Connections)
	for w := range getters {
		if o.Client == ClientNetHTTP {
			getters[w] = getter{func() error { _, err := getNetHTTP(client, url); return err }, func() {}}
			continue
		}
		rc := &rawClient{addr: tokenAddr}
		if err := rc.dial(); err != nil {
			return res, fmt.Errorf("connecting to the sidecar: %w", err)
		}
		getters[w] = getter{rc.get, func() { _ = rc.Close() }}
	}
	cpu0, _ := cpuTime(pid)
	gen0, _ := cpuTime(os.Getpid())
	start := time.Now()
	end := start.Add(o.Duration)
	var wg sync.WaitGroup
	for w := range o.Connections {
		wg.Add(1)
		go func() {
			defer wg.Done()
			get := getters[w].get
			defer getters[w].done()
			local := make([]time.Duration, 0, int(o.Duration/interval)+1)
			errs := 0
			next := start.Add(interval * time.Duration(w) / time.Duration(o.Connections))
			for next.Before(end) {
				if d := time.Until(next); d > 0 {
					time.Sleep(d)
				}
				t0 := time.Now()
				if err := get(); err != nil {
					errs++
				} else {
					local = append(local, time.Since(t0))
				}
				next = next.Add(interval)
			}
			mu.Lock()
			lat = append(lat, local...)
			res.Errors += errs
			mu.Unlock()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if cpu1, err := cpuTime(pid); err == nil {
		res.SidecarCPU = cpu1 - cpu0
	}
	if gen1, err := cpuTime(os.Getpid()); err == nil {
		res.GeneratorCPU = gen1 - gen0
	}
	close(stop)
	sampler.Wait()
	res.LoadRSSKiB = peak
	if cg != nil {
		if res.PeakCgroupKiB, err = cg.peak(); err != nil {
			return res, fmt.Errorf("reading the sidecar's memory cgroup: %w", err)
		}
	}

	res.Requests = len(lat) + res.Errors
	res.Achieved = float64(res.Requests) / elapsed.Seconds()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	pct := func(p float64) time.Duration {
		if len(lat) == 0 {
			return 0
		}
		return lat[min(len(lat)-1, int(p*float64(len(lat))))]
	}
	res.P50, res.P90, res.P99, res.P999 = pct(0.50), pct(0.90), pct(0.99), pct(0.999)
	if len(lat) > 0 {
		res.Max = lat[len(lat)-1]
	}
	res.UpstreamCalls = emu.Counters().TokenRequests
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		res.LoadAvg = strings.Join(strings.Fields(string(b))[:3], " ")
	}
	return res, nil
}

// tokenTarget is the request target of every token request: the default identity, as most apps ask.
const tokenTarget = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F"

func getNetHTTP(c *http.Client, url string) (int, error) {
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("Metadata", "true")
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	n, _ := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return int(n), fmt.Errorf("status %d", resp.StatusCode)
	}
	return int(n), nil
}

func waitReady(url string) error {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return errors.New("the sidecar did not become ready within 10 s")
}

func freePort() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// cpuTime reads a process's user + system CPU time from /proc/<pid>/stat (fields 14 and 15, in clock ticks
// of 1/100 s, the Linux USER_HZ).
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:]) // fields from 3 on
	if len(f) < 13 {
		return 0, errors.New("short /proc stat")
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond, nil
}

// rss reads VmRSS (KiB) of a process from /proc.
func rss(pid int) (int64, error) { return statusKiB(pid, "VmRSS:") }

// statusKiB reads one KiB field (e.g. "VmRSS:", "RssAnon:") of /proc/<pid>/status.
func statusKiB(pid int, field string) (int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == field {
			return strconv.ParseInt(f[1], 10, 64)
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}

// Markdown renders the result as a table row set.
func (r Result) Markdown() string {
	var b strings.Builder
	mib := func(kib int64) string { return fmt.Sprintf("%.1f MiB", float64(kib)/1024) }
	fmt.Fprintf(&b, "| measure | value | target |\n|---|---|---|\n")
	fmt.Fprintf(&b, "| target rate / achieved | %d req/s / %.0f req/s over %s, %d connections | 5,000 req/s |\n", r.Rate, r.Achieved, r.Duration, r.Connections)
	fmt.Fprintf(&b, "| requests / errors | %d / %d | 0 errors |\n", r.Requests, r.Errors)
	fmt.Fprintf(&b, "| latency p50 | %s | <= 100 us |\n", r.P50)
	fmt.Fprintf(&b, "| latency p90 | %s | |\n", r.P90)
	fmt.Fprintf(&b, "| latency p99 | %s | <= 1 ms |\n", r.P99)
	fmt.Fprintf(&b, "| latency p99.9 / max | %s / %s | |\n", r.P999, r.Max)
	if r.Requests > 0 {
		fmt.Fprintf(&b, "| sidecar CPU during load | %s (%.1f us per request, %.2f cores) | |\n", r.SidecarCPU,
			float64(r.SidecarCPU.Microseconds())/float64(r.Requests), r.SidecarCPU.Seconds()/r.Duration.Seconds())
		fmt.Fprintf(&b, "| load generator CPU during load (%s client, same machine) | %s (%.1f us per request, %.2f cores) | |\n", r.Client,
			r.GeneratorCPU, float64(r.GeneratorCPU.Microseconds())/float64(r.Requests), r.GeneratorCPU.Seconds()/r.Duration.Seconds())
	}
	if len(r.SidecarEnv) > 0 {
		fmt.Fprintf(&b, "| sidecar environment added | %s | |\n", strings.Join(r.SidecarEnv, " "))
	}
	fmt.Fprintf(&b, "| upstream (IMDS) token calls for the whole run | %d | 1 |\n", r.UpstreamCalls)
	fmt.Fprintf(&b, "| CPU while idle | %s in %s | |\n", r.IdleCPU, r.Idle)
	fmt.Fprintf(&b, "| RSS at ready | %s | |\n", mib(r.SidecarStartupRSSKiB))
	fmt.Fprintf(&b, "| RSS idle (after one token, %s idle) | %s (anonymous %s, file-backed %s) | <= 6 MiB |\n", r.Idle, mib(r.IdleRSSKiB), mib(r.IdleAnonKiB), mib(r.IdleFileKiB))
	if c := r.IdleCgroup; c != nil {
		node := "further sidecars of a node: the binary already in the page cache"
		if r.Cold {
			node = "first sidecar of a node: the binary read from disk"
		}
		fmt.Fprintf(&b, "| memory cgroup charged idle (%s) | %s (anonymous %s, page cache %s) | |\n", node, mib(c.Charged), mib(c.Anon), mib(c.File))
	}
	fmt.Fprintf(&b, "| RSS under load (peak of 100 ms samples) | %s | <= 20 MiB |\n", mib(r.LoadRSSKiB))
	if r.IdleCgroup != nil {
		fmt.Fprintf(&b, "| memory cgroup charged, peak of the run | %s | |\n", mib(r.PeakCgroupKiB))
	}
	fmt.Fprintf(&b, "| binary size | %.1f MiB (%d bytes) | |\n", float64(r.BinaryBytes)/(1<<20), r.BinaryBytes)
	fmt.Fprintf(&b, "| machine load average (1, 5, 15 min) at the end | %s | |\n", r.LoadAvg)
	return b.String()
}
