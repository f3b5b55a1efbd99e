package inject

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/binding"
	"github.com/podidentity/podidentity/internal/contract"
)

func federatedCluster() Cluster {
	return Cluster{
		Identities: []aadv1.AzureIdentity{{
			ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "fed", Annotations: map[string]string{aadv1.BackendAnnotation: aadv1.BackendFederated}},
			Spec:       aadv1.AzureIdentitySpec{Type: aadv1.UserAssignedMSI, ClientID: "00000000-0000-0000-0000-00000000f001", TenantID: "t"},
		}},
		Bindings: []aadv1.AzureIdentityBinding{{
			ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "b"},
			Spec:       aadv1.AzureIdentityBindingSpec{AzureIdentity: "fed", Selector: "web"},
		}},
	}
}

// A pod injected before its federated binding existed (its reinvocation, or a copy of an injected pod) has no
// token volume, and a reinvocation adds none: the identity is left out and reported, never recorded for a
// sidecar that has no token to exchange.
func TestFederatedBoundAfterInjection(t *testing.T) {
	raw := injectedPod(t, func(p *corev1.Pod) { p.Labels = map[string]string{aadv1.PodLabelBinding: "web"} })
	d := Decide(raw, "shop", federatedCluster(), DefaultSettings())
	if d.Action != ActionUnchanged {
		t.Fatalf("action %s (%s)", d.Action, d.Message)
	}
	if len(d.Identities) != 0 || len(d.NotServed) != 1 || d.NotServed[0].Reason != ReasonFederatedNoToken || !strings.Contains(d.NotServed[0].Message, "recreate the pod") {
		t.Fatalf("identities %+v, not served %+v", d.Identities, d.NotServed)
	}
	// With the token volume (injected when the binding existed) it is served on reinvocation.
	withToken := injectedPod(t, func(p *corev1.Pod) {
		p.Labels = map[string]string{aadv1.PodLabelBinding: "web"}
		p.Spec.InitContainers[1] = SidecarContainer(DefaultSettings(), nil, true)
		p.Spec.Volumes = Volumes(nil, true)
	})
	d = Decide(withToken, "shop", federatedCluster(), DefaultSettings())
	if d.Action != ActionUnchanged || len(d.Identities) != 1 || !d.Identities[0].Federated() || len(d.NotServed) != 0 {
		t.Fatalf("action %s, identities %+v, not served %+v", d.Action, d.Identities, d.NotServed)
	}
}

// A forged annotation claiming a federated identity, on a pod no binding selects, is replaced, and the pod gets no
// token volume: only the bindings decide.
func TestForgedFederatedAnnotation(t *testing.T) {
	forged := binding.Encode([]binding.Identity{{Name: "fed", Namespace: "shop", ClientID: "00000000-0000-0000-0000-00000000f001", TenantID: "t", Backend: "federated", Binding: "shop/b"}})
	raw := mustJSON(&corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "shop", Annotations: map[string]string{contract.IdentitiesAnnotation: forged}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app:1"}}},
	})
	d := Decide(raw, "shop", federatedCluster(), DefaultSettings())
	if d.Action != ActionInject || annotationValue(t, raw, d) != "[]" {
		t.Fatalf("action %s, annotation %q", d.Action, annotationValue(t, raw, d))
	}
	for _, op := range d.Patch {
		if strings.Contains(string(mustJSON(op.Value)), contract.FederatedTokenVolumeName) {
			t.Fatalf("token volume added for a forged annotation: %+v", op)
		}
	}
	// An UPDATE that writes the same forgery into a running pod is a protected change.
	old := injectedPod(t, nil)
	upd := injectedPod(t, func(p *corev1.Pod) { p.Annotations[contract.IdentitiesAnnotation] = forged })
	if got, err := ProtectedChange(old, upd); err != nil || got != "annotation "+contract.IdentitiesAnnotation {
		t.Fatalf("ProtectedChange = %q, %v", got, err)
	}
}

// kubectl debug cannot give a debug container the sidecar's credentials either.
func TestEphemeralContainerCredentialMount(t *testing.T) {
	for _, vol := range []string{contract.FederatedTokenVolumeName, SecretVolumePrefix + "sp"} {
		old := injectedPod(t, nil)
		upd := injectedPod(t, func(p *corev1.Pod) {
			p.Spec.EphemeralContainers = []corev1.EphemeralContainer{{EphemeralContainerCommon: corev1.EphemeralContainerCommon{
				Name: "debug", Image: "busybox", VolumeMounts: []corev1.VolumeMount{{Name: vol, MountPath: "/x"}}}}}
		})
		reason, msg, _, _, err := EphemeralDecision(old, upd, DefaultSettings())
		if err != nil || reason != ReasonCredentialMount || !strings.Contains(msg, `ephemeral container "debug" mounts volume "`+vol+`"`) {
			t.Errorf("%s: reason %q, message %q, err %v", vol, reason, msg, err)
		}
	}
	// Other mounts are fine.
	upd := injectedPod(t, func(p *corev1.Pod) {
		p.Spec.EphemeralContainers = []corev1.EphemeralContainer{{EphemeralContainerCommon: corev1.EphemeralContainerCommon{
			Name: "debug", Image: "busybox", VolumeMounts: []corev1.VolumeMount{{Name: contract.IdentitiesVolumeName, MountPath: "/x"}}}}}
	})
	if reason, msg, _, _, err := EphemeralDecision(injectedPod(t, nil), upd, DefaultSettings()); err != nil || reason != "" {
		t.Errorf("identities volume: reason %q, message %q, err %v", reason, msg, err)
	}
}
