package binding

import (
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/contract"
)

func federated(ns, name string, typ aadv1.IdentityType, backend string) aadv1.AzureIdentity {
	return aadv1.AzureIdentity{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Annotations: map[string]string{aadv1.BackendAnnotation: backend}},
		Spec:       aadv1.AzureIdentitySpec{Type: typ, ClientID: "cid-" + name, TenantID: "tenant", ADEndpoint: "https://login.example/"},
	}
}

func withSA(p *corev1.Pod, sa string) *corev1.Pod {
	p.Spec.ServiceAccountName = sa
	return p
}

func accounts(b aadv1.AzureIdentityBinding, list string) aadv1.AzureIdentityBinding {
	b.Annotations = map[string]string{aadv1.ServiceAccountsAnnotation: list}
	return b
}

func TestResolveFederatedAndServiceAccounts(t *testing.T) {
	fed := federated("apps", "fed", aadv1.UserAssignedMSI, "federated")
	noTenant := federated("apps", "notenant", aadv1.UserAssignedMSI, "federated")
	noTenant.Spec.TenantID = ""
	unknown := federated("apps", "unknown", aadv1.UserAssignedMSI, "nodes")
	tests := []struct {
		name         string
		pod          *corev1.Pod
		bindings     []aadv1.AzureIdentityBinding
		identities   []aadv1.AzureIdentity
		want         []Identity
		wantProblems []string
	}{
		{name: "federated identity: backend, tenant and authority recorded, no secret, no resource ID needed",
			pod: pod("apps", "web"), bindings: []aadv1.AzureIdentityBinding{bind("apps", "b", "fed", "web", 0)},
			identities: []aadv1.AzureIdentity{fed},
			want: []Identity{{Name: "fed", Namespace: "apps", Type: aadv1.UserAssignedMSI, ClientID: "cid-fed", TenantID: "tenant",
				ADEndpoint: "https://login.example/", Backend: contract.BackendFederated, Binding: "apps/b"}}},
		{name: "backend value in any letter case", pod: pod("apps", "web"), bindings: []aadv1.AzureIdentityBinding{bind("apps", "b", "fed", "web", 0)},
			identities: []aadv1.AzureIdentity{federated("apps", "fed", aadv1.ServicePrincipal, "Federated")},
			want: []Identity{{Name: "fed", Namespace: "apps", Type: aadv1.ServicePrincipal, ClientID: "cid-fed", TenantID: "tenant",
				ADEndpoint: "https://login.example/", Backend: contract.BackendFederated, Binding: "apps/b"}}},
		{name: "explicit node backend is the default", pod: pod("apps", "web"), bindings: []aadv1.AzureIdentityBinding{bind("apps", "b", "web", "web", 0)},
			identities: []aadv1.AzureIdentity{mi("apps", "web", map[string]string{aadv1.BackendAnnotation: "node"})},
			want:       []Identity{{Name: "web", Namespace: "apps", Type: aadv1.UserAssignedMSI, ClientID: "cid-web", ResourceID: rid + "web", Binding: "apps/b"}}},
		{name: "federated without tenant is a problem", pod: pod("apps", "web"), bindings: []aadv1.AzureIdentityBinding{bind("apps", "b", "notenant", "web", 0)},
			identities: []aadv1.AzureIdentity{noTenant}, wantProblems: []string{"spec.tenantID"}},
		{name: "unknown backend is a problem", pod: pod("apps", "web"), bindings: []aadv1.AzureIdentityBinding{bind("apps", "b", "unknown", "web", 0)},
			identities: []aadv1.AzureIdentity{unknown}, wantProblems: []string{`"nodes"`}},
		{name: "service account listed by name (binding's namespace)", pod: withSA(pod("apps", "web"), "api"),
			bindings:   []aadv1.AzureIdentityBinding{accounts(bind("apps", "b", "fed", "web", 0), "other, api")},
			identities: []aadv1.AzureIdentity{fed},
			want: []Identity{{Name: "fed", Namespace: "apps", Type: aadv1.UserAssignedMSI, ClientID: "cid-fed", TenantID: "tenant",
				ADEndpoint: "https://login.example/", Backend: contract.BackendFederated, Binding: "apps/b"}}},
		{name: "service account of another service account refused, with the reason", pod: withSA(pod("apps", "web"), "intruder"),
			bindings: []aadv1.AzureIdentityBinding{accounts(bind("apps", "b", "fed", "web", 0), "api")}, identities: []aadv1.AzureIdentity{fed},
			wantProblems: []string{"service account apps/intruder"}},
		{name: "unset serviceAccountName is default", pod: pod("apps", "web"),
			bindings:   []aadv1.AzureIdentityBinding{accounts(bind("apps", "b", "web", "web", 0), "default")},
			identities: []aadv1.AzureIdentity{mi("apps", "web", nil)},
			want:       []Identity{{Name: "web", Namespace: "apps", Type: aadv1.UserAssignedMSI, ClientID: "cid-web", ResourceID: rid + "web", Binding: "apps/b"}}},
		{name: "a bare name means the binding's namespace, not the pod's", pod: withSA(pod("apps", "web"), "api"),
			bindings:   []aadv1.AzureIdentityBinding{accounts(bind("shared", "b", "web", "web", 0), "api")},
			identities: []aadv1.AzureIdentity{mi("shared", "web", nil)}, wantProblems: []string{"service account apps/api"}},
		{name: "namespace/name reaches another namespace's pods", pod: withSA(pod("apps", "web"), "api"),
			bindings:   []aadv1.AzureIdentityBinding{accounts(bind("shared", "b", "web", "web", 0), "apps/api")},
			identities: []aadv1.AzureIdentity{mi("shared", "web", nil)},
			want:       []Identity{{Name: "web", Namespace: "shared", Type: aadv1.UserAssignedMSI, ClientID: "cid-web", ResourceID: rid + "web", Binding: "shared/b"}}},
		{name: "an empty list binds nobody", pod: pod("apps", "web"),
			bindings: []aadv1.AzureIdentityBinding{accounts(bind("apps", "b", "web", "web", 0), " , ")}, identities: []aadv1.AzureIdentity{mi("apps", "web", nil)},
			wantProblems: []string{"does not list"}},
		{name: "the label is still required", pod: withSA(pod("apps", ""), "api"),
			bindings: []aadv1.AzureIdentityBinding{accounts(bind("apps", "b", "web", "web", 0), "api")}, identities: []aadv1.AzureIdentity{mi("apps", "web", nil)}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, problems := Resolve(tc.pod, tc.bindings, tc.identities, Options{})
			if len(got) == 0 {
				got = nil
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("identities:\n got %+v\nwant %+v", got, tc.want)
			}
			if len(problems) != len(tc.wantProblems) {
				t.Fatalf("problems %v, want %d containing %q", problems, len(tc.wantProblems), tc.wantProblems)
			}
			for i, p := range problems {
				if !strings.Contains(p.String(), tc.wantProblems[i]) {
					t.Errorf("problem %q does not contain %q", p, tc.wantProblems[i])
				}
			}
		})
	}
}

func TestServableFederatedNeedsTheProjectedToken(t *testing.T) {
	ids := []Identity{
		{Name: "node", Namespace: "apps", Type: aadv1.UserAssignedMSI, ClientID: "a"},
		{Name: "fed", Namespace: "apps", Type: aadv1.UserAssignedMSI, ClientID: "b", TenantID: "t", Backend: contract.BackendFederated},
	}
	volume := func(audience string) corev1.Volume {
		return corev1.Volume{Name: contract.FederatedTokenVolumeName, VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
			Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Audience: audience, Path: "token"}}}}}}
	}
	for _, tc := range []struct {
		name string
		vols []corev1.Volume
		want []string
	}{
		{"no token volume: only the node identity", nil, []string{"apps/node"}},
		{"token volume of another audience", []corev1.Volume{volume("api://other")}, []string{"apps/node"}},
		{"token volume of another kind", []corev1.Volume{{Name: contract.FederatedTokenVolumeName, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}, []string{"apps/node"}},
		{"the webhook's token volume: both", []corev1.Volume{volume(contract.FederatedAudience)}, []string{"apps/node", "apps/fed"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := pod("apps", "web")
			p.Spec.Volumes = tc.vols
			if got := names(Servable(p, ids)); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Servable = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestOldAnnotationsStillDecode(t *testing.T) {
	// Written before federation: no backend field; decodes as a node identity.
	ids, err := Decode(`[{"name":"web","namespace":"apps","type":0,"clientID":"c","resourceID":"r","binding":"apps/b"}]`)
	if err != nil || len(ids) != 1 || ids[0].Federated() || ids[0].Backend != "" {
		t.Fatalf("Decode = %+v, %v", ids, err)
	}
	fed := Identity{Name: "f", Namespace: "apps", ClientID: "c", TenantID: "t", Backend: contract.BackendFederated, Binding: "apps/b"}
	back, err := Decode(Encode([]Identity{fed}))
	if err != nil || len(back) != 1 || !back[0].Federated() || !reflect.DeepEqual(back[0], fed) {
		t.Fatalf("round trip = %+v, %v", back, err)
	}
}
