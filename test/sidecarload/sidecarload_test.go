package sidecarload

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRunMeasuresTheRealBinary builds the sidecar and runs a short, slow load: it checks the harness works
// (every request answered, exactly one IMDS call, memory read from /proc), not how fast the machine is.
func TestRunMeasuresTheRealBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the sidecar binary")
	}
	bin := filepath.Join(t.TempDir(), "podidentity-sidecar")
	build := exec.Command("go", "build", "-o", bin, "github.com/podidentity/podidentity/sidecar/cmd/podidentity-sidecar")
	// As the image builds it: a sidecar started as root drops its privileges on every thread, which a cgo
	// binary cannot.
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for _, client := range []string{ClientRaw, ClientNetHTTP} {
		t.Run(client, func(t *testing.T) {
			res, err := Run(context.Background(), Options{Binary: bin, Rate: 200, Duration: time.Second, Connections: 4, Idle: 100 * time.Millisecond, Client: client})
			if err != nil {
				t.Fatal(err)
			}
			if res.Errors != 0 || res.Requests < 100 || res.UpstreamCalls != 1 || res.IdleRSSKiB == 0 || res.LoadRSSKiB == 0 || res.BinaryBytes == 0 {
				t.Fatalf("result %+v", res)
			}
			if md := res.Markdown(); !strings.Contains(md, "| latency p99 |") || !strings.Contains(md, client+" client") {
				t.Fatalf("markdown lacks the p99 row or the client:\n%s", md)
			}
		})
	}
}

func TestRunRefusesAnUnknownClient(t *testing.T) {
	_, err := Run(context.Background(), Options{Binary: "unused", Rate: 1, Duration: time.Second, Connections: 1, Client: "curl"})
	if err == nil || !strings.Contains(err.Error(), `use "raw" or "net/http"`) {
		t.Fatalf("error %v, want one naming the clients to use", err)
	}
}
