package inject

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

func TestCanChangeUID(t *testing.T) {
	caps := func(drop, add []corev1.Capability) *corev1.Capabilities {
		return &corev1.Capabilities{Drop: drop, Add: add}
	}
	i64 := func(v int64) *int64 { return &v }
	tests := []struct {
		name string
		pod  *corev1.PodSecurityContext
		sc   *corev1.SecurityContext
		want bool
	}{
		{"no security context at all: root with runtime default caps", nil, nil, true},
		{"drop ALL", nil, &corev1.SecurityContext{Capabilities: caps([]corev1.Capability{"ALL"}, nil)}, false},
		{"drop all, lower case", nil, &corev1.SecurityContext{Capabilities: caps([]corev1.Capability{"all"}, nil)}, false},
		{"drop SETUID", nil, &corev1.SecurityContext{Capabilities: caps([]corev1.Capability{"SETUID"}, nil)}, false},
		{"drop CAP_SETUID", nil, &corev1.SecurityContext{Capabilities: caps([]corev1.Capability{"cap_setuid"}, nil)}, false},
		{"drop other caps only", nil, &corev1.SecurityContext{Capabilities: caps([]corev1.Capability{"NET_BIND_SERVICE", "SETGID"}, nil)}, true},
		{"drop ALL but add SETUID back", nil, &corev1.SecurityContext{Capabilities: caps([]corev1.Capability{"ALL"}, []corev1.Capability{"SETUID"})}, true},
		{"drop SETUID but add ALL", nil, &corev1.SecurityContext{Capabilities: caps([]corev1.Capability{"SETUID"}, []corev1.Capability{"all"})}, true},
		{"drop ALL, add another cap", nil, &corev1.SecurityContext{Capabilities: caps([]corev1.Capability{"ALL"}, []corev1.Capability{"NET_BIND_SERVICE"})}, false},
		{"container runAsUser>0 and no escalation", nil, &corev1.SecurityContext{RunAsUser: i64(1000), AllowPrivilegeEscalation: ptr(false)}, false},
		{"container runAsUser>0, escalation unset", nil, &corev1.SecurityContext{RunAsUser: i64(1000)}, true},
		{"container runAsUser>0, escalation true", nil, &corev1.SecurityContext{RunAsUser: i64(1000), AllowPrivilegeEscalation: ptr(true)}, true},
		{"container runAsUser 0, no escalation", nil, &corev1.SecurityContext{RunAsUser: i64(0), AllowPrivilegeEscalation: ptr(false)}, true},
		{"container runAsNonRoot and no escalation", nil, &corev1.SecurityContext{RunAsNonRoot: ptr(true), AllowPrivilegeEscalation: ptr(false)}, false},
		{"container runAsNonRoot false, no escalation", nil, &corev1.SecurityContext{RunAsNonRoot: ptr(false), AllowPrivilegeEscalation: ptr(false)}, true},
		{"no escalation only: may be root", nil, &corev1.SecurityContext{AllowPrivilegeEscalation: ptr(false)}, true},
		{"pod runAsUser>0 inherited, container no escalation", &corev1.PodSecurityContext{RunAsUser: i64(1000)}, &corev1.SecurityContext{AllowPrivilegeEscalation: ptr(false)}, false},
		{"pod runAsNonRoot inherited, container no escalation", &corev1.PodSecurityContext{RunAsNonRoot: ptr(true)}, &corev1.SecurityContext{AllowPrivilegeEscalation: ptr(false)}, false},
		{"pod runAsNonRoot, container has no securityContext", &corev1.PodSecurityContext{RunAsNonRoot: ptr(true)}, nil, true},
		{"pod runAsUser>0 overridden by container runAsUser 0", &corev1.PodSecurityContext{RunAsUser: i64(1000)}, &corev1.SecurityContext{RunAsUser: i64(0), AllowPrivilegeEscalation: ptr(false)}, true},
		{"pod runAsNonRoot overridden by container runAsNonRoot false", &corev1.PodSecurityContext{RunAsNonRoot: ptr(true)}, &corev1.SecurityContext{RunAsNonRoot: ptr(false), AllowPrivilegeEscalation: ptr(false)}, true},
		{"pod runAsUser 0, container runAsUser>0", &corev1.PodSecurityContext{RunAsUser: i64(0)}, &corev1.SecurityContext{RunAsUser: i64(1000), AllowPrivilegeEscalation: ptr(false)}, false},
		{"pod root, container runAsNonRoot", &corev1.PodSecurityContext{RunAsUser: i64(0)}, &corev1.SecurityContext{RunAsNonRoot: ptr(true), AllowPrivilegeEscalation: ptr(false)}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := CanChangeUID(tc.pod, tc.sc); got != tc.want {
				t.Errorf("CanChangeUID = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestParseUIDChangePolicy(t *testing.T) {
	for _, v := range []string{"warn", "deny", "ignore"} {
		if p, err := ParseUIDChangePolicy(v); err != nil || string(p) != v {
			t.Errorf("ParseUIDChangePolicy(%q) = %q, %v", v, p, err)
		}
	}
	for _, v := range []string{"", "Deny", "block"} {
		if _, err := ParseUIDChangePolicy(v); err == nil || !strings.Contains(err.Error(), "use warn, deny or ignore") {
			t.Errorf("ParseUIDChangePolicy(%q): error %v", v, err)
		}
	}
}

// TestUIDChangeDecide runs the policy through Decide: which containers are checked, and what each policy does.
func TestUIDChangeDecide(t *testing.T) {
	const root = `{"name":"app","image":"app"}`
	const safe = `{"name":"safe","image":"app","securityContext":{"capabilities":{"drop":["ALL"]}}}`
	tests := []struct {
		name       string
		policy     UIDChangePolicy
		pod        string
		wantAction Action
		wantNamed  []string // containers the denial or the warnings name
	}{
		{"warn: root app container", UIDChangeWarn, `{"spec":{"containers":[` + root + `]}}`, ActionInject, []string{`container "app"`}},
		{"deny: root app container", UIDChangeDeny, `{"spec":{"containers":[` + root + `]}}`, ActionDeny, []string{`container "app"`}},
		{"ignore: root app container", UIDChangeIgnore, `{"spec":{"containers":[` + root + `]}}`, ActionInject, nil},
		{"deny: safe container", UIDChangeDeny, `{"spec":{"containers":[` + safe + `]}}`, ActionInject, nil},
		{"deny: user init container", UIDChangeDeny, `{"spec":{"initContainers":[{"name":"setup","image":"x"}],"containers":[` + safe + `]}}`, ActionDeny, []string{`init container "setup"`}},
		{"warn: every container named", UIDChangeWarn, `{"spec":{"initContainers":[{"name":"setup","image":"x"}],"containers":[` + root + `,` + safe + `]}}`, ActionInject, []string{`init container "setup"`, `container "app"`}},
		{"deny: pod-level runAsNonRoot with container no escalation", UIDChangeDeny, `{"spec":{"securityContext":{"runAsNonRoot":true},"containers":[{"name":"app","image":"x","securityContext":{"allowPrivilegeEscalation":false}}]}}`, ActionInject, nil},
		{"deny: skipped pods are not checked", UIDChangeDeny, `{"metadata":{"annotations":{"podidentity.io/inject":"false"}},"spec":{"containers":[` + root + `]}}`, ActionSkip, nil},
	}
	t.Run("cgroup exemption: a root container gains nothing by a uid change", func(t *testing.T) {
		s := DefaultSettings() // cgroup exemption, policy deny
		d := Decide([]byte(`{"spec":{"containers":[`+root+`]}}`), "default", Cluster{}, s)
		if d.Action != ActionInject || len(d.SecurityWarnings) != 0 {
			t.Errorf("action %s, security warnings %v; want injected without any", d.Action, d.SecurityWarnings)
		}
	})
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := DefaultSettings()
			s.Exemption = ExemptionUID
			s.UIDChangePolicy = tc.policy
			d := Decide([]byte(tc.pod), "default", Cluster{}, s)
			if d.Action != tc.wantAction {
				t.Fatalf("action %s (%s), want %s", d.Action, d.Message, tc.wantAction)
			}
			var texts []string
			for _, w := range d.Warnings {
				if strings.Contains(w, "can change its uid") {
					texts = append(texts, w)
				}
			}
			if d.Action == ActionDeny {
				if d.Reason != ReasonUIDChange {
					t.Errorf("reason %q, want %q", d.Reason, ReasonUIDChange)
				}
				texts = append(texts, d.Message)
			}
			if len(texts) != len(tc.wantNamed) {
				t.Fatalf("uid-change messages %q, want ones naming %q", texts, tc.wantNamed)
			}
			for i, want := range tc.wantNamed {
				if !strings.HasPrefix(texts[i], "podidentity: "+want+" can change its uid to the token sidecar's uid 15078") ||
					!strings.Contains(texts[i], `securityContext.capabilities.drop: ["ALL"]`) || !strings.Contains(texts[i], "runAsNonRoot: true with allowPrivilegeEscalation: false") {
					t.Errorf("message %q: want it to name %s and say what to set", texts[i], want)
				}
			}
		})
	}
}
