// Package repair keeps every pod of the node holding the table imdspolicy.Decide asks for, in the pod's own network
// namespace, found from the node: the pod's cgroup (by UID, in the kubelet's layout), a process of its sandbox,
// /proc/<pid>/ns/net. It repairs pods that started before the plugin was chained (the race on a new node) or
// whose table was removed, in place, and exempts the token sidecar's container cgroup once that container
// runs, again after each restart. The plan for one pod is imdspolicy.Plan, a pure function; this package gathers
// its inputs and applies its output.
package repair

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/cni/cgroups"
	"github.com/podidentity/podidentity/internal/imdspolicy"
	"github.com/podidentity/podidentity/internal/redirect"
)

// Event reasons the agent records on pods.
const (
	// EventRepaired (Warning): the pod ran without its fence or redirect until the agent installed it.
	EventRepaired = "PodIdentityRepaired"
	// EventRepairFailed (Warning): the pod should be fenced or redirected and the agent could not make it so.
	EventRepairFailed = "PodIdentityRepairFailed"
	// EventExempted (Normal): the token sidecar's container cgroup now reaches the node's IMDS.
	EventExempted = "PodIdentitySidecarExempted"
)

// State is a pod's protection as the agent last saw it; a bounded metric label.
type State string

const (
	StateFenced     State = "fenced"
	StateRedirected State = "redirected"
	StateExempt     State = "exempt"
	// StateUnprotected: the pod should be fenced or redirected and is not, or the agent cannot show that it
	// is (its cgroup or network namespace cannot be found).
	StateUnprotected State = "unprotected"
)

// States are every State, for the gauge.
func States() []State { return []State{StateFenced, StateRedirected, StateExempt, StateUnprotected} }

// Lookup reads what the decision needs besides the pod.
type Lookup interface {
	Namespace(ctx context.Context, name string) (*corev1.Namespace, error)
	Exceptions(ctx context.Context, namespace string) ([]aadv1.AzurePodIdentityException, error)
}

// Metrics of the repair and the exemption.
type Metrics struct {
	pods       *prometheus.GaugeVec
	repairs    *prometheus.CounterVec
	exemptions *prometheus.CounterVec
}

// NewMetrics registers the metrics.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		pods: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "podidentity_node_pods",
			Help: "Pods of this node by protection: fenced, redirected, exempt (nothing to install), unprotected (should be fenced or redirected and is not, or cannot be checked)"},
			[]string{"state"}),
		repairs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "podidentity_node_repairs_total",
			Help: "Pods found without the table their decision asks for (missing or wrong), by action and result (repaired, failed)"},
			[]string{"action", "result"}),
		exemptions: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "podidentity_node_exemptions_total",
			Help: "Token sidecar cgroup exemptions installed, by result (installed, failed)"},
			[]string{"result"}),
	}
	reg.MustRegister(m.pods, m.repairs, m.exemptions)
	for _, s := range States() {
		m.pods.WithLabelValues(string(s))
	}
	return m
}

// Reconciler brings one pod at a time to its decision. Its configuration fields are set once; it keeps the
// last state of each pod (for the gauge and to report a failure once) and a short-lived namespace cache.
type Reconciler struct {
	Policy   imdspolicy.Policy
	Redirect redirect.Config
	// CgroupRoot is the cgroup v2 mount as the host sees it (the agent runs in the host cgroup namespace).
	CgroupRoot string
	Lookup     Lookup
	Events     events.EventRecorder
	Metrics    *Metrics
	Log        logr.Logger
	// LookupTTL is how long a namespace and its exceptions are reused (0: 5s).
	LookupTTL time.Duration
	// HostNetns is the inode of the node's network namespace, the agent's own (hostNetwork): never a pod's.
	// Read it with HostNetns() at start, before anything enters another namespace: a thread that entered a
	// pod's namespace and ended while locked can leave the main thread, whose namespace /proc/self names,
	// behind in it.
	HostNetns uint64

	mu      sync.Mutex
	pods    map[types.UID]podState
	lookups map[string]lookupEntry
}

type podState struct {
	state       State
	lastFailure string
}

type lookupEntry struct {
	at         time.Time
	ns         *corev1.Namespace
	exceptions []aadv1.AzurePodIdentityException
}

// Outcome is what one reconcile found and did.
type Outcome struct {
	Decision imdspolicy.Decision
	Step     imdspolicy.Step
	// Sidecar is the sidecar's container cgroup when it runs (redirected pods).
	Sidecar *redirect.Cgroup
	// Skipped says why the pod was not looked at (no sandbox yet, finished, hostNetwork); empty otherwise.
	Skipped string
}

// ErrNoSandbox: the pod has no cgroup, or no process in it: its sandbox is being created (the plugin's ADD
// protects it) or is gone.
var ErrNoSandbox = errors.New("the pod has no running sandbox")

// sandboxPending reports a pod whose sandbox the kubelet has not reported ready (condition
// PodReadyToStartContainers present and not True). Without the condition (older kubelets) the agent acts.
func sandboxPending(pod *corev1.Pod) bool {
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReadyToStartContainers {
			return c.Status != corev1.ConditionTrue
		}
	}
	return false
}

// Reconcile brings the pod's table to its decision. A returned error means "try again later"; the pod's
// state, the Events and the metrics are updated either way.
func (r *Reconciler) Reconcile(ctx context.Context, pod *corev1.Pod) (Outcome, error) {
	switch {
	case pod.Spec.HostNetwork:
		r.Forget(pod.UID)
		return Outcome{Skipped: "hostNetwork"}, nil
	case pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed:
		r.Forget(pod.UID)
		return Outcome{Skipped: "finished"}, nil
	case sandboxPending(pod):
		// The runtime is still creating the sandbox: the plugin's ADD may be writing the table right now.
		return Outcome{Skipped: "sandbox not ready yet"}, nil
	}
	d, err := r.decide(ctx, pod)
	if err != nil {
		return Outcome{}, fmt.Errorf("deciding for pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	out := Outcome{Decision: d}
	if d.Action == imdspolicy.None {
		r.setState(pod, StateExempt, "")
		return out, nil
	}
	out, tableErr, sidecarErr := r.enforce(pod, out)
	if errors.Is(tableErr, ErrNoSandbox) && (pod.Status.Phase == corev1.PodPending || pod.DeletionTimestamp != nil) {
		// Not started yet (the plugin's ADD protects it), or already stopped.
		out.Skipped = "no sandbox"
		return out, nil
	}
	state := StateFenced
	if d.Action == imdspolicy.Redirect {
		state = StateRedirected
	}
	if tableErr != nil && out.Step.Kind != imdspolicy.StepExempt {
		// Everything but a failed exemption leaves the pod's protection missing, or unknown.
		state = StateUnprotected
	}
	r.report(pod, out, state, tableErr)
	if sidecarErr != nil {
		r.Log.V(1).Info("the sidecar's cgroup is not there yet; retrying", "pod", pod.Namespace+"/"+pod.Name, "why", sidecarErr.Error())
	}
	return out, errors.Join(tableErr, sidecarErr)
}

// enforce finds the pod's network namespace, reads its table and applies the plan. tableErr is about the
// table (it may be missing or wrong); sidecarErr says the sidecar runs but its cgroup was not found (the table
// is right, the exemption waits for a retry).
func (r *Reconciler) enforce(pod *corev1.Pod, out Outcome) (_ Outcome, tableErr, sidecarErr error) {
	pods, err := cgroups.ScanPods(r.CgroupRoot)
	if err != nil {
		return out, err, nil
	}
	podDir, ok := pods[imdspolicy.NodeUID(pod)]
	if !ok {
		return out, fmt.Errorf("%w: no cgroup of pod UID %s under %s (neither the cgroupfs nor the systemd driver's layout): "+
			"is --cgroup-root the node's cgroup v2 mount, and does the agent run in the host cgroup namespace?", ErrNoSandbox, imdspolicy.NodeUID(pod), r.CgroupRoot), nil
	}
	ns, err := r.podNetns(podDir, pod)
	if err != nil {
		return out, err, nil
	}
	defer ns.Close()
	k, err := redirect.NewKernel(int(ns.Fd()))
	if err != nil {
		return out, err, nil
	}
	defer k.Close()
	live, found, err := k.Live()
	if err != nil {
		return out, err, nil
	}
	if out.Decision.Action == imdspolicy.Redirect {
		out.Sidecar, sidecarErr = r.sidecarCgroup(podDir, pod)
	}
	out.Step = imdspolicy.Plan(out.Decision.Action, r.Redirect, live, found, out.Sidecar)
	if out.Step.Kind != imdspolicy.StepNone {
		if _, err := k.Apply(out.Step.Want); err != nil {
			return out, err, sidecarErr
		}
	}
	return out, nil, sidecarErr
}

// sidecarCgroup is the cgroup of the sidecar container that runs now; nil when it does not run.
func (r *Reconciler) sidecarCgroup(podDir string, pod *corev1.Pod) (*redirect.Cgroup, error) {
	id := imdspolicy.SidecarContainerID(pod)
	if id == "" {
		return nil, nil
	}
	dir, err := cgroups.ContainerDir(podDir, id)
	if err != nil {
		return nil, fmt.Errorf("the sidecar container %s runs but its cgroup was not found (%w); retrying", id, err)
	}
	cg, err := cgroups.Of(r.CgroupRoot, dir)
	if err != nil {
		return nil, err
	}
	return &cg, nil
}

// podNetns opens the network namespace of the pod's sandbox process (that no container of the pod can
// leave or replace), falling back to its containers' processes. The node's own namespace is never a pod's:
// a process of the pod that entered it (only a privileged container can) is ignored, so that the node is
// never fenced. Processes in different namespaces are refused rather than guessed between.
func (r *Reconciler) podNetns(podDir string, pod *corev1.Pod) (*os.File, error) {
	host := r.HostNetns
	if host == 0 {
		return nil, errors.New("the node's network namespace is unknown (Reconciler.HostNetns): refusing to guess which namespace is a pod's")
	}
	sandbox, others, err := cgroups.PodProcs(podDir, imdspolicy.ContainerIDs(pod))
	if err != nil {
		return nil, err
	}
	for _, pids := range [][]int{sandbox, others} {
		var (
			found *os.File
			ino   uint64
		)
		for _, pid := range pids {
			f, err := os.Open(fmt.Sprintf("/proc/%d/ns/net", pid))
			if err != nil {
				continue // the process exited
			}
			var st unix.Stat_t
			if err := unix.Fstat(int(f.Fd()), &st); err != nil || st.Ino == host || (found != nil && st.Ino == ino) {
				_ = f.Close()
				continue
			}
			if found != nil {
				_ = f.Close()
				_ = found.Close()
				return nil, fmt.Errorf("the processes of pod %s/%s (%s) are in several network namespaces: not choosing one", pod.Namespace, pod.Name, podDir)
			}
			found, ino = f, st.Ino
		}
		if found != nil {
			return found, nil
		}
	}
	return nil, fmt.Errorf("%w: no process of pod %s/%s in %s holds a network namespace of its own", ErrNoSandbox, pod.Namespace, pod.Name, podDir)
}

// HostNetns returns the inode of the calling thread's network namespace.
func HostNetns() (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

func (r *Reconciler) decide(ctx context.Context, pod *corev1.Pod) (imdspolicy.Decision, error) {
	if r.Policy.Exempt(pod.Namespace) {
		return imdspolicy.Decide(r.Policy, pod, nil, nil), nil
	}
	ns, exceptions, err := r.lookup(ctx, pod.Namespace)
	if err != nil {
		return imdspolicy.Decision{}, err
	}
	return imdspolicy.Decide(r.Policy, pod, ns, exceptions), nil
}

// lookup reads a namespace and its exceptions, reusing them for LookupTTL: a pass over the node's pods asks
// once per namespace, and a pod's status updates do not each cost two requests.
func (r *Reconciler) lookup(ctx context.Context, namespace string) (*corev1.Namespace, []aadv1.AzurePodIdentityException, error) {
	ttl := r.LookupTTL
	if ttl == 0 {
		ttl = 5 * time.Second
	}
	r.mu.Lock()
	e, ok := r.lookups[namespace]
	r.mu.Unlock()
	if ok && time.Since(e.at) < ttl {
		return e.ns, e.exceptions, nil
	}
	ns, err := r.Lookup.Namespace(ctx, namespace)
	if err != nil {
		return nil, nil, err
	}
	exceptions, err := r.Lookup.Exceptions(ctx, namespace)
	if err != nil {
		return nil, nil, err
	}
	r.mu.Lock()
	if r.lookups == nil {
		r.lookups = map[string]lookupEntry{}
	}
	for k, v := range r.lookups {
		if time.Since(v.at) >= ttl {
			delete(r.lookups, k)
		}
	}
	r.lookups[namespace] = lookupEntry{at: time.Now(), ns: ns, exceptions: exceptions}
	r.mu.Unlock()
	return ns, exceptions, nil
}

// report records the outcome: log, Events, metrics, state.
func (r *Reconciler) report(pod *corev1.Pod, out Outcome, state State, err error) {
	log := r.Log.WithValues("pod", pod.Namespace+"/"+pod.Name, "uid", string(pod.UID), "decision", out.Decision.Action,
		"reason", out.Decision.Reason)
	action := string(out.Decision.Action)
	switch {
	case err == nil && out.Step.Kind == imdspolicy.StepRepair:
		r.Metrics.repairs.WithLabelValues(action, "repaired").Inc()
		log.Info("repaired: the pod ran without its table", "was", out.Step.Was, "exempt", exemptionString(out.Sidecar))
		r.event(pod, corev1.EventTypeWarning, EventRepaired, "Repair", repairedNote(out, r.Redirect))
	case err == nil && out.Step.Kind == imdspolicy.StepExempt:
		r.Metrics.exemptions.WithLabelValues("installed").Inc()
		log.Info("exempted the token sidecar's cgroup", "cgroupID", out.Sidecar.ID, "level", out.Sidecar.Level)
		r.event(pod, corev1.EventTypeNormal, EventExempted, "Exempt", fmt.Sprintf("podidentity: the token sidecar's container cgroup "+
			"(id %d, level %d) now reaches the node's IMDS; every other process of the pod is redirected to it", out.Sidecar.ID, out.Sidecar.Level))
	case err != nil:
		switch out.Step.Kind {
		case imdspolicy.StepExempt:
			r.Metrics.exemptions.WithLabelValues("failed").Inc()
		case imdspolicy.StepRepair:
			r.Metrics.repairs.WithLabelValues(action, "failed").Inc()
		}
		log.Error(err, "the pod's table could not be checked or brought to its decision", "step", out.Step.Kind)
	}
	failure := ""
	if err != nil {
		failure = err.Error()
	}
	r.mu.Lock()
	prev := r.pods[pod.UID]
	if r.pods == nil {
		r.pods = map[types.UID]podState{}
	}
	r.pods[pod.UID] = podState{state: state, lastFailure: failure}
	r.mu.Unlock()
	if err != nil && failure != prev.lastFailure && state == StateUnprotected {
		r.event(pod, corev1.EventTypeWarning, EventRepairFailed, "Repair", fmt.Sprintf("podidentity: this pod should be %s but the node agent "+
			"cannot make it so: %v", protectionWord(out.Decision.Action), err))
	}
	r.updateGauge()
}

func (r *Reconciler) setState(pod *corev1.Pod, s State, failure string) {
	r.mu.Lock()
	if r.pods == nil {
		r.pods = map[types.UID]podState{}
	}
	r.pods[pod.UID] = podState{state: s, lastFailure: failure}
	r.mu.Unlock()
	r.updateGauge()
}

// Forget drops a pod that is gone.
func (r *Reconciler) Forget(uid types.UID) {
	r.mu.Lock()
	delete(r.pods, uid)
	r.mu.Unlock()
	r.updateGauge()
}

// Retain forgets every pod whose UID is not in keep (pods deleted while no event reached the agent).
func (r *Reconciler) Retain(keep map[types.UID]bool) {
	r.mu.Lock()
	for uid := range r.pods {
		if !keep[uid] {
			delete(r.pods, uid)
		}
	}
	r.mu.Unlock()
	r.updateGauge()
}

// StateOf returns the pod's last state ("" when unknown).
func (r *Reconciler) StateOf(uid types.UID) State {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.pods[uid].state
}

func (r *Reconciler) updateGauge() {
	counts := map[State]int{}
	r.mu.Lock()
	for _, p := range r.pods {
		counts[p.state]++
	}
	r.mu.Unlock()
	for _, s := range States() {
		r.Metrics.pods.WithLabelValues(string(s)).Set(float64(counts[s]))
	}
}

func (r *Reconciler) event(pod *corev1.Pod, kind, reason, action, note string) {
	if r.Events != nil {
		r.Events.Eventf(pod, nil, kind, reason, action, "%s", note)
	}
}

func protectionWord(a imdspolicy.Action) string {
	if a == imdspolicy.Redirect {
		return "redirected to its token sidecar"
	}
	return "fenced off the IMDS address"
}

// repairedNote tells the pod's owner what happened and what the repair cannot undo.
func repairedNote(out Outcome, cfg redirect.Config) string {
	was := "had no podidentity table"
	if out.Step.Was == imdspolicy.TableWrong {
		was = "had a podidentity table that was not the one it should have"
	}
	what := fmt.Sprintf("the fence (nothing in the pod may reach %s) is installed now, and connections it had to that address are cut", cfg.IMDSAddress)
	if out.Decision.Action == imdspolicy.Redirect {
		what = "the redirect to its token sidecar is installed now"
	}
	return fmt.Sprintf("podidentity: this pod %s (%s): it could reach the node's IMDS directly, typically because it started before "+
		"the podidentity CNI plugin was chained on this node; %s. Tokens it obtained before stay valid until they expire: "+
		"delete the pod if it must never have held them", was, out.Decision, what)
}

func exemptionString(cg *redirect.Cgroup) string {
	if cg == nil {
		return "none"
	}
	return fmt.Sprintf("cgroup %d level %d", cg.ID, cg.Level)
}
