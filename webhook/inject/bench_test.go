package inject

import (
	"path/filepath"
	"testing"
)

// BenchmarkDecide measures the pure mutation path (read the pod, resolve, build the patch) on golden pods.
//
//	go test ./webhook/inject -run '^$' -bench Decide -benchmem -benchtime 2s
func BenchmarkDecide(b *testing.B) {
	for _, name := range []string{"deployment-pod", "istio-cni", "several-bindings", "already-injected", "guard-pool-placement"} {
		b.Run(name, func(b *testing.B) {
			in, s := loadInput(b, filepath.Join(goldenDir, name+".in.yaml"))
			cluster := Cluster{Bindings: in.Bindings, Identities: in.Identities, Exceptions: in.Exceptions}
			injector := NewInjector(s)
			b.ReportAllocs()
			b.SetBytes(int64(len(in.Pod)))
			for b.Loop() {
				d := injector.Decide(in.Pod, in.Namespace, cluster)
				if d.Action == ActionDeny {
					b.Fatal(d.Message)
				}
			}
		})
	}
}
