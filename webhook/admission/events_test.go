package admission

import (
	"context"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/webhook/inject"
)

type recordedEvent struct {
	regarding *corev1.ObjectReference
	eventType string
	reason    string
}

type captureRecorder struct{ events []recordedEvent }

func (c *captureRecorder) Eventf(regarding, _ runtime.Object, eventType, reason, _, _ string, _ ...any) {
	ref, _ := regarding.(*corev1.ObjectReference)
	c.events = append(c.events, recordedEvent{ref, eventType, reason})
}

func TestEvents(t *testing.T) {
	owned := func(p *corev1.Pod) {
		p.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "web-1", UID: "u1", Controller: ptr(true)}}
	}
	privileged := func(p *corev1.Pod) {
		p.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{Privileged: ptr(true)}
	}
	tests := []struct {
		name       string
		mutate     func(*corev1.Pod)
		dryRun     bool
		wantKind   string // "" means no Event
		wantName   string
		wantReason string
		wantType   string
	}{
		{"denial of an owned pod goes to its owner", func(p *corev1.Pod) { owned(p); privileged(p) }, false, "ReplicaSet", "web-1", "PodIdentityDenied", corev1.EventTypeWarning},
		{"denial of a bare pod goes to the namespace", privileged, false, "Namespace", "shop", "PodIdentityDenied", corev1.EventTypeWarning},
		// A skip in an opted-in namespace leaves the pod able to reach the node's IMDS: a security warning.
		{"skip is a security warning", func(p *corev1.Pod) { p.Annotations = map[string]string{contract.InjectAnnotation: "false"} }, false, "Namespace", "shop", EventSecurityWarning, corev1.EventTypeWarning},
		{"skip of an owned pod warns its owner", func(p *corev1.Pod) {
			owned(p)
			p.Annotations = map[string]string{contract.InjectAnnotation: "false"}
		}, false, "ReplicaSet", "web-1", EventSecurityWarning, corev1.EventTypeWarning},
		{"dry run records nothing", privileged, true, "", "", "", ""},
		{"injection records nothing", nil, false, "", "", "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h, _ := newHandler(t)
			rec := &captureRecorder{}
			h.Events = rec
			req := request(admissionv1.Create, "shop", "alice", podJSON(t, "shop", tc.mutate), nil)
			req.DryRun = &tc.dryRun
			h.Handle(context.Background(), req)
			if tc.wantKind == "" {
				if len(rec.events) != 0 {
					t.Fatalf("events %+v, want none", rec.events)
				}
				return
			}
			if len(rec.events) != 1 {
				t.Fatalf("%d events, want 1", len(rec.events))
			}
			e := rec.events[0]
			if e.regarding == nil || e.regarding.Kind != tc.wantKind || e.regarding.Name != tc.wantName || e.reason != tc.wantReason || e.eventType != tc.wantType {
				t.Errorf("event %+v regarding %+v, want %s %s/%s %s", e, e.regarding, tc.wantType, tc.wantKind, tc.wantName, tc.wantReason)
			}
		})
	}
}

// TestIdentityNotServedIsVisible: a bound service principal left out of an injected pod (its Secret is in
// another namespace) is not only an admission warning, which for a controller's pod reaches nobody: it raises
// a Warning Event PodIdentityNotServed on the pod's owner and counts in
// podidentity_webhook_identities_not_served_total{reason, namespace}. A served identity raises neither, and a
// dry run records no Event.
func TestIdentityNotServedIsVisible(t *testing.T) {
	for _, tc := range []struct {
		name      string
		secretNS  string
		dryRun    bool
		wantEvent bool
		wantCount float64
	}{
		{"secret in the pod's namespace", "shop", false, false, 0},
		{"secret in another namespace", "vault", false, true, 1},
		{"secret in another namespace, dry run", "vault", true, false, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, _ := newHandler(t)
			h.Reader = cachedClient(t,
				&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop", Labels: map[string]string{contract.NamespaceInjectionLabel: "enabled"}}},
				&aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Name: "ledger-sp", Namespace: "shop"}, Spec: aadv1.AzureIdentitySpec{
					Type: aadv1.ServicePrincipal, ClientID: "00000000-0000-0000-0000-00000000b003", TenantID: "t",
					ClientPassword: corev1.SecretReference{Name: "ledger", Namespace: tc.secretNS}}},
				&aadv1.AzureIdentityBinding{ObjectMeta: metav1.ObjectMeta{Name: "ledger", Namespace: "shop"}, Spec: aadv1.AzureIdentityBindingSpec{AzureIdentity: "ledger-sp", Selector: "orders"}},
			)
			rec := &captureRecorder{}
			h.Events = rec
			req := request(admissionv1.Create, "shop", "system:serviceaccount:kube-system:replicaset-controller", podJSON(t, "shop", func(p *corev1.Pod) {
				p.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "ledger-1", UID: "u1", Controller: ptr(true)}}
			}), nil)
			req.DryRun = &tc.dryRun
			resp := h.Handle(context.Background(), req)
			if !resp.Allowed || len(resp.Patches) == 0 {
				t.Fatalf("allowed %v, %d patches: want injected", resp.Allowed, len(resp.Patches))
			}
			var got []recordedEvent
			for _, e := range rec.events {
				if e.reason == EventIdentityNotServed {
					got = append(got, e)
				}
			}
			switch {
			case !tc.wantEvent && len(got) != 0:
				t.Errorf("events %+v, want no %s", got, EventIdentityNotServed)
			case tc.wantEvent && (len(got) != 1 || got[0].eventType != corev1.EventTypeWarning || got[0].regarding.Kind != "ReplicaSet" || got[0].regarding.Name != "ledger-1"):
				t.Errorf("events %+v, want one Warning %s on ReplicaSet ledger-1", rec.events, EventIdentityNotServed)
			}
			if n := testutil.ToFloat64(h.Metrics.notServed.WithLabelValues(string(inject.ReasonSecretNamespace), "shop")); n != tc.wantCount {
				t.Errorf("identities_not_served_total{reason=secret-other-namespace,namespace=shop} = %v, want %v", n, tc.wantCount)
			}
		})
	}
}
