package controller

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	rtmetrics "runtime/metrics"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	crmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	"sigs.k8s.io/yaml"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/assigner/azure"
	"github.com/podidentity/podidentity/assigner/cachetrim"
	"github.com/podidentity/podidentity/assigner/podaudit"
	"github.com/podidentity/podidentity/internal/binding"
	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/test/emulators/arm"
	"github.com/podidentity/podidentity/test/toolbox/testenv"
)

// The cluster of BenchmarkClusterSize: 5,000 nodes in 100 scale sets (AKS's limits: 5,000 nodes, 100 node
// pools), 1,000 opted-in namespaces with 10 AzureIdentity + AzureIdentityBinding each (10,000 bindings). Each
// namespace's pods run on one scale set and use 9 of its 10 bindings, so a scale set needs 90 identities and
// the kubelet's (ARM allows 100).
const (
	sizeScaleSets     = 100
	sizeNodesPerSet   = 50
	sizeSelectorsUsed = 9
	sizeNamespaces    = 1000
	sizeBindingsPerNS = 10
	sizeDefaultLevels = "1000,10000,50000,150000"
	sizeCreateWriters = 32
)

// BenchmarkClusterSize measures the assigner's memory and convergence as the cluster grows: the pods grow in
// steps (ASSIGNER_SIZE_PODS, default 1000,10000,50000,150000) in one cluster of 5,000 nodes and 10,000
// bindings. At each step:
//
//   - converge: a fresh assigner (with the pod audit, as the binary runs) starts on the cluster and creates
//     the AzureAssignedIdentity objects of the new pods; reported: the time until every object is Assigned
//     and the process's peak RSS during it;
//   - quiet, for each cache (trimmed, as the binary runs, and full, the controller-runtime default): an
//     assigner starts on the converged cluster (a restart, a failover), its caches sync and it re-checks every
//     resource and annotated pod, writing nothing; reported: how long that took (trimmed cache), and the Go
//     heap and RSS it then holds, after a GC, over the process's before it started.
//
// The pods are the webhook's own output for a Deployment pod (webhook/testdata/golden/deployment-pod.out.yaml)
// with the managed fields the API server writes. The benchmark runs in the test process, so the RSS figures
// include the harness (a client, the watch that counts Assigned objects); the heap deltas are the assigner's.
//
//	ASSIGNER_SIZE_PODS=1000,10000,50000,150000 go test ./assigner/controller/ -run '^$' -bench BenchmarkClusterSize -benchtime 1x -timeout 3h
//
// ASSIGNER_SIZE_FULL_MAX=10000 measures the full cache only up to 10,000 pods (it holds about 1 GiB at 50,000);
// ASSIGNER_SIZE_HEAP_PROFILES=dir writes heap profiles of each quiet assigner there (at its start-up's peak
// and once settled); ASSIGNER_SIZE_MEMLIMIT_MIB=n gives each quiet assigner a GOMEMLIMIT-like soft limit of n
// MiB over the settled process; ASSIGNER_SIZE_NO_WATCH_CACHE=1
// turns the API server's watch cache off, so that 150,000 pods fit a 24 GB machine.
func BenchmarkClusterSize(b *testing.B) {
	var levels []int
	spec := os.Getenv("ASSIGNER_SIZE_PODS")
	if spec == "" {
		spec = sizeDefaultLevels
	}
	for _, f := range strings.Split(spec, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			b.Fatalf("ASSIGNER_SIZE_PODS=%q: %q is not a pod count", spec, f)
		}
		if len(levels) > 0 && n <= levels[len(levels)-1] {
			b.Fatalf("ASSIGNER_SIZE_PODS=%q: the counts must grow", spec)
		}
		levels = append(levels, n)
	}
	fullMax := 0 // ASSIGNER_SIZE_FULL_MAX: the full cache is measured up to this many pods only (0: at every level)
	if v := os.Getenv("ASSIGNER_SIZE_FULL_MAX"); v != "" {
		var err error
		if fullMax, err = strconv.Atoi(v); err != nil {
			b.Fatalf("ASSIGNER_SIZE_FULL_MAX=%q: not a pod count", v)
		}
	}
	for range b.N {
		w := newSizeWorld(b)
		created := 0
		for _, n := range levels {
			t0 := time.Now()
			w.createPods(b, created, n)
			progress("%d pods: created %d in %v", n, n-created, time.Since(t0).Round(time.Second))
			created = n
			conv, peak := w.converge(b, n)
			progress("%d pods: converged in %v", n, conv.Round(100*time.Millisecond))
			trimHeap, trimRSS := w.quiet(b, cachetrim.Options())
			resync, startHeap, startLive, startRSS := w.lastResync, w.lastPeakHeap, w.lastPeakLive, w.lastPeakRSS
			var fullHeap, fullRSS uint64
			if fullMax == 0 || n <= fullMax {
				fullHeap, fullRSS = w.quiet(b, cache.Options{})
			}
			progress("%d pods: quiet assigners measured", n)
			load, _ := os.ReadFile("/proc/loadavg")
			b.Logf("%d pods, %d nodes, %d bindings (load %s): converged in %v (new objects: %d), peak process RSS %d MiB; a restarted assigner re-checked everything in %v, at its peak while starting heap +%d MiB (live at a GC +%d MiB), RSS +%d MiB; quiet assigner: trimmed cache heap +%d MiB, RSS +%d MiB; full cache heap +%d MiB, RSS +%d MiB",
				n, sizeScaleSets*sizeNodesPerSet, sizeNamespaces*sizeBindingsPerNS, strings.Fields(string(load))[0], conv.Round(100*time.Millisecond), w.lastNew,
				peak>>20, resync.Round(100*time.Millisecond), startHeap>>20, startLive>>20, startRSS>>20, trimHeap>>20, trimRSS>>20, fullHeap>>20, fullRSS>>20)
			sfx := "-" + strconv.Itoa(n)
			b.ReportMetric(conv.Seconds(), "converge-s"+sfx)
			b.ReportMetric(float64(peak>>20), "peak-rss-MiB"+sfx)
			b.ReportMetric(resync.Seconds(), "resync-s"+sfx)
			b.ReportMetric(float64(trimHeap>>20), "trimmed-heap-MiB"+sfx)
			b.ReportMetric(float64(fullHeap>>20), "full-heap-MiB"+sfx)
			b.ReportMetric(float64(startHeap>>20), "start-peak-heap-MiB"+sfx)
			b.ReportMetric(float64(startLive>>20), "start-peak-live-MiB"+sfx)
			b.ReportMetric(float64(startRSS>>20), "start-peak-rss-MiB"+sfx)
		}
	}
}

type sizeWorld struct {
	env     *testenv.Env
	fast    client.Client // the harness's own writer, not rate limited like the assigner
	armc    *azure.ARM
	pod     corev1.Pod
	mu      sync.Mutex
	ann     map[string]string // namespace/selector -> the webhook's identities annotation (written under mu)
	lastNew int
	// lastResync is how long the last quiet assigner took from its start to its last reconcile.
	lastResync time.Duration
	// lastPeakHeap and lastPeakRSS are the most the last quiet assigner added while it started (sampled every
	// 20 ms), over the settled process before it.
	lastPeakHeap, lastPeakRSS uint64
	// lastPeakLive is the most the last quiet assigner's GCs found live while it started, over the settled heap.
	lastPeakLive uint64
}

func newSizeWorld(b *testing.B) *sizeWorld {
	b.StopTimer()
	te := &envtest.Environment{ControlPlane: envtest.ControlPlane{Etcd: &envtest.Etcd{}}}
	// 150,000 pods and as many AzureAssignedIdentity objects, with their history, outgrow etcd's default 2 GiB.
	te.ControlPlane.Etcd.Configure().Set("quota-backend-bytes", strconv.Itoa(16<<30))
	if os.Getenv("ASSIGNER_SIZE_NO_WATCH_CACHE") != "" {
		// The API server's watch cache of 150,000 pods and their AzureAssignedIdentity objects passed 18 GB of
		// RSS here; without it lists and watches are served from etcd. The assigner's own memory does not depend
		// on it; its convergence time does (lists are slower).
		te.ControlPlane.APIServer = &envtest.APIServer{}
		te.ControlPlane.APIServer.Configure().Set("watch-cache", "false")
	}
	env := startEnvWith(b, te)
	cfg := rest.CopyConfig(env.Config)
	cfg.QPS, cfg.Burst = DefaultKubeAPIQPS, DefaultKubeAPIBurst // what the binary runs with
	c, err := client.New(cfg, client.Options{Scheme: env.Scheme})
	if err != nil {
		b.Fatal(err)
	}
	fastCfg := rest.CopyConfig(env.Config)
	fastCfg.QPS, fastCfg.Burst = 10000, 10000
	fast, err := client.New(fastCfg, client.Options{Scheme: env.Scheme})
	if err != nil {
		b.Fatal(err)
	}
	w := &sizeWorld{env: &testenv.Env{Config: cfg, Client: c, Scheme: env.Scheme, Environment: env.Environment}, fast: fast, ann: map[string]string{}}

	srv := arm.New(b, arm.Options{Latency: scaleLatency(b), PollAfter: time.Second})
	w.armc = azure.NewARM(arm.Credential{}, azure.ARMOptions{Cloud: srv.Cloud(), Transport: srv.HTTPClient(), PollFrequency: time.Second,
		Retry: policy.RetryOptions{MaxRetries: 3, RetryDelay: 100 * time.Millisecond, TryTimeout: time.Minute}})
	parallel(b, sizeScaleSets, func(s int) error {
		id := ssID(fmt.Sprintf("size%03d", s))
		srv.AddVMSS(id, true, uami("kubelet"))
		for n := range sizeNodesPerSet {
			node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: sizeNode(s, n)}, Spec: corev1.NodeSpec{ProviderID: instanceOf(id, n)}}
			if err := fast.Create(context.Background(), node); err != nil {
				return err
			}
		}
		return nil
	})
	parallel(b, sizeNamespaces, func(k int) error {
		ns := sizeNS(k)
		if err := fast.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: map[string]string{contract.NamespaceInjectionLabel: "enabled"}}}); err != nil {
			return err
		}
		for j := range sizeBindingsPerNS {
			id := &aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "id" + strconv.Itoa(j)},
				Spec: aadv1.AzureIdentitySpec{Type: aadv1.UserAssignedMSI, ResourceID: uami(ns + "-id" + strconv.Itoa(j)), ClientID: arm.ClientIDOf(uami(ns + "-id" + strconv.Itoa(j)))}}
			bd := &aadv1.AzureIdentityBinding{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "b" + strconv.Itoa(j)},
				Spec: aadv1.AzureIdentityBindingSpec{AzureIdentity: id.Name, Selector: sizeSelector(k, j)}}
			for _, o := range []client.Object{id, bd} {
				if err := fast.Create(context.Background(), o); err != nil {
					return err
				}
			}
			p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Labels: map[string]string{aadv1.PodLabelBinding: bd.Spec.Selector}}}
			ids, _ := binding.Resolve(p, []aadv1.AzureIdentityBinding{*bd}, []aadv1.AzureIdentity{*id}, binding.Options{})
			w.setAnnotation(ns+"/"+bd.Spec.Selector, binding.Encode(ids))
		}
		return nil
	})

	var golden struct {
		Pod corev1.Pod `json:"pod"`
	}
	raw, err := os.ReadFile(testenv.RepoRoot() + "/webhook/testdata/golden/deployment-pod.out.yaml")
	if err != nil {
		b.Fatal(err)
	}
	if err := yaml.Unmarshal(raw, &golden); err != nil {
		b.Fatal(err)
	}
	w.pod = golden.Pod
	progress("cluster built: %d nodes, %d namespaces, %d bindings", sizeScaleSets*sizeNodesPerSet, sizeNamespaces, sizeNamespaces*sizeBindingsPerNS)
	return w
}

func (w *sizeWorld) setAnnotation(k, v string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.ann[k] = v
}

func sizeNS(k int) string { return fmt.Sprintf("team%04d", k) }

// sizeSelector is unique to its namespace: without --force-namespaced a binding selects the pods of every
// namespace that carry its selector (AAD Pod Identity's semantics), so a selector shared by the 1,000
// namespaces would bind each pod to 1,000 identities.
func sizeSelector(k, j int) string { return fmt.Sprintf("team%04d-sel%d", k, j) }
func sizeNode(s, n int) string     { return fmt.Sprintf("size%03d-%02d", s, n) }

// createPods creates pods [from, to): pod i lives in namespace i mod 1,000, is bound to its namespace's
// selector (i / 1,000) mod 9 and runs on a node of its namespace's scale set.
func (w *sizeWorld) createPods(b *testing.B, from, to int) {
	b.Helper()
	w.lastNew = to - from
	parallel(b, to-from, func(j int) error {
		i := from + j
		k := i % sizeNamespaces
		sel := sizeSelector(k, (i/sizeNamespaces)%sizeSelectorsUsed)
		p := w.pod.DeepCopy()
		p.Namespace, p.Name, p.GenerateName = sizeNS(k), fmt.Sprintf("app-%06d", i), ""
		p.Labels = map[string]string{aadv1.PodLabelBinding: sel, "app": "orders", "pod-template-hash": "5d8f7b9c4"}
		p.Annotations = map[string]string{contract.IdentitiesAnnotation: w.ann[p.Namespace+"/"+sel]}
		p.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "orders-5d8f7b9c4", UID: "6a0e2c55-1111-4d0b-8d7e-1f0e1b2c3d4e"}}
		p.Spec.NodeName = sizeNode(k%sizeScaleSets, (i/sizeNamespaces)%sizeNodesPerSet)
		return w.fast.Create(context.Background(), p)
	})
}

// converge starts an assigner on the cluster and waits until all n AzureAssignedIdentity objects are Assigned.
func (w *sizeWorld) converge(b *testing.B, n int) (time.Duration, uint64) {
	b.Helper()
	allAssigned := watchAllAssigned(b, w.env.Config, n)
	peak := &peakRSS{}
	stopSampling := peak.sample()
	opts := scaleOptions()
	start := time.Now()
	b.StartTimer()
	// With the pod audit, as the binary runs; stopped only once every runnable has returned (waitGone).
	stop := startManagerWith(b, w.env, w.armc, opts, waitGone, func(mgr ctrl.Manager) error {
		_, err := podaudit.Setup(mgr, podaudit.Options{Injection: opts.Injection, Binding: opts.Binding, Interval: time.Hour, Registerer: prometheus.NewRegistry()})
		return err
	})
	var took time.Duration
	select {
	case at := <-allAssigned:
		took = at.Sub(start)
	case <-time.After(2 * time.Hour):
		b.Fatalf("not all %d AzureAssignedIdentity objects Assigned after 2 hours", n)
	}
	b.StopTimer()
	t0 := time.Now()
	stop()
	progress("%d pods: the converging assigner stopped in %v", n, time.Since(t0).Round(100*time.Millisecond))
	return took, stopSampling()
}

// waitGone makes a manager's stop wait until every runnable (caches, controllers and their in-flight
// reconciles) has returned, however long that takes, instead of controller-runtime's 30 s grace period:
// the next measurement's baseline must not include a manager that is still shutting down (it once held a
// converging assigner's cache and made the 50,000-pod figure come out as zero).
func waitGone(o *ctrl.Options) { o.GracefulShutdownTimeout = ptr.To(time.Duration(-1)) }

// quiet starts an assigner with the given cache on the converged cluster, lets its caches sync and a pass run,
// and returns the heap and RSS it added (after a GC, so only what it keeps).
func (w *sizeWorld) quiet(b *testing.B, co cache.Options) (heap, rss uint64) {
	b.Helper()
	heap0, rss0 := settled()
	aaiBefore, _ := apiWritesOf(b, w.env.Config, "azureassignedidentities")
	podsBefore, _ := apiWritesOf(b, w.env.Config, "pods")
	// ASSIGNER_SIZE_MEMLIMIT_MIB=n: a soft memory limit of n MiB over the settled process while the assigner
	// starts, as the chart's GOMEMLIMIT does (the process's other memory is counted in, as the runtime does).
	if v := os.Getenv("ASSIGNER_SIZE_MEMLIMIT_MIB"); v != "" {
		mib, err := strconv.Atoi(v)
		if err != nil || mib <= 0 {
			b.Fatalf("ASSIGNER_SIZE_MEMLIMIT_MIB=%q: not a number of MiB", v)
		}
		// What the runtime counts against its limit: everything it has mapped but what it returned to the OS.
		m := []rtmetrics.Sample{{Name: "/memory/classes/total:bytes"}, {Name: "/memory/classes/heap/released:bytes"}}
		rtmetrics.Read(m)
		prev := debug.SetMemoryLimit(int64(m[0].Value.Uint64()-m[1].Value.Uint64()) + int64(mib)<<20)
		defer debug.SetMemoryLimit(prev)
	}
	// The start-up's peak over the settled process: the initial lists, as they are decoded and trimmed.
	peak := &peakRSS{interval: 20 * time.Millisecond}
	if dir := os.Getenv("ASSIGNER_SIZE_HEAP_PROFILES"); dir != "" {
		// A profile of what was live at the GC that found the most: written again at each new maximum
		// that is 10% above the one written last.
		var written uint64
		name := fmt.Sprintf("%s/assigner-start-peak-%s-%d.pprof", dir, cacheKind(co), time.Now().Unix())
		peak.onLive = func() {
			if l := peak.live.Load(); l > written+written/10 {
				written = l
				if f, err := os.Create(name); err == nil {
					_ = pprof.WriteHeapProfile(f)
					_ = f.Close()
				}
			}
		}
	}
	stopSampling := peak.sample()
	start := time.Now()
	stop := startManagerWith(b, w.env, w.armc, scaleOptions(), func(o *ctrl.Options) { o.Cache = co; waitGone(o) }, nil)
	// Caches synced, then one pass over every resource and every annotated pod; nothing to write. Idle: no
	// reconcile finished for 5 s (ten debounces).
	idle := waitIdle(b, 5*time.Second, 20*time.Minute)
	peakRSS := stopSampling()
	w.lastPeakHeap, w.lastPeakRSS = sub(peak.heap.Load(), heap0), sub(peakRSS, rss0)
	w.lastPeakLive = sub(peak.live.Load(), heap0)
	heap1, rss1 := settled()
	w.lastResync = idle.Sub(start)
	aaiAfter, _ := apiWritesOf(b, w.env.Config, "azureassignedidentities")
	podsAfter, _ := apiWritesOf(b, w.env.Config, "pods")
	if aaiAfter != aaiBefore || podsAfter != podsBefore {
		b.Errorf("a restarted assigner on a converged cluster wrote %d AzureAssignedIdentity objects and %d pods, want none", aaiAfter-aaiBefore, podsAfter-podsBefore)
	}
	// Printed as it is measured: a long run that dies later (the 150,000-pod level takes most of an hour) keeps
	// the figures of the levels it finished.
	progress("quiet assigner: %d writes of AzureAssignedIdentity objects, %d of pods, in %v; heap +%d MiB, RSS +%d MiB; at its peak while starting heap +%d MiB (live at a GC +%d MiB), RSS +%d MiB (cache: %s)",
		aaiAfter-aaiBefore, podsAfter-podsBefore, w.lastResync.Round(100*time.Millisecond), sub(heap1, heap0)>>20, sub(rss1, rss0)>>20,
		w.lastPeakHeap>>20, w.lastPeakLive>>20, w.lastPeakRSS>>20, cacheKind(co))
	if dir := os.Getenv("ASSIGNER_SIZE_HEAP_PROFILES"); dir != "" { // go tool pprof -sample_index=inuse_space
		f, err := os.CreateTemp(dir, "assigner-heap-*.pprof")
		if err == nil {
			_ = pprof.WriteHeapProfile(f)
			_ = f.Close()
			progress("heap profile %s", f.Name())
		}
	}
	stop()
	return sub(heap1, heap0), sub(rss1, rss0)
}

// cacheKind names a cache configuration in the progress lines.
func cacheKind(co cache.Options) string {
	if co.DefaultTransform != nil || len(co.ByObject) > 0 {
		return "trimmed"
	}
	return "full"
}

// waitIdle waits until no reconcile of the assigner's controllers has finished for quiet (controller-runtime's
// reconcile counter, shared by every manager of the process: one runs at a time here) and returns when the last
// one finished.
func waitIdle(b *testing.B, quiet, limit time.Duration) time.Time {
	b.Helper()
	deadline := time.Now().Add(limit)
	before := reconcilesDone(b) // of the assigners before this one: idle only after this one's first
	last, lastChange := before, time.Now()
	for time.Now().Before(deadline) {
		n := reconcilesDone(b)
		if n != last {
			last, lastChange = n, time.Now()
		} else if n > before && time.Since(lastChange) >= quiet {
			return lastChange
		}
		time.Sleep(250 * time.Millisecond)
	}
	b.Fatalf("the assigner was still reconciling after %v", limit)
	return time.Time{}
}

func reconcilesDone(b *testing.B) float64 {
	mfs, err := crmetrics.Registry.Gather()
	if err != nil {
		b.Fatal(err)
	}
	var n float64
	for _, mf := range mfs {
		if mf.GetName() != "controller_runtime_reconcile_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			n += m.GetCounter().GetValue()
		}
	}
	return n
}

func sub(a, b uint64) uint64 {
	if a < b {
		return 0
	}
	return a - b
}

// settled is the live heap and the process RSS after a full GC that returned free memory to the OS.
func settled() (heap, rss uint64) {
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc, currentRSS()
}

func currentRSS() uint64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseUint(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

// peakRSS samples the process RSS and Go heap (objects live or not yet swept, read without stopping the
// world) every interval and keeps the largest of each.
type peakRSS struct {
	interval        time.Duration
	max, heap, live atomic.Uint64
	// onLive, when set, is called on the sampler's goroutine each time the live heap (as of the last GC)
	// reaches a new maximum.
	onLive func()
}

func (p *peakRSS) sample() (stop func() uint64) {
	if p.interval == 0 {
		p.interval = 200 * time.Millisecond
	}
	done := make(chan struct{})
	finished := make(chan struct{})
	heap := []rtmetrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}, {Name: "/gc/heap/live:bytes"}}
	go func() {
		defer close(finished)
		t := time.NewTicker(p.interval)
		defer t.Stop()
		for {
			if r := currentRSS(); r > p.max.Load() {
				p.max.Store(r)
			}
			rtmetrics.Read(heap)
			if h := heap[0].Value.Uint64(); h > p.heap.Load() {
				p.heap.Store(h)
			}
			if l := heap[1].Value.Uint64(); l > p.live.Load() {
				p.live.Store(l)
				if p.onLive != nil {
					p.onLive()
				}
			}
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	return func() uint64 { close(done); <-finished; return p.max.Load() }
}

// parallel runs f(0..n-1) on sizeCreateWriters goroutines and fails the benchmark on the first error.
func parallel(b *testing.B, n int, f func(int) error) {
	b.Helper()
	var next atomic.Int64
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	for range sizeCreateWriters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := f(i); err != nil {
					once.Do(func() { first = err })
					return
				}
			}
		}()
	}
	wg.Wait()
	if first != nil {
		b.Fatal(first)
	}
}

// progress prints at once (a benchmark's log is printed only when it ends, and a step can take many minutes).
func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, time.Now().Format("15:04:05 ")+format+"\n", args...)
}
