package guard

import (
	"fmt"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/assigner/desired"
	"github.com/podidentity/podidentity/internal/contract"
)

// BenchmarkAuditPass measures one audit pass's pure work (Audit and the pool filter of desired.Compute) on a
// cluster of 500 nodes (100 in the pool) and 15000 pods, 20% of them bound to an identity.
//
//	go test ./assigner/guard -run '^$' -bench AuditPass -benchmem -benchtime 20x
func BenchmarkAuditPass(b *testing.B) {
	r := rules()
	var in Input
	var nodes []corev1.Node
	for i := range 500 {
		ss := ssB
		if i < 100 {
			ss = ssA
		}
		nodes = append(nodes, nodeOf(fmt.Sprintf("n%d", i), ss, i < 100))
	}
	in.Nodes = nodes
	in.Namespaces = []corev1.Namespace{{ObjectMeta: metav1.ObjectMeta{Name: "apps", Labels: map[string]string{contract.NamespaceInjectionLabel: "enabled"}}}}
	for i := range 15000 {
		node := fmt.Sprintf("n%d", i%500)
		var p corev1.Pod
		switch {
		case i%5 == 0:
			p = injected("apps", fmt.Sprintf("bound-%d", i), node)
			p.Labels = map[string]string{aadv1.PodLabelBinding: "reader"}
		case i%7 == 0:
			p = plain("kube-system", fmt.Sprintf("ds-%d", i), node)
		default:
			p = plain("other", fmt.Sprintf("web-%d", i), node)
		}
		in.Pods = append(in.Pods, p)
	}
	identities := []aadv1.AzureIdentity{{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "reader"},
		Spec: aadv1.AzureIdentitySpec{Type: aadv1.UserAssignedMSI, ResourceID: reader, ClientID: "c"}}}
	bindings := []aadv1.AzureIdentityBinding{{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "reader"},
		Spec: aadv1.AzureIdentityBindingSpec{AzureIdentity: "reader", Selector: "reader"}}}
	b.ReportAllocs()
	for b.Loop() {
		rep := Audit(in, r)
		labels := map[string]map[string]string{"apps": in.Namespaces[0].Labels}
		refused := desired.Compute(desired.Input{Pods: in.Pods, Nodes: in.Nodes, Bindings: bindings, Identities: identities, Pool: r.Pool,
			NamespaceLabels: labels}).Refused
		if rep.IdentityNodes != 100 || len(rep.Untrusted) == 0 || len(refused) == 0 {
			b.Fatalf("identity nodes %d, untrusted %d, refused %d", rep.IdentityNodes, len(rep.Untrusted), len(refused))
		}
	}
}
