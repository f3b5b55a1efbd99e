package podaudit

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/assigner/desired"
	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/test/toolbox/promtest"
	"github.com/podidentity/podidentity/test/toolbox/testenv"
)

const reader = "/subscriptions/s/resourceGroups/ids/providers/Microsoft.ManagedIdentity/userAssignedIdentities/reader"

func mkPod(ns, name, selector string, annotations map[string]string) corev1.Pod {
	labels := map[string]string{}
	if selector != "" {
		labels[aadv1.PodLabelBinding] = selector
	}
	return corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(ns + "-" + name), Labels: labels, Annotations: annotations},
		Spec: corev1.PodSpec{NodeName: "n0", Containers: []corev1.Container{{Name: "app", Image: "app"}}}}
}

func injectedAnn() map[string]string { return map[string]string{contract.IdentitiesAnnotation: "[]"} }

func warnAnn(v string) map[string]string {
	return map[string]string{contract.SecurityWarningsAnnotation: v}
}

func world() ([]aadv1.AzureIdentity, []aadv1.AzureIdentityBinding) {
	return []aadv1.AzureIdentity{{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "reader"},
			Spec: aadv1.AzureIdentitySpec{Type: aadv1.UserAssignedMSI, ResourceID: reader, ClientID: "c"}}},
		[]aadv1.AzureIdentityBinding{{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "reader"},
			Spec: aadv1.AzureIdentityBindingSpec{AzureIdentity: "reader", Selector: "reader"}}}
}

func TestAudit(t *testing.T) {
	ids, binds := world()
	labels := map[string]map[string]string{
		"apps":  {contract.NamespaceInjectionLabel: "enabled"},
		"plain": nil,
	}
	finished := mkPod("apps", "done", "", warnAnn("uid-change"))
	finished.Status.Phase = corev1.PodSucceeded
	tests := []struct {
		name             string
		pods             []corev1.Pod
		attachUninjected bool
		// want: "reason ns/name [warnings] provisional?" per finding.
		want []string
	}{
		{name: "injected bound pod and unbound pod: nothing to report",
			pods: []corev1.Pod{mkPod("apps", "ok", "reader", injectedAnn()), mkPod("plain", "web", "", nil)}},
		{name: "bound pods the webhook did not inject",
			pods: []corev1.Pod{mkPod("apps", "old", "reader", nil), mkPod("plain", "p", "reader", injectedAnn()),
				mkPod("fresh", "q", "reader", injectedAnn()), mkPod("plain", "nobinding", "nothing-binds-this", nil)},
			want: []string{"PodNotInjected apps/old", "PodNotInjected fresh/q provisional", "PodNotInjected plain/p"}},
		{name: "--attach-uninjected-pods: they are attached, so not reported",
			pods:             []corev1.Pod{mkPod("apps", "old", "reader", nil), mkPod("plain", "p", "reader", nil)},
			attachUninjected: true},
		{name: "security warnings, bounded reasons; finished pods and empty values are left out",
			pods: []corev1.Pod{mkPod("apps", "w1", "", warnAnn("uid-change")), mkPod("apps", "w2", "", warnAnn("host-network,whatever")),
				mkPod("plain", "w3", "", warnAnn("opt-out-annotation")), mkPod("apps", "empty", "", warnAnn("")), finished},
			want: []string{"PodIdentitySecurityWarning apps/w1 [uid-change]", "PodIdentitySecurityWarning apps/w2 [host-network other]",
				"PodIdentitySecurityWarning plain/w3 [opt-out-annotation]"}},
		{name: "a pod can be both",
			pods: []corev1.Pod{mkPod("plain", "both", "reader", warnAnn("exception"))},
			want: []string{"PodIdentitySecurityWarning plain/both [exception]", "PodNotInjected plain/both"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rep := Audit(Input{Pods: tc.pods, NamespaceLabels: labels, Bindings: binds, Identities: ids,
				Injection: desired.Injection{AttachUninjected: tc.attachUninjected}})
			var got []string
			for _, f := range rep.NotInjected {
				s := "PodNotInjected " + f.Namespace + "/" + f.Name
				if f.Provisional {
					s += " provisional"
				}
				if f.UID != types.UID(f.Namespace+"-"+f.Name) || !strings.Contains(f.Note, "are not attached for this pod") {
					t.Errorf("%s: uid %q note %q", s, f.UID, f.Note)
				}
				got = append(got, s)
			}
			for _, f := range rep.SecurityWarnings {
				got = append(got, fmt.Sprintf("PodIdentitySecurityWarning %s/%s %v", f.Namespace, f.Name, f.Warnings))
				if !strings.Contains(f.Note, "security warnings") {
					t.Errorf("%s/%s: note %q", f.Namespace, f.Name, f.Note)
				}
			}
			sort.Strings(got)
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("findings:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
}

type recorded struct{ kind, namespace, name, uid, eventtype, reason, action, note string }

type fakeRecorder struct {
	mu     sync.Mutex
	events []recorded
}

func (r *fakeRecorder) Eventf(regarding, _ runtime.Object, eventtype, reason, action, note string, args ...interface{}) {
	ref := regarding.(*corev1.ObjectReference)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, recorded{ref.Kind, ref.Namespace, ref.Name, string(ref.UID), eventtype, reason, action, fmt.Sprintf(note, args...)})
}

func (r *fakeRecorder) list() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, e := range r.events {
		out = append(out, fmt.Sprintf("%s %s %s/%s(%s) %s %s", e.eventtype, e.kind, e.namespace, e.name, e.uid, e.reason, e.action))
	}
	sort.Strings(out)
	return out
}

// TestAuditorEventsOncePerPodAndGauges: each finding's Event is recorded once per pod however many passes
// see it (and again for a new pod of the same name), gauges follow the pods, and series of pods that are gone
// are deleted rather than left at their last value.
func TestAuditorEventsOncePerPodAndGauges(t *testing.T) {
	ids, binds := world()
	objs := []client.Object{
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "apps", Labels: map[string]string{contract.NamespaceInjectionLabel: "enabled"}}},
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "plain"}},
		&ids[0], &binds[0],
	}
	pods := []corev1.Pod{
		mkPod("apps", "ok", "reader", injectedAnn()),
		mkPod("apps", "old", "reader", nil),
		mkPod("plain", "p", "reader", injectedAnn()),
		mkPod("plain", "q", "reader", nil),
		mkPod("apps", "w", "", warnAnn("uid-change,host-network")),
	}
	for i := range pods {
		objs = append(objs, &pods[i])
	}
	c := fake.NewClientBuilder().WithScheme(testenv.Scheme()).WithObjects(objs...).Build()
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	rec := &fakeRecorder{}
	a := NewAuditor(&Auditor{Reader: c, Recorder: rec, Metrics: m, Log: logr.Discard()})
	ctx := context.Background()
	run := func() {
		t.Helper()
		if _, err := a.Run(ctx); err != nil {
			t.Fatal(err)
		}
	}
	expectGauges := func(uninjected, warnings map[string]float64) {
		t.Helper()
		if got := promtest.Series(t, reg, "podidentity_assigner_uninjected_bound_pods"); fmt.Sprint(got) != fmt.Sprint(uninjected) {
			t.Errorf("podidentity_assigner_uninjected_bound_pods = %v, want %v", got, uninjected)
		}
		if got := promtest.Series(t, reg, "podidentity_pods_with_security_warnings"); fmt.Sprint(got) != fmt.Sprint(warnings) {
			t.Errorf("podidentity_pods_with_security_warnings = %v, want %v", got, warnings)
		}
	}
	wantEvents := []string{
		"Warning Pod apps/old(apps-old) PodNotInjected AttachIdentity",
		"Warning Pod apps/w(apps-w) PodIdentitySecurityWarning Audit",
		"Warning Pod plain/p(plain-p) PodNotInjected AttachIdentity",
		"Warning Pod plain/q(plain-q) PodNotInjected AttachIdentity",
	}
	for range 3 {
		run()
	}
	if got := rec.list(); strings.Join(got, "\n") != strings.Join(wantEvents, "\n") {
		t.Fatalf("after 3 passes, events:\n%s\nwant each once:\n%s", strings.Join(got, "\n"), strings.Join(wantEvents, "\n"))
	}
	expectGauges(map[string]float64{"namespace=apps": 1, "namespace=plain": 2},
		map[string]float64{"namespace=apps,reason=host-network": 1, "namespace=apps,reason=uid-change": 1})
	if got := promtest.Series(t, reg, "podidentity_assigner_pod_audits_total"); got["result=ok"] != 3 {
		t.Errorf("passes counted: %v", got)
	}

	// The pods go; one comes back under the same name (a new pod: new uid).
	for _, p := range []string{"old", "w"} {
		if err := c.Delete(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: p}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Delete(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "plain", Name: "q"}}); err != nil {
		t.Fatal(err)
	}
	run()
	expectGauges(map[string]float64{"namespace=plain": 1}, map[string]float64{})
	again := mkPod("apps", "w", "", warnAnn("uid-change"))
	again.UID = "apps-w-2"
	if err := c.Create(ctx, &again); err != nil {
		t.Fatal(err)
	}
	run()
	run()
	wantEvents = append(wantEvents, "Warning Pod apps/w(apps-w-2) PodIdentitySecurityWarning Audit")
	sort.Strings(wantEvents)
	if got := rec.list(); strings.Join(got, "\n") != strings.Join(wantEvents, "\n") {
		t.Errorf("events:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(wantEvents, "\n"))
	}
	expectGauges(map[string]float64{"namespace=plain": 1}, map[string]float64{"namespace=apps,reason=uid-change": 1})
}

// TestAuditorWaitsForTheNamespace: a pod whose namespace the cache does not hold yet is counted (nothing is
// attached for it) but its once-only Event waits until the namespace is known and the message can be right.
func TestAuditorWaitsForTheNamespace(t *testing.T) {
	ids, binds := world()
	p := mkPod("fresh", "p", "reader", injectedAnn())
	c := fake.NewClientBuilder().WithScheme(testenv.Scheme()).WithObjects(&ids[0], &binds[0], &p).Build()
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	rec := &fakeRecorder{}
	a := NewAuditor(&Auditor{Reader: c, Recorder: rec, Metrics: m, Log: logr.Discard()})
	if _, err := a.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := rec.list(); len(got) != 0 {
		t.Fatalf("events before the namespace is known: %v", got)
	}
	if got := promtest.Series(t, reg, "podidentity_assigner_uninjected_bound_pods"); got["namespace=fresh"] != 1 {
		t.Fatalf("gauge %v", got)
	}
	// It shows up opted in: the pod is injected after all, no Event at all.
	if err := c.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "fresh",
		Labels: map[string]string{contract.NamespaceInjectionLabel: "enabled"}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := rec.list(); len(got) != 0 {
		t.Fatalf("events for an injected pod: %v", got)
	}
	if got := promtest.Series(t, reg, "podidentity_assigner_uninjected_bound_pods"); len(got) != 0 {
		t.Fatalf("gauge %v, want no series", got)
	}
}
