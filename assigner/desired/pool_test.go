package desired

import (
	"sort"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	aadv1 "github.com/podidentity/podidentity/api/v1"
)

const (
	ssB      = "azure:///subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/ssb/virtualMachines/"
	poolKey  = "podidentity.io/pool"
	ssAKey   = "/subscriptions/s/resourcegroups/rg/providers/microsoft.compute/virtualmachinescalesets/ssa"
	ssBKey   = "/subscriptions/s/resourcegroups/rg/providers/microsoft.compute/virtualmachinescalesets/ssb"
	vm1Key   = "/subscriptions/s/resourcegroups/rg/providers/microsoft.compute/virtualmachines/vm1"
	inPool   = "identities"
	notValue = "other"
)

func labelled(n corev1.Node, value string) corev1.Node {
	n.Labels = map[string]string{poolKey: value}
	return n
}

func TestComputePool(t *testing.T) {
	sp := aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "sp"},
		Spec: aadv1.AzureIdentitySpec{Type: aadv1.ServicePrincipal, ClientID: "c", TenantID: "t", ClientPassword: corev1.SecretReference{Name: "s"}}}
	base := Input{
		Identities:      []aadv1.AzureIdentity{msi("ns", "one", uami("one")), sp},
		Bindings:        []aadv1.AzureIdentityBinding{bind("ns", "b1", "one", "app1"), bind("ns", "b2", "sp", "app1")},
		Pods:            []corev1.Pod{pod("ns", "a0", "a0", "app1"), pod("ns", "b0", "b0", "app1"), pod("ns", "v", "v", "app1")},
		NamespaceLabels: optedIn("ns"),
	}
	pool := &Pool{Key: poolKey, Value: inPool}
	tests := []struct {
		name            string
		pool            *Pool
		nodes           []corev1.Node
		wantResources   []string
		wantAssignments []string
		// wantRefused: pod -> a fragment of the reason.
		wantRefused map[string]string
	}{
		{name: "guard off: every node gets identities",
			nodes:           []corev1.Node{node("a0", ssA+"0"), node("b0", ssB+"0"), node("v", vm1)},
			wantResources:   []string{ssAKey, ssBKey, vm1Key},
			wantAssignments: []string{"ns/a0-ns-one", "ns/a0-ns-sp", "ns/b0-ns-one", "ns/b0-ns-sp", "ns/v-ns-one", "ns/v-ns-sp"}},
		{name: "guard on: only pool nodes; service principals everywhere",
			pool:            pool,
			nodes:           []corev1.Node{labelled(node("a0", ssA+"0"), inPool), node("b0", ssB+"0"), labelled(node("v", vm1), notValue)},
			wantResources:   []string{ssAKey},
			wantAssignments: []string{"ns/a0-ns-one", "ns/a0-ns-sp", "ns/b0-ns-sp", "ns/v-ns-sp"},
			wantRefused: map[string]string{
				"ns/b0": "node b0 is outside the identity pool (label podidentity.io/pool=identities), so identities ns/one are not attached",
				"ns/v":  "node v is outside the identity pool",
			}},
		{name: "guard on: one instance outside the pool disqualifies its scale set",
			pool: pool,
			nodes: []corev1.Node{labelled(node("a0", ssA+"0"), inPool), node("a1", ssA+"1"),
				labelled(node("b0", ssB+"0"), inPool), labelled(node("v", vm1), inPool)},
			wantResources:   []string{ssBKey, vm1Key},
			wantAssignments: []string{"ns/a0-ns-sp", "ns/b0-ns-one", "ns/b0-ns-sp", "ns/v-ns-one", "ns/v-ns-sp"},
			wantRefused: map[string]string{
				"ns/a0": "also runs node a1, which is outside the identity pool",
			}},
		{name: "guard on: every node in the pool",
			pool: pool,
			nodes: []corev1.Node{labelled(node("a0", ssA+"0"), inPool), labelled(node("a1", ssA+"1"), inPool),
				labelled(node("b0", ssB+"0"), inPool), labelled(node("v", vm1), inPool)},
			wantResources:   []string{ssAKey, ssBKey, vm1Key},
			wantAssignments: []string{"ns/a0-ns-one", "ns/a0-ns-sp", "ns/b0-ns-one", "ns/b0-ns-sp", "ns/v-ns-one", "ns/v-ns-sp"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := base
			in.Nodes, in.Pool = tc.nodes, tc.pool
			st := Compute(in)
			var res, asg []string
			for k := range st.Resources {
				res = append(res, k)
			}
			for k := range st.Assignments {
				asg = append(asg, k)
			}
			sort.Strings(res)
			sort.Strings(asg)
			sort.Strings(tc.wantResources)
			if strings.Join(res, " ") != strings.Join(tc.wantResources, " ") {
				t.Errorf("resources = %v, want %v", res, tc.wantResources)
			}
			if strings.Join(asg, " ") != strings.Join(tc.wantAssignments, " ") {
				t.Errorf("assignments = %v, want %v", asg, tc.wantAssignments)
			}
			if len(st.Refused) != len(tc.wantRefused) {
				t.Fatalf("refused = %v, want %v", st.Refused, tc.wantRefused)
			}
			for _, r := range st.Refused {
				if frag, ok := tc.wantRefused[r.Pod]; !ok || !strings.Contains(r.Reason, frag) {
					t.Errorf("refused %s: %q, want it to contain %q", r.Pod, r.Reason, frag)
				}
			}
		})
	}
}

func TestParsePool(t *testing.T) {
	tests := []struct {
		in      string
		want    *Pool
		wantErr string
	}{
		{in: "", want: nil},
		{in: "podidentity.io/pool=identities", want: &Pool{Key: "podidentity.io/pool", Value: "identities"}},
		{in: "agentpool=", want: &Pool{Key: "agentpool", Value: ""}},
		{in: "nolabel", wantErr: "is not a node label key=value"},
		{in: "=x", wantErr: "is not a node label key=value"},
		{in: "bad key=x", wantErr: "label key \"bad key\" is invalid"},
		{in: "k=bad value", wantErr: "label value \"bad value\" is invalid"},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParsePool(tc.in)
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
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}
