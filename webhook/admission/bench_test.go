package admission

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/webhook/inject"
)

// BenchmarkHandle measures one CREATE admission through the handler: namespace check, reads (a fake client
// here: the manager's cache in production, which does not deep-copy), decision, metrics.
//
//	go test ./webhook/admission -run '^$' -bench Handle -benchmem -benchtime 2s
func BenchmarkHandle(b *testing.B) {
	h, _ := newHandler(b)
	req := request(admissionv1.Create, "shop", "alice", goldenPods(b)["deployment-pod"], nil)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if resp := h.Handle(ctx, req); !resp.Allowed || len(resp.Patches) == 0 {
			b.Fatalf("not injected: %v", resp.Result)
		}
	}
}

// BenchmarkHandleBindings measures one CREATE admission (the golden deployment-pod, selector "orders")
// through the real handler reading controller-runtime's real informer cache (newRealCache), which holds n
// bindings and n identities: the pod's own binding and identity, and n-1 others of other selectors spread
// over 100 namespaces. "indexed" is the handler as it runs (keyed reads); "full-walk" lists every binding and
// identity for each admission, as the handler did before the index.
//
//	go test ./webhook/admission -run '^$' -bench HandleBindings -benchmem -benchtime 1s -count 3
func BenchmarkHandleBindings(b *testing.B) {
	raw := goldenPods(b)["deployment-pod"]
	for _, n := range []int{1, 100, 1000, 10000, 100000} {
		b.Run(fmt.Sprintf("bindings=%d", n), func(b *testing.B) {
			c := newRealCache(b, benchCluster(n))
			for _, impl := range []string{"indexed", "full-walk"} {
				b.Run(impl, func(b *testing.B) {
					h, _ := testHandler(b, c, c, inject.DefaultSettings())
					h.fullWalk = impl == "full-walk"
					req := request(admissionv1.Create, "shop", "alice", raw, nil)
					ctx := context.Background()
					// The first admission registers the index; it must bind the pod's identity.
					resp := h.Handle(ctx, req)
					var pod corev1.Pod
					if err := json.Unmarshal(apply(b, raw, resp), &pod); err != nil {
						b.Fatal(err)
					}
					if got := pod.Annotations[contract.IdentitiesAnnotation]; !strings.Contains(got, `"orders-mi"`) || h.indexed == h.fullWalk {
						b.Fatalf("identities %q, indexed %v", got, h.indexed)
					}
					b.ReportAllocs()
					for b.Loop() {
						if resp := h.Handle(ctx, req); !resp.Allowed || len(resp.Patches) == 0 {
							b.Fatalf("not injected: %v", resp.Result)
						}
					}
				})
			}
		})
	}
}

// benchCluster: namespace shop (opted in) with the binding "orders" of identity orders-mi, and n-1 bindings
// app-<i> of identities id-<i>, each in namespace ns-<i%100>.
func benchCluster(n int) clusterObjects {
	c := clusterObjects{
		Namespaces: []corev1.Namespace{{ObjectMeta: metav1.ObjectMeta{Name: "shop", Labels: map[string]string{contract.NamespaceInjectionLabel: "enabled"}}}},
		Bindings: []aadv1.AzureIdentityBinding{{ObjectMeta: metav1.ObjectMeta{Name: "orders-binding", Namespace: "shop"},
			Spec: aadv1.AzureIdentityBindingSpec{AzureIdentity: "orders-mi", Selector: "orders"}}},
		Identities: []aadv1.AzureIdentity{{ObjectMeta: metav1.ObjectMeta{Name: "orders-mi", Namespace: "shop"},
			Spec: aadv1.AzureIdentitySpec{Type: aadv1.UserAssignedMSI, ClientID: "00000000-0000-0000-0000-00000000a001", ResourceID: testRID + "orders-mi"}}},
	}
	for i := range min(n, 100) {
		c.Namespaces = append(c.Namespaces, corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("ns-%d", i), Labels: map[string]string{contract.NamespaceInjectionLabel: "enabled"}}})
	}
	for i := 1; i < n; i++ {
		ns, name := fmt.Sprintf("ns-%d", i%100), fmt.Sprintf("id-%d", i)
		c.Bindings = append(c.Bindings, aadv1.AzureIdentityBinding{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("b-%d", i), Namespace: ns, ResourceVersion: "1"},
			Spec: aadv1.AzureIdentityBindingSpec{AzureIdentity: name, Selector: fmt.Sprintf("app-%d", i)}})
		c.Identities = append(c.Identities, aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, ResourceVersion: "1"},
			Spec: aadv1.AzureIdentitySpec{Type: aadv1.UserAssignedMSI, ClientID: fmt.Sprintf("00000000-0000-0000-0000-%012d", i), ResourceID: testRID + name}})
	}
	return c
}
