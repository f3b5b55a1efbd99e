package inject

import (
	"slices"

	corev1 "k8s.io/api/core/v1"
)

// pullSecretsPatch appends to spec.imagePullSecrets the names of want that the pod does not list yet, so that the
// kubelet can pull the injected images from a private registry. It only adds: the user's entries keep their
// order and the pod's own credentials still serve its own images. A pod that lists none got its service
// account's already (the API server's ServiceAccount admission copies them before any webhook runs, and only
// into a pod that has none), so adding ours then loses nothing. A reinvocation finds ours present and adds
// nothing.
func pullSecretsPatch(pod *corev1.Pod, want []string) patch {
	var missing []corev1.LocalObjectReference
	for _, name := range want {
		listed := func(r corev1.LocalObjectReference) bool { return r.Name == name }
		if slices.ContainsFunc(pod.Spec.ImagePullSecrets, listed) || slices.ContainsFunc(missing, listed) {
			continue
		}
		missing = append(missing, corev1.LocalObjectReference{Name: name})
	}
	if len(missing) == 0 {
		return nil
	}
	var p patch
	appendTo(&p, "/spec/imagePullSecrets", len(pod.Spec.ImagePullSecrets), missing)
	return p
}
