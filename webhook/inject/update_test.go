package inject

import (
	"encoding/json"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podidentity/podidentity/internal/contract"
)

func injectedPod(t *testing.T, mutate func(*corev1.Pod)) []byte {
	t.Helper()
	s := DefaultSettings()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "shop", Annotations: map[string]string{contract.IdentitiesAnnotation: "[]"}},
		Spec: corev1.PodSpec{
			InitContainers: []corev1.Container{InitContainer(s), SidecarContainer(s, nil, false)},
			Containers:     []corev1.Container{{Name: "app", Image: "app:1"}},
			Volumes:        Volumes(nil, false),
		},
	}
	if mutate != nil {
		mutate(p)
	}
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestProtectedChange(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*corev1.Pod)
		want   string
	}{
		{"nothing", nil, ""},
		{"another annotation", func(p *corev1.Pod) { p.Annotations["team"] = "x" }, ""},
		{"app image", func(p *corev1.Pod) { p.Spec.Containers[0].Image = "app:2" }, ""},
		{"identities changed", func(p *corev1.Pod) { p.Annotations[contract.IdentitiesAnnotation] = `[{"name":"x"}]` }, "annotation"},
		{"identities removed", func(p *corev1.Pod) { delete(p.Annotations, contract.IdentitiesAnnotation) }, "annotation"},
		{"sidecar image", func(p *corev1.Pod) { p.Spec.InitContainers[1].Image = "evil:1" }, "container podidentity-sidecar"},
		{"init image", func(p *corev1.Pod) { p.Spec.InitContainers[0].Image = "evil:1" }, "container podidentity-init"},
	}
	old := injectedPod(t, nil)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ProtectedChange(old, injectedPod(t, tc.mutate))
			if err != nil {
				t.Fatal(err)
			}
			if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
				t.Errorf("ProtectedChange = %q, want %q", got, tc.want)
			}
		})
	}
	if _, err := ProtectedChange([]byte("{"), old); err == nil {
		t.Error("malformed old object: no error")
	}
}

func TestEphemeralDenial(t *testing.T) {
	debug := func(sc *corev1.SecurityContext) func(*corev1.Pod) {
		return func(p *corev1.Pod) {
			p.Spec.EphemeralContainers = []corev1.EphemeralContainer{{EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: "dbg", Image: "busybox", SecurityContext: sc}}}
		}
	}
	uid := int64(contract.SidecarUID)
	dropAll := &corev1.SecurityContext{Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}}
	tests := []struct {
		name      string
		exemption Exemption // "" means ExemptionUID: the uid change policy applies
		policy    UIDChangePolicy
		mutate    func(*corev1.Pod)
		want      Reason
		wantWarn  int
		wantPatch int // operations (NET_RAW dropped from a new debug container)
	}{
		{"cgroup exemption: plain debug container drops NET_RAW", ExemptionCgroup, UIDChangeDeny, debug(nil), "", 0, 1},
		{"cgroup exemption: root debug container as the sidecar's uid", ExemptionCgroup, UIDChangeDeny, debug(&corev1.SecurityContext{RunAsUser: &uid}), "", 0, 1},
		{"cgroup exemption: drops ALL already", ExemptionCgroup, UIDChangeDeny, debug(dropAll), "", 0, 0},
		{"cgroup exemption: SYS_PTRACE", ExemptionCgroup, UIDChangeDeny, debug(&corev1.SecurityContext{Capabilities: &corev1.Capabilities{Add: []corev1.Capability{"SYS_PTRACE"}}}), ReasonCapability, 0, 0},
		{"cgroup exemption: SYS_ADMIN", ExemptionCgroup, UIDChangeDeny, debug(&corev1.SecurityContext{Capabilities: &corev1.Capabilities{Add: []corev1.Capability{"sys_admin"}}}), ReasonCapability, 0, 0},
		{"plain debug container, warn", "", UIDChangeWarn, debug(nil), "", 1, 1},
		{"plain debug container, deny", "", UIDChangeDeny, debug(nil), ReasonUIDChange, 0, 0},
		{"plain debug container, ignore", "", UIDChangeIgnore, debug(nil), "", 0, 1},
		{"debug container drops ALL, deny", "", UIDChangeDeny, debug(dropAll), "", 0, 0},
		{"privileged", "", UIDChangeWarn, debug(&corev1.SecurityContext{Privileged: ptr(true)}), ReasonPrivileged, 0, 0},
		{"net raw", "", UIDChangeWarn, debug(&corev1.SecurityContext{Capabilities: &corev1.Capabilities{Add: []corev1.Capability{"CAP_NET_RAW"}}}), ReasonNetCapability, 0, 0},
		{"sidecar uid", "", UIDChangeWarn, debug(&corev1.SecurityContext{RunAsUser: &uid}), ReasonSidecarUID, 0, 0},
		{"named like our sidecar", "", UIDChangeWarn, func(p *corev1.Pod) {
			debug(&corev1.SecurityContext{RunAsUser: &uid})(p)
			p.Spec.EphemeralContainers[0].Name = contract.SidecarContainerName
		}, ReasonSidecarUID, 0, 0},
		{"named like our sidecar, root", "", UIDChangeDeny, func(p *corev1.Pod) {
			debug(nil)(p)
			p.Spec.EphemeralContainers[0].Name = contract.SidecarContainerName
		}, ReasonUIDChange, 0, 0},
		{"not injected: not ours to guard", "", UIDChangeDeny, func(p *corev1.Pod) {
			debug(&corev1.SecurityContext{Privileged: ptr(true)})(p)
			p.Spec.InitContainers = nil
		}, "", 0, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := DefaultSettings()
			s.Exemption = ExemptionUID
			if tc.exemption != "" {
				s.Exemption = tc.exemption
			}
			s.UIDChangePolicy = tc.policy
			newPod := injectedPod(t, tc.mutate)
			r, msg, warnings, patch, err := EphemeralDecision(nil, newPod, s)
			if err != nil {
				t.Fatal(err)
			}
			if r != tc.want || (r != "") != (msg != "") {
				t.Errorf("EphemeralDecision = %q %q, want reason %q", r, msg, tc.want)
			}
			if len(warnings) != tc.wantWarn {
				t.Errorf("warnings %q, want %d", warnings, tc.wantWarn)
			}
			if len(patch) != tc.wantPatch {
				t.Errorf("patch %v, want %d operations", patch, tc.wantPatch)
			}
			// A debug container that the pod had before the update cannot change: no patch for it.
			if _, _, _, again, err := EphemeralDecision(newPod, newPod, s); err != nil || len(again) != 0 {
				t.Errorf("existing debug container patched: %v %v", again, err)
			}
			for _, w := range append(warnings, msg) {
				if w != "" && !strings.Contains(w, `ephemeral container "`) {
					t.Errorf("message %q does not name the ephemeral container", w)
				}
			}
		})
	}
}
