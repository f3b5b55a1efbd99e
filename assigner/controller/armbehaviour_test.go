package controller

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/assigner/desired"
	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/test/emulators/arm"
	"github.com/podidentity/podidentity/test/toolbox/testenv"
)

// The assigner under ARM's real behaviour, each case of issue 23 against the emulator: a deleted identity
// that someone else attached, another client's long operation, the removal of more identities than fit in
// one PATCH, errors that are not about one identity, and the delete and re-create of an AzureIdentity. The
// counts they log are those of BENCHMARKS.md, "Assigner", "ARM's behaviour".

// identityEvents returns the notes of the Warning Events with this reason regarding the AzureIdentity.
func identityEvents(c client.Client, ns, name, reason string) ([]string, error) {
	var l eventsv1.EventList
	if err := c.List(context.Background(), &l, client.InNamespace(ns)); err != nil {
		return nil, err
	}
	var out []string
	for _, e := range l.Items {
		if e.Regarding.Kind == "AzureIdentity" && e.Regarding.Name == name && e.Reason == reason && e.Type == corev1.EventTypeWarning {
			out = append(out, e.Note)
		}
	}
	return out, nil
}

// hasIdentityEvent checks that the AzureIdentity has a Warning Event with the reason whose note contains
// every fragment.
func hasIdentityEvent(c client.Client, ns, name, reason string, fragments ...string) error {
	notes, err := identityEvents(c, ns, name, reason)
	if err != nil {
		return err
	}
	for _, n := range notes {
		all := true
		for _, f := range fragments {
			all = all && strings.Contains(n, f)
		}
		if all {
			return nil
		}
	}
	return fmt.Errorf("no %s Event on AzureIdentity %s/%s saying %q (notes: %q)", reason, ns, name, fragments, notes)
}

// assignmentReason returns the status and the two reason annotations of an AzureAssignedIdentity.
func assignmentReason(c client.Client, ns, name string) (status, reason, message string, err error) {
	var a aadv1.AzureAssignedIdentity
	if err := c.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, &a); err != nil {
		return "", "", "", err
	}
	return a.Status.Status, a.Annotations[desired.ReasonAnnotation], a.Annotations[desired.ErrorAnnotation], nil
}

// expectReason checks an AzureAssignedIdentity's status, reason annotation and that its message says each
// fragment.
func expectReason(c client.Client, ns, name, status, reason string, fragments ...string) error {
	st, r, msg, err := assignmentReason(c, ns, name)
	if err != nil {
		return err
	}
	if st != status || r != reason {
		return fmt.Errorf("%s/%s: status %q reason %q (%q), want %q %q", ns, name, st, r, msg, status, reason)
	}
	for _, f := range fragments {
		if !strings.Contains(msg, f) {
			return fmt.Errorf("%s/%s: message %q does not say %q", ns, name, msg, f)
		}
	}
	return nil
}

func refusedWrites(log []arm.Write) int {
	n := 0
	for _, w := range log {
		if w.Status >= 400 {
			n++
		}
	}
	return n
}

// TestRefusedAttachedIdentity (issue 23, case 1): someone else attached identity "dead" to the scale set and
// then deleted it in Azure; a pod still uses it, and another pod needs a new identity. ARM refuses every
// PATCH that leaves "dead" attached. The assigner detaches it in the PATCH that attaches the new identity
// (one refused write, one accepted), the first pod's AzureAssignedIdentity says why it has no token (status
// Created, reason IdentityNotFound, what to do), Warning Events on that pod and on the AzureIdentity say it
// too, the gauge counts it, and the deleted identity is then tried once per isolation TTL, never in a storm.
// Once re-created in Azure, it is attached and the reason goes.
func TestRefusedAttachedIdentity(t *testing.T) {
	env := startEnv(t)
	c := env.Client
	srv := arm.New(t, arm.Options{Latency: 20 * time.Millisecond})
	ss := ssID("pool")
	srv.AddVMSS(ss, false, uami("dead"), uami("kubelet")) // both attached by someone else
	srv.DeleteIdentity(uami("dead"))
	mkNode(t, c, "n0", instanceOf(ss, 0))
	mkNamespace(t, c, "apps")
	mkIdentity(t, c, "apps", "dead", uami("dead"))
	mkIdentity(t, c, "apps", "new", uami("new"))
	mkBinding(t, c, "apps", "dead", "dead", "uses-dead")
	mkBinding(t, c, "apps", "new", "new", "uses-new")
	opts := testOptions()
	opts.IsolationTTL = time.Second // 5 min in production: the retries below are one per TTL either way
	reg := prometheus.NewRegistry()
	opts.Registerer = reg
	startAssigner(t, env, armClient(srv), opts)
	mkPod(t, c, "apps", "p-dead", "n0", "uses-dead", nil)
	mkPod(t, c, "apps", "p-new", "n0", "uses-new", nil)

	eventually(t, 15*time.Second, "new identity attached, deleted one detached, the reason shown", func() error {
		for _, err := range []error{
			azureHas(srv, ss, false, uami("kubelet"), uami("new")),
			expectReason(c, "apps", "p-new-apps-new", aadv1.AssignedIDAssigned, ""),
			expectReason(c, "apps", "p-dead-apps-dead", aadv1.AssignedIDCreated, ReasonIdentityNotFound, "FailedIdentityOperation", "recreate it or fix spec.resourceID"),
			hasPodEvent(c, "apps", "p-dead", ReasonIdentityNotFound, uami("dead"), "no token", "FailedIdentityOperation"),
			hasIdentityEvent(c, "apps", "dead", ReasonIdentityNotFound, "could not be attached to", "FailedIdentityOperation"),
			hasIdentityEvent(c, "apps", "dead", ReasonIdentityNotFound, "deleted in Azure but still attached", "detaches it"),
			expectSeries(t, reg, "podidentity_assigner_unattached_assignments", unattached(map[string]float64{ReasonIdentityNotFound: 1})),
		} {
			if err != nil {
				return err
			}
		}
		return nil
	})
	log := srv.WriteLog(ss)
	if len(log) < 2 || log[0].Code != arm.CodeFailedIdentityOperation || log[1].Status != 200 {
		t.Fatalf("writes %+v: want the refusal, then the PATCH that detaches the deleted identity and attaches the new one", log)
	}
	first := len(log)
	// Over 4 isolation TTLs, the deleted identity (still wanted by p-dead) is tried once per TTL: each try
	// is one refused write, and nothing else is sent.
	window := 4 * opts.IsolationTTL
	time.Sleep(window)
	later := srv.WriteLog(ss)[first:]
	for _, w := range later {
		if w.Code != arm.CodeFailedIdentityOperation {
			t.Fatalf("unexpected write while the identity is deleted: %+v", w)
		}
	}
	if max := int(window/opts.IsolationTTL) + 1; len(later) > max {
		t.Fatalf("%d refused writes in %v, want at most one per isolation TTL (%d)", len(later), window, max)
	}
	t.Logf("deleted identity attached by someone else: %d writes to converge (%d refused); then %d refused writes in %v (isolation TTL %v)",
		first, refusedWrites(log[:first]), len(later), window, opts.IsolationTTL)

	// Re-created in Azure: attached on the next try, and the reason goes.
	srv.DenyIdentity(uami("dead"), "")
	eventually(t, 15*time.Second, "re-created identity attached", func() error {
		for _, err := range []error{
			azureHas(srv, ss, false, uami("kubelet"), uami("new"), uami("dead")),
			expectReason(c, "apps", "p-dead-apps-dead", aadv1.AssignedIDAssigned, ""),
			expectSeries(t, reg, "podidentity_assigner_unattached_assignments", unattached(nil)),
		} {
			if err != nil {
				return err
			}
		}
		return nil
	})
}

// unattached is the gauge's expected series: every reason, 0 unless given.
func unattached(counts map[string]float64) map[string]float64 {
	out := map[string]float64{}
	for _, r := range reasons() {
		out["reason="+r] = counts[r]
	}
	return out
}

// TestForeignOperation (issue 23, case 2): another client's 16-minute operation (an AKS upgrade) runs on the
// scale set while pods come and go, one of them needing a new identity; the assigner is then restarted
// during a second such operation. Time is compressed 60 times (1 s of the test is a minute): the
// operations last 16 s, and every delay of the assigner is divided by 60 (busy backoff 10 s -> 167 ms, at
// most 2 min -> 2 s; backoff 1 s -> 17 ms, at most 5 min -> 5 s; resync 10 min -> 10 s). At most one
// write reaches the scale set during each operation (the PATCH sent before anything said it was busy), the
// pending AzureAssignedIdentity says ResourceBusy meanwhile, and the identity is attached within the
// (compressed) 2 minutes after the operation ends.
func TestForeignOperation(t *testing.T) {
	const scale = 60
	compressed := func(d time.Duration) time.Duration { return d / scale }
	env := startEnv(t)
	c := env.Client
	srv := arm.New(t, arm.Options{Latency: 20 * time.Millisecond})
	ss := ssID("pool")
	srv.AddVMSS(ss, false, uami("kubelet"))
	mkNode(t, c, "n0", instanceOf(ss, 0))
	mkNode(t, c, "n1", instanceOf(ss, 1))
	mkNamespace(t, c, "apps")
	for _, n := range []string{"a", "b", "c"} {
		mkIdentity(t, c, "apps", n, uami(n))
		mkBinding(t, c, "apps", n, n, "uses-"+n)
	}
	opts := testOptions()
	opts.BusyBackoff, opts.BusyMaxBackoff = compressed(10*time.Second), compressed(2*time.Minute)
	opts.BaseBackoff, opts.MaxBackoff = compressed(time.Second), compressed(5*time.Minute)
	opts.Resync, opts.IsolationTTL = compressed(10*time.Minute), compressed(5*time.Minute)
	stop := startAssigner(t, env, armClient(srv), opts)
	mkPod(t, c, "apps", "p0", "n0", "uses-a", nil)
	eventually(t, 10*time.Second, "a attached", func() error { return azureHas(srv, ss, false, uami("kubelet"), uami("a")) })

	opLen := compressed(16 * time.Minute)
	// run starts the operation, calls during() once it runs, creates a pod every (compressed) 30 s while it
	// runs, and returns the writes the scale set received during it and when it ended.
	churn := 0
	run := func(during func()) (int, time.Time) {
		before := srv.WritesTo(ss)
		srv.StartOperation(ss, opLen)
		end := time.Now().Add(opLen)
		during()
		for tick := time.NewTicker(compressed(30 * time.Second)); time.Now().Before(end.Add(-compressed(30 * time.Second))); <-tick.C {
			churn++ // pods rescheduled by the upgrade: each is an event for the scale set
			node := []string{"n0", "n1"}[churn%2]
			mkPod(t, c, "apps", fmt.Sprintf("churn-%d", churn), node, "uses-a", nil)
		}
		for srv.Busy(ss) {
			time.Sleep(5 * time.Millisecond)
		}
		return srv.WritesTo(ss) - before, time.Now()
	}

	writes, ended := run(func() {
		mkPod(t, c, "apps", "p1", "n1", "uses-b", nil)
		eventually(t, 5*time.Second, "the pending assignment, the pod and the AzureIdentity say the scale set is busy", func() error {
			if err := expectReason(c, "apps", "p1-apps-b", aadv1.AssignedIDCreated, ReasonResourceBusy, "another operation is running on", "2s"); err != nil {
				return err
			}
			if err := hasPodEvent(c, "apps", "p1", ReasonResourceBusy, uami("b"), "another operation is running on"); err != nil {
				return err
			}
			return hasIdentityEvent(c, "apps", "b", ReasonResourceBusy, ss)
		})
	})
	eventually(t, 10*time.Second, "b attached after the operation", func() error { return azureHas(srv, ss, false, uami("kubelet"), uami("a"), uami("b")) })
	late := time.Since(ended)
	if writes > 1 {
		t.Errorf("%d ARM writes during the 16-minute (compressed) operation, want at most 1", writes)
	}
	if late > compressed(2*time.Minute)+time.Second {
		t.Errorf("b attached %v after the operation ended, want within %v (2 min compressed) and a second of slack", late, compressed(2*time.Minute))
	}
	t.Logf("16-minute foreign operation (compressed %dx), %d pods created during it: %d ARM writes during it (log %+v); identity attached %v (= %v uncompressed) after it ended",
		scale, churn, writes, srv.WriteLog(ss), late.Round(time.Millisecond), (late * scale).Round(time.Second))

	// Restarted during a second operation: the new assigner reads the scale set, sees it Updating and writes
	// nothing until it ends.
	stop()
	churn0 := churn
	writes, ended = run(func() {
		mkPod(t, c, "apps", "p2", "n0", "uses-c", nil)
		time.Sleep(compressed(2 * time.Minute))
		startAssigner(t, env, armClient(srv), opts)
	})
	eventually(t, 10*time.Second, "c attached after the operation", func() error {
		return azureHas(srv, ss, false, uami("kubelet"), uami("a"), uami("b"), uami("c"))
	})
	late = time.Since(ended)
	if writes != 0 {
		t.Errorf("%d ARM writes during the operation by an assigner restarted during it, want 0", writes)
	}
	t.Logf("restarted 2 min into a 16-minute operation (compressed %dx), %d pods created during it: %d ARM writes during it; identity attached %v (= %v uncompressed) after it ended",
		scale, churn-churn0, writes, late.Round(time.Millisecond), (late * scale).Round(time.Second))
}

// TestRemoveManyIdentities (issue 23, case 3): 160 identities attached by the assigner (two PATCHes of 150
// and 10) are all removed when their pods go: two PATCHes, the second (which drops the type to
// SystemAssigned) guarded with the etag ARM gave after the first; no refused write.
func TestRemoveManyIdentities(t *testing.T) {
	env := startEnv(t)
	c := env.Client
	srv := arm.New(t, arm.Options{Latency: 20 * time.Millisecond})
	ss := ssID("pool")
	srv.AddVMSS(ss, true)
	mkNode(t, c, "n0", instanceOf(ss, 0))
	mkNamespace(t, c, "apps")
	const n = 160
	var all []string
	for i := range n {
		name := fmt.Sprintf("id%03d", i)
		all = append(all, uami(name))
		mkIdentity(t, c, "apps", name, uami(name))
		mkBinding(t, c, "apps", name, name, "sel-"+name)
	}
	for i := range n {
		name := fmt.Sprintf("id%03d", i)
		mkPod(t, c, "apps", "p-"+name, "n0", "sel-"+name, nil)
	}
	stop := startAssigner(t, env, armClient(srv), testOptions())
	eventually(t, 60*time.Second, "160 identities attached", func() error { return azureHas(srv, ss, true, all...) })
	attachWrites := srv.WritesTo(ss)
	// All pods go while the assigner is stopped, so that one pass removes all 160 (a running assigner
	// would remove them as the deletions arrive).
	stop()
	for i := range n {
		deletePod(t, c, "apps", fmt.Sprintf("p-id%03d", i))
	}
	startAssigner(t, env, armClient(srv), testOptions())
	eventually(t, 60*time.Second, "160 identities removed", func() error { return azureHas(srv, ss, true) })
	log := srv.WriteLog(ss)
	removal := log[attachWrites:]
	if refused := refusedWrites(log); refused != 0 {
		t.Errorf("%d refused writes: %+v", refused, log)
	}
	if len(removal) != 2 || removal[0].IfMatch != "" || removal[1].IfMatch == "" {
		t.Errorf("removal writes %+v: want two, the second (the type change) with If-Match", removal)
	}
	t.Logf("160 identities: attached with %d writes, removed with %d writes (If-Match on the last: %q), %d refused in all",
		attachWrites, len(removal), removal[len(removal)-1].IfMatch, refusedWrites(log))
}

// TestResourceErrorsAreShown (issue 23, case 4): errors that are not about one identity show where a user
// looks: the AzureAssignedIdentity (status Created, reason and message annotations), a Warning Event on the
// pod and on the AzureIdentity, and the gauge by reason. A missing role on the node resource group
// (AuthorizationFailed), a scale set ARM does not know, and a subscription whose writes are throttled (its
// scale sets then write one per Retry-After, and all end up attached).
func TestResourceErrorsAreShown(t *testing.T) {
	env := startEnv(t)
	c := env.Client
	// Writes to subscription "busy" are throttled: 3 at once, then one every 2 s.
	srv := arm.New(t, arm.Options{Latency: 20 * time.Millisecond, SubscriptionWrites: arm.Bucket{Size: 3, Refill: 0.5, Subscriptions: []string{"busy"}}})
	denied := "/subscriptions/sub/resourceGroups/MC_denied/providers/Microsoft.Compute/virtualMachineScaleSets/pool"
	unknown := ssID("unknown") // no such scale set in ARM
	srv.AddVMSS(denied, false)
	srv.DenyWrites("/subscriptions/sub/resourceGroups/MC_denied", true)
	mkNode(t, c, "denied-0", instanceOf(denied, 0))
	mkNode(t, c, "unknown-0", instanceOf(unknown, 0))
	var throttled []string
	for i := range 6 {
		id := fmt.Sprintf("/subscriptions/busy/resourceGroups/MC_rg/providers/Microsoft.Compute/virtualMachineScaleSets/pool%d", i)
		throttled = append(throttled, id)
		srv.AddVMSS(id, false)
		mkNode(t, c, fmt.Sprintf("busy-%d", i), instanceOf(id, 0))
	}
	mkNamespace(t, c, "apps")
	mkIdentity(t, c, "apps", "a", uami("a"))
	mkBinding(t, c, "apps", "a", "a", "app")
	opts := testOptions()
	opts.Registerer = prometheus.NewRegistry()
	reg := opts.Registerer.(*prometheus.Registry)
	startAssigner(t, env, armClient(srv), opts)
	mkPod(t, c, "apps", "on-denied", "denied-0", "app", nil)
	mkPod(t, c, "apps", "on-unknown", "unknown-0", "app", nil)
	for i := range throttled {
		mkPod(t, c, "apps", fmt.Sprintf("on-busy-%d", i), fmt.Sprintf("busy-%d", i), "app", nil)
	}

	throttledSeen := false
	eventually(t, 30*time.Second, "each error shown; the throttled scale sets all attached in the end", func() error {
		for i := range throttled {
			if expectReason(c, "apps", fmt.Sprintf("on-busy-%d-apps-a", i), aadv1.AssignedIDCreated, ReasonThrottled, "subscription busy", "Retry-After") == nil {
				throttledSeen = true
			}
		}
		for _, err := range []error{
			expectReason(c, "apps", "on-denied-apps-a", aadv1.AssignedIDCreated, ReasonResourceNotAuthorized, "Virtual Machine Contributor", "resource group MC_denied"),
			hasPodEvent(c, "apps", "on-denied", ReasonResourceNotAuthorized, "Virtual Machine Contributor"),
			hasIdentityEvent(c, "apps", "a", ReasonResourceNotAuthorized, denied, "Virtual Machine Contributor"),
			expectReason(c, "apps", "on-unknown-apps-a", aadv1.AssignedIDCreated, ReasonResourceNotFound, "does not exist in ARM", "spec.providerID"),
			hasPodEvent(c, "apps", "on-unknown", ReasonResourceNotFound, "does not exist in ARM"),
			hasIdentityEvent(c, "apps", "a", ReasonResourceNotFound, unknown),
		} {
			if err != nil {
				return err
			}
		}
		for i, id := range throttled {
			if err := azureHas(srv, id, false, uami("a")); err != nil {
				return err
			}
			if err := expectReason(c, "apps", fmt.Sprintf("on-busy-%d-apps-a", i), aadv1.AssignedIDAssigned, ""); err != nil {
				return err
			}
		}
		if err := expectSeries(t, reg, "podidentity_assigner_unattached_assignments",
			unattached(map[string]float64{ReasonResourceNotAuthorized: 1, ReasonResourceNotFound: 1})); err != nil {
			return err
		}
		return expectSeries(t, reg, "podidentity_assigner_resources_waiting",
			unattached(map[string]float64{ReasonResourceNotAuthorized: 1, ReasonResourceNotFound: 1}))
	})
	counts := srv.Counts()
	busyRefused := 0
	for _, id := range throttled {
		busyRefused += refusedWrites(srv.WriteLog(id))
	}
	// 6 scale sets write at once against a bucket of 3: 3 are refused (they were in flight together); after
	// that, turns one per Retry-After (2 s, the refill) get each write through.
	if busyRefused > 3+1 {
		t.Errorf("%d writes to the throttled subscription refused, want at most 4 (the 3 in flight when the bucket ran out, and one)", busyRefused)
	}
	if !throttledSeen {
		t.Error("no assignment on the throttled subscription was seen with reason Throttled while it waited")
	}
	t.Logf("throttled subscription (bucket 3, one more every 2 s), 6 scale sets: %d writes to it refused with 429, all attached; whole emulator: %+v", busyRefused, counts)
}

// TestDeleteAndRecreateIdentity (issue 23, case 5): a running pod's AzureIdentity is deleted and re-created
// (a GitOps prune, kubectl replace) within the grace period: its identity never leaves the scale set, so the
// pod's tokens never stop (measured as: every identity change ARM applied still had it). Deleted for good,
// it is detached once the grace period is over. With no grace period (0), the same delete and re-create
// detaches and re-attaches it: the outage the grace period removes, and what shows that the measure can fail.
func TestDeleteAndRecreateIdentity(t *testing.T) {
	env := startEnv(t)
	c := env.Client
	ctx := context.Background()
	var mu sync.Mutex
	var changes []string // every identity set ARM applied to the scale set, in order
	srv := arm.New(t, arm.Options{Latency: 20 * time.Millisecond, OnChange: func(id string, users []string) {
		mu.Lock()
		defer mu.Unlock()
		changes = append(changes, strings.Join(users, ","))
	}})
	ss := ssID("pool")
	srv.AddVMSS(ss, false, uami("kubelet"))
	mkNode(t, c, "n0", instanceOf(ss, 0))
	mkNamespace(t, c, "apps")
	mkIdentity(t, c, "apps", "a", uami("a"))
	mkBinding(t, c, "apps", "a", "a", "app")
	// leftSince reports whether an applied change since the i-th lacked a's identity.
	leftSince := func(i int) (bool, int) {
		mu.Lock()
		defer mu.Unlock()
		for _, ch := range changes[i:] {
			if !strings.Contains(ch, uami("a")) {
				return true, len(changes)
			}
		}
		return false, len(changes)
	}
	recreate := func() {
		id := &aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "a"}}
		if err := c.Delete(ctx, id); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second) // the prune and the apply of a GitOps sync, a second apart
		mkIdentity(t, c, "apps", "a", uami("a"))
	}
	for _, tc := range []struct {
		name  string
		grace time.Duration
	}{{"grace 5s", 5 * time.Second}, {"no grace", -1}} {
		t.Run(tc.name, func(t *testing.T) {
			// Each case starts from identity a bound and no pod of another case: one that failed (and
			// left a deleted, or its pod running) must not fail the next.
			switch err := c.Get(ctx, client.ObjectKey{Namespace: "apps", Name: "a"}, &aadv1.AzureIdentity{}); {
			case apierrors.IsNotFound(err):
				mkIdentity(t, c, "apps", "a", uami("a"))
			case err != nil:
				t.Fatal(err)
			}
			opts := testOptions()
			opts.DetachGrace = tc.grace
			stop := startAssigner(t, env, armClient(srv), opts)
			defer stop()
			pod := "p-" + strings.ReplaceAll(tc.name, " ", "")
			mkPod(t, c, "apps", pod, "n0", "app", nil)
			defer deletePod(t, c, "apps", pod)
			eventually(t, 10*time.Second, "attached", func() error {
				if err := azureHas(srv, ss, false, uami("kubelet"), uami("a")); err != nil {
					return err
				}
				return expectReason(c, "apps", pod+"-apps-a", aadv1.AssignedIDAssigned, "")
			})
			_, mark := leftSince(0)
			writes := srv.WritesTo(ss)
			// The sidecar serves what the pod's identities annotation lists: every version of it the API
			// server held during the delete and re-create, from a watch (a poll could miss a short one).
			annotations := watchAnnotation(t, env, "apps", pod)
			recreate()
			eventually(t, 10*time.Second, "assignment back to Assigned", func() error {
				if err := azureHas(srv, ss, false, uami("kubelet"), uami("a")); err != nil {
					return err
				}
				return expectReason(c, "apps", pod+"-apps-a", aadv1.AssignedIDAssigned, "")
			})
			time.Sleep(500 * time.Millisecond) // for a late rewrite of the annotation to show
			left, _ := leftSince(mark)
			written := srv.WritesTo(ss) - writes
			versions := annotations()
			dropped := slices.ContainsFunc(versions, func(v string) bool { return !strings.Contains(v, uami("a")) })
			if tc.grace > 0 {
				if left || written != 0 {
					t.Fatalf("with a grace period the identity left the scale set (%v) or was written (%d writes): %q", left, written, changes[mark:])
				}
				if dropped {
					t.Fatalf("with a grace period the pod's identities annotation lost the identity, so its sidecar stopped serving it: %q", versions)
				}
				t.Logf("AzureIdentity deleted and re-created 1 s later, grace %v: the identity never left the scale set nor the pod's annotation (%d versions), %d ARM writes", tc.grace, len(versions), written)
				// Deleted for good: detached once the grace period is over, not before.
				if err := c.Delete(ctx, &aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "a"}}); err != nil {
					t.Fatal(err)
				}
				deleted := time.Now()
				eventually(t, tc.grace+10*time.Second, "detached after the grace period", func() error { return azureHas(srv, ss, false, uami("kubelet")) })
				if after := time.Since(deleted); after < tc.grace {
					t.Fatalf("detached %v after the deletion, before the grace period (%v) was over", after, tc.grace)
				}
				eventually(t, 10*time.Second, "the identity gone from the pod's annotation", func() error {
					var p corev1.Pod
					if err := c.Get(ctx, client.ObjectKey{Namespace: "apps", Name: pod}, &p); err != nil {
						return err
					}
					if v := p.Annotations[contract.IdentitiesAnnotation]; v != "[]" {
						return fmt.Errorf("annotation %s", v)
					}
					return nil
				})
				return
			}
			if !left || written != 2 {
				t.Fatalf("without a grace period the identity should have been detached and re-attached (2 writes): left %v, %d writes", left, written)
			}
			if !dropped {
				t.Fatalf("without a grace period the pod's identities annotation should have lost the identity for a while: %q", versions)
			}
			t.Logf("AzureIdentity deleted and re-created 1 s later, no grace: the identity left the scale set, %d ARM writes", written)
		})
	}
}

// watchAnnotation records every value of a pod's identities annotation from now until the test ends; the
// returned function gives the values seen so far.
func watchAnnotation(t *testing.T, env *testenv.Env, ns, name string) func() []string {
	t.Helper()
	cs, err := kubernetes.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	w, err := cs.CoreV1().Pods(ns).Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + name})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var seen []string
	go func() {
		for ev := range w.ResultChan() {
			if p, ok := ev.Object.(*corev1.Pod); ok {
				mu.Lock()
				seen = append(seen, p.Annotations[contract.IdentitiesAnnotation])
				mu.Unlock()
			}
		}
	}()
	return func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(seen)
	}
}
