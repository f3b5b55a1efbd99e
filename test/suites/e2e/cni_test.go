package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/test/cluster/install"
)

// scenarioCNIMode switches the release to CNI mode (redirect.mode=cni) and proves, on the real node: the node
// agent chains the plugin into the node's CNI configuration; an opted-in namespace that enforces the Pod
// Security level restricted runs the Go and JavaScript SDK clients and they get their tokens; a pod of a
// namespace without the label is fenced off the node's IMDS (the side door closes); an excepted pod is not; the
// attacker matrix holds in CNI mode; the installation survives a rewrite of the primary CNI configuration, a
// rollout of the agent and a reboot of the node; and uninstalling restores the primary configuration byte for
// byte. Last, because it changes the release and the node (undone at its end).
func (e *env) scenarioCNIMode(t *testing.T) {
	ctx := context.Background()
	conflist := e.cluster.PrimaryCNIConfig()
	original, err := os.ReadFile(conflist)
	if err != nil {
		t.Fatal(err)
	}
	// The plugin logs each ADD's duration to the runtime's log; the part written from now on is this scenario's.
	runtimeLog := filepath.Join(e.cluster.StateDir(), "logs", "containerd.log")
	logStart := fileSize(runtimeLog)
	began := time.Now()
	if err := e.release.Upgrade(ctx, install.CNIValues(e.cluster)); err != nil {
		t.Fatalf("switching to CNI mode: %v", err)
	}
	t.Cleanup(func() {
		// Back to the base values: the DaemonSet goes, and its agent takes the plugin off the node.
		if err := e.release.Upgrade(context.Background(), nil); err != nil {
			t.Errorf("switching back to init mode: %v", err)
		}
	})
	e.waitChained(t, conflist, true, 2*time.Minute)
	e.figures.Add(Figure{Scenario: "CNI mode", Name: "switch to CNI mode (helm upgrade --wait until the plugin is chained)", Value: seconds(time.Since(began))})
	e.requireReleaseReady(t)

	t.Run("restricted namespace: SDK clients get their tokens", func(t *testing.T) {
		ns := e.namespace(t, "cni-restricted", true)
		e.labelNamespace(t, ns, map[string]string{"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "latest"})
		id := e.identity(t, ns, "web")
		for _, c := range []struct{ sdk, image string }{{"go", e.goImage}, {"js", e.jsImage}} {
			p := restricted(appPod(c.sdk, c.image, id.Selector, corev1.RestartPolicyAlways,
				map[string]string{"MODE": "until-ok", "INTERVAL": "500ms", "AZURE_CLIENT_ID": id.ClientID}))
			created := e.createPod(t, ns, p) // the API server enforces restricted: an unrestricted injection fails here
			requireInjected(t, created, id)
			line, _ := e.waitAppLine(t, ns, c.sdk, "app", "a token in a restricted namespace", tokenTimeout, tokenFor(id))
			if line.SDK != c.sdk {
				t.Errorf("token line from sdk %q, want %q", line.SDK, c.sdk)
			}
		}
	})

	t.Run("attacker matrix in CNI mode", func(t *testing.T) {
		e.attackMatrix(t, modeCNI)
	})

	t.Run("excepted pod reaches the node's IMDS; hostNetwork is not fenced", func(t *testing.T) {
		owner := e.namespace(t, "cni-owner", true)
		id := e.identity(t, owner, "shared")
		e.createPod(t, owner, appPod("holder", e.goImage, id.Selector, corev1.RestartPolicyAlways,
			map[string]string{"MODE": "until-ok", "INTERVAL": "500ms", "AZURE_CLIENT_ID": id.ClientID}))
		e.waitAppLine(t, owner, "holder", "app", "the holder's token", tokenTimeout, tokenFor(id))
		e.waitAttached(t, id.ClientID, true, time.Minute)

		plain := e.namespace(t, "cni-excepted", false)
		ex := &aadv1.AzurePodIdentityException{ObjectMeta: metav1.ObjectMeta{Name: "platform", Namespace: plain},
			Spec: aadv1.AzurePodIdentityExceptionSpec{PodLabels: map[string]string{"role": "platform"}}}
		if err := e.c.Create(ctx, ex); err != nil {
			t.Fatal(err)
		}
		excepted := attackPod("excepted", e.attackerImage, "direct", id.ClientID, "")
		excepted.Labels["role"] = "platform"
		e.createPod(t, plain, excepted)
		if res := e.attackOutcome(t, plain, "excepted", "attack"); !res.Token {
			t.Errorf("the excepted pod got no token: %+v (an AzurePodIdentityException must let it reach the node's IMDS)", res)
		}
		e.matrix.Add(MatrixRow{Mode: modeCNI, Pod: "pod excepted by an AzurePodIdentityException", Route: "direct",
			Verdict: "token", Stopped: "not stopped, by design: the exception lets it reach the node's IMDS"})
	})

	t.Run("installer survives a rewrite of the primary CNI configuration", func(t *testing.T) {
		if err := e.cluster.RewritePrimaryCNIConfig(); err != nil {
			t.Fatal(err)
		}
		rechained := e.waitChained(t, conflist, true, time.Minute)
		e.figures.Add(Figure{Scenario: "CNI mode", Name: "plugin chained again after the primary CNI rewrote its configuration", Value: seconds(rechained)})
		e.requireFenced(t, "cni-after-rewrite")
	})

	t.Run("installer survives a rollout of the node agent", func(t *testing.T) {
		ds := e.daemonSet(t, "-node")
		patch := fmt.Sprintf(`{"spec":{"template":{"metadata":{"annotations":{"podidentity.io/e2e-restart":%q}}}}}`, time.Now().Format(time.RFC3339Nano))
		if _, err := e.cs.AppsV1().DaemonSets(ds.Namespace).Patch(ctx, ds.Name, "application/strategic-merge-patch+json", []byte(patch), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		// While the agent is replaced, the plugin stays chained: new pods keep being fenced.
		e.waitDaemonSetRolled(t, ds.Namespace, ds.Name, 3*time.Minute)
		if chained, _ := e.chained(conflist); !chained {
			t.Errorf("the plugin is not chained after a rollout of its DaemonSet")
		}
		e.requireFenced(t, "cni-after-rollout")
	})

	t.Run("node reboot: every pod protected again", func(t *testing.T) {
		plain := e.namespace(t, "cni-reboot", false)
		p := attackPod("survivor", e.attackerImage, "direct", "00000000-0000-0000-0000-000000000000", "")
		p.Spec.RestartPolicy = corev1.RestartPolicyAlways
		p.Spec.Containers[0].Env = append(p.Spec.Containers[0].Env, corev1.EnvVar{Name: "LINGER", Value: "1"})
		e.createPod(t, plain, p)
		e.waitPod(t, plain, "survivor", "Running", podTimeout, func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning })
		began := time.Now()
		if err := e.cluster.RebootNode(ctx); err != nil {
			t.Fatalf("rebooting the node: %v", err)
		}
		e.waitChained(t, conflist, true, 3*time.Minute)
		e.requireReleaseReady(t)
		e.figures.Add(Figure{Scenario: "CNI mode", Name: "node reboot until the agent is ready again", Value: seconds(time.Since(began))})
		// The pod from before the reboot runs again in a new sandbox: fenced at its ADD, or repaired.
		e.waitPod(t, plain, "survivor", "running again", podTimeout, func(p *corev1.Pod) bool {
			return p.Status.Phase == corev1.PodRunning && podRestarted(p)
		})
		e.requireTable(t, plain, "survivor", "imds-fence", time.Minute)
		e.requireFenced(t, "cni-after-reboot")
	})

	if adds := addDurations(runtimeLog, logStart); len(adds) > 0 {
		slices.Sort(adds)
		e.figures.Add(Figure{Scenario: "CNI mode", Name: fmt.Sprintf("plugin ADD duration over %d pod sandboxes (median / 90th percentile / max)", len(adds)),
			Value: fmt.Sprintf("%.1f / %.1f / %.1f ms", ms(adds[len(adds)/2]), ms(adds[len(adds)*9/10]), ms(adds[len(adds)-1]))})
	} else {
		t.Errorf("no \"ADD done\" line of podidentity-cni in %s: did the runtime run the plugin?", runtimeLog)
	}
	// Beside the plugin's ADD: what our init container adds to a pod's start in each mode (the NET_ADMIN one
	// before this scenario, the unprivileged verifier in it), from the runtime's own timestamps.
	for _, part := range []struct {
		mode     string
		from, to int64
	}{{"init mode (NET_ADMIN init container)", 0, logStart}, {"CNI mode (verifier init container)", logStart, fileSize(runtimeLog)}} {
		if stages := initStageDurations(runtimeLog, part.from, part.to); len(stages) > 0 {
			slices.Sort(stages)
			e.figures.Add(Figure{Scenario: "CNI mode", Name: fmt.Sprintf("%s: its create to the next container's create, over %d pods (median / 90th percentile / max)", part.mode, len(stages)),
				Value: fmt.Sprintf("%.0f / %.0f / %.0f ms", ms(stages[len(stages)/2]), ms(stages[len(stages)*9/10]), ms(stages[len(stages)-1]))})
		}
	}

	t.Run("uninstall restores the primary CNI configuration", func(t *testing.T) {
		if err := e.release.Upgrade(ctx, nil); err != nil {
			t.Fatalf("back to init mode: %v", err)
		}
		e.waitChained(t, conflist, false, 2*time.Minute)
		got, err := os.ReadFile(conflist)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, original) {
			t.Errorf("%s after uninstall differs from before CNI mode:\n--- before\n%s\n--- after\n%s", conflist, original, got)
		}
		for _, leftover := range []string{filepath.Join(e.cluster.CNIBinDir(), "podidentity-cni"), filepath.Join(e.cluster.CNIConfDir(), "ZZZ-podidentity-cni-kubeconfig")} {
			if _, err := os.Stat(leftover); err == nil {
				t.Errorf("%s is still on the node after uninstall", leftover)
			}
		}
	})
}

// restricted makes an e2e app pod pass the Pod Security level restricted (the app containers already run
// non-root with every capability dropped and no privilege escalation): a RuntimeDefault seccomp profile.
func restricted(p *corev1.Pod) *corev1.Pod {
	p.Spec.SecurityContext = &corev1.PodSecurityContext{SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}}
	return p
}

func (e *env) labelNamespace(t *testing.T, ns string, labels map[string]string) {
	t.Helper()
	var b strings.Builder
	for k, v := range labels {
		if b.Len() > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, "%q:%q", k, v)
	}
	patch := `{"metadata":{"labels":{` + b.String() + `}}}`
	if _, err := e.cs.CoreV1().Namespaces().Patch(context.Background(), ns, "application/merge-patch+json", []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatalf("labelling namespace %s: %v", ns, err)
	}
}

// chained reports whether the node's primary CNI configuration lists the podidentity-cni plugin.
func (e *env) chained(conflist string) (bool, error) {
	b, err := os.ReadFile(conflist)
	if err != nil {
		return false, err
	}
	return bytes.Contains(b, []byte(`"podidentity-cni"`)), nil
}

// waitChained waits until the plugin's presence in the primary configuration is want; it returns how long that
// took.
func (e *env) waitChained(t *testing.T, conflist string, want bool, timeout time.Duration) time.Duration {
	t.Helper()
	began := time.Now()
	err := wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, timeout, true, func(context.Context) (bool, error) {
		got, err := e.chained(conflist)
		return err == nil && got == want, nil
	})
	if err != nil {
		b, _ := os.ReadFile(conflist)
		t.Fatalf("podidentity-cni chained = %v not reached within %v; %s:\n%s\npods of %s:\n%s", want, timeout, conflist, b,
			e.podidentityNamespace, install.PodSummary(context.Background(), e.cluster, e.podidentityNamespace))
	}
	return time.Since(began)
}

// requireFenced creates, in a new namespace without the opt-in label, a pod that asks the node's IMDS directly
// (for an identity the node carries or not), and requires it to be stopped by the fence: its connection is reset
// (a reset answering the SYN: "connection refused"; the node's IMDS itself listens on that port).
func (e *env) requireFenced(t *testing.T, prefix string) {
	t.Helper()
	ns := e.namespace(t, prefix, false)
	e.createPod(t, ns, attackPod("probe", e.attackerImage, "direct", "00000000-0000-0000-0000-000000000000", ""))
	res := e.attackOutcome(t, ns, "probe", "attack")
	if res.Token || res.Stopped != "network" || !(strings.Contains(res.Error, "connection refused") || strings.Contains(res.Error, "connection reset")) {
		t.Errorf("a pod of a namespace without the opt-in label was not fenced: %+v", res)
	}
}

// requireTable waits until the network namespace of the pod's first container holds the project's table with
// the chain.
func (e *env) requireTable(t *testing.T, ns, name, chain string, timeout time.Duration) {
	t.Helper()
	var last string
	err := wait.PollUntilContextTimeout(context.Background(), 500*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		p, err := e.cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil || len(p.Status.ContainerStatuses) == 0 || p.Status.ContainerStatuses[0].State.Running == nil {
			return false, nil
		}
		_, id, _ := strings.Cut(p.Status.ContainerStatuses[0].ContainerID, "://")
		pid, err := pidOfContainer(id)
		if err != nil {
			last = err.Error()
			return false, nil
		}
		last, err = nftTables(ctx, pid)
		if err != nil {
			return false, nil
		}
		out, err := nftChains(ctx, pid)
		last += out
		return err == nil && strings.Contains(out, "chain "+chain+" "), nil
	})
	if err != nil {
		t.Fatalf("pod %s/%s: no chain %s in its network namespace within %v:\n%s", ns, name, chain, timeout, last)
	}
}

// podRestarted: a container of the pod has run before (a new sandbox after the node's reboot).
func podRestarted(p *corev1.Pod) bool {
	for _, s := range p.Status.ContainerStatuses {
		if s.RestartCount > 0 {
			return true
		}
	}
	return false
}

// daemonSet returns the release's DaemonSet whose name ends with suffix.
func (e *env) daemonSet(t *testing.T, suffix string) *appsv1.DaemonSet {
	t.Helper()
	list, err := e.cs.AppsV1().DaemonSets(e.podidentityNamespace).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range list.Items {
		if strings.HasSuffix(list.Items[i].Name, suffix) {
			return &list.Items[i]
		}
	}
	t.Fatalf("no DaemonSet *%s in %s", suffix, e.podidentityNamespace)
	return nil
}

// waitDaemonSetRolled waits until the DaemonSet's every pod runs its newest template and is ready.
func (e *env) waitDaemonSetRolled(t *testing.T, ns, name string, timeout time.Duration) {
	t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		ds, err := e.cs.AppsV1().DaemonSets(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		s := ds.Status
		return s.ObservedGeneration >= ds.Generation && s.UpdatedNumberScheduled == s.DesiredNumberScheduled &&
			s.NumberReady == s.DesiredNumberScheduled && s.NumberUnavailable == 0, nil
	})
	if err != nil {
		t.Fatalf("DaemonSet %s/%s did not roll within %v:\n%s", ns, name, timeout, install.PodSummary(context.Background(), e.cluster, ns))
	}
}

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// addDurations reads, from offset on, the "ADD done" lines podidentity-cni logs (JSON on its stderr, which
// containerd copies into its log) and returns their elapsed times.
func addDurations(path string, offset int64) []time.Duration {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return nil
	}
	var out []time.Duration
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	re := regexp.MustCompile(`ADD done.*?elapsed\\*"?[:=]\\*"?([0-9.]+[µm]?s)`)
	for sc.Scan() {
		if m := re.FindSubmatch(sc.Bytes()); m != nil {
			if d, err := time.ParseDuration(string(m[1])); err == nil {
				out = append(out, d)
			}
		}
	}
	return out
}

// initStageDurations reads the runtime's log between two offsets and returns, for each pod sandbox in it whose
// injected init container was created, the time from that create to the create of the sandbox's next container:
// what the init container adds to the pod's start (its own run, and the kubelet noticing that it exited).
func initStageDurations(path string, from, to int64) []time.Duration {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	if _, err := f.Seek(from, io.SeekStart); err != nil {
		return nil
	}
	re := regexp.MustCompile(`time="([^"]+)".*msg="CreateContainer within sandbox \\"([0-9a-f]+)\\" for container &ContainerMetadata\{Name:([^,]+),`)
	initCreated := map[string]time.Time{}
	var out []time.Duration
	sc := bufio.NewScanner(io.LimitReader(f, to-from))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		m := re.FindSubmatch(sc.Bytes())
		if m == nil {
			continue
		}
		at, err := time.Parse(time.RFC3339Nano, string(m[1]))
		if err != nil {
			continue
		}
		sandbox, name := string(m[2]), string(m[3])
		if name == contract.InitContainerName {
			initCreated[sandbox] = at
			continue
		}
		if began, ok := initCreated[sandbox]; ok {
			out = append(out, at.Sub(began))
			delete(initCreated, sandbox)
		}
	}
	return out
}
