package cluster

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// skipUnlessCapable skips with the reason when this machine cannot run the cluster.
func skipUnlessCapable(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("starts a real single-node cluster (kubelet, containerd, kube-proxy): skipped under -short")
	}
	if runtime.GOOS != "linux" || os.Geteuid() != 0 {
		t.Skip("the local cluster needs root on Linux")
	}
	if err := checkHost(Options{}.withDefaults()); err != nil {
		t.Skip(err.Error())
	}
}

// TestClusterLifecycle starts the cluster, runs a pod that calls the API server through the kubernetes
// ClusterIP and the IMDS emulator at 169.254.169.254, and checks that Stop leaves nothing behind.
func TestClusterLifecycle(t *testing.T) {
	skipUnlessCapable(t)
	// The whole test deadline: Start may first wait for another package's cluster (test/suites/e2e) to stop.
	deadline, ok := t.Deadline()
	if !ok {
		deadline = time.Now().Add(30 * time.Minute)
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline.Add(-30*time.Second))
	defer cancel()
	opts := Options{StateDir: filepath.Join(Options{}.withDefaults().RepoDir, "bin", "cluster-test"), Log: testWriter{t}}
	began := time.Now()
	c, err := Start(ctx, opts)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Logf("cluster ready in %.1fs", time.Since(began).Seconds())
	stopped := false
	defer func() {
		if t.Failed() {
			t.Logf("component logs:\n%s", c.LogTails(40))
		}
		if !stopped {
			if err := c.Stop(); err != nil {
				t.Errorf("Stop: %v", err)
			}
		}
	}()
	cs, err := kubernetes.NewForConfig(c.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}

	t.Run("node is Ready with the Azure providerID", func(t *testing.T) {
		n, err := cs.CoreV1().Nodes().Get(ctx, c.NodeName(), metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := nodeReady(ctx, cs, c.NodeName()); err != nil {
			t.Error(err)
		}
		if n.Spec.ProviderID != ProviderID {
			t.Errorf("providerID %q, want %q", n.Spec.ProviderID, ProviderID)
		}
	})

	t.Run("Start again reuses the running cluster", func(t *testing.T) {
		// Under the lock this process holds: releasing it would let a waiting package (test/suites/e2e) take the host.
		pid, _, _ := recordedProcess(c.StateDir(), "kube-apiserver")
		if err := c.startLocked(ctx); err != nil {
			t.Fatalf("second start: %v", err)
		}
		if pid2, _, _ := recordedProcess(c.StateDir(), "kube-apiserver"); pid2 != pid {
			t.Errorf("kube-apiserver was restarted (pid %d -> %d): the healthy cluster was not reused", pid, pid2)
		}
	})

	t.Run("a pod reaches the API server through its ClusterIP and IMDS at 169.254.169.254", func(t *testing.T) {
		const image = "podidentity.test/cluster-probe:1"
		if err := c.BuildAndImportGoImage(ctx, "./test/cluster/internal/probe", image, 65532); err != nil {
			t.Fatal(err)
		}
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "probe", Namespace: "default"},
			Spec: corev1.PodSpec{
				RestartPolicy: corev1.RestartPolicyNever,
				Containers:    []corev1.Container{{Name: "probe", Image: image, ImagePullPolicy: corev1.PullNever}},
			},
		}
		if _, err := cs.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		phase := waitPodDone(ctx, t, cs, "default", "probe")
		results := probeResults(ctx, t, cs, "default", "probe")
		if phase != corev1.PodSucceeded {
			t.Errorf("probe pod %s: %v", phase, results)
		}
		api, ok := results["apiserver"]
		if !ok || !api.OK || !strings.Contains(api.Body, "gitVersion") {
			t.Errorf("API server through https://%s: %+v", KubernetesServiceIP, api)
		}
		imds, ok := results["imds"]
		if !ok || !imds.OK || !strings.Contains(imds.Body, VMSSInstanceID) {
			t.Errorf("IMDS at %s: %+v, want compute metadata naming %s", IMDSAddress, imds, VMSSInstanceID)
		}
	})

	t.Run("RebootNode brings back a live kubelet that runs pods", func(t *testing.T) {
		began := time.Now()
		if err := c.RebootNode(ctx); err != nil {
			t.Fatalf("RebootNode: %v", err)
		}
		pid, binary, ok := recordedProcess(c.StateDir(), "kubelet")
		if !ok || !running(pid, binary) {
			t.Fatalf("after the reboot no kubelet runs (pid %d recorded: %v)", pid, ok)
		}
		// The Node object alone reads Ready for a while after its kubelet died: the lease says who is alive.
		if err := leaseRenewedSince(ctx, cs, c.NodeName(), began); err != nil {
			t.Error(err)
		}
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "after-reboot", Namespace: "default"},
			Spec: corev1.PodSpec{
				RestartPolicy: corev1.RestartPolicyNever,
				Containers:    []corev1.Container{{Name: "probe", Image: "podidentity.test/cluster-probe:1", ImagePullPolicy: corev1.PullNever}},
			},
		}
		if _, err := cs.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if phase := waitPodDone(ctx, t, cs, "default", "after-reboot"); phase != corev1.PodSucceeded {
			t.Errorf("a pod created after the reboot: %s: %v", phase, probeResults(ctx, t, cs, "default", "after-reboot"))
		}
	})

	pids := map[string]int{}
	for _, name := range componentOrder() {
		pid, _, ok := recordedProcess(c.StateDir(), name)
		if !ok {
			t.Fatalf("no pid recorded for %s", name)
		}
		pids[name] = pid
	}
	stopped = true
	if err := c.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	t.Run("Stop leaves no process, address, bridge or mount behind", func(t *testing.T) {
		for name, pid := range pids {
			if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
				if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); strings.Contains(exe, name) {
					t.Errorf("%s (pid %d) still runs", name, pid)
				}
			}
		}
		for _, a := range loAddresses() {
			if hasLoAddress(a) {
				t.Errorf("%s still on lo", a)
			}
		}
		if fileExists(filepath.Join("/sys/class/net", BridgeName)) {
			t.Errorf("bridge %s still exists", BridgeName)
		}
		mounts, _ := os.ReadFile("/proc/self/mountinfo")
		if strings.Contains(string(mounts), c.StateDir()+"/") {
			t.Errorf("mounts under %s remain", c.StateDir())
		}
		if shims := shimsOf(filepath.Join(c.StateDir(), "containerd", "containerd.sock")); len(shims) > 0 {
			t.Errorf("containerd shims still run: %v", shims)
		}
		if fileExists(baselineFile) {
			t.Errorf("%s remains: the host was not fully restored", baselineFile)
		}
	})
}

type probeResult struct {
	OK     bool   `json:"ok"`
	Status int    `json:"status"`
	Body   string `json:"body"`
	Error  string `json:"error"`
}

func waitPodDone(ctx context.Context, t *testing.T, cs kubernetes.Interface, ns, name string) corev1.PodPhase {
	t.Helper()
	for {
		p, err := cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err == nil && (p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed) {
			return p.Status.Phase
		}
		select {
		case <-ctx.Done():
			t.Fatalf("pod %s/%s did not finish: %v (last status %+v)", ns, name, ctx.Err(), p.Status)
		case <-time.After(300 * time.Millisecond):
		}
	}
}

// probeResults reads the probe's JSON lines through the API server (which proxies to the kubelet).
func probeResults(ctx context.Context, t *testing.T, cs kubernetes.Interface, ns, name string) map[string]probeResult {
	t.Helper()
	raw, err := cs.CoreV1().Pods(ns).GetLogs(name, &corev1.PodLogOptions{}).DoRaw(ctx)
	if err != nil {
		t.Fatalf("reading the probe's logs: %v", err)
	}
	out := map[string]probeResult{}
	sc := bufio.NewScanner(strings.NewReader(string(raw)))
	for sc.Scan() {
		var r struct {
			Check string `json:"check"`
			probeResult
		}
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Errorf("probe printed %q: %v", sc.Text(), err)
			continue
		}
		out[r.Check] = r.probeResult
	}
	return out
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// TestStartFailureNamesComponent gives every component a 1ms readiness timeout: Start must fail naming the
// first that was not ready at once, with its log, and stop whatever had started.
func TestStartFailureNamesComponent(t *testing.T) {
	skipUnlessCapable(t)
	// Start first waits for the host-wide cluster lock, which `go test ./...` may have given to the end-to-end
	// package's clusters (about 7 minutes, more on a loaded machine: CI failed here once at 10 minutes).
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	opts := Options{StateDir: filepath.Join(Options{}.withDefaults().RepoDir, "bin", "cluster-fail-test"), Log: testWriter{t}, ReadyTimeout: time.Millisecond}
	c, err := Start(ctx, opts)
	if err == nil {
		if err := c.Stop(); err != nil {
			t.Errorf("stopping the cluster: %v", err)
		}
		t.Fatal("Start succeeded with a 1ms readiness timeout")
	}
	// The first component whose first check fails is named (a fast one can pass its first check).
	failed := ""
	for _, name := range componentOrder() {
		if strings.Contains(err.Error(), name+" did not become ready within 1ms (see "+filepath.Join(opts.StateDir, "logs", name+".log")) {
			failed = name
		}
	}
	if failed == "" {
		t.Fatalf("error names no component and its log: %v", err)
	}
	for _, a := range loAddresses() {
		if hasLoAddress(a) {
			t.Errorf("%s left on lo after the failed Start", a)
		}
	}
	for _, name := range componentOrder() {
		if err := componentAlive(opts.StateDir, name); err == nil {
			t.Errorf("%s still runs after the failed Start", name)
		}
	}
	if _, err := os.Stat(filepath.Join(opts.StateDir, "logs", failed+".log")); err != nil {
		t.Errorf("%s's log was not kept: %v", failed, err)
	}
}
