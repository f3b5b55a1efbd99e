package app

import (
	"testing"

	"github.com/podidentity/podidentity/assigner/controller"
)

func TestKubeAPIRateLimitFlags(t *testing.T) {
	tests := []struct {
		name      string
		args      []string
		wantQPS   float64
		wantBurst int
		wantErr   bool
	}{
		{name: "defaults", wantQPS: controller.DefaultKubeAPIQPS, wantBurst: controller.DefaultKubeAPIBurst},
		{name: "set", args: []string{"--kube-api-qps=50.5", "--kube-api-burst=75"}, wantQPS: 50.5, wantBurst: 75},
		{name: "no client-side limit", args: []string{"--kube-api-qps=-1"}, wantQPS: -1, wantBurst: controller.DefaultKubeAPIBurst},
		{name: "not a number", args: []string{"--kube-api-qps=fast"}, wantErr: true},
		{name: "burst not an integer", args: []string{"--kube-api-burst=1.5"}, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, err := ParseFlags(tc.args)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("accepted %v", tc.args)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if f.KubeAPIQPS != tc.wantQPS || f.KubeAPIBurst != tc.wantBurst {
				t.Fatalf("qps %v burst %d, want %v %d", f.KubeAPIQPS, f.KubeAPIBurst, tc.wantQPS, tc.wantBurst)
			}
		})
	}
}
