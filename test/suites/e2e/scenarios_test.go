package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/test/emulators/imds"
)

// Generous bounds: the suite shares two cores with builds; the figures, not these, say how fast things are.
const (
	podTimeout   = 3 * time.Minute
	tokenTimeout = 2 * time.Minute
)

// FirstTokenTarget is the goal for the first token of a pod whose identity is already on the node, counted
// from the pod's Ready condition.
const FirstTokenTarget = time.Second

func tokenFor(id identity) func(appLine) bool {
	return func(l appLine) bool { return l.OK && strings.EqualFold(fmt.Sprint(l.Claims["appid"]), id.ClientID) }
}

// scenarioTokens: a pod in an opted-in namespace gets a token for its bound identity through the redirect,
// from the real SDK; a request for an identity that is attached to the node but not bound to the pod is
// refused by the sidecar and never reaches IMDS; non-canonical paths are refused too.
func (e *env) scenarioTokens(t *testing.T, sdk, image string) {
	ns := e.namespace(t, "tokens-"+sdk, true)
	web := e.identity(t, ns, "web")
	other := e.identity(t, ns, "other")

	app := e.createPod(t, ns, appPod("app", image, web.Selector, corev1.RestartPolicyAlways,
		map[string]string{"MODE": "until-ok", "INTERVAL": "500ms", "AZURE_CLIENT_ID": web.ClientID}))
	requireInjected(t, app, web)
	// A neighbour bound to the other identity: once it has a token, that identity is attached to the node, so
	// IMDS would hand it to anyone who could ask IMDS directly.
	e.createPod(t, ns, appPod("neighbour", e.goImage, other.Selector, corev1.RestartPolicyAlways,
		map[string]string{"MODE": "until-ok", "INTERVAL": "500ms", "AZURE_CLIENT_ID": other.ClientID}))

	line, _ := e.waitAppLine(t, ns, "app", "app", "a token for the bound identity", tokenTimeout, tokenFor(web))
	if line.SDK != sdk || line.Claims["xms_mirid"] != web.ResourceID {
		t.Errorf("token line %+v: want sdk %s and xms_mirid %s", line, sdk, web.ResourceID)
	}
	e.waitAppLine(t, ns, "neighbour", "app", "a token for the other identity", tokenTimeout, tokenFor(other))
	if d, err := e.sidecarStartCost(context.Background(), ns, "app"); err != nil {
		t.Errorf("the sidecar's start-up log: %v", err)
	} else {
		e.figures.Add(Figure{Scenario: "tokens (" + sdk + ")", Name: "sidecar start as root: learn its cgroup, install the exemption, drop every privilege", Value: fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000)})
	}
	before := e.imds.Counters(t)

	// Raw requests from a pod bound like the app: one container per request, all through the redirect.
	probes := []struct {
		name, url, query string
		status           int
		body             string
	}{
		{name: "bound", query: "api-version=2018-02-01&resource=https://management.azure.com/&client_id=" + web.ClientID, status: 200},
		{name: "unbound", query: "api-version=2018-02-01&resource=https://management.azure.com/&client_id=" + other.ClientID, status: 400, body: web.ClientID},
		{name: "unbound-by-resource-id", query: "api-version=2018-02-01&resource=https://management.azure.com/&msi_res_id=" + other.ResourceID, status: 400},
		{name: "encoded-path", url: "http://169.254.169.254/metadata/identity/oauth2/%74oken", query: "api-version=2018-02-01&resource=https://management.azure.com/&client_id=" + other.ClientID, status: 400},
		{name: "dot-segment", url: "http://169.254.169.254/metadata/identity/oauth2/x/../token", query: "api-version=2018-02-01&resource=https://management.azure.com/&client_id=" + other.ClientID, status: 400},
	}
	raw := appPod("raw", image, web.Selector, corev1.RestartPolicyNever, nil)
	raw.Spec.Containers = nil
	for _, p := range probes {
		env := map[string]string{"MODE": "raw-imds", "QUERY": p.query}
		if p.url != "" {
			env["RAW_URL"] = p.url
		}
		raw.Spec.Containers = append(raw.Spec.Containers, appContainer(p.name, image, env))
	}
	requireInjected(t, e.createPod(t, ns, raw), web)
	e.waitPod(t, ns, "raw", "every raw request answered (pod Succeeded)", podTimeout, func(p *corev1.Pod) bool {
		return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
	})
	for _, p := range probes {
		lines, err := e.appLines(context.Background(), ns, "raw", p.name, false)
		if err != nil || len(lines) != 1 {
			t.Errorf("raw request %s: lines %+v, %v", p.name, lines, err)
			continue
		}
		l := lines[0]
		if l.Status != p.status || !strings.Contains(l.Body, p.body) {
			t.Errorf("raw request %s: status %d body %s; want %d with %q", p.name, l.Status, l.Body, p.status, p.body)
		}
		if p.status == 200 && l.Claims["appid"] != web.ClientID {
			t.Errorf("raw request %s: token for %v, want %s", p.name, l.Claims["appid"], web.ClientID)
		}
	}
	after := e.imds.Counters(t)
	if n := after.TokensByClientID[other.ClientID] - before.TokensByClientID[other.ClientID]; n != 0 {
		t.Errorf("IMDS issued %d tokens for the unbound identity %s during the raw requests: the pod reached IMDS directly", n, other.ClientID)
	}
}

// scenarioFirstToken measures the first token of a pod whose identity is already attached to the node
// (another replica has it), for each SDK, from the pod's creation and from its Ready condition.
func (e *env) scenarioFirstToken(t *testing.T) {
	ns := e.namespace(t, "first-token", true)
	id := e.identity(t, ns, "api")
	e.createPod(t, ns, appPod("warm", e.goImage, id.Selector, corev1.RestartPolicyAlways, map[string]string{"MODE": "until-ok", "AZURE_CLIENT_ID": id.ClientID}))
	e.waitAppLine(t, ns, "warm", "app", "the first replica's token", tokenTimeout, tokenFor(id))
	e.waitAttached(t, id.ClientID, true, time.Minute)

	for _, c := range []struct{ sdk, image string }{{"go", e.goImage}, {"js", e.jsImage}} {
		name := "measured-" + c.sdk
		created := time.Now()
		e.createPod(t, ns, appPod(name, c.image, id.Selector, corev1.RestartPolicyAlways,
			map[string]string{"MODE": "until-ok", "INTERVAL": "100ms", "AZURE_CLIENT_ID": id.ClientID}))
		e.measureFirstToken(t, "first token, identity attached", c.sdk, ns, name, created, tokenFor(id))
	}
}

// measureFirstToken waits for the pod (created at created, its app polling every 100 ms) to become Ready and
// for its app's first token that match accepts, and records the figures of scenario: the first token after the
// pod's creation and after Ready (against FirstTokenTarget), the GetToken call's duration and the attempts.
// It returns the app's line of that token.
func (e *env) measureFirstToken(t *testing.T, scenario, sdk, ns, name string, created time.Time, match func(appLine) bool) appLine {
	t.Helper()
	// Ready as this test sees it (polling every 100 ms): the condition's own time has one-second resolution.
	p := e.waitPod(t, ns, name, "Ready", podTimeout, podReady)
	ready := time.Now()
	if cond := readyCondition(p); cond != nil && cond.LastTransitionTime.Time.Before(ready) {
		// The poll saw it late: the condition time, rounded down to its second, bounds it from below.
		ready = later(cond.LastTransitionTime.Time, ready.Add(-100*time.Millisecond))
	}
	line, lines := e.waitAppLine(t, ns, name, "app", "the first token", tokenTimeout, match)
	fromCreate := line.Time.Sub(created)
	fromReady := max(line.Time.Sub(ready), 0) // a token before Ready counts as 0
	e.figures.Add(Figure{Scenario: scenario, Name: sdk + " SDK: first token after pod creation", Value: seconds(fromCreate)})
	e.figures.Add(Figure{Scenario: scenario, Name: sdk + " SDK: first token after pod Ready", Value: seconds(fromReady),
		Target: "<= " + FirstTokenTarget.String(), Met: fromReady <= FirstTokenTarget})
	e.figures.Add(Figure{Scenario: scenario, Name: sdk + " SDK: duration of the GetToken call that got it", Value: fmt.Sprintf("%d ms", line.ElapsedMs)})
	e.figures.Add(Figure{Scenario: scenario, Name: sdk + " SDK: attempts until the token", Value: strconv.Itoa(len(lines))})
	t.Logf("%s: %s: first token %v after creation, %v after Ready, attempt %d", scenario, sdk, fromCreate, fromReady, line.Attempt)
	if fromReady > 10*FirstTokenTarget {
		t.Errorf("%s SDK: first token %v after Ready, target %v", sdk, fromReady, FirstTokenTarget)
	}
	return line
}

func readyCondition(p *corev1.Pod) *corev1.PodCondition {
	for i := range p.Status.Conditions {
		if p.Status.Conditions[i].Type == corev1.PodReady {
			return &p.Status.Conditions[i]
		}
	}
	return nil
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func seconds(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }

// scenarioWaitForAttach: a pod whose identity is not on the node yet starts while the assigner is down (a
// slow ARM, in effect); the app's SDK keeps asking and gets no token; once the assigner is back it attaches the
// identity and the SDK's retries succeed. Meanwhile the sidecar retries IMDS with back-off: no storm of
// requests, and no 404 (which makes SDKs retry hard).
func (e *env) scenarioWaitForAttach(t *testing.T) {
	const hold = 20 * time.Second // longer than the sidecar's --attach-wait (15 s), so the SDK's own retry runs
	ns := e.namespace(t, "wait-attach", true)
	id := e.identity(t, ns, "batch")
	assigner := e.deployment(t, "-assigner")
	replicas := *assigner.Spec.Replicas
	e.scale(t, assigner, 0)
	t.Cleanup(func() { e.scale(t, assigner, replicas) }) // also when the scenario fails: the others need it

	before := e.imds.Counters(t)
	requireInjected(t, e.createPod(t, ns, appPod("app", e.goImage, id.Selector, corev1.RestartPolicyAlways,
		map[string]string{"MODE": "until-ok", "INTERVAL": "1s", "ATTEMPT_TIMEOUT": "3m", "AZURE_CLIENT_ID": id.ClientID})), id)
	e.waitPod(t, ns, "app", "Ready", podTimeout, podReady)
	time.Sleep(hold) // the app is asking for a token that cannot exist yet
	held := e.imds.Counters(t)
	if lines, err := e.appLines(context.Background(), ns, "app", "app", false); err != nil || anyOK(lines) {
		t.Fatalf("the app got a token while its identity was not attached (lines %+v, %v)", lines, err)
	}
	if attached, err := e.imds.IsAttached(context.Background(), id.ClientID); err != nil || attached {
		t.Fatalf("identity attached (%v) while the assigner was scaled to 0", err)
	}

	resumed := time.Now()
	e.scale(t, assigner, replicas)
	attached := e.waitAttached(t, id.ClientID, true, 3*time.Minute)
	line, lines := e.waitAppLine(t, ns, "app", "app", "a token once the identity is attached", tokenTimeout, tokenFor(id))
	after := e.imds.Counters(t)

	requests, refused := held.TokenRequests-before.TokenRequests, nonOK(held)-nonOK(before)
	const sc = "first token, identity not attached"
	e.figures.Add(Figure{Scenario: sc, Name: fmt.Sprintf("IMDS token requests / refused in the %v the identity was missing", hold), Value: fmt.Sprintf("%d / %d", requests, refused)})
	e.figures.Add(Figure{Scenario: sc, Name: "identity attached after the assigner was scaled back up (its start-up included)", Value: seconds(attached.Sub(resumed))})
	e.figures.Add(Figure{Scenario: sc, Name: "Go SDK token after the identity was attached", Value: seconds(max(line.Time.Sub(attached), 0))})
	e.figures.Add(Figure{Scenario: sc, Name: "Go SDK GetToken calls until the token / duration of the last", Value: fmt.Sprintf("%d / %.1f s", len(lines), float64(line.ElapsedMs)/1000)})
	if n := after.ByStatus[404] - before.ByStatus[404]; n != 0 {
		t.Errorf("IMDS answered 404 %d times while the identity was missing: the emulator answers 404 only to unknown paths, so something asked a wrong one", n)
	}
	if limit := 2*int(hold/time.Second) + 10; requests > limit {
		t.Errorf("IMDS got %d token requests in the %v the identity was missing (limit %d): a retry storm", requests, hold, limit)
	}
	if requests == 0 {
		t.Errorf("IMDS got no token request while the identity was missing: the scenario did not exercise the wait")
	}
}

func anyOK(lines []appLine) bool {
	for _, l := range lines {
		if l.OK {
			return true
		}
	}
	return false
}

func nonOK(c imds.Counters) int {
	n := 0
	for status, v := range c.ByStatus {
		if status != 200 {
			n += v
		}
	}
	return n
}

// scale sets a Deployment's replicas and waits until its pods match (all ready, or none left).
func (e *env) scale(t *testing.T, d *appsv1.Deployment, replicas int32) {
	t.Helper()
	ctx := context.Background()
	patch := fmt.Sprintf(`{"spec":{"replicas":%d}}`, replicas)
	if _, err := e.cs.AppsV1().Deployments(d.Namespace).Patch(ctx, d.Name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatalf("scaling %s/%s to %d: %v", d.Namespace, d.Name, replicas, err)
	}
	sel := metav1.FormatLabelSelector(d.Spec.Selector)
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, podTimeout, true, func(ctx context.Context) (bool, error) {
		got, err := e.cs.AppsV1().Deployments(d.Namespace).Get(ctx, d.Name, metav1.GetOptions{})
		if err != nil || got.Status.ObservedGeneration < got.Generation || got.Status.ReadyReplicas != replicas {
			return false, nil
		}
		pods, err := e.cs.CoreV1().Pods(d.Namespace).List(ctx, metav1.ListOptions{LabelSelector: sel})
		return err == nil && len(pods.Items) == int(replicas), nil
	})
	if err != nil {
		t.Fatalf("%s/%s did not reach %d ready replicas (and no others) within %v\n%s", d.Namespace, d.Name, replicas, podTimeout, e.diagnose(ctx, d.Namespace))
	}
}

// scenarioJob: a Job's pod with the native sidecar completes: the sidecar does not keep it running.
func (e *env) scenarioJob(t *testing.T) {
	ns := e.namespace(t, "job", true)
	id := e.identity(t, ns, "job")
	pod := appPod("unused", e.goImage, id.Selector, corev1.RestartPolicyNever, map[string]string{"MODE": "once", "ATTEMPT_TIMEOUT": "90s", "AZURE_CLIENT_ID": id.ClientID})
	job := &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Name: "once", Namespace: ns},
		Spec: batchv1.JobSpec{
			BackoffLimit: ptr.To[int32](0),
			Template:     corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: pod.Labels}, Spec: pod.Spec},
		},
	}
	if _, err := e.cs.BatchV1().Jobs(ns).Create(context.Background(), job, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating the Job: %v", err)
	}
	var done *batchv1.Job
	err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, podTimeout, true, func(ctx context.Context) (bool, error) {
		j, err := e.cs.BatchV1().Jobs(ns).Get(ctx, "once", metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		done = j
		return j.Status.Succeeded > 0 || j.Status.Failed > 0, nil
	})
	if err != nil || done.Status.Succeeded != 1 {
		t.Fatalf("the Job did not complete (succeeded %d, failed %d, %v): with a native sidecar its pod must end when the app ends\n%s",
			done.Status.Succeeded, done.Status.Failed, err, e.diagnose(context.Background(), ns))
	}
	pods, err := e.cs.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: "job-name=once"})
	if err != nil || len(pods.Items) != 1 {
		t.Fatalf("the Job's pods: %d, %v", len(pods.Items), err)
	}
	p := &pods.Items[0]
	if in := injectionOf(t, p); !in.NativeSidecar {
		t.Errorf("the Job's pod has no native sidecar (init container %s with restartPolicy Always): %+v", contract.SidecarContainerName, in)
	}
	lines, err := e.appLines(context.Background(), ns, p.Name, "app", false)
	if err != nil || len(lines) != 1 || !tokenFor(id)(lines[0]) {
		t.Errorf("the Job's app: lines %+v, %v; want one token for %s", lines, err, id.ClientID)
	}
}

// scenarioRestartAndDetach: a pod whose sandbox dies gets a new one, where the init container runs again and
// installs the redirect once; the app gets tokens again. Deleting one of two pods of an identity keeps it on
// the node; deleting the last detaches it.
func (e *env) scenarioRestartAndDetach(t *testing.T) {
	ns := e.namespace(t, "restart", true)
	id := e.identity(t, ns, "svc")
	env := map[string]string{"MODE": "until-ok", "INTERVAL": "500ms", "AZURE_CLIENT_ID": id.ClientID}
	e.createPod(t, ns, appPod("first", e.goImage, id.Selector, corev1.RestartPolicyAlways, env))
	e.createPod(t, ns, appPod("second", e.goImage, id.Selector, corev1.RestartPolicyAlways, env))
	e.waitAppLine(t, ns, "first", "app", "a token", tokenTimeout, tokenFor(id))
	e.waitAppLine(t, ns, "second", "app", "a token", tokenTimeout, tokenFor(id))

	p := e.waitPod(t, ns, "first", "Ready", podTimeout, podReady)
	oldInit := containerID(p.Status.InitContainerStatuses, contract.InitContainerName)
	pid := e.appPID(t, p)
	tables, err := nftTables(context.Background(), pid)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(tables, "table inet podidentity"); n != 1 {
		t.Fatalf("the pod's netns has %d podidentity tables before the restart, want 1:\n%s", n, tables)
	}
	pause, err := sandboxProcess(pid)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pause, syscall.SIGKILL); err != nil {
		t.Fatalf("killing the pod's sandbox process %d: %v", pause, err)
	}
	restarted := time.Now()
	p = e.waitPod(t, ns, "first", "a new sandbox: init container run again and the pod Ready", podTimeout, func(p *corev1.Pod) bool {
		id := containerID(p.Status.InitContainerStatuses, contract.InitContainerName)
		return id != "" && id != oldInit && podReady(p)
	})
	newPID := e.appPID(t, p)
	if tables, err = nftTables(context.Background(), newPID); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(tables, "table inet podidentity"); n != 1 {
		t.Errorf("the pod's netns has %d podidentity tables after the restart, want 1:\n%s", n, tables)
	}
	if lines, _ := e.appLines(context.Background(), ns, "first", "app", false); len(lines) > 0 && !lines[0].Time.After(restarted) {
		t.Logf("the app container was not restarted with the sandbox (first line at %v)", lines[0].Time)
	}
	e.waitAppLine(t, ns, "first", "app", "a token after the restart", tokenTimeout, func(l appLine) bool { return tokenFor(id)(l) && l.Time.After(restarted) })
	e.figures.Add(Figure{Scenario: "pod restart", Name: "sandbox killed to token again", Value: seconds(time.Since(restarted))})

	// Detach: one pod left keeps the identity; none left removes it.
	e.deletePod(t, ns, "first")
	e.waitAssignedGone(t, ns, "first")
	if attached, err := e.imds.IsAttached(context.Background(), id.ClientID); err != nil || !attached {
		t.Fatalf("identity detached (%v) while pod second still uses it", err)
	}
	deleted := e.deletePod(t, ns, "second")
	detached := e.waitAttached(t, id.ClientID, false, 2*time.Minute)
	e.figures.Add(Figure{Scenario: "pod deletion", Name: "delete of the last pod to identity detached", Value: seconds(detached.Sub(deleted))})
}

func containerID(statuses []corev1.ContainerStatus, name string) string {
	for _, s := range statuses {
		if s.Name == name {
			return s.ContainerID
		}
	}
	return ""
}

// appPID is a process of the pod's app container on this node (the suite runs on the node, as root).
func (e *env) appPID(t *testing.T, p *corev1.Pod) int {
	t.Helper()
	id := containerID(p.Status.ContainerStatuses, "app")
	_, raw, ok := strings.Cut(id, "://")
	if !ok {
		t.Fatalf("pod %s: app container ID %q", p.Name, id)
	}
	pid, err := pidOfContainer(raw)
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// deletePod deletes the pod, waits until it is gone, and returns when the deletion was asked.
func (e *env) deletePod(t *testing.T, ns, name string) time.Time {
	t.Helper()
	asked := time.Now()
	if err := e.cs.CoreV1().Pods(ns).Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil {
		t.Fatalf("deleting pod %s/%s: %v", ns, name, err)
	}
	err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, podTimeout, true, func(ctx context.Context) (bool, error) {
		_, err := e.cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	if err != nil {
		t.Fatalf("pod %s/%s still exists %v after deletion", ns, name, podTimeout)
	}
	return asked
}

// waitAssignedGone waits until no AzureAssignedIdentity names the pod: the assigner has handled its deletion.
func (e *env) waitAssignedGone(t *testing.T, ns, pod string) {
	t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		var list aadv1.AzureAssignedIdentityList
		if err := e.c.List(ctx, &list); err != nil {
			return false, nil
		}
		for _, a := range list.Items {
			if a.Spec.Pod == pod && a.Spec.PodNamespace == ns {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		t.Fatalf("the AzureAssignedIdentity of pod %s/%s was not removed within 2m: is the assigner running?", ns, pod)
	}
}

// scenarioUntouchedAndRefused: a namespace without the label is not injected; a hostNetwork pod that asks
// for an identity is refused with the webhook's documented message.
func (e *env) scenarioUntouchedAndRefused(t *testing.T) {
	plain := e.namespace(t, "plain", false)
	id := e.identity(t, plain, "any")
	p := e.createPod(t, plain, appPod("app", e.goImage, id.Selector, corev1.RestartPolicyNever, map[string]string{"MODE": "once"}))
	if in := injectionOf(t, p); in.Init || in.Sidecar || in.HasAnnotation || len(p.Spec.InitContainers) != 0 || len(p.Spec.Containers) != 1 {
		t.Errorf("pod in namespace %s (no %s label) was changed: %+v", plain, contract.NamespaceInjectionLabel, in)
	}

	opted := e.namespace(t, "hostnet", true)
	hid := e.identity(t, opted, "host")
	pod := appPod("host", e.goImage, hid.Selector, corev1.RestartPolicyNever, map[string]string{"MODE": "once"})
	pod.Spec.HostNetwork = true
	_, err := e.cs.CoreV1().Pods(opted).Create(context.Background(), pod, metav1.CreateOptions{})
	const want = "a hostNetwork pod cannot be isolated from the node's IMDS"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("hostNetwork pod with label %s: error %v, want the webhook's denial %q", aadv1.PodLabelBinding, err, want)
	}
}

// scenarioWebhookRollout: pods keep being admitted (and injected) while the webhook's Deployment rolls, until
// the last old pod has exited.
func (e *env) scenarioWebhookRollout(t *testing.T) {
	ctx := context.Background()
	dep := e.deployment(t, "-webhook")
	if dep.Spec.Replicas == nil || *dep.Spec.Replicas < 2 {
		t.Fatalf("webhook Deployment %s has %v replicas, the chart's default is 2", dep.Name, dep.Spec.Replicas)
	}
	pdbs, err := e.cs.PolicyV1().PodDisruptionBudgets(dep.Namespace).List(ctx, metav1.ListOptions{})
	if err != nil || len(pdbs.Items) == 0 {
		t.Errorf("no PodDisruptionBudget in %s (%v): the chart's webhook.podDisruptionBudget is on by default", dep.Namespace, err)
	}
	ns := e.namespace(t, "rollout", true)
	id := e.identity(t, ns, "roll")

	patch := fmt.Sprintf(`{"spec":{"template":{"metadata":{"annotations":{"podidentity.io/e2e-restartedAt":%q}}}}}`, time.Now().UTC().Format(time.RFC3339Nano))
	started := time.Now()
	if _, err := e.cs.AppsV1().Deployments(dep.Namespace).Patch(ctx, dep.Name, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatalf("restarting the webhook: %v", err)
	}
	var (
		mu       sync.Mutex
		created  int
		failures []string
		rolled   time.Duration
	)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
			d, err := e.cs.AppsV1().Deployments(dep.Namespace).Get(ctx, dep.Name, metav1.GetOptions{})
			if err != nil {
				return false, nil
			}
			ok := d.Status.ObservedGeneration >= d.Generation && d.Status.UpdatedReplicas == *d.Spec.Replicas &&
				d.Status.Replicas == *d.Spec.Replicas && d.Status.AvailableReplicas == *d.Spec.Replicas
			if ok {
				// The Deployment counts a terminating pod as gone, but the old pods still serve through their
				// preStop delay and leave the Service's endpoints only when they exit: that exit is the moment
				// admissions used to fail, so the rollout is over when no old pod is left.
				if ok = e.onlyCurrentPods(ctx, d); ok {
					t.Logf("last old webhook pod gone %.1fs after the restart", time.Since(started).Seconds())
				}
			}
			if ok {
				rolled = time.Since(started)
			}
			return ok, nil
		})
	}()
	// Pods that never run (no node matches): admission is what is under test, and the two cores stay free.
	for i := 0; ; i++ {
		select {
		case <-done:
		default:
			pod := appPod(fmt.Sprintf("p%03d", i), e.goImage, id.Selector, corev1.RestartPolicyNever, map[string]string{"MODE": "once"})
			pod.Spec.NodeSelector = map[string]string{"podidentity.io/e2e-nowhere": "true"}
			p, err := e.cs.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
			mu.Lock()
			created++
			if err != nil {
				failures = append(failures, fmt.Sprintf("%.1fs after the restart: %v", time.Since(started).Seconds(), err))
			} else if in := injectionOf(t, p); !in.Init || !in.Sidecar {
				failures = append(failures, fmt.Sprintf("%.1fs after the restart: %s: admitted without injection", time.Since(started).Seconds(), p.Name))
			}
			mu.Unlock()
			time.Sleep(100 * time.Millisecond)
			continue
		}
		break
	}
	if rolled == 0 {
		t.Fatalf("the webhook Deployment did not finish rolling within 3m\n%s", e.diagnose(ctx, dep.Namespace))
	}
	e.figures.Add(Figure{Scenario: "webhook rolling restart", Name: "pods created during the rollout / failed", Value: fmt.Sprintf("%d / %d", created, len(failures)),
		Target: "0 failed", Met: len(failures) == 0})
	e.figures.Add(Figure{Scenario: "webhook rolling restart", Name: "rollout duration", Value: seconds(rolled)})
	if len(failures) > 0 {
		t.Errorf("%d of %d pod creations failed during the webhook's rolling restart: %v", len(failures), created, failures)
	}
	if created < 10 {
		t.Errorf("only %d pods were created during the rollout: too few to say admission stayed up", created)
	}
}

// onlyCurrentPods reports whether the Deployment runs exactly its replicas and no terminating pod is left.
func (e *env) onlyCurrentPods(ctx context.Context, d *appsv1.Deployment) bool {
	pods, err := e.cs.CoreV1().Pods(d.Namespace).List(ctx, metav1.ListOptions{LabelSelector: metav1.FormatLabelSelector(d.Spec.Selector)})
	if err != nil || d.Spec.Replicas == nil || len(pods.Items) != int(*d.Spec.Replicas) {
		return false
	}
	for _, p := range pods.Items {
		if p.DeletionTimestamp != nil {
			return false
		}
	}
	return true
}

// deployment finds the chart's Deployment whose name ends with suffix (-webhook, -assigner).
func (e *env) deployment(t *testing.T, suffix string) *appsv1.Deployment {
	t.Helper()
	list, err := e.cs.AppsV1().Deployments(e.podidentityNamespace).List(context.Background(), metav1.ListOptions{LabelSelector: "app.kubernetes.io/part-of=podidentity"})
	if err != nil {
		t.Fatal(err)
	}
	for i := range list.Items {
		if strings.HasSuffix(list.Items[i].Name, suffix) {
			return &list.Items[i]
		}
	}
	t.Fatalf("no Deployment *%s (label app.kubernetes.io/part-of=podidentity) in namespace %s", suffix, e.podidentityNamespace)
	return nil
}

// pidOfContainer finds a process of the container by its cgroup (the CRI names container cgroups after the
// container ID, with either cgroup driver).
func pidOfContainer(id string) (int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	for _, ent := range entries {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", ent.Name(), "cgroup"))
		if err == nil && strings.Contains(string(b), id) {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("no process of container %s on this node (is the suite running on the node, as root?)", id)
}

// sandboxProcess finds the pause process of the pod whose process pid is: the oldest process in the same
// network namespace that runs "pause".
func sandboxProcess(pid int) (int, error) {
	netns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid))
	if err != nil {
		return 0, err
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	for _, ent := range entries {
		p, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", p))
		if err != nil || ns != netns {
			continue
		}
		if comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", p)); err == nil && strings.TrimSpace(string(comm)) == "pause" {
			return p, nil
		}
	}
	return 0, fmt.Errorf("no pause process in network namespace %s", netns)
}

// sidecarStartCost is the time between the sidecar's first log line and the one saying it dropped its
// privileges (the exemption installed in between), from its own log's timestamps.
func (e *env) sidecarStartCost(ctx context.Context, ns, pod string) (time.Duration, error) {
	raw, err := e.cs.CoreV1().Pods(ns).GetLogs(pod, &corev1.PodLogOptions{Container: contract.SidecarContainerName}).DoRaw(ctx)
	if err != nil {
		return 0, err
	}
	var started, dropped time.Time
	for _, line := range strings.Split(string(raw), "\n") {
		var l struct {
			Time time.Time `json:"time"`
			Msg  string    `json:"msg"`
		}
		if json.Unmarshal([]byte(line), &l) != nil {
			continue
		}
		switch l.Msg {
		case "starting podidentity-sidecar":
			started = l.Time
		case "privileges dropped":
			dropped = l.Time
		}
	}
	if started.IsZero() || dropped.IsZero() {
		return 0, fmt.Errorf("no \"starting podidentity-sidecar\" and \"privileges dropped\" lines in pod %s/%s's sidecar log", ns, pod)
	}
	return dropped.Sub(started), nil
}
