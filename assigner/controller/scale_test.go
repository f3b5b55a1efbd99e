package controller

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/assigner/azure"
	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/test/emulators/arm"
	"github.com/podidentity/podidentity/test/toolbox/testenv"
)

const (
	scaleSets        = 20
	scaleNodesPerSet = 10
	scalePods        = 2000
	scaleIdentities  = 50
)

func scaleLatency(b *testing.B) time.Duration {
	latency := 30 * time.Second
	if v := os.Getenv("ASSIGNER_SCALE_PATCH_LATENCY"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			b.Fatalf("ASSIGNER_SCALE_PATCH_LATENCY=%q: %v", v, err)
		}
		latency = d
	}
	return latency
}

// scaleClientLimits are the assigner's client-side rate limits in the scale benchmarks: the binary's defaults, or
// ASSIGNER_SCALE_QPS=<qps>/<burst> (a negative qps: no client-side limit), to compare them.
func scaleClientLimits(b *testing.B) (float32, int) {
	v := os.Getenv("ASSIGNER_SCALE_QPS")
	if v == "" {
		return DefaultKubeAPIQPS, DefaultKubeAPIBurst
	}
	qps, burst, ok := strings.Cut(v, "/")
	q, err1 := strconv.ParseFloat(qps, 32)
	n, err2 := strconv.Atoi(burst)
	if !ok || err1 != nil || err2 != nil {
		b.Fatalf("ASSIGNER_SCALE_QPS=%q: want <qps>/<burst>, e.g. 200/400", v)
	}
	return float32(q), n
}

// scaleWorld builds 20 scale sets of 10 nodes and 50 identities with bindings; pods are left to the caller.
func scaleWorld(b *testing.B, latency time.Duration) (*testenv.Env, *arm.Server, *azure.ARM, []string) {
	env := startEnv(b)
	cfg := rest.CopyConfig(env.Config)
	cfg.QPS, cfg.Burst = scaleClientLimits(b) // what the binary runs with, unless compared
	c, err := client.New(cfg, client.Options{Scheme: env.Scheme})
	if err != nil {
		b.Fatal(err)
	}
	env = &testenv.Env{Config: cfg, Client: c, Scheme: env.Scheme, Environment: env.Environment}
	srv := arm.New(b, arm.Options{Latency: latency, PollAfter: time.Second})
	var nodes []string
	for s := range scaleSets {
		id := ssID(fmt.Sprintf("pool%02d", s))
		srv.AddVMSS(id, true, uami("kubelet"))
		for n := range scaleNodesPerSet {
			name := fmt.Sprintf("pool%02d-%d", s, n)
			mkNode(b, c, name, instanceOf(id, n))
			nodes = append(nodes, name)
		}
	}
	mkNamespace(b, c, "apps")
	for k := range scaleIdentities {
		mkIdentity(b, c, "apps", "id"+strconv.Itoa(k), uami("id"+strconv.Itoa(k)))
		mkBinding(b, c, "apps", "b"+strconv.Itoa(k), "id"+strconv.Itoa(k), "sel"+strconv.Itoa(k))
	}
	armc := azure.NewARM(arm.Credential{}, azure.ARMOptions{Cloud: srv.Cloud(), Transport: srv.HTTPClient(), PollFrequency: time.Second,
		Retry: policy.RetryOptions{MaxRetries: 3, RetryDelay: 100 * time.Millisecond, TryTimeout: time.Minute}})
	return env, srv, armc, nodes
}

// wantedPerScaleSet is what scalePodsCreate's pods need, per scale set id (same seed, same draw).
func wantedPerScaleSet(nodes []string) map[string][]string {
	rng := rand.New(rand.NewPCG(42, 0))
	sets := map[string]map[string]bool{}
	for i := range scalePods {
		node := nodes[i%len(nodes)]
		id := ssID(node[:strings.LastIndex(node, "-")])
		if sets[id] == nil {
			sets[id] = map[string]bool{uami("kubelet"): true}
		}
		sets[id][uami("id"+strconv.Itoa(rng.IntN(scaleIdentities)))] = true
	}
	out := map[string][]string{}
	for id, m := range sets {
		out[id] = sortedKeys(m)
	}
	return out
}

func attachedAll(srv *arm.Server, want map[string][]string) error {
	for id, ids := range want {
		if err := azureHas(srv, id, true, ids...); err != nil {
			return err
		}
	}
	return nil
}

func scalePodsCreate(b *testing.B, c client.Client, nodes []string) {
	rng := rand.New(rand.NewPCG(42, 0))
	// The webhook's annotation of each selector, read once rather than for each of the 2,000 pods.
	annotations := map[string]string{}
	for i := range scalePods {
		sel := "sel" + strconv.Itoa(rng.IntN(scaleIdentities))
		if _, ok := annotations[sel]; !ok {
			annotations[sel] = webhookAnnotation(b, c, "apps", sel)
		}
		mkPod(b, c, "apps", fmt.Sprintf("p%04d", i), nodes[i%len(nodes)], sel, map[string]string{contract.IdentitiesAnnotation: annotations[sel]})
	}
}

func scaleOptions() Options {
	opts := testOptions()
	opts.Debounce = 500 * time.Millisecond
	opts.Resync = time.Hour
	return opts
}

// objectModes are the two ways of writing AzureAssignedIdentity objects that BenchmarkScale compares:
// final-state (the default: created once ARM has answered, one write each) and created-first (created
// as Created while the PATCH runs, then updated to Assigned: two writes each, the assigner's earlier
// behaviour, obtained by making every PATCH "slow").
var objectModes = []struct {
	name                string
	pendingObjectsAfter time.Duration
}{
	{"final-state", 0},
	{"created-first", time.Nanosecond},
}

// apiWrites is the API server's own count of write requests (POST, PUT, PATCH, DELETE) on
// AzureAssignedIdentity objects, from its /metrics, in total and by verb and answer code.
func apiWrites(b *testing.B, cfg *rest.Config) (int, map[string]int) {
	b.Helper()
	return apiWritesOf(b, cfg, "azureassignedidentities")
}

// apiWritesOf is apiWrites for any resource (plural, as the API server's metrics name it).
func apiWritesOf(b *testing.B, cfg *rest.Config, resource string) (int, map[string]int) {
	b.Helper()
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		b.Fatal(err)
	}
	resp, err := hc.Get(strings.TrimRight(cfg.Host, "/") + "/metrics")
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		b.Fatal(err)
	}
	n, byVerb := 0, map[string]int{}
	for _, line := range strings.Split(string(body), "\n") {
		if !strings.HasPrefix(line, "apiserver_request_total{") || !strings.Contains(line, `resource="`+resource+`"`) {
			continue
		}
		for _, verb := range []string{"POST", "PUT", "PATCH", "DELETE"} {
			if strings.Contains(line, `verb="`+verb+`"`) {
				v, err := strconv.ParseFloat(line[strings.LastIndex(line, " ")+1:], 64)
				if err != nil {
					b.Fatalf("metrics line %q: %v", line, err)
				}
				n += int(v)
				code := line[strings.Index(line, `code="`)+6:]
				byVerb[verb+" "+code[:strings.Index(code, `"`)]] += int(v)
			}
		}
	}
	return n, byVerb
}

// watchAllAssigned watches AzureAssignedIdentity objects and sends the time at which n of them are first
// Assigned. A watch costs the API server one event per write; polling with a list of 2,000 objects every
// second would cost it (and the 2 shared cores) far more, and tell the time only to the second.
func watchAllAssigned(b *testing.B, cfg *rest.Config, n int) <-chan time.Time {
	b.Helper()
	wc, err := client.NewWithWatch(cfg, client.Options{Scheme: testenv.Scheme()})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)
	done := make(chan time.Time, 1)
	go func() {
		status := map[string]string{}
		assigned := 0
		set := func(k, st string) {
			if status[k] == aadv1.AssignedIDAssigned {
				assigned--
			}
			if st == aadv1.AssignedIDAssigned {
				assigned++
			}
			if st == "" {
				delete(status, k)
			} else {
				status[k] = st
			}
		}
		for ctx.Err() == nil {
			var l aadv1.AzureAssignedIdentityList
			if err := wc.List(ctx, &l); err != nil {
				time.Sleep(100 * time.Millisecond)
				continue
			}
			for _, a := range l.Items {
				set(a.Namespace+"/"+a.Name, a.Status.Status)
			}
			if assigned >= n { // all there by the time a broken watch was re-established
				done <- time.Now()
				return
			}
			w, err := wc.Watch(ctx, &aadv1.AzureAssignedIdentityList{}, &client.ListOptions{Raw: &metav1.ListOptions{ResourceVersion: l.ResourceVersion}})
			if err != nil {
				// Not straight back to a list of every object: at 150,000 objects a list that repeats at once
				// is gigabytes of garbage a second.
				time.Sleep(100 * time.Millisecond)
				continue
			}
			for ev := range w.ResultChan() {
				a, ok := ev.Object.(*aadv1.AzureAssignedIdentity)
				if !ok {
					continue
				}
				if ev.Type == watch.Deleted {
					set(a.Namespace+"/"+a.Name, "")
				} else {
					set(a.Namespace+"/"+a.Name, a.Status.Status)
				}
				if assigned >= n {
					done <- time.Now()
					w.Stop()
					return
				}
			}
		}
	}()
	return done
}

func allAssigned(c client.Client) error {
	var l aadv1.AzureAssignedIdentityList
	if err := c.List(context.Background(), &l); err != nil {
		return err
	}
	n := 0
	for _, a := range l.Items {
		if a.Status.Status == aadv1.AssignedIDAssigned {
			n++
		}
	}
	if n != scalePods {
		return fmt.Errorf("%d of %d assigned", n, scalePods)
	}
	return nil
}

// BenchmarkScale is the load harness of BENCHMARKS.md: 2,000 pods on 200 nodes in 20 scale sets bound to 50
// identities, every scale-set PATCH taking ASSIGNER_SCALE_PATCH_LATENCY (default 30s, not time-scaled).
// The assigner starts on the populated cluster (first install, upgrade, failover); the benchmark reports
// the ARM writes and time of its initial convergence, the API server's count of AzureAssignedIdentity
// writes, and the ARM writes of a quiet resync (a second assigner re-reading everything). Sub-benchmarks
// compare the two ways of writing the objects (objectModes). Run:
//
//	go test ./assigner/controller/ -run '^$' -bench 'BenchmarkScale$' -benchtime 1x -timeout 30m
func BenchmarkScale(b *testing.B) {
	latency := scaleLatency(b)
	for _, mode := range objectModes {
		b.Run("objects="+mode.name, func(b *testing.B) {
			for range b.N {
				benchmarkScaleOnce(b, latency, mode.pendingObjectsAfter)
			}
		})
	}
}

func benchmarkScaleOnce(b *testing.B, latency, pendingObjectsAfter time.Duration) {
	b.StopTimer()
	env, srv, armc, nodes := scaleWorld(b, latency)
	c := env.Client
	created := time.Now()
	scalePodsCreate(b, c, nodes)
	b.Logf("created %d pods in %v", scalePods, time.Since(created).Round(time.Millisecond))
	load, _ := os.ReadFile("/proc/loadavg")

	want := wantedPerScaleSet(nodes)
	writesBefore, byVerbBefore := apiWrites(b, env.Config)
	allAssigned := watchAllAssigned(b, env.Config, scalePods)
	opts := scaleOptions()
	opts.PendingObjectsAfter = pendingObjectsAfter
	start := time.Now()
	b.StartTimer()
	// With the pod audit, as the binary runs (its default 5 s between passes that changes start): each
	// pass reads the 2,000 pods from the cache on the same 2 cores.
	_, stop := startAssignerAndAudit(b, env, armc, opts, 0)
	// When the last of the 20 PATCHes reached ARM: the assigner's start-up (cache sync, ledger, reads) apart
	// from ARM's latency and the objects. Polled in memory every 5 ms.
	patchesSent := make(chan time.Duration, 1)
	go func() {
		for srv.Counts().Writes < scaleSets {
			time.Sleep(5 * time.Millisecond)
		}
		patchesSent <- time.Since(start)
	}()
	// Azure side: every scale set holds its identities (the emulator is polled in memory, cheaply).
	eventuallyEvery(b, 10*time.Minute, 100*time.Millisecond, "identities attached", func() error { return attachedAll(srv, want) })
	azureDone := time.Since(start)
	var converged time.Duration
	select {
	case at := <-allAssigned:
		converged = at.Sub(start)
	case <-time.After(10 * time.Minute):
		b.Fatalf("not all %d AzureAssignedIdentity objects Assigned after 10 minutes", scalePods)
	}
	b.StopTimer()
	sent := <-patchesSent
	initial := srv.Counts()
	time.Sleep(time.Second) // writes still in flight when the last object turned Assigned, if any
	writesAfter, byVerb := apiWrites(b, env.Config)
	objectWrites := writesAfter - writesBefore
	for k, v := range byVerbBefore {
		byVerb[k] -= v
	}

	// Quiet resync: a fresh assigner (restart, failover) reads every scale set and must write nothing.
	stop()
	stop2 := startAssigner(b, env, armc, opts)
	eventually(b, 2*time.Minute, "resync reads", func() error {
		if got := srv.Counts().Reads - initial.Reads; got < scaleSets {
			return fmt.Errorf("%d reads", got)
		}
		return nil
	})
	time.Sleep(2 * time.Second)
	resync := srv.Counts()
	stop2()
	baseline := createCopiesOfAssigned(b, env, "baseline-")
	// The same creates with no client-side limit: the API server's own write rate on this machine, which
	// tells the client's limit apart from the server's.
	unlimited := *env
	unlimited.Config = rest.CopyConfig(env.Config)
	unlimited.Config.QPS = -1
	uc, err := client.New(unlimited.Config, client.Options{Scheme: env.Scheme})
	if err != nil {
		b.Fatal(err)
	}
	unlimited.Client = uc
	serverOnly := createCopiesOfAssigned(b, &unlimited, "unlimited-")
	afterAttach := converged - azureDone
	b.ReportMetric(float64(initial.Writes), "arm-writes-initial")
	b.ReportMetric(baseline.Seconds(), "baseline-creates-s")
	b.ReportMetric(serverOnly.Seconds(), "unlimited-creates-s")
	b.ReportMetric(afterAttach.Seconds(), "after-attach-s")
	b.ReportMetric(afterAttach.Seconds()/baseline.Seconds(), "after-attach/baseline")
	b.ReportMetric(azureDone.Seconds(), "azure-attached-s")
	b.ReportMetric(sent.Seconds(), "patches-sent-s")
	b.ReportMetric(converged.Seconds(), "convergence-s")
	b.ReportMetric(float64(objectWrites), "k8s-object-writes")
	b.ReportMetric(float64(resync.Writes-initial.Writes), "arm-writes-resync")
	b.Logf("PATCH latency %v, load average at start %s: all %d PATCHes sent after %v; identities attached in Azure after %v; all AzureAssignedIdentity objects Assigned after %v with %d ARM writes, %d reads, %d polls and %d API server writes of AzureAssignedIdentity objects (by verb and code: %v); quiet resync: %d ARM writes, %d reads; after the identities were attached, the objects took %v, and the same creates issued alone by a plain client in the same run %v (%.2fx) with the assigner's client-side limit (%v QPS, burst %d), %v with none",
		latency, strings.TrimSpace(string(load)), scaleSets, sent.Round(time.Millisecond), azureDone.Round(10*time.Millisecond), converged.Round(10*time.Millisecond), initial.Writes, initial.Reads, initial.Polls, objectWrites, byVerb, resync.Writes-initial.Writes, resync.Reads-initial.Reads,
		afterAttach.Round(10*time.Millisecond), baseline.Round(10*time.Millisecond), afterAttach.Seconds()/baseline.Seconds(),
		env.Config.QPS, env.Config.Burst, serverOnly.Round(10*time.Millisecond))
}

// createCopiesOfAssigned is the baseline of the objects' part of the convergence: it creates a copy of every
// AzureAssignedIdentity the assigner wrote (named prefix + its name), in final state, from a plain client with
// env's client-side rate limit and one writer per scale set, and returns how long that took. With the
// assigner's limit, what the assigner needs beyond it after the identities are attached is its own overhead;
// with no limit, it is the API server's write rate on this machine.
func createCopiesOfAssigned(b *testing.B, env *testenv.Env, prefix string) time.Duration {
	b.Helper()
	ctx := context.Background()
	var l aadv1.AzureAssignedIdentityList
	if err := env.Client.List(ctx, &l); err != nil {
		b.Fatal(err)
	}
	copies := make(chan aadv1.AzureAssignedIdentity, len(l.Items))
	n := 0
	for _, o := range l.Items {
		if !slices.Contains(o.Finalizers, Finalizer) {
			continue // an earlier baseline's copy: only the assigner's own objects carry its finalizer
		}
		o.ObjectMeta = metav1.ObjectMeta{Name: prefix + o.Name, Namespace: o.Namespace, Labels: o.Labels}
		copies <- o
		n++
	}
	close(copies)
	start := time.Now()
	errs := make(chan error, scaleSets)
	for range scaleSets {
		go func() {
			for o := range copies {
				if err := env.Client.Create(ctx, &o); err != nil {
					errs <- fmt.Errorf("baseline create %s/%s: %w", o.Namespace, o.Name, err)
					return
				}
			}
			errs <- nil
		}()
	}
	for range scaleSets {
		if err := <-errs; err != nil {
			b.Fatal(err)
		}
	}
	took := time.Since(start)
	if n != scalePods {
		b.Fatalf("baseline: %d AzureAssignedIdentity objects to copy, want %d", n, scalePods)
	}
	return took
}

// BenchmarkScaleStreaming: the same cluster, but the 2,000 pods are created while the assigner runs (a
// deployment rollout). Reports ARM writes and the time from the last pod's creation to convergence.
func BenchmarkScaleStreaming(b *testing.B) {
	latency := scaleLatency(b)
	for range b.N {
		env, srv, armc, nodes := scaleWorld(b, latency)
		c := env.Client
		startAssigner(b, env, armc, scaleOptions())
		time.Sleep(2 * time.Second) // caches synced, nothing to do yet
		start := time.Now()
		b.ResetTimer()
		scalePodsCreate(b, c, nodes)
		lastPod := time.Now()
		eventuallyEvery(b, 10*time.Minute, time.Second, "convergence", func() error { return allAssigned(c) })
		b.StopTimer()
		counts := srv.Counts()
		b.ReportMetric(float64(counts.Writes), "arm-writes")
		b.ReportMetric(time.Since(start).Seconds(), "convergence-s")
		b.ReportMetric(time.Since(lastPod).Seconds(), "after-last-pod-s")
		b.Logf("PATCH latency %v: pods created over %v; converged %v after the first pod, %v after the last, with %d ARM writes",
			latency, lastPod.Sub(start).Round(10*time.Millisecond), time.Since(start).Round(10*time.Millisecond), time.Since(lastPod).Round(10*time.Millisecond), counts.Writes)
	}
}
