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

// TestMemoryCgroupChargesThePageCacheOnce runs the real binary in memory cgroups of its own: started cold, its
// cgroup pays for the binary's pages; started again with them cached, it pays only for its own memory, while
// VmRSS counts the binary's pages both times.
func TestMemoryCgroupChargesThePageCacheOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the sidecar binary")
	}
	if os.Geteuid() != 0 {
		t.Skip("making memory cgroups needs root")
	}
	parent := MemoryHierarchy("podidentity-sidecarload-test")
	if parent == "" {
		t.Skip("no memory cgroup hierarchy on this machine (neither cgroup v2 with the memory controller nor cgroup v1's memory)")
	}
	t.Cleanup(func() { _ = os.Remove(parent) })
	bin := filepath.Join(t.TempDir(), "podidentity-sidecar")
	build := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", bin, "github.com/podidentity/podidentity/sidecar/cmd/podidentity-sidecar")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	run := func(cold bool) Result {
		t.Helper()
		res, err := Run(context.Background(), Options{Binary: bin, Rate: 100, Duration: 200 * time.Millisecond, Connections: 1,
			Idle: 100 * time.Millisecond, MemoryCgroup: parent, Cold: cold})
		if err != nil {
			t.Fatal(err)
		}
		if res.IdleCgroup == nil || res.IdleCgroup.Charged == 0 || res.IdleCgroup.Anon == 0 || res.PeakCgroupKiB < res.IdleCgroup.Charged {
			t.Fatalf("cgroup figures missing: %+v, peak %d KiB", res.IdleCgroup, res.PeakCgroupKiB)
		}
		if !strings.Contains(res.Markdown(), "| memory cgroup charged idle") {
			t.Fatalf("markdown lacks the cgroup row:\n%s", res.Markdown())
		}
		return res
	}
	cold, warm := run(true), run(false)
	// The binary is megabytes; the cold start reads most of it into the page cache, charged to its cgroup.
	if cold.IdleCgroup.File < 1024 {
		t.Errorf("cold start charged %d KiB of page cache, want the binary's pages (over 1 MiB)", cold.IdleCgroup.File)
	}
	if warm.IdleCgroup.File*4 > cold.IdleCgroup.File {
		t.Errorf("warm start charged %d KiB of page cache, cold %d KiB: the cached binary should not be charged again", warm.IdleCgroup.File, cold.IdleCgroup.File)
	}
	if warm.IdleCgroup.Charged >= warm.IdleRSSKiB {
		t.Errorf("warm start: cgroup charged %d KiB, VmRSS %d KiB; want the charge below VmRSS, which counts the shared binary", warm.IdleCgroup.Charged, warm.IdleRSSKiB)
	}
}

func TestRunRefusesAnUnknownClient(t *testing.T) {
	_, err := Run(context.Background(), Options{Binary: "unused", Rate: 1, Duration: time.Second, Connections: 1, Client: "curl"})
	if err == nil || !strings.Contains(err.Error(), `use "raw" or "net/http"`) {
		t.Fatalf("error %v, want one naming the clients to use", err)
	}
}
