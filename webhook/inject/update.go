package inject

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"

	"github.com/podidentity/podidentity/internal/defaults"
)

// ReasonProtectedUpdate denies an update of what only the webhook and the assigner own.
const ReasonProtectedUpdate Reason = "protected-update"

// ProtectedChange reports what an update of a running pod changes among the things only the webhook and the
// assigner own: the identities annotation and the injected containers. "" means nothing protected changed.
func ProtectedChange(oldRaw, newRaw []byte) (string, error) {
	oldPod, _, err := readPod(oldRaw)
	if err != nil {
		return "", fmt.Errorf("old object: %w", err)
	}
	newPod, _, err := readPod(newRaw)
	if err != nil {
		return "", fmt.Errorf("new object: %w", err)
	}
	ov, oOK := oldPod.Annotations[defaults.IdentitiesAnnotation]
	nv, nOK := newPod.Annotations[defaults.IdentitiesAnnotation]
	if ov != nv || oOK != nOK {
		return "annotation " + defaults.IdentitiesAnnotation, nil
	}
	for _, name := range []string{defaults.InitContainerName, defaults.SidecarContainerName} {
		if !equality.Semantic.DeepEqual(findContainer(oldPod, name), findContainer(newPod, name)) {
			return "container " + name, nil
		}
	}
	return "", nil
}

func findContainer(pod *corev1.Pod, name string) *corev1.Container {
	for _, list := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for i := range list {
			if list[i].Name == name {
				return &list[i]
			}
		}
	}
	return nil
}

// EphemeralDenial checks the ephemeral containers of a pods/ephemeralcontainers update (kubectl debug): one
// that is privileged, adds NET_ADMIN/NET_RAW or runs as the sidecar's uid could undo or bypass the redirect,
// and one able to change its uid is handled by s.UIDChangePolicy. It returns a denial reason and message ("" when
// admitted) and the admission warnings (--uid-change-policy=warn).
func EphemeralDenial(newRaw []byte, s Settings) (Reason, string, []string, error) {
	pod, _, err := readPod(newRaw)
	if err != nil {
		return "", "", nil, err
	}
	if findContainer(pod, defaults.InitContainerName) == nil {
		return "", "", nil, nil // not injected: nothing to protect
	}
	for i := range pod.Spec.EphemeralContainers {
		ec := &pod.Spec.EphemeralContainers[i]
		c := corev1.Container{Name: ec.Name, SecurityContext: ec.SecurityContext}
		if d, bad := checkContainer(pod, s, "ephemeral container", &c); bad {
			return d.Reason, d.Message, nil, nil
		}
	}
	// Only the ephemeral containers: the others were checked when the pod was created.
	only := &corev1.Pod{Spec: corev1.PodSpec{SecurityContext: pod.Spec.SecurityContext, EphemeralContainers: pod.Spec.EphemeralContainers}}
	d, denied, warnings := uidChangeDecision(uidChangeFindings(only, s, true), s.UIDChangePolicy)
	if denied {
		return d.Reason, d.Message, nil, nil
	}
	return "", "", warnings, nil
}
