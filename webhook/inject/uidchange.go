package inject

import (
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/podidentity/podidentity/internal/contract"
)

// UIDChangePolicy says what the webhook does, under the uid exemption (ExemptionUID), with a user container
// that is able to change its uid: such a container can setuid to the sidecar's uid, whose sockets the init
// container's rules then exempt, and reach the node's IMDS for every identity attached to the node. Under the
// cgroup exemption (the default) a uid change gains nothing and the policy is not consulted.
type UIDChangePolicy string

const (
	// UIDChangeWarn admits and injects the pod with an admission warning, a Warning Event and a metric.
	UIDChangeWarn UIDChangePolicy = "warn"
	// UIDChangeDeny refuses the pod: this closes the hole (the default).
	UIDChangeDeny UIDChangePolicy = "deny"
	// UIDChangeIgnore checks nothing.
	UIDChangeIgnore UIDChangePolicy = "ignore"
)

// ParseUIDChangePolicy reads a --uid-change-policy value.
func ParseUIDChangePolicy(v string) (UIDChangePolicy, error) {
	switch p := UIDChangePolicy(v); p {
	case UIDChangeWarn, UIDChangeDeny, UIDChangeIgnore:
		return p, nil
	}
	return "", fmt.Errorf("%q: use warn, deny or ignore", v)
}

// CanChangeUID reports whether a container with security context sc, in a pod with security context pod, may
// be able to call setuid(2): unless it drops CAP_SETUID, or runs as a non-root uid with privilege escalation
// explicitly off (then no setuid binary or file capability can give CAP_SETUID back), it is assumed able to.
// The webhook cannot see an image's USER, so an unset runAsUser counts as root.
func CanChangeUID(pod *corev1.PodSecurityContext, sc *corev1.SecurityContext) bool {
	if dropsSetUID(sc) {
		return false
	}
	noEscalation := sc != nil && sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation
	return !(noEscalation && runsAsNonRoot(pod, sc))
}

// dropsSetUID: capabilities.drop names SETUID or ALL and capabilities.add names neither.
func dropsSetUID(sc *corev1.SecurityContext) bool {
	if sc == nil || sc.Capabilities == nil {
		return false
	}
	return namesSetUID(sc.Capabilities.Drop) && !namesSetUID(sc.Capabilities.Add)
}

func namesSetUID(caps []corev1.Capability) bool {
	for _, c := range caps {
		n := strings.TrimPrefix(strings.ToUpper(string(c)), "CAP_")
		if n == "SETUID" || n == "ALL" {
			return true
		}
	}
	return false
}

// runsAsNonRoot: the effective runAsUser (container over pod) is above 0, or the effective runAsNonRoot is
// true (the kubelet then refuses to start the container as root).
func runsAsNonRoot(pod *corev1.PodSecurityContext, sc *corev1.SecurityContext) bool {
	var uid *int64
	var nonRoot *bool
	if pod != nil {
		uid, nonRoot = pod.RunAsUser, pod.RunAsNonRoot
	}
	if sc != nil && sc.RunAsUser != nil {
		uid = sc.RunAsUser
	}
	if sc != nil && sc.RunAsNonRoot != nil {
		nonRoot = sc.RunAsNonRoot
	}
	return (uid != nil && *uid > 0) || (nonRoot != nil && *nonRoot)
}

// uidChangeMessage is the denial or warning text for a container able to change its uid.
func uidChangeMessage(kind, name string, sidecarUID int64) string {
	return fmt.Sprintf(`%s %q can change its uid to the token sidecar's uid %d and bypass the IMDS redirect; set securityContext.capabilities.drop: ["ALL"], or runAsNonRoot: true with allowPrivilegeEscalation: false`, kind, name, sidecarUID)
}

// uidChangeFindings lists the messages for the user containers (not ours) that can change their uid.
// Ephemeral containers are listed only when withEphemeral (they exist only on the ephemeralcontainers
// subresource).
func uidChangeFindings(pod *corev1.Pod, s Settings, withEphemeral bool) []string {
	if s.UIDChangePolicy == UIDChangeIgnore || s.Exemption != ExemptionUID {
		return nil
	}
	var out []string
	check := func(kind string, name string, sc *corev1.SecurityContext) {
		if CanChangeUID(pod.Spec.SecurityContext, sc) {
			out = append(out, uidChangeMessage(kind, name, s.SidecarUID))
		}
	}
	for _, list := range []struct {
		kind string
		cs   []corev1.Container
	}{{"init container", pod.Spec.InitContainers}, {"container", pod.Spec.Containers}} {
		for i := range list.cs {
			if c := &list.cs[i]; !isOurs(c.Name) {
				check(list.kind, c.Name, c.SecurityContext)
			}
		}
	}
	if withEphemeral {
		for i := range pod.Spec.EphemeralContainers {
			ec := &pod.Spec.EphemeralContainers[i]
			check("ephemeral container", ec.Name, ec.SecurityContext)
		}
	}
	return out
}

// uidChangeDecision applies the policy to the findings: a denial naming the first container under deny, or
// the warnings under warn.
func uidChangeDecision(findings []string, p UIDChangePolicy) (d Decision, denied bool, warnings []string) {
	if len(findings) == 0 {
		return Decision{}, false, nil
	}
	switch p {
	case UIDChangeDeny:
		return deny(ReasonUIDChange, findings[0]), true, nil
	case UIDChangeIgnore:
		return Decision{}, false, nil
	}
	for _, f := range findings {
		warnings = append(warnings, "podidentity: "+f)
	}
	return Decision{}, false, warnings
}

func isOurs(name string) bool {
	return name == contract.InitContainerName || name == contract.SidecarContainerName
}
