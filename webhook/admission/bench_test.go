package admission

import (
	"context"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
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
