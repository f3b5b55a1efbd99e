// Package imdspolicy decides what a pod's network namespace must hold in CNI mode (the IMDS redirect, the fence,
// or nothing) and whether a live table satisfies that decision. It is pure: objects in, decision out. The CNI
// plugin uses it at sandbox creation and the node agent uses the same functions to repair and exempt, so the
// two can never disagree about a pod.
package imdspolicy

import (
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/binding"
	"github.com/podidentity/podidentity/internal/contract"
)

// Action is what a pod's network namespace must hold.
type Action string

const (
	// None: nothing is installed (and nothing is removed: the project never loosens a pod on its own).
	None Action = "none"
	// Fence: redirect.Fence, nothing in the pod may reach the IMDS address.
	Fence Action = "fence"
	// Redirect: redirect.Desired, the pod's IMDS calls go to its token sidecar; the node agent adds the
	// sidecar's cgroup exemption once the sidecar runs.
	Redirect Action = "redirect"
)

// Reason says why; it is a bounded metric label and appears in logs and Events.
type Reason string

const (
	ReasonInjected        Reason = "injected"
	ReasonExemptNamespace Reason = "exempt-namespace"
	ReasonHostNetwork     Reason = "host-network"
	ReasonException       Reason = "exception"
	ReasonOutOfScope      Reason = "out-of-scope"
	ReasonNotInjected     Reason = "not-injected"
	// ReasonImitation: the pod carries some of the marks of an injected pod (a container named
	// podidentity-sidecar, the identities annotation) but not all of them, or not in an opted-in namespace.
	// The node agent exempts the sidecar's cgroup of a redirected pod, so a pod that only pretends must never
	// get the redirect: it gets the fence.
	ReasonImitation Reason = "imitation"
	// ReasonNotAPod: the runtime passed no Kubernetes pod (CNI_ARGS without K8S_POD_NAME), e.g. a container
	// started with nerdctl on the node.
	ReasonNotAPod Reason = "not-a-pod"
)

// Scope is which pods get the fence.
type Scope string

const (
	// ScopeAll fences every non-injected, non-excepted pod of the node (the default).
	ScopeAll Scope = "all"
	// ScopeOptedIn fences only pods of namespaces opted in to injection; the others keep the side door.
	ScopeOptedIn Scope = "opted-in"
)

// ParseScope accepts the values of the plugin's fenceScope and the agent's --fence-scope ("" is ScopeAll).
func ParseScope(s string) (Scope, error) {
	switch Scope(s) {
	case "", ScopeAll:
		return ScopeAll, nil
	case ScopeOptedIn:
		return ScopeOptedIn, nil
	}
	return "", fmt.Errorf("fence scope %q: use %q (every pod that is neither injected nor excepted) or %q (only pods of opted-in namespaces)",
		s, ScopeAll, ScopeOptedIn)
}

// Policy is the configuration the decision depends on. The plugin's configuration and the agent's flags carry
// the same values (the agent writes the plugin's entry).
type Policy struct {
	// InjectionLabel opts a namespace in when its value is "enabled" (the webhook's --namespace-injection-label).
	InjectionLabel string
	// SidecarImage is the image the webhook injects as podidentity-sidecar; a container of that name with any
	// other image is an imitation.
	SidecarImage string
	// ExemptNamespaces are never touched (the cluster's own system pods, this project's components).
	ExemptNamespaces []string
	Scope            Scope
}

// Validate says what is missing, and how to set it.
func (p Policy) Validate() error {
	switch {
	case p.InjectionLabel == "":
		return fmt.Errorf("the injection label is empty: set it to the webhook's namespace injection label (%s)", contract.NamespaceInjectionLabel)
	case p.SidecarImage == "":
		return fmt.Errorf("the sidecar image is empty: set it to the image the webhook injects as %s (the webhook's --sidecar-image)", contract.SidecarContainerName)
	}
	_, err := ParseScope(string(p.Scope))
	return err
}

// Exempt reports whether the namespace is exempt. The plugin asks it before any API call, so that pods of
// exempt namespaces (kube-system: CoreDNS, the CNI's own pods) start even when the API server is unreachable.
func (p Policy) Exempt(namespace string) bool { return slices.Contains(p.ExemptNamespaces, namespace) }

// Decision is an action and its reason.
type Decision struct {
	Action Action
	Reason Reason
	// Detail names the object behind the reason (the exception's name), for logs and Events.
	Detail string
}

func (d Decision) String() string {
	if d.Detail != "" {
		return fmt.Sprintf("%s (%s: %s)", d.Action, d.Reason, d.Detail)
	}
	return fmt.Sprintf("%s (%s)", d.Action, d.Reason)
}

// Decide is the decision for a pod, from the pod, its namespace and the AzurePodIdentityExceptions of its
// namespace. In order:
//
//  1. an exempt namespace, or a hostNetwork pod (it has no network namespace of its own): none;
//  2. injected (namespace opted in with "enabled", the identities annotation, and a container named
//     podidentity-sidecar with exactly the configured image): redirect. Before exceptions, so that an
//     injected pod excepted afterwards keeps its redirect rather than being left open;
//  3. excepted by an AzurePodIdentityException of its namespace: none;
//  4. with scope opted-in, a namespace that is not opted in: none;
//  5. otherwise: fence.
//
// ns may be nil only when the pod's namespace is exempt.
func Decide(p Policy, pod *corev1.Pod, ns *corev1.Namespace, exceptions []aadv1.AzurePodIdentityException) Decision {
	if p.Exempt(pod.Namespace) {
		return Decision{Action: None, Reason: ReasonExemptNamespace, Detail: pod.Namespace}
	}
	if pod.Spec.HostNetwork {
		return Decision{Action: None, Reason: ReasonHostNetwork}
	}
	optedIn := ns != nil && ns.Labels[p.InjectionLabel] == "enabled"
	_, annotated := pod.Annotations[contract.IdentitiesAnnotation]
	sidecar := SidecarContainer(pod)
	genuine := sidecar != nil && sidecar.Image == p.SidecarImage
	if optedIn && annotated && genuine {
		return Decision{Action: Redirect, Reason: ReasonInjected}
	}
	if name, ok := binding.Excepted(pod, exceptions); ok {
		return Decision{Action: None, Reason: ReasonException, Detail: name}
	}
	if p.Scope == ScopeOptedIn && !optedIn {
		return Decision{Action: None, Reason: ReasonOutOfScope}
	}
	if annotated || sidecar != nil {
		return Decision{Action: Fence, Reason: ReasonImitation, Detail: imitation(optedIn, annotated, sidecar, genuine)}
	}
	return Decision{Action: Fence, Reason: ReasonNotInjected}
}

// DecideNotAPod is the decision for a sandbox the runtime did not name a Kubernetes pod for.
func DecideNotAPod(p Policy) Decision {
	if p.Scope == ScopeOptedIn {
		return Decision{Action: None, Reason: ReasonOutOfScope}
	}
	return Decision{Action: Fence, Reason: ReasonNotAPod}
}

func imitation(optedIn, annotated bool, sidecar *corev1.Container, genuine bool) string {
	switch {
	case sidecar != nil && !genuine:
		return fmt.Sprintf("container %s has image %q, not the configured sidecar image", contract.SidecarContainerName, sidecar.Image)
	case sidecar == nil:
		return fmt.Sprintf("annotation %s without a %s container", contract.IdentitiesAnnotation, contract.SidecarContainerName)
	case !annotated:
		return fmt.Sprintf("container %s without annotation %s", contract.SidecarContainerName, contract.IdentitiesAnnotation)
	case !optedIn:
		return "the namespace is not opted in, so no webhook vouches for the injected containers"
	}
	return ""
}

// SidecarContainer returns the pod's container named podidentity-sidecar: a native sidecar (an init container
// with restartPolicy Always) or, in the classic layout, a regular container. nil when there is none.
func SidecarContainer(pod *corev1.Pod) *corev1.Container {
	for _, list := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for i := range list {
			if list[i].Name == contract.SidecarContainerName {
				return &list[i]
			}
		}
	}
	return nil
}

// SidecarContainerID returns the runtime's id of the sidecar container that runs now (status
// initContainerStatuses for a native sidecar, containerStatuses otherwise), without the "containerd://"
// scheme; "" when it does not run.
func SidecarContainerID(pod *corev1.Pod) string {
	for _, list := range [][]corev1.ContainerStatus{pod.Status.InitContainerStatuses, pod.Status.ContainerStatuses} {
		for _, s := range list {
			if s.Name != contract.SidecarContainerName || s.State.Running == nil || s.ContainerID == "" {
				continue
			}
			return StripScheme(s.ContainerID)
		}
	}
	return ""
}

// StripScheme turns "containerd://<id>" into "<id>".
func StripScheme(containerID string) string {
	if _, id, ok := strings.Cut(containerID, "://"); ok {
		return id
	}
	return containerID
}

// MirrorAnnotation is set by the kubelet on the API's copy (mirror pod) of a static pod, with the static pod's
// own UID, which is the one the runtime and the cgroups know.
const MirrorAnnotation = "kubernetes.io/config.mirror"

// NodeUID is the UID the node knows the pod by: the static pod's for a mirror pod, the API's otherwise.
func NodeUID(pod *corev1.Pod) string {
	if uid := pod.Annotations[MirrorAnnotation]; uid != "" {
		return uid
	}
	return string(pod.UID)
}

// ContainerIDs returns the runtime ids (without scheme) of every container and init container the pod's status
// names, current and last terminated. The node agent tells the pod's sandbox cgroup from its containers' with
// them.
func ContainerIDs(pod *corev1.Pod) []string {
	var ids []string
	for _, list := range [][]corev1.ContainerStatus{pod.Status.InitContainerStatuses, pod.Status.ContainerStatuses, pod.Status.EphemeralContainerStatuses} {
		for _, s := range list {
			for _, id := range []string{s.ContainerID, lastID(s)} {
				if id != "" {
					ids = append(ids, StripScheme(id))
				}
			}
		}
	}
	return ids
}

func lastID(s corev1.ContainerStatus) string {
	if s.LastTerminationState.Terminated != nil {
		return s.LastTerminationState.Terminated.ContainerID
	}
	return ""
}
