package desired

import (
	"sort"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/contract"
)

const (
	ssA = "azure:///subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/ssa/virtualMachines/"
	vm1 = "azure:///subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1"
)

func node(name, providerID string) corev1.Node {
	return corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.NodeSpec{ProviderID: providerID}}
}

// pod is a pod as the webhook leaves it in an opted-in namespace (annotated; see optedIn for the namespace).
func pod(ns, name, node, sel string, labels ...string) corev1.Pod {
	p := plainPod(ns, name, node, sel, labels...)
	p.Annotations = map[string]string{contract.IdentitiesAnnotation: "[]"}
	return p
}

// plainPod is a pod the webhook did not inject.
func plainPod(ns, name, node, sel string, labels ...string) corev1.Pod {
	l := map[string]string{}
	if sel != "" {
		l[aadv1.PodLabelBinding] = sel
	}
	for i := 0; i+1 < len(labels); i += 2 {
		l[labels[i]] = labels[i+1]
	}
	return corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: l}, Spec: corev1.PodSpec{NodeName: node}}
}

// optedIn gives each namespace the default opt-in label.
func optedIn(namespaces ...string) map[string]map[string]string {
	out := map[string]map[string]string{}
	for _, ns := range namespaces {
		out[ns] = map[string]string{contract.NamespaceInjectionLabel: "enabled"}
	}
	return out
}

func msi(ns, name, rid string) aadv1.AzureIdentity {
	return aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: aadv1.AzureIdentitySpec{Type: aadv1.UserAssignedMSI, ClientID: "c-" + name, ResourceID: rid}}
}

func uami(name string) string {
	return "/subscriptions/s/resourceGroups/ids/providers/Microsoft.ManagedIdentity/userAssignedIdentities/" + name
}

func bind(ns, name, identity, sel string) aadv1.AzureIdentityBinding {
	return aadv1.AzureIdentityBinding{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: aadv1.AzureIdentityBindingSpec{AzureIdentity: identity, Selector: sel}}
}

func TestCompute(t *testing.T) {
	sp := aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "sp"},
		Spec: aadv1.AzureIdentitySpec{Type: aadv1.ServicePrincipal, ClientID: "c", TenantID: "t", ClientPassword: corev1.SecretReference{Name: "s"}}}
	base := Input{
		Nodes: []corev1.Node{node("n0", ssA+"0"), node("n1", strings.ToUpper(ssA)+"1"), node("v", vm1), node("bare", "")},
		Identities: []aadv1.AzureIdentity{msi("ns", "one", uami("One")), msi("ns", "two", uami("two")),
			msi("ns", "one-again", strings.ToLower(uami("One"))), sp},
		Bindings: []aadv1.AzureIdentityBinding{bind("ns", "b1", "one", "app1"), bind("ns", "b2", "two", "app2"),
			bind("ns", "b3", "sp", "app2"), bind("ns", "b4", "one-again", "app3")},
		NamespaceLabels: optedIn("ns"),
	}
	tests := []struct {
		name            string
		pods            []corev1.Pod
		exceptions      []aadv1.AzurePodIdentityException
		wantAssignments []string
		wantResources   map[string][]string
		wantSkipped     int
	}{
		{name: "no pods", wantResources: map[string][]string{}},
		{name: "two nodes of one scale set share the resource, case folded",
			pods:            []corev1.Pod{pod("ns", "p0", "n0", "app1"), pod("ns", "p1", "n1", "app2")},
			wantAssignments: []string{"ns/p0-ns-one", "ns/p1-ns-sp", "ns/p1-ns-two"},
			wantResources: map[string][]string{
				"/subscriptions/s/resourcegroups/rg/providers/microsoft.compute/virtualmachinescalesets/ssa": {uami("One"), uami("two")},
			}},
		{name: "standalone VM, identity reached twice with different casing collapses",
			pods:            []corev1.Pod{pod("ns", "p", "v", "app1"), pod("ns", "q", "v", "app3")},
			wantAssignments: []string{"ns/p-ns-one", "ns/q-ns-one-again"},
			wantResources:   map[string][]string{"/subscriptions/s/resourcegroups/rg/providers/microsoft.compute/virtualmachines/vm1": {"x"}}},
		{name: "unscheduled, unlabelled, finished and excepted pods need nothing",
			pods: func() []corev1.Pod {
				done := pod("ns", "done", "n0", "app1")
				done.Status.Phase = corev1.PodSucceeded
				return []corev1.Pod{pod("ns", "pending", "", "app1"), pod("ns", "plain", "n0", ""), done,
					pod("ns", "exc", "n0", "app1", "skip", "yes")}
			}(),
			exceptions: []aadv1.AzurePodIdentityException{{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "e"},
				Spec: aadv1.AzurePodIdentityExceptionSpec{PodLabels: map[string]string{"skip": "yes"}}}},
			wantResources: map[string][]string{}},
		{name: "node without providerID or missing node is skipped",
			pods:          []corev1.Pod{pod("ns", "a", "bare", "app1"), pod("ns", "b", "gone", "app1")},
			wantResources: map[string][]string{}, wantSkipped: 2},
		{name: "service principal only: assignment without ARM",
			pods:            []corev1.Pod{pod("ns", "p", "n0", "app2")},
			wantAssignments: []string{"ns/p-ns-sp", "ns/p-ns-two"},
			wantResources: map[string][]string{
				"/subscriptions/s/resourcegroups/rg/providers/microsoft.compute/virtualmachinescalesets/ssa": {uami("two")},
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := base
			in.Pods, in.Exceptions = tc.pods, tc.exceptions
			st := Compute(in)
			var got []string
			for k, a := range st.Assignments {
				got = append(got, k)
				if a.Object().Annotations[ResourceAnnotation] != a.Resource.ID() || a.Object().Spec.AzureIdentityRef.Name != a.Identity.Name {
					t.Errorf("object of %s does not carry its resource and identity", k)
				}
			}
			sort.Strings(got)
			if strings.Join(got, ",") != strings.Join(tc.wantAssignments, ",") {
				t.Errorf("assignments = %v, want %v", got, tc.wantAssignments)
			}
			if len(st.Resources) != len(tc.wantResources) {
				t.Fatalf("resources = %v, want %v", st.Resources, tc.wantResources)
			}
			for k, want := range tc.wantResources {
				r := st.Resources[k]
				if r == nil {
					t.Fatalf("resource %s missing; have %v", k, st.Resources)
				}
				if len(r.IDs) != len(want) {
					t.Fatalf("resource %s ids = %v, want %d of %v", k, r.IDs, len(want), want)
				}
				for _, w := range want {
					if w != "x" && r.IDs[strings.ToLower(w)] != w {
						t.Errorf("resource %s lacks %s: %v", k, w, r.IDs)
					}
				}
			}
			if len(st.Skipped) != tc.wantSkipped {
				t.Errorf("skipped = %v, want %d", st.Skipped, tc.wantSkipped)
			}
			if len(st.Uninjected) != 0 {
				t.Errorf("uninjected = %v, want none (every pod is injected)", st.Uninjected)
			}
		})
	}
}

func TestAssignedIdentityName(t *testing.T) {
	if got := AssignedIdentityName("web-0", "prod", "reader"); got != "web-0-prod-reader" {
		t.Fatalf("got %q", got)
	}
	long := AssignedIdentityName(strings.Repeat("p", 200), "ns", strings.Repeat("i", 100))
	other := AssignedIdentityName(strings.Repeat("p", 200), "ns", strings.Repeat("i", 99)+"j")
	if len(long) != 253 || long == other {
		t.Fatalf("long names must be 253 chars and distinct: %d %q %q", len(long), long, other)
	}
}

// TestFederatedIdentitiesAreNotAttached: a federated identity yields no assignment and no ARM work in any mode;
// with FederatedOnly a node identity yields none either, only a NotAttached entry saying what to do.
func TestFederatedIdentitiesAreNotAttached(t *testing.T) {
	node := corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n"}, Spec: corev1.NodeSpec{ProviderID: "azure:///subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/ss/virtualMachines/0"}}
	fed := aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "fed", Annotations: map[string]string{aadv1.BackendAnnotation: aadv1.BackendFederated}},
		Spec: aadv1.AzureIdentitySpec{Type: aadv1.UserAssignedMSI, ClientID: "c-fed", TenantID: "t",
			ResourceID: "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/fed"}}
	mi := aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "mi"},
		Spec: aadv1.AzureIdentitySpec{Type: aadv1.UserAssignedMSI, ClientID: "c-mi",
			ResourceID: "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/mi"}}
	bindings := []aadv1.AzureIdentityBinding{
		{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "fed"}, Spec: aadv1.AzureIdentityBindingSpec{AzureIdentity: "fed", Selector: "web"}},
		{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "mi"}, Spec: aadv1.AzureIdentityBindingSpec{AzureIdentity: "mi", Selector: "web"}},
	}
	pod := corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "p", Labels: map[string]string{aadv1.PodLabelBinding: "web"},
		Annotations: map[string]string{contract.IdentitiesAnnotation: "[]"}}, Spec: corev1.PodSpec{NodeName: "n"}}
	in := Input{Pods: []corev1.Pod{pod}, Nodes: []corev1.Node{node}, Bindings: bindings, Identities: []aadv1.AzureIdentity{fed, mi},
		NamespaceLabels: map[string]map[string]string{"apps": {contract.NamespaceInjectionLabel: "enabled"}}}

	st := Compute(in)
	if len(st.Assignments) != 1 || st.Assignments["apps/p-apps-mi"].Identity == nil || len(st.NotAttached) != 0 {
		t.Fatalf("assignments %v, not attached %v", st.Assignments, st.NotAttached)
	}
	for _, r := range st.Resources {
		if len(r.IDs) != 1 || r.IDs[strings.ToLower(mi.Spec.ResourceID)] == "" {
			t.Fatalf("ARM work %v: only the node identity belongs on the scale set", r.IDs)
		}
	}

	in.FederatedOnly = true
	st = Compute(in)
	if len(st.Assignments) != 0 || len(st.Resources) != 0 {
		t.Fatalf("federated-only: assignments %v, resources %v", st.Assignments, st.Resources)
	}
	if len(st.NotAttached) != 1 || st.NotAttached[0].Pod != "apps/p" || !strings.Contains(st.NotAttached[0].Reason, "node identities apps/mi are not attached") {
		t.Fatalf("not attached %+v", st.NotAttached)
	}
}
