package inject

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

func TestParsePlacement(t *testing.T) {
	tests := []struct {
		name, label, taint string
		want               *Placement
		wantErr            string
	}{
		{name: "off"},
		{name: "pool", label: "podidentity.io/pool=identities", taint: "podidentity.io/pool=identities:NoExecute",
			want: &Placement{LabelKey: "podidentity.io/pool", LabelValue: "identities", Taint: corev1.Taint{Key: "podidentity.io/pool", Value: "identities", Effect: corev1.TaintEffectNoExecute}}},
		{name: "AKS pool label, taint without value", label: "kubernetes.azure.com/agentpool=idpool", taint: "identities:NoExecute",
			want: &Placement{LabelKey: "kubernetes.azure.com/agentpool", LabelValue: "idpool", Taint: corev1.Taint{Key: "identities", Effect: corev1.TaintEffectNoExecute}}},
		{name: "label only", label: "a=b", wantErr: "needs both"},
		{name: "taint only", taint: "a=b:NoExecute", wantErr: "needs both"},
		{name: "label without value", label: "pool", taint: "a=b:NoExecute", wantErr: "--identity-pool-label=\"pool\""},
		{name: "taint without effect", label: "a=b", taint: "a=b", wantErr: "--identity-pool-taint=\"a=b\""},
		{name: "NoSchedule: spec.nodeName would bypass it", label: "a=b", taint: "a=b:NoSchedule", wantErr: "the effect must be NoExecute"},
		{name: "soft taint", label: "a=b", taint: "a=b:PreferNoSchedule", wantErr: "the effect must be NoExecute"},
		{name: "bad taint key", label: "a=b", taint: "bad key=b:NoExecute", wantErr: "want a node taint"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParsePlacement(tc.label, tc.taint)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if (got == nil) != (tc.want == nil) || (got != nil && *got != *tc.want) {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}
