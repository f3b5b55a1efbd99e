package e2e

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// The runtime-log readers behind the CNI scenario's figures, on lines in containerd's own format.
func TestRuntimeLogFigures(t *testing.T) {
	log := `time="2026-12-07T04:11:53.000000000Z" level=info msg="CreateContainer within sandbox \"aaa\" for container &ContainerMetadata{Name:podidentity-init,Attempt:0,}"
time="2026-12-07T04:11:53.010000000Z" level=info msg="CreateContainer within sandbox \"aaa\" for &ContainerMetadata{Name:podidentity-init,Attempt:0,} returns container id \"1\""
time="2026-12-07T04:11:53.200000000Z" level=info msg="CreateContainer within sandbox \"bbb\" for container &ContainerMetadata{Name:app,Attempt:0,}"
time="2026-12-07T04:11:53.300000000Z" level=info msg="CreateContainer within sandbox \"ccc\" for container &ContainerMetadata{Name:podidentity-init,Attempt:0,}"
time="2026-12-07T04:11:54.250000000Z" level=info msg="CreateContainer within sandbox \"aaa\" for container &ContainerMetadata{Name:podidentity-sidecar,Attempt:0,}"
time="2026-12-07T04:11:54.260000000Z" level=info msg="CreateContainer within sandbox \"aaa\" for container &ContainerMetadata{Name:app,Attempt:0,}"
time="2026-12-07T04:11:55.000000000Z" level=info msg="ADD done" plugin=podidentity-cni elapsed=27.5ms
time="2026-12-07T04:11:55.100000000Z" level=info msg="{\"msg\":\"ADD done\",\"elapsed\":\"1.25s\"}"
`
	path := filepath.Join(t.TempDir(), "containerd.log")
	if err := os.WriteFile(path, []byte(log), 0o644); err != nil {
		t.Fatal(err)
	}
	// Sandbox aaa: 1.25 s from our init container's create to its sidecar's; bbb has no init container; ccc's
	// init container has not finished.
	if got, want := initStageDurations(path, 0, int64(len(log))), []time.Duration{1250 * time.Millisecond}; !slices.Equal(got, want) {
		t.Errorf("initStageDurations = %v, want %v", got, want)
	}
	// A range that ends before the next container's create holds no complete stage.
	if got := initStageDurations(path, 0, int64(len(log))/2); len(got) != 0 {
		t.Errorf("initStageDurations of the first half = %v, want none", got)
	}
	if got, want := addDurations(path, 0), []time.Duration{27500 * time.Microsecond, 1250 * time.Millisecond}; !slices.Equal(got, want) {
		t.Errorf("addDurations = %v, want %v", got, want)
	}
}
