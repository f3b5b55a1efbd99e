package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"sort"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/binding"
	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/test/apps"
	"github.com/podidentity/podidentity/test/cluster"
	"github.com/podidentity/podidentity/test/cluster/install"
	"github.com/podidentity/podidentity/test/emulators/arm"
	"github.com/podidentity/podidentity/test/emulators/fakecloud"
	"github.com/podidentity/podidentity/test/emulators/imds"
)

// env is what every scenario uses: the cluster's clients, the app images and the figure report.
type env struct {
	cluster *cluster.Cluster
	cs      kubernetes.Interface
	c       client.Client
	imds    imdsAdmin
	goImage string
	jsImage string
	// attackerImage runs as root; attackerSidecarUIDImage's USER is the sidecar's uid.
	attackerImage, attackerSidecarUIDImage string
	figures                                *Figures
	matrix                                 *Matrix
	// podidentityNamespace is where the chart runs the webhook and the assigner.
	podidentityNamespace string
	// release is the installed chart, for scenarios that change its values.
	release *install.Release
}

// appLine is one JSON line of the e2e apps (test/apps README).
type appLine struct {
	OK        bool           `json:"ok"`
	SDK       string         `json:"sdk"`
	Claims    map[string]any `json:"claims"`
	ExpiresOn string         `json:"expiresOn"`
	Status    int            `json:"status"`
	Body      string         `json:"body"`
	Error     string         `json:"error"`
	ElapsedMs int64          `json:"elapsedMs"`
	Attempt   int            `json:"attempt"`
	Time      time.Time      `json:"time"`
}

// identity is an AzureIdentity with its binding, as the scenarios create them.
type identity struct {
	Name, Namespace, ClientID, ResourceID string
	// Selector is the value of the pod label aadpodidbinding that binds a pod to it.
	Selector string
}

func suffix() string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// namespace creates a namespace for one scenario, opted in to injection when inject is set. When the
// scenario fails, its pods, their containers' logs and the namespace's events go to the test log; the
// namespace is deleted at the end either way (without waiting).
func (e *env) namespace(t *testing.T, prefix string, inject bool) string {
	t.Helper()
	ctx := context.Background()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: prefix + "-" + suffix(), Labels: map[string]string{"podidentity.io/e2e": "true"}}}
	if inject {
		ns.Labels[contract.NamespaceInjectionLabel] = "enabled"
	}
	if _, err := e.cs.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating namespace %s: %v", ns.Name, err)
	}
	// The product's images come from the node's registry with authentication: injected pods get the pull
	// Secret's name from the webhook, and the Secret must be in their namespace (docs/install.md). Every
	// namespace gets it, so that a scenario that opts one in later needs nothing more.
	if err := install.EnsurePullSecret(ctx, e.cluster, ns.Name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("diagnostics of namespace %s:\n%s", ns.Name, e.diagnose(ctx, ns.Name))
		}
		if err := e.cs.CoreV1().Namespaces().Delete(ctx, ns.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("deleting namespace %s: %v", ns.Name, err)
		}
	})
	return ns.Name
}

// identity creates a user-assigned identity of the emulated subscription as an AzureIdentity in ns, and a
// binding that selects pods labelled aadpodidbinding=<ns>-<name>. The selector carries the namespace because
// bindings select pods of every namespace (AAD Pod Identity's semantics without forceNamespaced): a plain
// "web" would bind the pods of every scenario that has a "web". The emulated ARM knows every identity ID,
// and derives the client ID from it.
func (e *env) identity(t *testing.T, ns, name string) identity {
	t.Helper()
	ctx := context.Background()
	resourceID := cluster.UserAssignedIdentityID(ns + "-" + name)
	id := identity{Name: name, Namespace: ns, ClientID: arm.ClientIDOf(resourceID), ResourceID: resourceID, Selector: ns + "-" + name}
	ai := &aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: aadv1.AzureIdentitySpec{Type: aadv1.UserAssignedMSI, ResourceID: resourceID, ClientID: id.ClientID}}
	if err := e.c.Create(ctx, ai); err != nil {
		t.Fatalf("creating AzureIdentity %s/%s: %v", ns, name, err)
	}
	aib := &aadv1.AzureIdentityBinding{ObjectMeta: metav1.ObjectMeta{Name: name + "-binding", Namespace: ns},
		Spec: aadv1.AzureIdentityBindingSpec{AzureIdentity: name, Selector: id.Selector}}
	if err := e.c.Create(ctx, aib); err != nil {
		t.Fatalf("creating AzureIdentityBinding %s/%s-binding: %v", ns, name, err)
	}
	return id
}

// appPod is a pod running one e2e app as a restricted, non-root container, bound with selector (none when
// empty), never pulled.
func appPod(name, image, selector string, restart corev1.RestartPolicy, env map[string]string) *corev1.Pod {
	labels := map[string]string{"app": name}
	if selector != "" {
		labels[aadv1.PodLabelBinding] = selector
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec: corev1.PodSpec{
			RestartPolicy:                 restart,
			TerminationGracePeriodSeconds: ptr.To[int64](2),
			Containers:                    []corev1.Container{appContainer("app", image, env)},
		},
	}
}

func appContainer(name, image string, env map[string]string) corev1.Container {
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var vars []corev1.EnvVar
	for _, k := range keys {
		vars = append(vars, corev1.EnvVar{Name: k, Value: env[k]})
	}
	return corev1.Container{
		Name: name, Image: image, ImagePullPolicy: corev1.PullNever, Env: vars,
		SecurityContext: &corev1.SecurityContext{
			RunAsNonRoot: ptr.To(true), RunAsUser: ptr.To[int64](apps.AppUID), RunAsGroup: ptr.To[int64](apps.AppUID),
			AllowPrivilegeEscalation: ptr.To(false), Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		},
	}
}

// createPod creates the pod in ns and returns it as admitted (mutated by the webhook).
func (e *env) createPod(t *testing.T, ns string, pod *corev1.Pod) *corev1.Pod {
	t.Helper()
	created, err := e.cs.CoreV1().Pods(ns).Create(context.Background(), pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating pod %s/%s: %v", ns, pod.Name, err)
	}
	return created
}

// injection is what the webhook added to a pod.
type injection struct {
	Init, Sidecar bool
	// NativeSidecar: the sidecar is an init container with restartPolicy Always (Kubernetes 1.29+).
	NativeSidecar bool
	Identities    []binding.Identity
	HasAnnotation bool
}

func injectionOf(t *testing.T, pod *corev1.Pod) injection {
	t.Helper()
	var in injection
	for _, c := range pod.Spec.InitContainers {
		switch c.Name {
		case contract.InitContainerName:
			in.Init = true
		case contract.SidecarContainerName:
			in.Sidecar = true
			in.NativeSidecar = c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways
		}
	}
	for _, c := range pod.Spec.Containers {
		if c.Name == contract.SidecarContainerName {
			in.Sidecar = true
		}
	}
	if v, ok := pod.Annotations[contract.IdentitiesAnnotation]; ok {
		in.HasAnnotation = true
		ids, err := binding.Decode(v)
		if err != nil {
			t.Fatalf("pod %s: annotation %s=%q does not decode: %v", pod.Name, contract.IdentitiesAnnotation, v, err)
		}
		in.Identities = ids
	}
	return in
}

// requireInjected fails unless the webhook injected the pod with exactly the identity's client ID.
func requireInjected(t *testing.T, pod *corev1.Pod, ids ...identity) {
	t.Helper()
	in := injectionOf(t, pod)
	if !in.Init || !in.Sidecar || !in.HasAnnotation {
		t.Fatalf("pod %s was not injected (init container %v, sidecar %v, annotation %v): is the webhook up and the namespace labelled %s=enabled?",
			pod.Name, in.Init, in.Sidecar, in.HasAnnotation, contract.NamespaceInjectionLabel)
	}
	var got, want []string
	for _, i := range in.Identities {
		got = append(got, strings.ToLower(i.ClientID))
	}
	for _, i := range ids {
		want = append(want, strings.ToLower(i.ClientID))
	}
	sort.Strings(got)
	sort.Strings(want)
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("pod %s is bound to client IDs %v, want %v", pod.Name, got, want)
	}
}

// waitPod polls the pod until cond holds; on timeout the test fails with what was awaited and the pod's
// diagnostics.
func (e *env) waitPod(t *testing.T, ns, name, what string, timeout time.Duration, cond func(*corev1.Pod) bool) *corev1.Pod {
	t.Helper()
	var last *corev1.Pod
	err := wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		p, err := e.cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil // transient: keep polling
		}
		last = p
		return cond(p), nil
	})
	if err != nil {
		t.Fatalf("pod %s/%s: %s: not within %v (phase %s)\n%s", ns, name, what, timeout, phaseOf(last), e.diagnose(context.Background(), ns))
	}
	return last
}

func phaseOf(p *corev1.Pod) corev1.PodPhase {
	if p == nil {
		return "unknown"
	}
	return p.Status.Phase
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// appLines reads a container's log as app lines (lines that are not JSON are skipped: the SDKs may log).
func (e *env) appLines(ctx context.Context, ns, pod, container string, previous bool) ([]appLine, error) {
	raw, err := e.cs.CoreV1().Pods(ns).GetLogs(pod, &corev1.PodLogOptions{Container: container, Previous: previous}).DoRaw(ctx)
	if err != nil {
		return nil, err
	}
	var lines []appLine
	sc := bufio.NewScanner(bytes.NewReader(raw))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var l appLine
		if json.Unmarshal(sc.Bytes(), &l) == nil && l.SDK != "" {
			lines = append(lines, l)
		}
	}
	return lines, sc.Err()
}

// waitAppLine waits for the first app line that matches and returns it with every line before it.
func (e *env) waitAppLine(t *testing.T, ns, pod, container, what string, timeout time.Duration, match func(appLine) bool) (appLine, []appLine) {
	t.Helper()
	var lines []appLine
	var found *appLine
	err := wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		var err error
		if lines, err = e.appLines(ctx, ns, pod, container, false); err != nil {
			return false, nil // the container may not have started yet
		}
		for i := range lines {
			if match(lines[i]) {
				found = &lines[i]
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("pod %s/%s container %s: %s: not within %v; its lines: %+v\n%s", ns, pod, container, what, timeout, lines, e.diagnose(context.Background(), ns))
	}
	return *found, lines
}

// diagnose describes every pod of the namespace (phase, conditions, containers, the last lines of each
// container's log) and the namespace's events, for failure messages.
func (e *env) diagnose(ctx context.Context, ns string) string {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	var b strings.Builder
	pods, err := e.cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		fmt.Fprintf(&b, "listing pods: %v\n", err)
	} else {
		const maxPods = 15
		if len(pods.Items) > maxPods {
			fmt.Fprintf(&b, "(%d pods; the first %d:)\n", len(pods.Items), maxPods)
			pods.Items = pods.Items[:maxPods]
		}
		for _, p := range pods.Items {
			fmt.Fprintf(&b, "--- pod %s: phase %s, node %q, reason %q %s\n", p.Name, p.Status.Phase, p.Spec.NodeName, p.Status.Reason, p.Status.Message)
			for _, c := range p.Status.Conditions {
				fmt.Fprintf(&b, "    condition %s=%s %s %s\n", c.Type, c.Status, c.Reason, c.Message)
			}
			statuses := append(append([]corev1.ContainerStatus{}, p.Status.InitContainerStatuses...), p.Status.ContainerStatuses...)
			for _, s := range statuses {
				fmt.Fprintf(&b, "    container %s: ready %v, restarts %d, state %s\n", s.Name, s.Ready, s.RestartCount, stateOf(s.State))
				tail := int64(30)
				logs, err := e.cs.CoreV1().Pods(ns).GetLogs(p.Name, &corev1.PodLogOptions{Container: s.Name, TailLines: &tail}).DoRaw(ctx)
				if err != nil {
					fmt.Fprintf(&b, "      (no log: %v)\n", err)
					continue
				}
				for _, l := range strings.Split(strings.TrimRight(string(logs), "\n"), "\n") {
					if l != "" {
						fmt.Fprintf(&b, "      | %s\n", l)
					}
				}
			}
		}
	}
	events, err := e.cs.CoreV1().Events(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		fmt.Fprintf(&b, "listing events: %v\n", err)
		return b.String()
	}
	sort.Slice(events.Items, func(i, j int) bool { return events.Items[i].LastTimestamp.Before(&events.Items[j].LastTimestamp) })
	b.WriteString("--- events:\n")
	for _, ev := range events.Items {
		fmt.Fprintf(&b, "    %s %s %s/%s %s: %s\n", ev.LastTimestamp.UTC().Format("15:04:05"), ev.Type, ev.InvolvedObject.Kind, ev.InvolvedObject.Name, ev.Reason, ev.Message)
	}
	return b.String()
}

func stateOf(s corev1.ContainerState) string {
	switch {
	case s.Running != nil:
		return "running since " + s.Running.StartedAt.UTC().Format("15:04:05")
	case s.Waiting != nil:
		return "waiting: " + s.Waiting.Reason + " " + s.Waiting.Message
	case s.Terminated != nil:
		return fmt.Sprintf("terminated: exit %d %s %s", s.Terminated.ExitCode, s.Terminated.Reason, s.Terminated.Message)
	}
	return "unknown"
}

// imdsAdmin is the fake cloud's admin API (test/emulators/fakecloud), with the test's failure handling.
type imdsAdmin struct{ fakecloud.Admin }

func newIMDSAdmin() imdsAdmin {
	return imdsAdmin{fakecloud.Admin{Base: "http://" + cluster.IMDSAdminAddress}}
}

// put sends body as JSON to the admin API and fails the test unless the answer is a success.
func (a imdsAdmin) put(t *testing.T, path string, body any) {
	t.Helper()
	if err := a.Do(context.Background(), http.MethodPut, path, body, nil); err != nil {
		t.Fatal(err)
	}
}

// Counters are the IMDS emulator's call counters.
func (a imdsAdmin) Counters(t *testing.T) imds.Counters {
	t.Helper()
	c, err := a.IMDSCounters(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// armHistory is every identity set ARM applied to the node's scale set, oldest first.
func (a imdsAdmin) armHistory(t *testing.T) []fakecloud.Change {
	t.Helper()
	h, err := a.History(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// IsAttached reports whether the identity is attached to the node (its scale set).
func (a imdsAdmin) IsAttached(ctx context.Context, clientID string) (bool, error) {
	ids, err := a.Attached(ctx)
	if err != nil {
		return false, err
	}
	for _, id := range ids {
		if strings.EqualFold(id.ClientID, clientID) {
			return true, nil
		}
	}
	return false, nil
}

// waitAttached waits until the identity's attachment to the node is want, and returns when it saw it.
func (e *env) waitAttached(t *testing.T, clientID string, want bool, timeout time.Duration) time.Time {
	t.Helper()
	var seen time.Time
	err := wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		got, err := e.imds.IsAttached(ctx, clientID)
		if err != nil {
			return false, err
		}
		seen = time.Now()
		return got == want, nil
	})
	if err != nil {
		state := map[bool]string{true: "attached to", false: "detached from"}[want]
		t.Fatalf("identity %s was not %s the node within %v: %v (assigner log: kubectl -n %s logs deploy/<release>-assigner)", clientID, state, timeout, err, e.podidentityNamespace)
	}
	return seen
}

// nftTables lists the nftables tables of the network namespace of a running container (root on the node).
func nftTables(ctx context.Context, pid int) (string, error) {
	out, err := exec.CommandContext(ctx, "nsenter", "-t", fmt.Sprint(pid), "-n", "nft", "list", "tables").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("nsenter -t %d -n nft list tables: %w: %s", pid, err, out)
	}
	return string(out), nil
}

// nftChains lists the project's table of the network namespace of a running container (root on the node).
func nftChains(ctx context.Context, pid int) (string, error) {
	out, err := exec.CommandContext(ctx, "nsenter", "-t", fmt.Sprint(pid), "-n", "nft", "list", "table", "inet", "podidentity").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("nsenter -t %d -n nft list table inet podidentity: %w: %s", pid, err, out)
	}
	return string(out), nil
}
