package admission

import (
	"context"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/podidentity/podidentity/internal/defaults"
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
		{"skip is a security warning", func(p *corev1.Pod) { p.Annotations = map[string]string{defaults.InjectAnnotation: "false"} }, false, "Namespace", "shop", EventSecurityWarning, corev1.EventTypeWarning},
		{"skip of an owned pod warns its owner", func(p *corev1.Pod) {
			owned(p)
			p.Annotations = map[string]string{defaults.InjectAnnotation: "false"}
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
