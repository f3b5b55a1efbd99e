package inject

import (
	"fmt"

	jsonpatch "gomodules.xyz/jsonpatch/v2"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"

	"github.com/podidentity/podidentity/internal/contract"
)

// ReasonProtectedUpdate denies an update of what only the webhook and the assigner own.
const ReasonProtectedUpdate Reason = "protected-update"

// ProtectedChange reports what an update of a running pod changes among the things only the webhook and the
// assigner own: the identities and security-warnings annotations and the injected containers. "" means nothing protected changed.
func ProtectedChange(oldRaw, newRaw []byte) (string, error) {
	oldPod, _, err := readPod(oldRaw)
	if err != nil {
		return "", fmt.Errorf("old object: %w", err)
	}
	newPod, _, err := readPod(newRaw)
	if err != nil {
		return "", fmt.Errorf("new object: %w", err)
	}
	for _, key := range []string{contract.IdentitiesAnnotation, contract.SecurityWarningsAnnotation} {
		ov, oOK := oldPod.Annotations[key]
		nv, nOK := newPod.Annotations[key]
		if ov != nv || oOK != nOK {
			return "annotation " + key, nil
		}
	}
	for _, name := range []string{contract.InitContainerName, contract.SidecarContainerName} {
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

// EphemeralDecision checks the ephemeral containers of a pods/ephemeralcontainers update (kubectl debug) of an
// injected pod: one that is privileged or adds a refused capability could undo or bypass the redirect, and
// (under the uid exemption) one able to change its uid is handled by s.UIDChangePolicy. It returns a denial
// reason and message ("" when admitted), the admission warnings (--uid-change-policy=warn), and the patch
// that makes the ephemeral containers the update adds drop NET_RAW (those already in oldRaw cannot change).
func EphemeralDecision(oldRaw, newRaw []byte, s Settings) (Reason, string, []string, []jsonpatch.JsonPatchOperation, error) {
	pod, _, err := readPod(newRaw)
	if err != nil {
		return "", "", nil, nil, err
	}
	if findContainer(pod, contract.InitContainerName) == nil {
		return "", "", nil, nil, nil // not injected: nothing to protect
	}
	existing := map[string]bool{}
	if len(oldRaw) > 0 {
		old, _, err := readPod(oldRaw)
		if err != nil {
			return "", "", nil, nil, fmt.Errorf("old object: %w", err)
		}
		for _, ec := range old.Spec.EphemeralContainers {
			existing[ec.Name] = true
		}
	}
	var p patch
	for i := range pod.Spec.EphemeralContainers {
		ec := &pod.Spec.EphemeralContainers[i]
		c := corev1.Container{Name: ec.Name, SecurityContext: ec.SecurityContext, VolumeMounts: ec.VolumeMounts}
		if d, bad := checkContainer(pod, s, "ephemeral container", &c); bad {
			return d.Reason, d.Message, nil, nil, nil
		}
		if !existing[ec.Name] {
			p.dropNetRaw(fmt.Sprintf("/spec/ephemeralContainers/%d", i), ec.SecurityContext)
		}
	}
	// Only the ephemeral containers: the others were checked when the pod was created.
	only := &corev1.Pod{Spec: corev1.PodSpec{SecurityContext: pod.Spec.SecurityContext, EphemeralContainers: pod.Spec.EphemeralContainers}}
	d, denied, warnings := uidChangeDecision(uidChangeFindings(only, s, true), s.UIDChangePolicy)
	if denied {
		return d.Reason, d.Message, nil, nil, nil
	}
	return "", "", warnings, p, nil
}
