package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/contract"
)

// attackResult is the JSON line of the attacker app (apps/attacker).
type attackResult struct {
	Route   string   `json:"route"`
	Token   bool     `json:"token"`
	Stopped string   `json:"stopped"`
	Status  int      `json:"status"`
	Body    string   `json:"body"`
	Steps   []string `json:"steps"`
	Error   string   `json:"error"`
	UID     int      `json:"uid"`
}

// attackPod is a pod running the attacker app with route, as root with the runtime's default capabilities
// (no security context) unless the caller changes it.
func attackPod(name, image, route, clientID, selector string) *corev1.Pod {
	labels := map[string]string{"app": name}
	if selector != "" {
		labels[aadv1.PodLabelBinding] = selector
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec: corev1.PodSpec{
			RestartPolicy:                 corev1.RestartPolicyNever,
			TerminationGracePeriodSeconds: ptr.To[int64](1),
			Containers: []corev1.Container{{
				Name: "attack", Image: image, ImagePullPolicy: corev1.PullNever,
				Env: []corev1.EnvVar{{Name: "ROUTE", Value: route}, {Name: "CLIENT_ID", Value: clientID}},
			}},
		},
	}
}

// attackOutcome waits until the pod's container has printed its result and returns it.
func (e *env) attackOutcome(t *testing.T, ns, pod, container string) attackResult {
	t.Helper()
	var res *attackResult
	err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, podTimeout, true, func(ctx context.Context) (bool, error) {
		raw, err := e.cs.CoreV1().Pods(ns).GetLogs(pod, &corev1.PodLogOptions{Container: container}).DoRaw(ctx)
		if err != nil {
			return false, nil // not started yet
		}
		sc := bufio.NewScanner(bytes.NewReader(raw))
		for sc.Scan() {
			var r attackResult
			if json.Unmarshal(sc.Bytes(), &r) == nil && r.Route != "" {
				res = &r
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("pod %s/%s container %s printed no attack result within %v\n%s", ns, pod, container, podTimeout, e.diagnose(context.Background(), ns))
	}
	return *res
}

func stoppedText(r attackResult) string {
	switch r.Stopped {
	case "redirect":
		return fmt.Sprintf("redirected to the pod's token sidecar, which refused the unbound identity (HTTP %d)", r.Status)
	case "imds":
		return fmt.Sprintf("the node's IMDS answered without a token (HTTP %d: the identity is not on the node)", r.Status)
	}
	detail := r.Error
	if detail == "" && len(r.Steps) > 0 {
		detail = r.Steps[len(r.Steps)-1]
	}
	// Keep the failing call and the kernel's answer, not the URL (whose client id changes every run).
	for _, call := range []string{"setsockopt(", "socket(", "setuid(", "connect: "} {
		if i := strings.Index(detail, call); i >= 0 {
			detail = detail[i:]
			break
		}
	}
	where := map[string]string{"syscall": "the kernel refused a step", "network": "no connection"}[r.Stopped]
	if where == "" {
		where = r.Stopped
	}
	return where + ": " + detail
}

// tokensToOthers counts the tokens the node's IMDS issued for clientID to callers other than allowed, between
// two counter readings.
func tokensToOthers(before, after map[string]int, clientID string, allowed ...string) (int, []string) {
	n := 0
	var who []string
	for k, v := range after {
		id, caller, _ := strings.Cut(k, " ")
		if !strings.EqualFold(id, clientID) || v == before[k] {
			continue
		}
		ok := false
		for _, a := range allowed {
			ok = ok || caller == a
		}
		if !ok {
			n += v - before[k]
			who = append(who, caller)
		}
	}
	sort.Strings(who)
	return n, who
}

// scenarioAttackMatrix tries, with the chart's default values, every route a workload has to a token of an
// identity that is attached to the node but not bound to it: pods of an opted-in namespace as root with the
// runtime's default capabilities (setuid to the sidecar's uid, socket marks, packet and raw sockets, an
// IPv4-mapped IPv6 address, another IMDS port), an image whose USER is the sidecar's uid, containers asking
// for NET_ADMIN, NET_RAW or SYS_PTRACE, a pod sharing its process namespace with the sidecar, a user init
// container, and an un-injected pod labelled aadpodidbinding. The emulated IMDS must issue 0 tokens of the
// victim's identity to any caller but the victim pod. The pods that have no redirect at all (namespace not
// opted in, hostNetwork, opted out) get their own rows: without guard mode they reach the node's IMDS, which
// is what the matrix records (the guard scenario records them with guard mode).
func (e *env) scenarioAttackMatrix(t *testing.T) { e.attackMatrix(t, modeDefaults) }

// The chart configurations the matrix runs with (its first column).
const (
	modeDefaults = "chart defaults"
	modeCNI      = "CNI mode (redirect.mode=cni)"
)

// attackMatrix runs every route against the release as it is configured now (mode names it in the report).
func (e *env) attackMatrix(t *testing.T, mode string) {
	ns := e.namespace(t, "attack", true)
	victim := e.identity(t, ns, "victim")
	own := e.identity(t, ns, "own")

	victimPod := e.createPod(t, ns, appPod("victim", e.goImage, victim.Selector, corev1.RestartPolicyAlways,
		map[string]string{"MODE": "until-ok", "INTERVAL": "500ms", "AZURE_CLIENT_ID": victim.ClientID}))
	requireInjected(t, victimPod, victim)
	e.waitAppLine(t, ns, "victim", "app", "the victim's token", tokenTimeout, tokenFor(victim))
	e.waitAttached(t, victim.ClientID, true, time.Minute)
	victimIP := e.waitPod(t, ns, "victim", "an IP", podTimeout, func(p *corev1.Pod) bool { return p.Status.PodIP != "" }).Status.PodIP
	before := e.imds.Counters(t)

	type run struct {
		pod, route string
		spec       *corev1.Pod
		container  string
		refused    string // a fragment of the admission denial when the API server must refuse the pod
	}
	root := func(name, route string) run {
		return run{pod: "root, runtime default capabilities", route: route, spec: attackPod(name, e.attackerImage, route, victim.ClientID, own.Selector), container: "attack"}
	}
	runs := []run{
		root("plain", "direct"),
		root("setuid", "setuid"),
		root("somark", "somark"),
		root("packet", "packet"),
		root("raw-ip", "raw-ip"),
		root("mapped", "ipv4-mapped-ipv6"),
		root("other-port", "other-port"),
		{pod: "image whose USER is the sidecar's uid (15078)", route: "direct",
			spec: attackPod("sidecar-uid-image", e.attackerSidecarUIDImage, "direct", victim.ClientID, own.Selector), container: "attack"},
	}
	shared := attackPod("shared-pid", e.attackerImage, "sidecar-process", victim.ClientID, own.Selector)
	shared.Spec.ShareProcessNamespace = ptr.To(true)
	runs = append(runs, run{pod: "root, shareProcessNamespace with the sidecar", route: "the sidecar's process: /proc environ and mem, pidfd_getfd, ptrace, joining its cgroup; as root, then as uid 15078; then ask", spec: shared, container: "attack"})
	// A user init container, as root: it runs after ours (the webhook puts ours first, and moves them back to
	// the front when another webhook prepends its own), so the redirect is already there.
	userInit := attackPod("user-init", e.attackerImage, "setuid", victim.ClientID, own.Selector)
	userInit.Spec.InitContainers = []corev1.Container{*userInit.Spec.Containers[0].DeepCopy()}
	userInit.Spec.InitContainers[0].Name = "attack-init"
	runs = append(runs, run{pod: "user init container, root (the webhook puts ours first)", route: "setuid", spec: userInit, container: "attack-init"})
	for _, c := range []struct{ name, capability string }{{"net-admin", "NET_ADMIN"}, {"net-raw", "NET_RAW"}, {"sys-ptrace", "SYS_PTRACE"}, {"sys-admin", "SYS_ADMIN"}} {
		p := attackPod(c.name, e.attackerImage, "direct", victim.ClientID, own.Selector)
		p.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{Capabilities: &corev1.Capabilities{Add: []corev1.Capability{corev1.Capability(c.capability)}}}
		runs = append(runs, run{pod: "container adding " + c.capability, route: "admission", spec: p, refused: "adds capability " + c.capability})
	}

	// Every pod at once: they start in parallel, and the IMDS counters are read once they are all done.
	for i := range runs {
		r := &runs[i]
		_, err := e.cs.CoreV1().Pods(ns).Create(context.Background(), r.spec, metav1.CreateOptions{})
		switch {
		case r.refused != "" && err == nil:
			t.Errorf("%s: admitted, want refused with %q", r.pod, r.refused)
		case r.refused != "" && !strings.Contains(err.Error(), r.refused):
			t.Errorf("%s: refused with %v, want %q", r.pod, err, r.refused)
		case r.refused != "":
			e.matrix.Add(MatrixRow{Pod: r.pod, Route: r.route, Verdict: "no token", Stopped: "refused at admission: " + trimDenial(err.Error()), Mode: mode})
		case err != nil:
			t.Fatalf("%s: creating the pod: %v", r.pod, err)
		}
	}
	for _, r := range runs {
		if r.refused != "" {
			continue
		}
		res := e.attackOutcome(t, ns, r.spec.Name, r.container)
		verdict := "no token"
		if res.Token {
			verdict = "token"
			t.Errorf("%s, route %s: got a token of the unbound identity: %+v", r.pod, r.route, res)
		}
		if res.Stopped == "" && !res.Token {
			t.Errorf("%s, route %s: ended without a token but for no known reason: %+v", r.pod, r.route, res)
		}
		stopped := stoppedText(res)
		if res.Route == "sidecar-process" {
			// What each attempt on the sidecar's process got, then where the plain request ended.
			var tries []string
			for _, st := range res.Steps {
				if strings.HasPrefix(st, "uid ") {
					tries = append(tries, trimPIDs(st))
				}
			}
			stopped = strings.Join(tries, "; ") + "; then " + stopped
		}
		e.matrix.Add(MatrixRow{Pod: r.pod, Route: r.route, Verdict: verdict, Stopped: stopped, Mode: mode})
		t.Logf("%s / %s: %s (%s)", r.pod, r.route, verdict, strings.Join(res.Steps, "; "))
	}
	after := e.imds.Counters(t)
	n, who := tokensToOthers(before.TokensByCaller, after.TokensByCaller, victim.ClientID, victimIP)
	if n != 0 {
		t.Errorf("the node's IMDS issued %d tokens of the unbound identity %s to %v: a pod got around its redirect", n, victim.ClientID, who)
	}
	e.figures.Add(Figure{Scenario: "attacker matrix", Name: mode + ": tokens of the victim's identity the node's IMDS issued to other pods", Value: fmt.Sprint(n), Target: "0", Met: n == 0})

	e.attackUninjected(t, mode)
	e.attackWithoutRedirect(t, victim, mode)
}

// trimPIDs replaces /proc/<pid> and cgroup paths of a step with placeholders, so the report is the same every run.
func trimPIDs(step string) string {
	step = regexp.MustCompile(`/proc/[0-9]+/`).ReplaceAllString(step, "/proc/<sidecar>/")
	return regexp.MustCompile(`cgroup /kubepods\S+`).ReplaceAllString(step, "cgroup <the sidecar's>")
}

// trimDenial keeps the webhook's own sentence of an admission error.
func trimDenial(msg string) string {
	if i := strings.Index(msg, "podidentity: "); i >= 0 {
		msg = msg[i:]
	}
	if len(msg) > 160 {
		msg = msg[:160] + "..."
	}
	return msg
}

// attackUninjected: a pod of a namespace that is not opted in, labelled for an identity nobody else uses, must
// not pull that identity onto its node: the assigner attaches nothing, says why on the pod, and the node's IMDS
// has no token of it to give.
func (e *env) attackUninjected(t *testing.T, mode string) {
	owner := e.namespace(t, "attack-owner", true)
	lonely := e.identity(t, owner, "lonely")
	ns := e.namespace(t, "attack-plain", false)
	p := attackPod("labelled", e.attackerImage, "direct", lonely.ClientID, lonely.Selector)
	p.Spec.RestartPolicy = corev1.RestartPolicyAlways
	p.Spec.Containers[0].Env = append(p.Spec.Containers[0].Env, corev1.EnvVar{Name: "LINGER", Value: "1"})
	created := e.createPod(t, ns, p)
	if injectionOf(t, created).Init {
		t.Fatalf("a pod of a namespace without %s was injected", contract.NamespaceInjectionLabel)
	}
	ev := e.waitEvent(t, ns, "labelled", "PodNotInjected", 2*time.Minute)
	res := e.attackOutcome(t, ns, "labelled", "attack")
	// The assigner had every chance to attach it: the Event comes from the same pass that decides.
	if attached, err := e.imds.IsAttached(context.Background(), lonely.ClientID); err != nil || attached {
		t.Errorf("identity %s was attached to the node for an un-injected pod (attached %v, %v)", lonely.ClientID, attached, err)
	}
	if res.Token {
		t.Errorf("the un-injected pod got a token of %s: %+v", lonely.ClientID, res)
	}
	e.matrix.Add(MatrixRow{Pod: "un-injected pod labelled aadpodidbinding (namespace not opted in)", Route: "pull its identity onto the node, then ask the node's IMDS",
		Verdict: map[bool]string{true: "token", false: "no token"}[res.Token],
		Stopped: "the assigner attached nothing (Warning Event PodNotInjected: " + trimText(ev.Message, 120) + "); " + stoppedText(res), Mode: mode})
}

func trimText(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// attackWithoutRedirect records what pods without a redirect of their own can do on a node that carries an
// identity: they ask the node's IMDS directly. With the chart's defaults nothing stops them (the side door the
// threat model describes, closed by guard mode); in CNI mode the node's plugin fences every such pod but a
// hostNetwork one. The rows keep both visible, and the expected verdicts are asserted, so that a change shows.
func (e *env) attackWithoutRedirect(t *testing.T, victim identity, mode string) {
	cni := mode == modeCNI
	plain := e.namespace(t, "attack-side", false)
	optedIn := e.namespace(t, "attack-optout", true)
	hostNet := attackPod("host-network", e.attackerImage, "direct", victim.ClientID, "")
	hostNet.Spec.HostNetwork = true
	optOut := attackPod("opted-out", e.attackerImage, "direct", victim.ClientID, "")
	optOut.Annotations = map[string]string{contract.InjectAnnotation: "false"}
	for _, c := range []struct {
		pod, ns   string
		spec      *corev1.Pod
		wantToken bool
	}{
		{"pod of a namespace without the opt-in label", plain, attackPod("plain", e.attackerImage, "direct", victim.ClientID, ""), !cni},
		{"hostNetwork pod", plain, hostNet, true},
		{"opted-out pod (" + contract.InjectAnnotation + ": \"false\") in an opted-in namespace", optedIn, optOut, !cni},
	} {
		before := e.imds.Counters(t)
		created := e.createPod(t, c.ns, c.spec)
		res := e.attackOutcome(t, c.ns, c.spec.Name, "attack")
		if res.Token != c.wantToken {
			t.Errorf("%s, %s: token %v, want %v: %+v", mode, c.pod, res.Token, c.wantToken, res)
		}
		if !c.wantToken {
			// Counted by the node's IMDS itself, per caller: nothing for this pod's IP.
			ip := e.waitPod(t, c.ns, c.spec.Name, "an IP", podTimeout, func(p *corev1.Pod) bool { return p.Status.PodIP != "" }).Status.PodIP
			after := e.imds.Counters(t)
			if n := after.TokensByCaller[victim.ClientID+" "+ip] - before.TokensByCaller[victim.ClientID+" "+ip]; n != 0 {
				t.Errorf("%s, %s: the node's IMDS issued %d tokens of %s to it (%s)", mode, c.pod, n, victim.ClientID, ip)
			}
		}
		verdict := map[bool]string{true: "token", false: "no token"}[res.Token]
		stopped := "not stopped: the pod reaches the node's IMDS directly (closed by guard mode, and but for hostNetwork by CNI mode)"
		switch {
		case res.Token && cni:
			stopped = "not stopped: a hostNetwork pod has no network namespace of its own, so no CNI plugin runs for it (refuse hostNetwork with Pod Security baseline or restricted; guard mode keeps it off identity nodes)"
		case !res.Token && cni:
			stopped = "fenced by the node's podidentity CNI plugin: " + stoppedText(res)
		case !res.Token:
			stopped = stoppedText(res)
		}
		if w := created.Annotations[contract.SecurityWarningsAnnotation]; w != "" {
			stopped += "; admitted with security warning " + w
		}
		e.matrix.Add(MatrixRow{Pod: c.pod, Route: "direct", Verdict: verdict, Stopped: stopped, Mode: mode})
	}
}
