package podaudit

import (
	"fmt"
	"strings"

	"github.com/podidentity/podidentity/internal/contract"
)

// Security-warning reasons the webhook records in the pod annotation podidentity.io/security-warnings
// (contract.SecurityWarningsAnnotation), and WarningOther, the metric label of any other value: the
// annotation is a pod's own metadata, so its values must not become unbounded label values.
const (
	WarningOptOut      = "opt-out-annotation"
	WarningException   = "exception"
	WarningHostNetwork = "host-network"
	WarningWindows     = "windows"
	WarningUIDChange   = "uid-change"
	WarningOther       = "other"
)

// warningOrder is the order reasons are reported in (metric labels and Event notes).
func warningOrder() []string {
	return []string{WarningOptOut, WarningException, WarningHostNetwork, WarningWindows, WarningUIDChange, WarningOther}
}

// meaning says why a reason weakens the pod's isolation, and what to do about it. Short: all of them, and
// the header of WarningNote, fit the 1 kB of an Event's note.
func meaning(reason string) string {
	switch reason {
	case WarningOptOut:
		return "annotation " + contract.InjectAnnotation + "=false opted it out of injection (remove it and recreate the pod)"
	case WarningException:
		return "an AzurePodIdentityException exempts it from injection (narrow or delete the exception and recreate the pod)"
	case WarningHostNetwork:
		return "hostNetwork cannot be isolated (remove hostNetwork: true)"
	case WarningWindows:
		return "the redirect cannot isolate Windows pods (run it on nodes without identities)"
	case WarningUIDChange:
		return "a container can switch to the token sidecar's uid (root or CAP_SETUID), whose traffic bypasses the redirect " +
			"(drop SETUID, e.g. capabilities.drop: [ALL], or run as non-root with allowPrivilegeEscalation: false; webhook: --sidecar-exemption=cgroup or --uid-change-policy=deny)"
	}
	return "a reason this assigner does not know (a newer webhook?)"
}

// maxUnknown bounds how many unknown reasons a note quotes, and maxUnknownLen their length: the annotation is
// the pod's own, and an Event's note is limited to 1 kB.
const (
	maxUnknown    = 2
	maxUnknownLen = 32
)

// ParseWarnings reads the value of the security-warnings annotation: the known reasons, deduplicated, in
// warningOrder, with WarningOther last when some value is unknown; and the unknown values themselves
// (shortened, at most maxUnknown), for the note.
func ParseWarnings(value string) (reasons, unknown []string) {
	seen := map[string]bool{}
	for _, r := range strings.Split(value, ",") {
		r = strings.ToLower(strings.TrimSpace(r))
		if r == "" || seen[r] {
			continue
		}
		seen[r] = true
		switch r {
		case WarningOptOut, WarningException, WarningHostNetwork, WarningWindows, WarningUIDChange:
		default:
			seen[WarningOther] = true
			if len(unknown) < maxUnknown {
				if len(r) > maxUnknownLen {
					r = strings.ToValidUTF8(r[:maxUnknownLen], "") + "..." // not cutting a character in two
				}
				unknown = append(unknown, r)
			}
		}
	}
	for _, r := range warningOrder() {
		if seen[r] {
			reasons = append(reasons, r)
		}
	}
	return reasons, unknown
}

// WarningNote is the note of the PodIdentitySecurityWarning Event: each reason and what it means.
func WarningNote(reasons, unknown []string) string {
	parts := make([]string, 0, len(reasons))
	for _, r := range reasons {
		label := r
		if r == WarningOther {
			label = fmt.Sprintf("%s (%s)", r, strings.Join(unknown, ", "))
		}
		parts = append(parts, label+": "+meaning(r))
	}
	return fmt.Sprintf("the podidentity webhook admitted this pod with security warnings (%s): "+
		"it may reach the node's IMDS, and every identity on its node, directly. %s",
		contract.SecurityWarningsAnnotation, strings.Join(parts, "; "))
}
