package binding

import (
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	aadv1 "github.com/podidentity/podidentity/api/v1"
)

const rid = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/"

func pod(ns, sel string) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: ns, Labels: map[string]string{"app": "web"}}}
	if sel != "" {
		p.Labels[aadv1.PodLabelBinding] = sel
	}
	return p
}

func mi(ns, name string, annotations map[string]string) aadv1.AzureIdentity {
	return aadv1.AzureIdentity{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Annotations: annotations},
		Spec:       aadv1.AzureIdentitySpec{Type: aadv1.UserAssignedMSI, ClientID: "cid-" + name, ResourceID: rid + name},
	}
}

func bind(ns, name, identity, sel string, weight int) aadv1.AzureIdentityBinding {
	return aadv1.AzureIdentityBinding{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       aadv1.AzureIdentityBindingSpec{AzureIdentity: identity, Selector: sel, Weight: weight},
	}
}

func names(ids []Identity) []string {
	var out []string
	for _, id := range ids {
		out = append(out, id.Namespace+"/"+id.Name)
	}
	return out
}

func TestResolve(t *testing.T) {
	namespaced := map[string]string{aadv1.BehaviorAnnotation: aadv1.BehaviorNamespaced}
	sp := aadv1.AzureIdentity{
		ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "sp"},
		Spec: aadv1.AzureIdentitySpec{Type: aadv1.ServicePrincipal, ClientID: "c", TenantID: "t",
			ClientPassword: corev1.SecretReference{Name: "sp-secret", Namespace: "apps"}},
	}
	bad := mi("apps", "bad", nil)
	bad.Spec.ResourceID = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm"
	tests := []struct {
		name         string
		pod          *corev1.Pod
		bindings     []aadv1.AzureIdentityBinding
		identities   []aadv1.AzureIdentity
		opts         Options
		want         []string
		wantProblems []string
	}{
		{name: "no label, nothing bound", pod: pod("apps", ""),
			bindings: []aadv1.AzureIdentityBinding{bind("apps", "b", "web", "web", 0)}, identities: []aadv1.AzureIdentity{mi("apps", "web", nil)}},
		{name: "selector match", pod: pod("apps", "web"),
			bindings:   []aadv1.AzureIdentityBinding{bind("apps", "b", "web", "web", 0), bind("apps", "other", "web", "other", 0)},
			identities: []aadv1.AzureIdentity{mi("apps", "web", nil)}, want: []string{"apps/web"}},
		{name: "selector is exact, not a prefix or case-folded", pod: pod("apps", "web"),
			bindings: []aadv1.AzureIdentityBinding{bind("apps", "b1", "web", "Web", 0), bind("apps", "b2", "web", "web2", 0)}, identities: []aadv1.AzureIdentity{mi("apps", "web", nil)}},
		{name: "binding in another namespace matches when not namespaced (AAD Pod Identity default)", pod: pod("apps", "web"),
			bindings: []aadv1.AzureIdentityBinding{bind("shared", "b", "web", "web", 0)}, identities: []aadv1.AzureIdentity{mi("shared", "web", nil)}, want: []string{"shared/web"}},
		{name: "forceNamespaced hides other namespaces", pod: pod("apps", "web"), opts: Options{ForceNamespaced: true},
			bindings: []aadv1.AzureIdentityBinding{bind("shared", "b", "web", "web", 0)}, identities: []aadv1.AzureIdentity{mi("shared", "web", nil)}},
		{name: "namespaced identity only for its own namespace", pod: pod("apps", "web"),
			bindings:   []aadv1.AzureIdentityBinding{bind("shared", "b", "web", "web", 0), bind("apps", "b", "own", "web", 0)},
			identities: []aadv1.AzureIdentity{mi("shared", "web", namespaced), mi("apps", "own", namespaced)}, want: []string{"apps/own"}},
		{name: "identity resolved in the binding's namespace, not the pod's", pod: pod("apps", "web"),
			bindings: []aadv1.AzureIdentityBinding{bind("shared", "b", "web", "web", 0)}, identities: []aadv1.AzureIdentity{mi("apps", "web", nil)},
			wantProblems: []string{"AzureIdentityBinding shared/b: AzureIdentity shared/web not found"}},
		{name: "weights order, ties by name; duplicates collapse to highest weight", pod: pod("apps", "web"),
			bindings:   []aadv1.AzureIdentityBinding{bind("apps", "b1", "a", "web", 1), bind("apps", "b2", "z", "web", 5), bind("apps", "b3", "m", "web", 1), bind("apps", "b4", "a", "web", 9)},
			identities: []aadv1.AzureIdentity{mi("apps", "a", nil), mi("apps", "z", nil), mi("apps", "m", nil)}, want: []string{"apps/a", "apps/z", "apps/m"}},
		{name: "invalid identities are problems, valid ones still bind", pod: pod("apps", "web"),
			bindings:   []aadv1.AzureIdentityBinding{bind("apps", "b1", "bad", "web", 0), bind("apps", "b2", "", "web", 0), bind("apps", "b3", "sp", "web", 0)},
			identities: []aadv1.AzureIdentity{bad, sp}, want: []string{"apps/sp"},
			wantProblems: []string{"AzureIdentityBinding apps/b1: AzureIdentity apps/bad: spec.resourceID", "AzureIdentityBinding apps/b2: spec.azureIdentity is empty"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, problems := Resolve(tc.pod, tc.bindings, tc.identities, tc.opts)
			// The webhook's keyed path (Candidates from an index, then Resolve) must agree exactly.
			if gotIndexed, problemsIndexed := resolveIndexed(t, tc.pod, newMapSource(tc.bindings, tc.identities), tc.opts); !reflect.DeepEqual(gotIndexed, got) || !reflect.DeepEqual(problemsIndexed, problems) {
				t.Errorf("keyed lookup: %+v %v; full walk: %+v %v", gotIndexed, problemsIndexed, got, problems)
			}
			if !reflect.DeepEqual(names(got), tc.want) {
				t.Errorf("identities = %v, want %v", names(got), tc.want)
			}
			if len(problems) != len(tc.wantProblems) {
				t.Fatalf("problems = %v, want %v", problems, tc.wantProblems)
			}
			for i := range problems {
				if !strings.HasPrefix(problems[i].String(), tc.wantProblems[i]) {
					t.Errorf("problem %d = %q, want prefix %q", i, problems[i], tc.wantProblems[i])
				}
			}
		})
	}
}

func TestServicePrincipalEntryNamesSecretButCarriesNoSecret(t *testing.T) {
	sp := aadv1.AzureIdentity{
		ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "sp"},
		Spec: aadv1.AzureIdentitySpec{Type: aadv1.ServicePrincipalCertificate, ClientID: "c", TenantID: "t",
			AuxiliaryTenantIDs: []string{"t2"}, ClientPassword: corev1.SecretReference{Name: "cert", Namespace: "apps"}},
	}
	got, _ := Resolve(pod("apps", "web"), []aadv1.AzureIdentityBinding{bind("apps", "b", "sp", "web", 0)}, []aadv1.AzureIdentity{sp}, Options{})
	want := []Identity{{Name: "sp", Namespace: "apps", Type: 2, ClientID: "c", TenantID: "t", AuxiliaryTenantIDs: []string{"t2"}, SecretName: "cert", Binding: "apps/b"}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v\nwant %+v", got, want)
	}
}

func TestEncodeDecode(t *testing.T) {
	ids := []Identity{{Name: "web", Namespace: "apps", Type: 0, ClientID: "c", ResourceID: rid + "web", Binding: "apps/b", Weight: 3}}
	enc := Encode(ids)
	if enc != Encode(ids) {
		t.Fatal("encoding is not stable")
	}
	dec, err := Decode(enc)
	if err != nil || !reflect.DeepEqual(dec, ids) {
		t.Fatalf("round trip: %+v, %v", dec, err)
	}
	if Encode(nil) != "[]" {
		t.Errorf("empty encodes as %q", Encode(nil))
	}
	if got, err := Decode(""); err != nil || got != nil {
		t.Errorf("empty value: %v, %v", got, err)
	}
	if _, err := Decode("{not json"); err == nil || !strings.Contains(err.Error(), "podidentity.io/identities") {
		t.Errorf("malformed value: %v", err)
	}
}

func TestExcepted(t *testing.T) {
	exc := []aadv1.AzurePodIdentityException{
		{ObjectMeta: metav1.ObjectMeta{Namespace: "other", Name: "a"}, Spec: aadv1.AzurePodIdentityExceptionSpec{PodLabels: map[string]string{"app": "web"}}},
		{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "z"}, Spec: aadv1.AzurePodIdentityExceptionSpec{PodLabels: map[string]string{"tier": "x", "app": "web"}}},
		{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "b"}, Spec: aadv1.AzurePodIdentityExceptionSpec{PodLabels: map[string]string{"app": "db"}}},
	}
	if name, ok := Excepted(pod("apps", ""), exc); !ok || name != "z" {
		t.Errorf("want exception z, got %q %v", name, ok)
	}
	if _, ok := Excepted(pod("elsewhere", ""), exc); ok {
		t.Error("an exception of another namespace must not apply")
	}
}

// TestExceptedCase pins AAD Pod Identity's semantics (pkg/pod.IsPodExcepted): the label key is looked up
// exactly, the value is compared with strings.EqualFold.
func TestExceptedCase(t *testing.T) {
	for _, tc := range []struct {
		name      string
		podLabels map[string]string
		exception map[string]string
		want      bool
	}{
		{"same key and value", map[string]string{"tier": "infra"}, map[string]string{"tier": "infra"}, true},
		{"value differs in case", map[string]string{"tier": "Infra"}, map[string]string{"tier": "infra"}, true},
		{"exception value upper case", map[string]string{"tier": "infra"}, map[string]string{"tier": "INFRA"}, true},
		{"mixed case both sides", map[string]string{"tier": "NoDe-AgEnT.v1"}, map[string]string{"tier": "nOdE-aGeNt.V1"}, true},
		{"key differs in case", map[string]string{"Tier": "infra"}, map[string]string{"tier": "infra"}, false},
		{"key differs in case, value too", map[string]string{"TIER": "INFRA"}, map[string]string{"tier": "infra"}, false},
		{"prefixed key differs in case", map[string]string{"Example.com/tier": "infra"}, map[string]string{"example.com/tier": "infra"}, false},
		{"value differs", map[string]string{"tier": "infra2"}, map[string]string{"tier": "infra"}, false},
		{"value is a prefix", map[string]string{"tier": "infr"}, map[string]string{"tier": "infra"}, false},
		{"empty value matches empty", map[string]string{"tier": ""}, map[string]string{"tier": ""}, true},
		{"missing key", map[string]string{"app": "infra"}, map[string]string{"tier": "infra"}, false},
		{"one of several pairs", map[string]string{"app": "WEB"}, map[string]string{"tier": "x", "app": "web"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "apps", Labels: tc.podLabels}}
			exc := []aadv1.AzurePodIdentityException{{
				ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "e"},
				Spec:       aadv1.AzurePodIdentityExceptionSpec{PodLabels: tc.exception},
			}}
			if _, got := Excepted(p, exc); got != tc.want {
				t.Errorf("pod labels %v, exception podLabels %v: excepted %v, want %v", tc.podLabels, tc.exception, got, tc.want)
			}
			// The namespace still has to match, whatever the case of the value.
			exc[0].Namespace = "other"
			if _, got := Excepted(p, exc); got {
				t.Errorf("an exception of another namespace applied")
			}
		})
	}
}

func TestServable(t *testing.T) {
	msi := Identity{Name: "web", Namespace: "apps", Type: aadv1.UserAssignedMSI, ClientID: "m"}
	sp := Identity{Name: "sp", Namespace: "apps", Type: aadv1.ServicePrincipal, ClientID: "s", SecretName: "sp-secret"}
	cert := Identity{Name: "cert", Namespace: "apps", Type: aadv1.ServicePrincipalCertificate, ClientID: "c", SecretName: "cert-secret"}
	vol := func(name, secret string) corev1.Volume {
		return corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: secret}}}
	}
	for _, tc := range []struct {
		name    string
		volumes []corev1.Volume
		want    string
	}{
		{"no volumes: managed identities only", nil, "web"},
		{"both secrets mounted as the webhook mounts them", []corev1.Volume{vol("podidentity-sp-sp", "sp-secret"), vol("podidentity-sp-cert", "cert-secret")}, "web,sp,cert"},
		{"a volume of another Secret does not count", []corev1.Volume{vol("podidentity-sp-sp", "other-secret")}, "web"},
		{"a user volume of the right Secret under another name does not count", []corev1.Volume{vol("creds", "sp-secret")}, "web"},
		{"an emptyDir with our name does not count", []corev1.Volume{{Name: "podidentity-sp-sp", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}, "web"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod := &corev1.Pod{Spec: corev1.PodSpec{Volumes: tc.volumes}}
			var got []string
			for _, id := range Servable(pod, []Identity{msi, sp, cert}) {
				got = append(got, id.Name)
			}
			if strings.Join(got, ",") != tc.want {
				t.Fatalf("Servable = %v, want %s", got, tc.want)
			}
		})
	}
}
