package inject

import (
	"encoding/json"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	aadv1 "github.com/podidentity/podidentity/api/v1"
)

// TestExceptionMatchingCase: an AzurePodIdentityException exempts a pod as AAD Pod Identity's NMI did
// (pkg/pod.IsPodExcepted upstream): the label key must be the same, the value matches in any letter case. A
// migrating cluster's exceptions keep exempting the same pods, no more.
func TestExceptionMatchingCase(t *testing.T) {
	for _, tc := range []struct {
		name      string
		podLabels map[string]string
		exception map[string]string
		excNS     string
		want      Action
	}{
		{"exact", map[string]string{"tier": "infra"}, map[string]string{"tier": "infra"}, "shop", ActionSkip},
		{"pod value upper case", map[string]string{"tier": "INFRA"}, map[string]string{"tier": "infra"}, "shop", ActionSkip},
		{"exception value mixed case", map[string]string{"tier": "infra"}, map[string]string{"tier": "InFrA"}, "shop", ActionSkip},
		{"key case differs", map[string]string{"Tier": "infra"}, map[string]string{"tier": "infra"}, "shop", ActionInject},
		{"value differs beyond case", map[string]string{"tier": "infra-2"}, map[string]string{"tier": "INFRA"}, "shop", ActionInject},
		{"case-insensitive value, other namespace", map[string]string{"tier": "INFRA"}, map[string]string{"tier": "infra"}, "other", ActionInject},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw, err := json.Marshal(map[string]any{
				"apiVersion": "v1", "kind": "Pod",
				"metadata": map[string]any{"name": "agent", "namespace": "shop", "labels": tc.podLabels},
				"spec":     map[string]any{"containers": []any{map[string]any{"name": "agent", "image": "agent:1"}}},
			})
			if err != nil {
				t.Fatal(err)
			}
			cluster := Cluster{Exceptions: []aadv1.AzurePodIdentityException{{
				ObjectMeta: metav1.ObjectMeta{Namespace: tc.excNS, Name: "infra-agents"},
				Spec:       aadv1.AzurePodIdentityExceptionSpec{PodLabels: tc.exception},
			}}}
			d := Decide(raw, "shop", cluster, DefaultSettings())
			if d.Action != tc.want {
				t.Fatalf("pod labels %v, exception %v in %s: %s (%s), want %s", tc.podLabels, tc.exception, tc.excNS, d.Action, d.Message, tc.want)
			}
			if tc.want == ActionSkip && (d.Reason != ReasonException || len(d.SecurityWarnings) != 1 || d.SecurityWarnings[0] != ReasonException) {
				t.Errorf("skip without the exception reason and security warning: %+v", d)
			}
		})
	}
}
