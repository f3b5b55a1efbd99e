package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"

	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/test/cluster"
	"github.com/podidentity/podidentity/test/cluster/install"
)

// The identity pool of the guard scenario: the chart's default label and taint, put on the single node.
const (
	poolKey   = "podidentity.io/pool"
	poolValue = "identities"
	// guardAuditEvent is the assigner's Event for an un-injected, untrusted pod on a node with identities.
	guardAuditEvent = "UntrustedPodOnIdentityNode"
	// guardPolicyMessage is the start of the ValidatingAdmissionPolicy's refusal.
	guardPolicyMessage = "podidentity guard mode: this pod tolerates the identity pool's taint"
)

func poolToleration() corev1.Toleration {
	return corev1.Toleration{Key: poolKey, Operator: corev1.TolerationOpEqual, Value: poolValue, Effect: corev1.TaintEffectNoExecute}
}

// guardValues turn guard mode on: the product's own pods and kube-system are trusted and tolerate the taint,
// and the audit runs every few seconds so that the scenario need not wait for the default minute.
func guardValues() map[string]any {
	tolerations := []map[string]any{{"key": poolKey, "operator": "Equal", "value": poolValue, "effect": "NoExecute"}}
	return map[string]any{
		"guard": map[string]any{
			"enabled":           true,
			"poolLabel":         map[string]any{"key": poolKey, "value": poolValue},
			"poolTaint":         map[string]any{"key": poolKey, "value": poolValue, "effect": "NoExecute"},
			"trustedNamespaces": []string{"kube-system", install.Namespace},
			"auditInterval":     "5s",
		},
		"webhook":  map[string]any{"tolerations": tolerations},
		"assigner": map[string]any{"tolerations": tolerations},
	}
}

// scenarioGuard turns guard mode on (the node becomes the identity pool: label, NoExecute taint, the chart's
// guard values) and shows on real pods what it does: a bound pod is pinned to the pool and gets its token; an
// un-injected pod that tolerates the taint is refused by the API server; an un-injected pod that names the
// node in spec.nodeName, skipping the scheduler, never runs there; and a tolerating pod that was admitted
// before guard mode is reported by the assigner's audit. It undoes all of it at the end, also on failure.
func (e *env) scenarioGuard(t *testing.T) {
	ctx := context.Background()
	node := e.cluster.NodeName()
	bound := e.namespace(t, "guard-bound", true)
	untrusted := e.namespace(t, "guard-untrusted", false)
	id := e.identity(t, bound, "pinned")

	// Planted before guard mode: the policy only looks at creations and new tolerations, so this pod stays,
	// and only the audit can find it.
	planted := pausePod("planted", []corev1.Toleration{poolToleration()})
	e.createPod(t, untrusted, planted)
	e.waitPod(t, untrusted, planted.Name, "Running", podTimeout, func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning })

	t.Cleanup(func() { e.guardOff(t, node) })
	began := time.Now()
	e.updateNode(t, node, func(n *corev1.Node) {
		if n.Labels == nil {
			n.Labels = map[string]string{}
		}
		n.Labels[poolKey] = poolValue
	})
	if err := e.release.Upgrade(ctx, guardValues()); err != nil {
		t.Fatalf("enabling guard mode: %v", err)
	}
	e.updateNode(t, node, func(n *corev1.Node) {
		n.Spec.Taints = append(withoutPoolTaint(n.Spec.Taints), corev1.Taint{Key: poolKey, Value: poolValue, Effect: corev1.TaintEffectNoExecute})
	})
	e.figures.Add(Figure{Scenario: "guard mode", Name: "enable (node label, helm upgrade --wait, NoExecute taint)", Value: seconds(time.Since(began))})
	// The product's own pods tolerate the taint: nothing of the release is evicted.
	e.requireReleaseReady(t)

	t.Run("bound pod pinned to the pool gets its token", func(t *testing.T) {
		p := e.createPod(t, bound, appPod("app", e.goImage, id.Selector, corev1.RestartPolicyAlways,
			map[string]string{"MODE": "until-ok", "INTERVAL": "500ms", "AZURE_CLIENT_ID": id.ClientID}))
		requireInjected(t, p, id)
		if p.Spec.NodeSelector[poolKey] != poolValue {
			t.Errorf("bound pod's nodeSelector %v lacks %s=%s", p.Spec.NodeSelector, poolKey, poolValue)
		}
		if !tolerates(p.Spec.Tolerations) {
			t.Errorf("bound pod's tolerations %+v do not tolerate %s=%s:NoExecute", p.Spec.Tolerations, poolKey, poolValue)
		}
		line, _ := e.waitAppLine(t, bound, "app", "app", "a token on the identity pool", tokenTimeout, tokenFor(id))
		if line.Claims["xms_mirid"] != id.ResourceID {
			t.Errorf("token for %v, want %s", line.Claims["xms_mirid"], id.ResourceID)
		}
	})

	t.Run("un-injected pod tolerating the taint refused by the API server", func(t *testing.T) {
		// The API server loads a new policy asynchronously (within a second or so): a pod admitted before that
		// is deleted and the creation tried again.
		var err error
		_ = wait.PollUntilContextTimeout(ctx, time.Second, 30*time.Second, true, func(ctx context.Context) (bool, error) {
			if _, err = e.cs.CoreV1().Pods(untrusted).Create(ctx, pausePod("intruder", []corev1.Toleration{poolToleration()}), metav1.CreateOptions{}); err != nil {
				return true, nil
			}
			t.Logf("pod intruder admitted (the policy is not loaded yet?); deleting it and trying again")
			_ = e.cs.CoreV1().Pods(untrusted).Delete(ctx, "intruder", metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)})
			_ = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
				_, err := e.cs.CoreV1().Pods(untrusted).Get(ctx, "intruder", metav1.GetOptions{})
				return apierrors.IsNotFound(err), nil
			})
			return false, nil
		})
		if err == nil || !apierrors.IsInvalid(err) && !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), guardPolicyMessage) {
			t.Fatalf("creating a pod that tolerates the pool's taint in the untrusted namespace %s: error %v, want the guard policy's refusal %q", untrusted, err, guardPolicyMessage)
		}
		t.Logf("refused: %v", err)
	})

	t.Run("un-injected pod naming the node never runs there", func(t *testing.T) {
		p := pausePod("by-node-name", nil)
		p.Spec.NodeName = node
		e.createPod(t, untrusted, p)
		outcome := e.waitRefusedByNode(t, untrusted, p.Name)
		// Who refused it, from the pod's Events (the kubelet's admission, the taint eviction controller).
		reasons, err := e.eventReasons(ctx, untrusted, p.Name)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range reasons {
			if strings.HasPrefix(r, "Started ") || strings.HasPrefix(r, "Created ") {
				t.Errorf("the kubelet ran a container (%s) of pod %s on the tainted node (events %v)", r, p.Name, reasons)
			}
		}
		outcome += "; events: " + strings.Join(reasons, ", ")
		t.Logf("pod with spec.nodeName on the tainted node: %s", outcome)
		e.figures.Add(Figure{Scenario: "guard mode", Name: "un-injected pod with spec.nodeName on the tainted node", Value: outcome})
	})

	t.Run("pods without a redirect cannot run on the identity pool", func(t *testing.T) {
		// The attacker matrix's side-door rows, with guard mode: the same pods never get onto the only node,
		// which is the identity pool.
		optedIn := e.namespace(t, "guard-optout", true)
		hostNet := attackPod("host-network", e.attackerImage, "direct", id.ClientID, "")
		hostNet.Spec.HostNetwork = true
		optOut := attackPod("opted-out", e.attackerImage, "direct", id.ClientID, "")
		optOut.Annotations = map[string]string{contract.InjectAnnotation: "false"}
		cases := []struct {
			pod, ns string
			spec    *corev1.Pod
		}{
			{"pod of a namespace without the opt-in label", untrusted, attackPod("plain", e.attackerImage, "direct", id.ClientID, "")},
			{"hostNetwork pod", untrusted, hostNet},
			{"opted-out pod (" + contract.InjectAnnotation + ": \"false\") in an opted-in namespace", optedIn, optOut},
		}
		for _, c := range cases {
			e.createPod(t, c.ns, c.spec)
		}
		for _, c := range cases {
			p := e.waitPod(t, c.ns, c.spec.Name, "unschedulable", podTimeout, func(p *corev1.Pod) bool {
				for _, cond := range p.Status.Conditions {
					if cond.Type == corev1.PodScheduled && cond.Status == corev1.ConditionFalse && cond.Reason == corev1.PodReasonUnschedulable {
						return true
					}
				}
				return p.Status.Phase != corev1.PodPending
			})
			if p.Status.Phase != corev1.PodPending || p.Spec.NodeName != "" {
				t.Errorf("%s: phase %s on node %q, want it kept off the identity pool", c.pod, p.Status.Phase, p.Spec.NodeName)
				continue
			}
			e.matrix.Add(MatrixRow{Pod: c.pod, Route: "direct", Verdict: "no token", Mode: "guard mode",
				Stopped: "never scheduled: the only node is the identity pool, whose NoExecute taint it does not tolerate (a toleration is refused by the guard policy)"})
		}
	})

	t.Run("audit reports the pod planted before guard mode", func(t *testing.T) {
		ev := e.waitEvent(t, untrusted, planted.Name, guardAuditEvent, 2*time.Minute)
		if ev.Type != corev1.EventTypeWarning {
			t.Errorf("event %s is %s, want Warning", ev.Reason, ev.Type)
		}
		e.figures.Add(Figure{Scenario: "guard mode", Name: "planted pod reported (" + guardAuditEvent + ") after guard was enabled", Value: seconds(ev.LastTimestamp.Sub(began))})
		t.Logf("event: %s", ev.Message)
		if n, err := e.untrustedPodsMetric(ctx, metav1.FormatLabelSelector(e.deployment(t, "-assigner").Spec.Selector), node); err != nil {
			t.Errorf("reading the assigner's metric: %v", err)
		} else if n < 1 {
			t.Errorf("podidentity_guard_untrusted_pods{node=%q} = %v, want >= 1 (the planted pod)", node, n)
		}
	})
}

// guardOff undoes scenarioGuard's changes in the order that keeps the release schedulable: the taint first
// (the base values' pods do not tolerate it), then the chart's values, then the label.
// Every step runs even when one fails, so that as much as possible is undone.
func (e *env) guardOff(t *testing.T, node string) {
	if err := e.tryUpdateNode(node, func(n *corev1.Node) { n.Spec.Taints = withoutPoolTaint(n.Spec.Taints) }); err != nil {
		t.Errorf("removing the pool's taint: %v", err)
	}
	if err := e.release.Upgrade(context.Background(), nil); err != nil {
		t.Errorf("disabling guard mode (helm upgrade with the base values): %v", err)
	}
	if err := e.tryUpdateNode(node, func(n *corev1.Node) { delete(n.Labels, poolKey) }); err != nil {
		t.Errorf("removing the pool's label: %v", err)
	}
}

// pausePod is an un-injected pod that does nothing (the cluster's sandbox image), never pulled.
func pausePod(name string, tolerations []corev1.Toleration) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": name}},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: ptr.To[int64](0),
			Tolerations:                   tolerations,
			Containers:                    []corev1.Container{{Name: "pause", Image: cluster.PauseImage, ImagePullPolicy: corev1.PullNever}},
		},
	}
}

// tolerates reports whether a toleration names the pool's taint (by key: an empty key with Exists would
// tolerate it too, but the webhook adds the specific one).
func tolerates(tolerations []corev1.Toleration) bool {
	for _, tl := range tolerations {
		effect := tl.Effect == "" || tl.Effect == corev1.TaintEffectNoExecute
		value := tl.Operator == corev1.TolerationOpExists || (tl.Operator == "" || tl.Operator == corev1.TolerationOpEqual) && tl.Value == poolValue
		if tl.Key == poolKey && effect && value {
			return true
		}
	}
	return false
}

func withoutPoolTaint(taints []corev1.Taint) []corev1.Taint {
	var kept []corev1.Taint
	for _, tn := range taints {
		if tn.Key != poolKey {
			kept = append(kept, tn)
		}
	}
	return kept
}

// updateNode applies change to the node, retrying on conflicts with the kubelet's updates.
func (e *env) updateNode(t *testing.T, name string, change func(*corev1.Node)) {
	t.Helper()
	if err := e.tryUpdateNode(name, change); err != nil {
		t.Fatal(err)
	}
}

func (e *env) tryUpdateNode(name string, change func(*corev1.Node)) error {
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		n, err := e.cs.CoreV1().Nodes().Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		change(n)
		_, err = e.cs.CoreV1().Nodes().Update(context.Background(), n, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("updating node %s: %w", name, err)
	}
	return nil
}

// requireReleaseReady fails unless every Deployment of the release has all its replicas available and no
// old pod left: a webhook pod that exits while the API server still holds connections to it can fail an
// admission (test/suites/e2e/README.md, "Known failure"), which is the rollout scenario's business, not this one's;
// and an old webhook pod still admits pods with the release's previous settings.
func (e *env) requireReleaseReady(t *testing.T) {
	t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 500*time.Millisecond, podTimeout, true, func(ctx context.Context) (bool, error) {
		list, err := e.cs.AppsV1().Deployments(e.podidentityNamespace).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		for i := range list.Items {
			d := &list.Items[i]
			if d.Spec.Replicas != nil && d.Status.AvailableReplicas < *d.Spec.Replicas || !e.onlyCurrentPods(ctx, d) {
				return false, nil
			}
		}
		return len(list.Items) > 0, nil
	})
	if err != nil {
		t.Fatalf("the release's Deployments are not all available, or old pods are left, after the release or the pool changed (a tainted pool: do webhook.tolerations and assigner.tolerations tolerate it?)\n%s", e.diagnose(context.Background(), e.podidentityNamespace))
	}
}

// waitRefusedByNode waits until the pod is out of the node without having run a container: failed by the
// kubelet's admission, or deleted by the taint eviction controller, whichever came first. It returns what
// happened, for the report.
func (e *env) waitRefusedByNode(t *testing.T, ns, name string) string {
	t.Helper()
	var outcome string
	err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, podTimeout, true, func(ctx context.Context) (bool, error) {
		p, err := e.cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			outcome = "deleted (taint eviction) before the kubelet ran it"
			return true, nil
		}
		if err != nil {
			return false, nil
		}
		for _, s := range p.Status.ContainerStatuses {
			if s.State.Running != nil || s.State.Terminated != nil && !s.State.Terminated.StartedAt.IsZero() {
				return false, fmt.Errorf("container %s ran on the tainted node: %s", s.Name, stateOf(s.State))
			}
		}
		if p.Status.Phase == corev1.PodFailed {
			outcome = fmt.Sprintf("refused by the kubelet: phase Failed, reason %s", p.Status.Reason)
			t.Logf("kubelet: %s: %s", p.Status.Reason, p.Status.Message)
			return true, nil
		}
		if p.DeletionTimestamp != nil {
			outcome = "deleted (taint eviction) before the kubelet ran it"
			return true, nil
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("pod %s/%s (spec.nodeName, no toleration) on the NoExecute-tainted node: %v (%s)\n%s", ns, name, err, outcome, e.diagnose(context.Background(), ns))
	}
	return outcome
}

// eventReasons lists the reasons (with their source) of the Events about a pod, waiting up to 10 s for the
// first one (components send Events asynchronously).
func (e *env) eventReasons(ctx context.Context, ns, pod string) ([]string, error) {
	var list *corev1.EventList
	err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 10*time.Second, true, func(ctx context.Context) (bool, error) {
		var err error
		list, err = e.cs.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + pod})
		return err == nil && len(list.Items) > 0, nil
	})
	if err != nil && list == nil {
		return nil, fmt.Errorf("listing the events of pod %s/%s: %w", ns, pod, err)
	}
	var reasons []string
	for _, ev := range list.Items {
		source := ev.Source.Component
		if source == "" {
			source = ev.ReportingController
		}
		reasons = append(reasons, ev.Reason+" ("+source+")")
	}
	return reasons, nil
}

// waitEvent waits for an Event of reason about the pod and returns it.
func (e *env) waitEvent(t *testing.T, ns, pod, reason string, timeout time.Duration) corev1.Event {
	t.Helper()
	var found *corev1.Event
	err := wait.PollUntilContextTimeout(context.Background(), 500*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		list, err := e.cs.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "reason=" + reason})
		if err != nil {
			return false, nil
		}
		for i := range list.Items {
			if list.Items[i].InvolvedObject.Kind == "Pod" && list.Items[i].InvolvedObject.Name == pod {
				found = &list.Items[i]
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("no %s Event about pod %s/%s within %v (assigner log: kubectl -n %s logs deploy/<release>-assigner)\n%s", reason, ns, pod, timeout, e.podidentityNamespace, e.diagnose(context.Background(), ns))
	}
	if found.LastTimestamp.IsZero() {
		// events.k8s.io Events carry their time in eventTime (series.lastObservedTime when repeated).
		found.LastTimestamp = metav1.NewTime(found.EventTime.Time)
		if found.Series != nil {
			found.LastTimestamp = metav1.NewTime(found.Series.LastObservedTime.Time)
		}
	}
	return *found
}

// untrustedPodsMetric reads podidentity_guard_untrusted_pods{node} from the elected assigner's metrics
// endpoint (pod IPs are routed from the node).
func (e *env) untrustedPodsMetric(ctx context.Context, assignerSelector, node string) (float64, error) {
	pods, err := e.cs.CoreV1().Pods(e.podidentityNamespace).List(ctx, metav1.ListOptions{LabelSelector: assignerSelector})
	if err != nil {
		return 0, err
	}
	var errs []string
	for _, p := range pods.Items {
		if p.Status.PodIP == "" || p.DeletionTimestamp != nil {
			continue
		}
		v, err := scrapeGauge(ctx, "http://"+p.Status.PodIP+":8080/metrics", fmt.Sprintf("podidentity_guard_untrusted_pods{node=%q}", node))
		if err == nil {
			return v, nil
		}
		errs = append(errs, p.Name+": "+err.Error())
	}
	return 0, fmt.Errorf("no assigner pod serves the metric (only the elected one audits): %s", strings.Join(errs, "; "))
}

func scrapeGauge(ctx context.Context, url, series string) (float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			var v float64
			if _, err := fmt.Sscan(rest, &v); err != nil {
				return 0, fmt.Errorf("%s: %q: %w", url, sc.Text(), err)
			}
			return v, nil
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("%s has no series %s", url, series)
}
