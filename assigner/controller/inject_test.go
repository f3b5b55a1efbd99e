package controller

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/assigner/podaudit"
	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/test/emulators/arm"
	"github.com/podidentity/podidentity/test/toolbox/promtest"
)

// settle is how long a test waits before asserting that something did not happen: many times what the
// assigner takes to act on a change here (debounce 50 ms, an emulated PATCH of a few ms).
const settle = 1500 * time.Millisecond

// podEvents returns the Events with this reason regarding the pod.
func podEvents(c client.Client, ns, pod, reason string) ([]eventsv1.Event, error) {
	var l eventsv1.EventList
	if err := c.List(context.Background(), &l, client.InNamespace(ns)); err != nil {
		return nil, err
	}
	var out []eventsv1.Event
	for _, e := range l.Items {
		if e.Regarding.Kind == "Pod" && e.Regarding.Name == pod && e.Reason == reason {
			out = append(out, e)
		}
	}
	return out, nil
}

// hasPodEvent checks that the pod has exactly one Warning Event with the reason, recorded once (no series:
// the recorder turns a repeat into a series count), whose note contains every fragment.
func hasPodEvent(c client.Client, ns, pod, reason string, fragments ...string) error {
	evs, err := podEvents(c, ns, pod, reason)
	if err != nil {
		return err
	}
	if len(evs) != 1 {
		return fmt.Errorf("%d %s Events on pod %s/%s, want 1", len(evs), reason, ns, pod)
	}
	e := evs[0]
	if e.Type != corev1.EventTypeWarning || e.Regarding.UID == "" {
		return fmt.Errorf("%s Event on %s/%s: type %s, regarding %+v", reason, ns, pod, e.Type, e.Regarding)
	}
	if e.Series != nil {
		return fmt.Errorf("%s Event on %s/%s recorded %d times, want once per pod", reason, ns, pod, e.Series.Count)
	}
	for _, f := range fragments {
		if !strings.Contains(e.Note, f) {
			return fmt.Errorf("%s Event on %s/%s: note %q lacks %q", reason, ns, pod, e.Note, f)
		}
	}
	return nil
}

func expectSeries(t testing.TB, reg *prometheus.Registry, name string, want map[string]float64) error {
	if got := promtest.Series(t, reg, name); fmt.Sprint(got) != fmt.Sprint(want) {
		return fmt.Errorf("%s = %v, want %v", name, got, want)
	}
	return nil
}

// waitAudits waits until the pod audit has made n more passes than it had made when called.
func waitAudits(t testing.TB, reg *prometheus.Registry, n float64, kick func()) {
	t.Helper()
	start := promtest.Series(t, reg, "podidentity_assigner_pod_audits_total")["result=ok"]
	var kicked time.Time
	eventually(t, 10*time.Second, "audit passes", func() error {
		if got := promtest.Series(t, reg, "podidentity_assigner_pod_audits_total")["result=ok"]; got < start+n {
			if time.Since(kicked) > 300*time.Millisecond { // longer than the audit's MinGap here
				kick()
				kicked = time.Now()
			}
			return fmt.Errorf("%v passes, want %v", got-start, n)
		}
		return nil
	})
}

func setNamespaceLabel(t testing.TB, c client.Client, ns string, value *string) {
	t.Helper()
	v := "null"
	if value != nil {
		v = fmt.Sprintf("%q", *value)
	}
	patch := client.RawPatch(types.MergePatchType, fmt.Appendf(nil, `{"metadata":{"labels":{%q:%s}}}`, contract.NamespaceInjectionLabel, v))
	if err := c.Patch(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, patch); err != nil {
		t.Fatal(err)
	}
}

// TestAttachOnlyInjectedPods: the identities of a pod the webhook injected (annotation, opted-in namespace)
// are attached; a bound pod without the annotation, and an annotated pod in a namespace without the opt-in
// label, get nothing (no ARM write, no AzureAssignedIdentity) and one PodNotInjected Event each, and are
// counted by namespace. Opting the namespace in attaches the annotated pod's identity; opting it out again
// detaches it.
func TestAttachOnlyInjectedPods(t *testing.T) {
	env := startEnv(t)
	c := env.Client
	srv := arm.New(t, arm.Options{Latency: 20 * time.Millisecond})
	inj, noAnn, noLabel := ssID("injected"), ssID("no-annotation"), ssID("no-label")
	for _, ss := range []string{inj, noAnn, noLabel} {
		srv.AddVMSS(ss, false)
	}
	mkNode(t, c, "inj-0", instanceOf(inj, 0))
	mkNode(t, c, "noann-0", instanceOf(noAnn, 0))
	mkNode(t, c, "nolabel-0", instanceOf(noLabel, 0))
	mkNamespace(t, c, "apps")                // opted in
	mkNamespaceLabels(t, c, "plain", nil)    // not opted in
	mkIdentity(t, c, "apps", "a", uami("a")) // bindings of "apps" match pods of every namespace (not forceNamespaced)
	mkIdentity(t, c, "apps", "u", uami("u"))
	mkBinding(t, c, "apps", "a", "a", "sel-a")
	mkBinding(t, c, "apps", "u", "u", "sel-u")
	reg, _ := startAssignerAndAudit(t, env, armClient(srv), testOptions(), 100*time.Millisecond)

	// The un-injected pods first, so that by the time the injected one is attached their resources have
	// long been through a pass.
	mkUninjectedPod(t, c, "apps", "no-annotation", "noann-0", "sel-u", nil)
	mkPod(t, c, "plain", "no-label", "nolabel-0", "sel-u", nil) // annotated, as a forged or stale annotation would be
	mkPod(t, c, "apps", "injected", "inj-0", "sel-a", nil)

	eventually(t, 15*time.Second, "the injected pod's identity attached", func() error {
		if err := azureHas(srv, inj, false, uami("a")); err != nil {
			return err
		}
		return expectAssigned(c, map[string]string{"apps/injected-apps-a": aadv1.AssignedIDAssigned})
	})
	eventually(t, 15*time.Second, "PodNotInjected Events", func() error {
		if err := hasPodEvent(c, "apps", "no-annotation", podaudit.ReasonNotInjected, "identities apps/u are not attached for this pod",
			"no annotation podidentity.io/identities", "recreate the pod", "--attach-uninjected-pods"); err != nil {
			return err
		}
		return hasPodEvent(c, "plain", "no-label", podaudit.ReasonNotInjected, "namespace plain is not labelled podidentity.io/injection=enabled",
			"kubectl label namespace plain podidentity.io/injection=enabled", "--attach-uninjected-pods")
	})
	eventually(t, 10*time.Second, "un-injected bound pods counted by namespace", func() error {
		return expectSeries(t, reg, "podidentity_assigner_uninjected_bound_pods", map[string]float64{"namespace=apps": 1, "namespace=plain": 1})
	})
	if err := hasPodEvent(c, "apps", "injected", podaudit.ReasonNotInjected); err == nil || !strings.Contains(err.Error(), "0 PodNotInjected") {
		t.Errorf("the injected pod: %v", err)
	}
	// More audit passes (each pod created kicks one) record no second Event.
	i := 0
	waitAudits(t, reg, 3, func() {
		i++
		mkUninjectedPod(t, c, "plain", fmt.Sprintf("unbound-%d", i), "inj-0", "", nil)
	})
	time.Sleep(settle)
	for _, w := range []string{noAnn, noLabel} {
		if n := srv.WritesTo(w); n != 0 {
			t.Errorf("%s received %d PATCHes for un-injected pods, want none", w, n)
		}
		if _, ids := srv.Identities(w); len(ids) != 0 {
			t.Errorf("identities attached for un-injected pods on %s: %v", w, ids)
		}
	}
	if err := expectAssigned(c, map[string]string{"apps/injected-apps-a": aadv1.AssignedIDAssigned}); err != nil {
		t.Error(err)
	}
	if err := hasPodEvent(c, "apps", "no-annotation", podaudit.ReasonNotInjected); err != nil {
		t.Error(err)
	}

	// The namespace is opted in: the annotated pod is injected as far as the assigner can tell.
	enabled := "enabled"
	setNamespaceLabel(t, c, "plain", &enabled)
	eventually(t, 15*time.Second, "the annotated pod's identity attached once its namespace is opted in", func() error {
		if err := azureHas(srv, noLabel, false, uami("u")); err != nil {
			return err
		}
		return expectAssigned(c, map[string]string{"apps/injected-apps-a": aadv1.AssignedIDAssigned, "apps/no-label-plain-u": aadv1.AssignedIDAssigned})
	})
	eventually(t, 10*time.Second, "the gauge follows", func() error {
		return expectSeries(t, reg, "podidentity_assigner_uninjected_bound_pods", map[string]float64{"namespace=apps": 1})
	})
	time.Sleep(settle)
	if n := srv.WritesTo(noAnn); n != 0 {
		t.Errorf("%s received %d PATCHes for the pod without annotation, want none", noAnn, n)
	}

	// And out again: its identity goes, as for any assignment no longer wanted; no second Event.
	setNamespaceLabel(t, c, "plain", nil)
	eventually(t, 15*time.Second, "detached when the namespace is opted out", func() error {
		if err := azureHas(srv, noLabel, false); err != nil {
			return err
		}
		return expectAssigned(c, map[string]string{"apps/injected-apps-a": aadv1.AssignedIDAssigned})
	})
	eventually(t, 10*time.Second, "counted again", func() error {
		return expectSeries(t, reg, "podidentity_assigner_uninjected_bound_pods", map[string]float64{"namespace=apps": 1, "namespace=plain": 1})
	})
	if err := hasPodEvent(c, "plain", "no-label", podaudit.ReasonNotInjected); err != nil {
		t.Error(err)
	}
}

// TestAttachUninjectedPodsOption: --attach-uninjected-pods restores AAD Pod Identity's behaviour: a bound pod
// the webhook did not inject, in a namespace that is not opted in, gets its identity, and is not reported.
func TestAttachUninjectedPodsOption(t *testing.T) {
	env := startEnv(t)
	c := env.Client
	srv := arm.New(t, arm.Options{Latency: 20 * time.Millisecond})
	ss := ssID("pool")
	srv.AddVMSS(ss, false)
	mkNode(t, c, "n0", instanceOf(ss, 0))
	mkNamespaceLabels(t, c, "legacy", nil)
	mkIdentity(t, c, "legacy", "a", uami("a"))
	mkBinding(t, c, "legacy", "a", "a", "app")
	opts := testOptions()
	opts.Injection.AttachUninjected = true
	reg, _ := startAssignerAndAudit(t, env, armClient(srv), opts, 100*time.Millisecond)
	mkUninjectedPod(t, c, "legacy", "p", "n0", "app", nil)
	eventually(t, 15*time.Second, "attached", func() error {
		if err := azureHas(srv, ss, false, uami("a")); err != nil {
			return err
		}
		return expectAssigned(c, map[string]string{"legacy/p-legacy-a": aadv1.AssignedIDAssigned})
	})
	i := 0
	waitAudits(t, reg, 1, func() { // a pass after the attachment: a pod created kicks one
		i++
		mkUninjectedPod(t, c, "legacy", fmt.Sprintf("unbound-%d", i), "n0", "", nil)
	})
	if err := expectSeries(t, reg, "podidentity_assigner_uninjected_bound_pods", map[string]float64{}); err != nil {
		t.Error(err)
	}
	if evs, err := podEvents(c, "legacy", "p", podaudit.ReasonNotInjected); err != nil || len(evs) != 0 {
		t.Errorf("PodNotInjected Events %v (%v), want none: the pod's identities are attached", evs, err)
	}
}

// TestSecurityWarningsReported: a pod the webhook admitted with security warnings gets one
// PodIdentitySecurityWarning Event naming each reason, and is counted by namespace and reason until it goes;
// guard mode is off.
func TestSecurityWarningsReported(t *testing.T) {
	env := startEnv(t)
	c := env.Client
	mkNode(t, c, "n0", instanceOf(ssID("pool"), 0))
	mkNamespace(t, c, "apps")
	opts := testOptions()
	opts.Managed = true
	if opts.Pool != nil {
		t.Fatal("guard mode must be off here")
	}
	reg, _ := startAssignerAndAudit(t, env, nil, opts, 100*time.Millisecond)
	mkUninjectedPod(t, c, "apps", "risky", "n0", "", map[string]string{contract.SecurityWarningsAnnotation: "uid-change,host-network,from-the-future"})
	mkUninjectedPod(t, c, "apps", "optout", "", "", map[string]string{contract.SecurityWarningsAnnotation: "opt-out-annotation"})
	mkUninjectedPod(t, c, "apps", "fine", "n0", "", nil)
	eventually(t, 15*time.Second, "Events on the pods with warnings", func() error {
		if err := hasPodEvent(c, "apps", "risky", podaudit.ReasonSecurityWarning, "host-network: hostNetwork cannot be isolated",
			"uid-change: a container can switch to the token sidecar's uid", "other (from-the-future)", "node's IMDS"); err != nil {
			return err
		}
		return hasPodEvent(c, "apps", "optout", podaudit.ReasonSecurityWarning, "opt-out-annotation: annotation podidentity.io/inject=false")
	})
	want := map[string]float64{"namespace=apps,reason=host-network": 1, "namespace=apps,reason=opt-out-annotation": 1,
		"namespace=apps,reason=other": 1, "namespace=apps,reason=uid-change": 1}
	eventually(t, 10*time.Second, "counted", func() error {
		return expectSeries(t, reg, "podidentity_pods_with_security_warnings", want)
	})
	if evs, err := podEvents(c, "apps", "fine", podaudit.ReasonSecurityWarning); err != nil || len(evs) != 0 {
		t.Errorf("Events on the pod without warnings: %v (%v)", evs, err)
	}
	waitAudits(t, reg, 2, func() { setNamespaceLabel(t, c, "apps", nil); setNamespaceLabel(t, c, "apps", ptrTo("enabled")) })
	if err := hasPodEvent(c, "apps", "risky", podaudit.ReasonSecurityWarning); err != nil {
		t.Error(err) // still one Event, recorded once
	}

	deletePod(t, c, "apps", "risky")
	eventually(t, 10*time.Second, "the gauge drops when the pod goes", func() error {
		return expectSeries(t, reg, "podidentity_pods_with_security_warnings", map[string]float64{"namespace=apps,reason=opt-out-annotation": 1})
	})
	deletePod(t, c, "apps", "optout")
	eventually(t, 10*time.Second, "and to nothing", func() error {
		return expectSeries(t, reg, "podidentity_pods_with_security_warnings", map[string]float64{})
	})
}

func ptrTo(s string) *string { return &s }
