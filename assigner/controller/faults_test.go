package controller

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/assigner/azure"
	"github.com/podidentity/podidentity/test/emulators/arm"
	"github.com/podidentity/podidentity/test/toolbox/testenv"
)

// TestHeadOfLine: a scale set whose PATCH takes minutes does not delay another scale set.
func TestHeadOfLine(t *testing.T) {
	env := startEnv(t)
	c := env.Client
	srv := arm.New(t, arm.Options{Latency: 20 * time.Millisecond})
	slow, fast := ssID("slow"), ssID("fast")
	srv.AddVMSS(slow, false)
	srv.AddVMSS(fast, false)
	srv.SetLatency(slow, 5*time.Minute)
	mkNode(t, c, "slow-0", instanceOf(slow, 0))
	mkNode(t, c, "fast-0", instanceOf(fast, 0))
	mkNamespace(t, c, "apps")
	mkIdentity(t, c, "apps", "a", uami("a"))
	mkBinding(t, c, "apps", "a", "a", "app")
	opts := testOptions()
	startAssigner(t, env, armClient(srv), opts)

	mkPod(t, c, "apps", "on-slow", "slow-0", "app", nil)
	eventually(t, 10*time.Second, "slow PATCH in flight", func() error {
		if !srv.Busy(slow) {
			return fmt.Errorf("no operation running on %s", slow)
		}
		return nil
	})
	start := time.Now()
	mkPod(t, c, "apps", "on-fast", "fast-0", "app", nil)
	eventually(t, 10*time.Second, "fast scale set assigned", func() error {
		st, err := assignedStates(c)
		if err != nil || st["apps/on-fast-apps-a"] != aadv1.AssignedIDAssigned {
			return fmt.Errorf("states %v (%w)", st, err)
		}
		return nil
	})
	elapsed := time.Since(start)
	if !srv.Busy(slow) {
		t.Fatal("the slow PATCH finished: the test proves nothing")
	}
	// The fast resource's own work: debounce + one 20 ms PATCH + polling; a second is the bound.
	if elapsed > time.Second+opts.Debounce {
		t.Fatalf("assignment on the fast scale set took %v while the slow one was patching", elapsed)
	}
	t.Logf("fast scale set assigned %v after its pod was created, while the slow scale set's PATCH ran", elapsed)
}

// TestFaultInjection: random ARM faults and an assigner restart mid-flight; in the end Azure holds exactly
// what pods need plus what others attached, and no AzureAssignedIdentity is left behind. Runs: 3 by
// default; ASSIGNER_FAULT_RUNS=100 (without -short) for the full campaign; ASSIGNER_FAULT_SEED picks the
// first seed (each run logs its seed so a failure can be replayed).
func TestFaultInjection(t *testing.T) {
	runs := 3
	if v := os.Getenv("ASSIGNER_FAULT_RUNS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("ASSIGNER_FAULT_RUNS=%q: want a positive number", v)
		}
		runs = n
	}
	first := uint64(1)
	if v := os.Getenv("ASSIGNER_FAULT_SEED"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("ASSIGNER_FAULT_SEED=%q: %v", v, err)
		}
		first = n
	}
	env := startEnv(t)
	for i := range runs {
		seed := first + uint64(i)
		if !t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) { faultRun(t, env, seed) }) {
			t.Logf("replay with ASSIGNER_FAULT_SEED=%d ASSIGNER_FAULT_RUNS=1", seed)
		}
	}
}

type faultWorld struct {
	resources []string            // ARM ids
	system    map[string]bool     // resource -> system-assigned at start
	foreign   map[string][]string // resource -> identities someone else attached
	nodes     map[string]string   // node -> resource id
	nodeNames []string
}

func faultRun(t *testing.T, env *testenv.Env, seed uint64) {
	c := env.Client
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	ctx := context.Background()
	srv := arm.New(t, arm.Options{PollAfter: 10 * time.Millisecond})
	tag := fmt.Sprintf("r%d", seed)
	w := faultWorld{system: map[string]bool{}, foreign: map[string][]string{}, nodes: map[string]string{}}
	for i := range 5 {
		var id string
		isVMSS := i < 3
		if isVMSS {
			id = fmt.Sprintf("/subscriptions/sub/resourceGroups/RG-%s/providers/Microsoft.Compute/virtualMachineScaleSets/ss%d", tag, i)
		} else {
			id = fmt.Sprintf("/subscriptions/sub/resourceGroups/RG-%s/providers/Microsoft.Compute/virtualMachines/vm%d", tag, i)
		}
		system := rng.IntN(2) == 0
		var foreign []string
		for f := range rng.IntN(3) {
			foreign = append(foreign, uami(fmt.Sprintf("foreign-%s-%d-%d", tag, i, f)))
		}
		if isVMSS {
			srv.AddVMSS(id, system, foreign...)
		} else {
			srv.AddVM(id, system, foreign...)
		}
		srv.SetLatency(id, time.Duration(rng.IntN(80))*time.Millisecond)
		w.resources = append(w.resources, id)
		w.system[id], w.foreign[id] = system, foreign
		count := 1
		if isVMSS {
			count = 2
		}
		for n := range count {
			name := fmt.Sprintf("%s-n%d-%d", tag, i, n)
			pid := "azure://" + id
			if isVMSS {
				pid = instanceOf(id, n)
			}
			mkNode(t, c, name, pid)
			w.nodes[name] = id
			w.nodeNames = append(w.nodeNames, name)
		}
	}
	ns := tag
	mkNamespace(t, c, ns)
	const nIdentities = 6
	for k := range nIdentities {
		mkIdentity(t, c, ns, fmt.Sprintf("id%d", k), uami(fmt.Sprintf("%s-id%d", tag, k)))
		// Selectors are per run: bindings match pods of every namespace (AAD Pod Identity's semantics).
		mkBinding(t, c, ns, fmt.Sprintf("b%d", k), fmt.Sprintf("id%d", k), fmt.Sprintf("%s-sel%d", tag, k))
	}
	faultRate := 0.15 + rng.Float64()*0.25
	var faultMu sync.Mutex
	faultRNG := rand.New(rand.NewPCG(seed, 0xfa17))
	srv.SetFaultFunc(func(method, _ string) *arm.Fault {
		faultMu.Lock()
		defer faultMu.Unlock()
		if faultRNG.Float64() >= faultRate {
			return nil
		}
		switch faultRNG.IntN(7) {
		case 0:
			return &arm.Fault{Status: http.StatusTooManyRequests, Code: arm.CodeTooManyRequests, RetryAfter: time.Duration(10+faultRNG.IntN(90)) * time.Millisecond}
		case 1:
			return &arm.Fault{Status: http.StatusConflict, Code: arm.CodeConflict}
		case 2:
			return &arm.Fault{Status: http.StatusInternalServerError}
		case 3:
			return &arm.Fault{Status: http.StatusServiceUnavailable}
		case 4:
			return &arm.Fault{Method: http.MethodPatch, Hang: true, Apply: faultRNG.IntN(2) == 0}
		case 5:
			return &arm.Fault{Method: http.MethodPatch, Async: true, Code: "InternalExecutionError", Message: "injected"}
		}
		return &arm.Fault{Hang: true}
	})
	denied := uami(fmt.Sprintf("%s-id%d", tag, rng.IntN(nIdentities)))
	srv.DenyIdentity(denied, arm.CodeLinkedAuthorizationFailed)

	faultyARM := azure.NewARM(arm.Credential{}, azure.ARMOptions{Cloud: srv.Cloud(), Transport: srv.HTTPClient(), PollFrequency: 10 * time.Millisecond,
		Retry: policy.RetryOptions{MaxRetries: 1, RetryDelay: 5 * time.Millisecond, MaxRetryDelay: 20 * time.Millisecond, TryTimeout: 250 * time.Millisecond}})
	opts := testOptions()
	opts.IsolationTTL = 200 * time.Millisecond
	opts.Resync = 2 * time.Second

	pods := map[string]string{} // name -> selector
	mkRandomPod := func(i int) {
		name := fmt.Sprintf("p%d", i)
		sel := fmt.Sprintf("%s-sel%d", tag, rng.IntN(nIdentities))
		mkPod(t, c, ns, name, w.nodeNames[rng.IntN(len(w.nodeNames))], sel, nil)
		pods[name] = sel
	}
	stopA := startAssigner(t, env, faultyARM, opts)
	for i := range 12 {
		mkRandomPod(i)
	}
	time.Sleep(time.Duration(200+rng.IntN(800)) * time.Millisecond)
	stopA() // mid-flight: PATCHes may be running, ledger half-written
	names := sortedKeys(pods)
	for _, name := range names[:rng.IntN(5)] {
		deletePod(t, c, ns, name)
		delete(pods, name)
	}
	for i := 12; i < 12+rng.IntN(5); i++ {
		mkRandomPod(i)
	}
	stopB := startAssigner(t, env, faultyARM, opts)
	time.Sleep(time.Duration(200+rng.IntN(1000)) * time.Millisecond)
	srv.SetFaultFunc(nil)
	srv.DenyIdentity(denied, "")

	check := func() error {
		var podList corev1.PodList
		if err := c.List(ctx, &podList, client.InNamespace(ns)); err != nil {
			return err
		}
		want := map[string]map[string]bool{}
		wantAssigned := map[string]string{}
		for _, p := range podList.Items {
			res := w.nodes[p.Spec.NodeName]
			k := strings.TrimPrefix(p.Labels[aadv1.PodLabelBinding], tag+"-sel")
			if want[res] == nil {
				want[res] = map[string]bool{}
			}
			want[res][uami(fmt.Sprintf("%s-id%s", tag, k))] = true
			wantAssigned[ns+"/"+p.Name+"-"+ns+"-id"+k] = aadv1.AssignedIDAssigned
		}
		for _, id := range w.resources {
			exp := append([]string(nil), w.foreign[id]...)
			exp = append(exp, sortedKeys(want[id])...)
			if err := azureHas(srv, id, w.system[id], exp...); err != nil {
				return err
			}
		}
		got, err := assignedStates(c)
		if err != nil {
			return err
		}
		for k := range got {
			if !strings.HasPrefix(k, ns+"/") {
				delete(got, k)
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(wantAssigned) {
			return fmt.Errorf("AzureAssignedIdentities %v, want %v", got, wantAssigned)
		}
		return nil
	}
	eventually(t, 30*time.Second, fmt.Sprintf("seed %d: converged after faults and a restart", seed), check)

	// Everything goes: only what others attached remains, and nothing of ours is left behind.
	for name := range pods {
		deletePod(t, c, ns, name)
	}
	eventually(t, 30*time.Second, fmt.Sprintf("seed %d: cleaned up", seed), check)
	eventually(t, 10*time.Second, "ledgers emptied", func() error {
		var cms corev1.ConfigMapList
		if err := c.List(ctx, &cms, client.InNamespace(ledgerNS), client.MatchingLabels{LedgerLabel: "true"}); err != nil {
			return err
		}
		for _, cm := range cms.Items {
			if strings.Contains(cm.Data["resource"], strings.ToLower(tag)) {
				return fmt.Errorf("ledger %s still lists %q", cm.Name, cm.Data["identities"])
			}
		}
		return nil
	})
	t.Logf("seed %d: fault rate %.2f, %+v", seed, faultRate, srv.Counts())
	stopB()
	for _, n := range w.nodeNames {
		_ = c.Delete(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n}})
	}
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
