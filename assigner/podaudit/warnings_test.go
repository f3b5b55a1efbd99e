package podaudit

import (
	"strings"
	"testing"
)

func TestParseWarnings(t *testing.T) {
	tests := []struct {
		value            string
		reasons, unknown string
	}{
		{value: "", reasons: "", unknown: ""},
		{value: " , ,", reasons: "", unknown: ""},
		{value: "uid-change", reasons: "uid-change"},
		{value: "uid-change,opt-out-annotation", reasons: "opt-out-annotation uid-change"}, // fixed order
		{value: "host-network, windows ,exception", reasons: "exception host-network windows"},
		{value: "Host-Network,host-network", reasons: "host-network"}, // case and duplicates folded
		{value: "future-thing", reasons: "other", unknown: "future-thing"},
		{value: "a,b,c,uid-change", reasons: "uid-change other", unknown: "a b"}, // at most 2 quoted
		{value: strings.Repeat("x", 100), reasons: "other", unknown: strings.Repeat("x", 32) + "..."},
	}
	for _, tc := range tests {
		t.Run(tc.value, func(t *testing.T) {
			reasons, unknown := ParseWarnings(tc.value)
			if got := strings.Join(reasons, " "); got != tc.reasons {
				t.Errorf("reasons = %q, want %q", got, tc.reasons)
			}
			if got := strings.Join(unknown, " "); got != tc.unknown {
				t.Errorf("unknown = %q, want %q", got, tc.unknown)
			}
		})
	}
}

func TestWarningNote(t *testing.T) {
	tests := []struct {
		value string
		want  []string
	}{
		{"opt-out-annotation", []string{"podidentity.io/security-warnings", "may reach the node's IMDS, and every identity on its node, directly",
			"opt-out-annotation: annotation podidentity.io/inject=false opted it out of injection", "remove it and recreate the pod"}},
		{"exception", []string{"exception: an AzurePodIdentityException exempts it", "narrow or delete the exception"}},
		{"host-network", []string{"host-network: hostNetwork cannot be isolated", "remove hostNetwork: true"}},
		{"windows", []string{"windows: the redirect cannot isolate Windows pods"}},
		{"uid-change", []string{"uid-change: a container can switch to the token sidecar's uid", "CAP_SETUID",
			"capabilities.drop: [ALL]", "--sidecar-exemption=cgroup", "--uid-change-policy=deny"}},
		{"uid-change,brand-new", []string{"uid-change: ", "other (brand-new): a reason this assigner does not know"}},
	}
	for _, tc := range tests {
		t.Run(tc.value, func(t *testing.T) {
			note := WarningNote(ParseWarnings(tc.value))
			for _, w := range tc.want {
				if !strings.Contains(note, w) {
					t.Errorf("note %q lacks %q", note, w)
				}
			}
		})
	}
	// Every reason at once, with the longest unknown ones, still fits an Event's note.
	all := "opt-out-annotation,exception,host-network,windows,uid-change," + strings.Repeat("a", 60) + "," + strings.Repeat("b", 60) + "," + strings.Repeat("c", 60)
	if note := WarningNote(ParseWarnings(all)); len(note) > 1000 {
		t.Errorf("note with every reason is %d bytes; an Event's note is limited to 1 kB (the audit would cut it): %s", len(note), note)
	}
}
