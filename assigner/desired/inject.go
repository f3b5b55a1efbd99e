package desired

import (
	"fmt"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/podidentity/podidentity/internal/binding"
	"github.com/podidentity/podidentity/internal/contract"
)

// AttachUninjectedFlag is the assigner's command-line switch for Injection.AttachUninjected; messages name it.
const AttachUninjectedFlag = "--attach-uninjected-pods"

// Injection says which bound pods get their identities attached.
//
// Isolation comes from the webhook: it injects, into pods of opted-in namespaces, an init container that
// redirects the pod's IMDS traffic to a per-pod sidecar serving only the pod's bound identities. A pod the
// webhook did not inject has no redirect: attached to its node, an identity would be one plain IMDS request
// away from it (the side door of docs/threat-model.md). So, by default, only injected pods get attachments.
type Injection struct {
	// Label opts a namespace in to injection when its value is "enabled", as in the webhook's
	// namespaceSelector; empty means contract.NamespaceInjectionLabel.
	Label string
	// AttachUninjected attaches identities for pods the webhook did not inject too: AAD Pod Identity's
	// behaviour, for clusters whose NMI still redirects those pods' IMDS traffic during a migration.
	AttachUninjected bool
}

// LabelKey is the namespace label that opts namespaces in.
func (i Injection) LabelKey() string {
	if i.Label == "" {
		return contract.NamespaceInjectionLabel
	}
	return i.Label
}

// OptedIn reports whether a namespace with these labels is opted in to injection.
func OptedIn(namespaceLabels map[string]string, label string) bool {
	v, ok := namespaceLabels[label]
	return ok && v == "enabled"
}

// Injected reports whether the webhook injected the pod. In an opted-in namespace the webhook (failurePolicy
// Fail) sees every pod created there, sets the identities annotation on the pods it injects and strips a
// forged one from all others, and refuses later changes of it; outside opted-in namespaces it never runs, so
// there the annotation proves nothing. Hence both conditions.
func Injected(pod *corev1.Pod, namespaceOptedIn bool) bool {
	if !namespaceOptedIn {
		return false
	}
	_, ok := pod.Annotations[contract.IdentitiesAnnotation]
	return ok
}

// Uninjected is a bound pod whose identities the assigner does not attach because the webhook did not
// inject it.
type Uninjected struct {
	// Pod is namespace/name.
	Pod, Namespace, Name string
	// NamespaceUnknown: the pod's namespace was not in the input (a cache that has not seen it yet). The pod
	// is not attached for now; whether that is final is not known yet.
	NamespaceUnknown bool
	// Message is the Event's note: why nothing is attached and what to do.
	Message string
}

// maxListed bounds the identities a message names (an Event's note is limited to 1 kB).
const maxListed = 5

// notInjectedMessage explains why a bound pod gets no attachment, and what to do. ids are the identities its
// bindings resolve (at least one).
func notInjectedMessage(pod *corev1.Pod, ids []binding.Identity, labels map[string]string, known bool, label string) string {
	names := make([]string, 0, maxListed)
	for i, id := range ids {
		if i == maxListed {
			names = append(names, fmt.Sprintf("and %d more", len(ids)-maxListed))
			break
		}
		names = append(names, id.Namespace+"/"+id.Name)
	}
	optIn := fmt.Sprintf("kubectl label namespace %s %s=enabled", pod.Namespace, label)
	recreate := "recreate the pod (kubectl rollout restart for a Deployment, StatefulSet or DaemonSet) so that the webhook injects it"
	var why, todo string
	switch {
	case !known:
		why = fmt.Sprintf("the assigner has not seen namespace %s yet", pod.Namespace)
		todo = fmt.Sprintf("if the namespace is labelled %s=enabled this resolves itself within seconds; otherwise opt it in (%s) and %s", label, optIn, recreate)
	case !OptedIn(labels, label):
		why = fmt.Sprintf("its namespace %s is not labelled %s=enabled", pod.Namespace, label)
		todo = fmt.Sprintf("opt the namespace in (%s) and %s", optIn, recreate)
	case pod.Spec.HostNetwork:
		why = "it uses hostNetwork, so it shares the node's network and cannot be isolated"
		todo = "remove hostNetwork: true and " + recreate
	case strings.EqualFold(pod.Annotations[contract.InjectAnnotation], "false"):
		why = "it opted out with annotation " + contract.InjectAnnotation + "=false"
		todo = "remove the annotation and " + recreate
	case isWindows(pod):
		why = "it is a Windows pod, and the redirect needs Linux"
		todo = "run identity-bearing workloads on Linux nodes"
	default:
		why = fmt.Sprintf("it has no annotation %s: it was created before namespace %s was opted in, or while the webhook was unavailable", contract.IdentitiesAnnotation, pod.Namespace)
		todo = recreate
	}
	return fmt.Sprintf("identities %s are not attached for this pod: the podidentity webhook did not inject it (%s), "+
		"and an identity on its node would be reachable from it by a plain request to the node's IMDS. To use them, %s; "+
		"or, while AAD Pod Identity's NMI still protects such pods during a migration, run the assigner with %s",
		strings.Join(names, ", "), why, todo, AttachUninjectedFlag)
}

// isWindows is the webhook's test for pods it does not inject because they run Windows.
func isWindows(pod *corev1.Pod) bool {
	if pod.Spec.OS != nil && pod.Spec.OS.Name == corev1.Windows {
		return true
	}
	return pod.Spec.NodeSelector[corev1.LabelOSStable] == "windows"
}

// bound returns the identities of a pod the assigner acts for (NeedsIdentities, not excepted, at least one
// identity resolved), or nil.
func bound(pod *corev1.Pod, in *Input) []binding.Identity {
	if !NeedsIdentities(pod) {
		return nil
	}
	if _, ok := binding.Excepted(pod, in.Exceptions); ok {
		return nil
	}
	ids, _ := binding.Resolve(pod, in.Bindings, in.Identities, in.Options)
	return ids
}

// uninjected decides, for a bound pod with identities ids, whether the injection rule keeps its identities
// off its node, and says why.
func uninjected(pod *corev1.Pod, ids []binding.Identity, in *Input) (Uninjected, bool) {
	if in.Injection.AttachUninjected {
		return Uninjected{}, false
	}
	label := in.Injection.LabelKey()
	labels, known := in.NamespaceLabels[pod.Namespace]
	if Injected(pod, known && OptedIn(labels, label)) {
		return Uninjected{}, false
	}
	return Uninjected{
		Pod: pod.Namespace + "/" + pod.Name, Namespace: pod.Namespace, Name: pod.Name, NamespaceUnknown: !known,
		Message: notInjectedMessage(pod, ids, labels, known, label),
	}, true
}

// NotInjected lists the bound pods of in.Pods that get no attachment because the webhook did not inject
// them: what Compute puts in State.Uninjected, without the work of placing the other pods on their nodes.
// Nodes are not needed.
func NotInjected(in Input) []Uninjected {
	var out []Uninjected
	for i := range in.Pods {
		pod := &in.Pods[i]
		ids := bound(pod, &in)
		if len(ids) == 0 {
			continue
		}
		if u, ok := uninjected(pod, ids, &in); ok {
			out = append(out, u)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Pod < out[j].Pod })
	return out
}
