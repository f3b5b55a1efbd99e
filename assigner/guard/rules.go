// Package guard is the assigner's side of guard mode: the rules that say which pods may share a node with
// user-assigned identities (injected by the webhook, or trusted), and the periodic audit that reports the
// pods breaking them. Admission is the first line (the chart's ValidatingAdmissionPolicy refuses un-injected,
// untrusted pods that tolerate the identity pool's taint); the audit catches what admission cannot see:
// static (mirror) pods, pods admitted before guard mode was on, and nodes that carry identities outside the
// pool.
package guard

import (
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/assigner/desired"
	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/internal/imdspolicy"
)

// Rules decide whether a pod may run next to identities.
type Rules struct {
	// Pool is the identity node pool (guard mode is off when nil).
	Pool *desired.Pool
	// InjectionLabel opts a namespace in when its value is "enabled" (the webhook's namespaceSelector).
	InjectionLabel string
	// TrustedNamespaces and TrustedServiceAccounts ("namespace/name") may run un-injected pods on the pool:
	// system DaemonSets (kube-proxy, the CNI, log and metrics agents) that tolerate every taint.
	TrustedNamespaces      []string
	TrustedServiceAccounts []string
	// CNI, in CNI mode (nil otherwise), is the node plugin's policy: a pod it fences cannot reach the node's
	// IMDS, so it is not reported (the node agent reports pods it could not protect).
	CNI *imdspolicy.Policy
}

// FencedByCNI reports whether, in CNI mode, the node's podidentity CNI plugin fences the pod off the IMDS
// address: the same decision the plugin takes (internal/imdspolicy).
func (r Rules) FencedByCNI(pod *corev1.Pod, ns *corev1.Namespace, exceptions []aadv1.AzurePodIdentityException) bool {
	return r.CNI != nil && imdspolicy.Decide(*r.CNI, pod, ns, exceptions).Action == imdspolicy.Fence
}

// ParseServiceAccounts reads a comma-separated list of namespace/name.
func ParseServiceAccounts(s string) ([]string, error) {
	var out []string
	for _, e := range SplitList(s) {
		ns, name, ok := strings.Cut(e, "/")
		if !ok || len(validation.IsDNS1123Label(ns)) > 0 || len(validation.IsDNS1123Subdomain(name)) > 0 {
			return nil, fmt.Errorf("%q is not a service account namespace/name (for example monitoring/node-exporter)", e)
		}
		out = append(out, e)
	}
	return out, nil
}

// ParseNamespaces reads a comma-separated list of namespace names.
func ParseNamespaces(s string) ([]string, error) {
	var out []string
	for _, e := range SplitList(s) {
		if len(validation.IsDNS1123Label(e)) > 0 {
			return nil, fmt.Errorf("%q is not a namespace name", e)
		}
		out = append(out, e)
	}
	return out, nil
}

// Trusted reports whether the pod's namespace or service account is on the trusted lists.
func (r Rules) Trusted(pod *corev1.Pod) bool {
	if slices.Contains(r.TrustedNamespaces, pod.Namespace) {
		return true
	}
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	return slices.Contains(r.TrustedServiceAccounts, pod.Namespace+"/"+sa)
}

// Injected reports whether the webhook isolated the pod. Only what a user cannot fake counts: the namespace
// is opted in, so the webhook ran with failurePolicy Fail and strips a forged identities annotation from
// anything it does not inject; the annotation is there; and so is the redirect init container.
func (r Rules) Injected(pod *corev1.Pod, namespaceLabels map[string]string) bool {
	if namespaceLabels[r.InjectionLabel] != "enabled" {
		return false
	}
	if _, ok := pod.Annotations[contract.IdentitiesAnnotation]; !ok {
		return false
	}
	return slices.ContainsFunc(pod.Spec.InitContainers, func(c corev1.Container) bool { return c.Name == contract.InitContainerName })
}

// Why says, for an un-injected pod, what keeps it from being isolated (for the audit's Event).
func (r Rules) Why(pod *corev1.Pod, namespaceLabels map[string]string) string {
	switch {
	case pod.Annotations[corev1.MirrorPodAnnotationKey] != "":
		return "it is a static pod, which the kubelet runs from its manifest directory whatever admission and taints say"
	case pod.Spec.HostNetwork:
		return "it uses hostNetwork, so it shares the node's network"
	case namespaceLabels[r.InjectionLabel] != "enabled":
		return fmt.Sprintf("its namespace %s is not labelled %s=enabled", pod.Namespace, r.InjectionLabel)
	case strings.EqualFold(pod.Annotations[contract.InjectAnnotation], "false"):
		return "it opted out with annotation " + contract.InjectAnnotation + "=false"
	}
	return "it was not injected (created before its namespace opted in, an exception, or while guard mode was off)"
}

// SplitList splits a comma-separated flag value, dropping blanks and spaces around items.
func SplitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
