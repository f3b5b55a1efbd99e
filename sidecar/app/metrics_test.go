package app

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/podidentity/podidentity/internal/contract"
)

// TestMetricsAreLean: the sidecar's /metrics carries its own series only, unless --runtime-metrics asks for
// the Go runtime's and the process's (it runs in every injected pod, so every series multiplies).
func TestMetricsAreLean(t *testing.T) {
	bound := []contract.Identity{{Name: "web", Namespace: "apps", ClientID: "c1"}}
	for _, tc := range []struct {
		name    string
		runtime bool
	}{{"default", false}, {"--runtime-metrics", true}} {
		t.Run(tc.name, func(t *testing.T) {
			h := start(t, setup{bound: bound, cfg: func(c *Config) { c.RuntimeMetrics = tc.runtime }})
			resp, err := http.Get("http://" + h.health + "/metrics")
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			families := map[string]bool{}
			series := 0
			for _, line := range strings.Split(string(body), "\n") {
				if strings.HasPrefix(line, "# TYPE ") {
					families[strings.Fields(line)[2]] = true
				} else if line != "" && !strings.HasPrefix(line, "#") {
					series++
				}
			}
			hasRuntime := families["go_goroutines"] || families["process_resident_memory_bytes"]
			if hasRuntime != tc.runtime {
				t.Fatalf("runtime series present = %v, want %v; families %v", hasRuntime, tc.runtime, families)
			}
			if !families["podidentity_sidecar_bound_identities"] {
				t.Fatalf("the sidecar's own metrics are missing: %v", families)
			}
			t.Logf("%s: %d families, %d series", tc.name, len(families), series)
		})
	}
}
