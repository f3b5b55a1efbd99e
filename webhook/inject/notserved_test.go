package inject

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/binding"
)

// TestNotServed: each way a bound service principal is left out of the annotation is reported as NotServed,
// with its reason and a message that says what to do, and is also an admission warning; served identities
// are not reported.
func TestNotServed(t *testing.T) {
	sp := func(ns, name, secretNS string) aadv1.AzureIdentity {
		return aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: aadv1.AzureIdentitySpec{
			Type: aadv1.ServicePrincipal, ClientID: "00000000-0000-0000-0000-0000000000c1", TenantID: "t",
			ClientPassword: corev1.SecretReference{Name: name + "-secret", Namespace: secretNS}}}
	}
	bind := func(ns, identity string) aadv1.AzureIdentityBinding {
		return aadv1.AzureIdentityBinding{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: identity}, Spec: aadv1.AzureIdentityBindingSpec{AzureIdentity: identity, Selector: "sel"}}
	}
	long := strings.Repeat("x", 60)
	for _, tc := range []struct {
		name       string
		identities []aadv1.AzureIdentity
		bindings   []aadv1.AzureIdentityBinding
		served     []string
		want       []NotServed // Message: a substring
	}{
		{"secret in the pod's namespace", []aadv1.AzureIdentity{sp("shop", "a", "shop")}, []aadv1.AzureIdentityBinding{bind("shop", "a")}, []string{"shop/a"}, nil},
		{"secret namespace empty: the identity's, which is the pod's", []aadv1.AzureIdentity{sp("shop", "a", "")}, []aadv1.AzureIdentityBinding{bind("shop", "a")}, []string{"shop/a"}, nil},
		{"secret in another namespace", []aadv1.AzureIdentity{sp("shop", "a", "vault")}, []aadv1.AzureIdentityBinding{bind("shop", "a")}, nil,
			[]NotServed{{"shop/a", ReasonSecretNamespace, "its secret vault/a-secret must be in the pod's namespace shop"}}},
		{"identity of another namespace, secret beside it", []aadv1.AzureIdentity{sp("vault", "a", "")}, []aadv1.AzureIdentityBinding{bind("vault", "a")}, nil,
			[]NotServed{{"vault/a", ReasonSecretNamespace, "copy the Secret into shop and bind the pod to an AzureIdentity of shop whose spec.clientPassword is {name: a-secret, namespace: shop}"}}},
		{"name too long for a volume", []aadv1.AzureIdentity{sp("shop", long, "shop")}, []aadv1.AzureIdentityBinding{bind("shop", long)}, nil,
			[]NotServed{{"shop/" + long, ReasonSecretVolumeName, "is not a DNS label"}}},
		{"two service principals of one name", []aadv1.AzureIdentity{sp("shop", "a", "shop"), sp("team", "a", "shop")}, []aadv1.AzureIdentityBinding{bind("shop", "a"), bind("team", "a")}, []string{"shop/a"},
			[]NotServed{{"team/a", ReasonDuplicateSPName, "rename one of them"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw, _ := json.Marshal(map[string]any{"apiVersion": "v1", "kind": "Pod",
				"metadata": map[string]any{"name": "p", "namespace": "shop", "labels": map[string]string{aadv1.PodLabelBinding: "sel"}},
				"spec":     map[string]any{"containers": []any{map[string]any{"name": "app", "image": "app:1"}}}})
			d := Decide(raw, "shop", Cluster{Bindings: tc.bindings, Identities: tc.identities}, DefaultSettings())
			if d.Action != ActionInject {
				t.Fatalf("action %s (%s), want injected", d.Action, d.Message)
			}
			var served []string
			for _, id := range d.Identities {
				served = append(served, id.Namespace+"/"+id.Name)
			}
			if !slices.Equal(served, tc.served) {
				t.Errorf("served %v, want %v", served, tc.served)
			}
			if len(d.NotServed) != len(tc.want) {
				t.Fatalf("NotServed %+v, want %d entries", d.NotServed, len(tc.want))
			}
			for i, w := range tc.want {
				got := d.NotServed[i]
				if got.Identity != w.Identity || got.Reason != w.Reason || !strings.Contains(got.Message, w.Message) {
					t.Errorf("NotServed[%d] = %+v, want %s %s containing %q", i, got, w.Identity, w.Reason, w.Message)
				}
				if !slices.Contains(d.Warnings, got.Message) {
					t.Errorf("NotServed message %q is not an admission warning %q", got.Message, d.Warnings)
				}
			}
			ann, _ := binding.Decode(annotationValue(t, raw, d))
			if len(ann) != len(tc.served) {
				t.Errorf("annotation lists %d identities, want %d", len(ann), len(tc.served))
			}
		})
	}
}

// annotationValue applies the decision's patch and returns the pod's identities annotation.
func annotationValue(t *testing.T, raw []byte, d Decision) string {
	t.Helper()
	var pod struct {
		Metadata struct {
			Annotations map[string]string `json:"annotations"`
		} `json:"metadata"`
	}
	if err := json.Unmarshal(applyPatch(t, raw, d), &pod); err != nil {
		t.Fatal(err)
	}
	return pod.Metadata.Annotations["podidentity.io/identities"]
}
