package guard

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/assigner/desired"
	"github.com/podidentity/podidentity/assigner/internal/periodic"
	"github.com/podidentity/podidentity/assigner/providerid"
	"github.com/podidentity/podidentity/internal/binding"
)

// Event reasons of the audit.
const (
	// ReasonUntrustedPod: an un-injected, untrusted pod runs on a node that carries (or may carry) identities.
	ReasonUntrustedPod = "UntrustedPodOnIdentityNode"
	// ReasonOutsidePool: a pod bound to user-assigned identities runs where guard mode does not attach them.
	ReasonOutsidePool = "IdentityOutsidePool"
)

// Recorder is the part of an events recorder the audit uses.
type Recorder interface {
	Eventf(regarding, related runtime.Object, eventtype, reason, action, note string, args ...interface{})
}

// Finding is one pod that breaks guard mode's rule.
type Finding struct {
	Pod, Node string
	// Message is the Event's note: what is wrong and what to do.
	Message string
}

// Report is the outcome of one audit pass.
type Report struct {
	// Untrusted pods on identity-bearing nodes, by namespace/name.
	Untrusted []Finding
	// Refused pods: bound to user-assigned identities on nodes outside the pool (from package desired).
	Refused []desired.Skipped
	// IdentityNodes is how many nodes carry or may carry identities.
	IdentityNodes int
}

// Metrics of the audit. The only label is the node name, bounded by the cluster's size.
type Metrics struct {
	untrusted *prometheus.GaugeVec
	refused   prometheus.Gauge
	runs      *prometheus.CounterVec
}

// NewMetrics registers the audit's metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		untrusted: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "podidentity_guard_untrusted_pods",
			Help: "Pods neither injected nor trusted on a node that carries user-assigned identities, by node, at the last audit."}, []string{"node"}),
		refused: prometheus.NewGauge(prometheus.GaugeOpts{Name: "podidentity_guard_refused_pods",
			Help: "Pods bound to user-assigned identities that guard mode does not attach because their node is outside the identity pool, at the last audit."}),
		runs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "podidentity_guard_audits_total",
			Help: "Audit passes by result (ok, error)."}, []string{"result"}),
	}
	reg.MustRegister(m.untrusted, m.refused, m.runs)
	return m
}

// Auditor runs the audit every Interval, and early (at most every MinGap) after Kick: a pod was created or
// scheduled, so that a planted pod or a bound pod outside the pool is reported within seconds rather than at
// the next tick. It is a manager.Runnable that runs on the leader only.
type Auditor struct {
	Reader  client.Reader
	Rules   Rules
	Binding binding.Options
	// AttachUninjected is the assigner's --attach-uninjected-pods: which bound pods it attaches identities
	// for, and so which of them guard mode refuses.
	AttachUninjected bool
	Interval         time.Duration
	// MinGap bounds how often kicks start a pass (default 5s): a pass reads every pod from the cache.
	MinGap   time.Duration
	Recorder Recorder
	Metrics  *Metrics
	Log      logr.Logger

	loop *periodic.Loop
}

// NewAuditor returns an Auditor ready for Kick.
func NewAuditor(a Auditor) *Auditor {
	if a.MinGap <= 0 {
		a.MinGap = 5 * time.Second
	}
	a.loop = periodic.New(a.Interval, a.MinGap)
	return &a
}

// Kick asks for an early pass; it never blocks, and kicks while one is pending are merged.
func (a *Auditor) Kick() { a.loop.Kick() }

// NeedLeaderElection makes only the elected assigner audit (one Event per finding, not one per replica).
func (a *Auditor) NeedLeaderElection() bool { return true }

// Start audits at once, then every Interval, until ctx ends.
func (a *Auditor) Start(ctx context.Context) error {
	a.loop.Run(ctx, func(ctx context.Context) {
		if _, err := a.Run(ctx); err != nil && ctx.Err() == nil {
			a.Log.Error(err, "guard audit failed; retrying at the next interval")
		}
	})
	return nil
}

// Run does one audit pass: it reads the cluster, records an Event per finding, sets the metrics and logs.
func (a *Auditor) Run(ctx context.Context) (Report, error) {
	rep, err := a.audit(ctx)
	if a.Metrics != nil {
		result := "ok"
		if err != nil {
			result = "error"
		}
		a.Metrics.runs.WithLabelValues(result).Inc()
	}
	if err != nil {
		return rep, err
	}
	if a.Metrics != nil {
		a.Metrics.untrusted.Reset()
		for _, f := range rep.Untrusted {
			a.Metrics.untrusted.WithLabelValues(f.Node).Inc()
		}
		a.Metrics.refused.Set(float64(len(rep.Refused)))
	}
	for _, f := range rep.Untrusted {
		a.Log.Info("untrusted pod on a node with identities", "pod", f.Pod, "node", f.Node, "message", f.Message)
		a.event(f.Pod, ReasonUntrustedPod, f.Message)
	}
	for _, r := range rep.Refused {
		a.Log.Info("identities not attached: pod outside the identity pool", "pod", r.Pod, "message", r.Reason)
		a.event(r.Pod, ReasonOutsidePool, r.Reason)
	}
	a.Log.V(1).Info("guard audit", "identityNodes", rep.IdentityNodes, "untrusted", len(rep.Untrusted), "refused", len(rep.Refused))
	return rep, nil
}

func (a *Auditor) event(podKey, reason, note string) {
	if a.Recorder == nil {
		return
	}
	ns, name, _ := strings.Cut(podKey, "/")
	ref := &corev1.ObjectReference{Kind: "Pod", APIVersion: "v1", Namespace: ns, Name: name}
	if len(note) > 1000 {
		note = note[:1000]
	}
	a.Recorder.Eventf(ref, nil, corev1.EventTypeWarning, reason, "Audit", "%s", note)
}

func (a *Auditor) audit(ctx context.Context) (Report, error) {
	var (
		nodes      corev1.NodeList
		pods       corev1.PodList
		namespaces corev1.NamespaceList
		assigned   aadv1.AzureAssignedIdentityList
		bindings   aadv1.AzureIdentityBindingList
		identities aadv1.AzureIdentityList
		exceptions aadv1.AzurePodIdentityExceptionList
	)
	ro := client.UnsafeDisableDeepCopy
	if err := errors.Join(
		// The cache's own objects (Audit only reads them): no copy of every pod on each pass.
		a.Reader.List(ctx, &nodes, ro), a.Reader.List(ctx, &pods, ro), a.Reader.List(ctx, &namespaces, ro),
		a.Reader.List(ctx, &assigned, ro), a.Reader.List(ctx, &bindings, ro), a.Reader.List(ctx, &identities, ro),
		a.Reader.List(ctx, &exceptions, ro),
	); err != nil {
		return Report{}, fmt.Errorf("listing what the audit reads (check the assigner's RBAC: list nodes, pods, namespaces): %w", err)
	}
	in := Input{Nodes: nodes.Items, Pods: pods.Items, Namespaces: namespaces.Items, Assigned: assigned.Items, Exceptions: exceptions.Items}
	rep := Audit(in, a.Rules)
	labels := make(map[string]map[string]string, len(namespaces.Items))
	for i := range namespaces.Items {
		labels[namespaces.Items[i].Name] = namespaces.Items[i].Labels
	}
	// The same decision as the controller's, so that a pod is refused here exactly when guard mode is what
	// keeps its identities off its node (an un-injected pod is reported by the pod audit instead).
	rep.Refused = desired.Compute(desired.Input{Pods: pods.Items, Nodes: nodes.Items, Bindings: bindings.Items,
		Identities: identities.Items, Exceptions: exceptions.Items, Options: a.Binding, Pool: a.Rules.Pool,
		NamespaceLabels: labels, Injection: desired.Injection{Label: a.Rules.InjectionLabel, AttachUninjected: a.AttachUninjected}}).Refused
	return rep, nil
}

// Input is what the pure part of the audit reads.
type Input struct {
	Nodes      []corev1.Node
	Pods       []corev1.Pod
	Namespaces []corev1.Namespace
	// Assigned tell which VMs and scale sets carry identities the assigner attached.
	Assigned []aadv1.AzureAssignedIdentity
	// Exceptions decide, in CNI mode, which pods the node's plugin leaves unfenced.
	Exceptions []aadv1.AzurePodIdentityException
}

// Audit finds the pods that are neither injected nor trusted on identity-bearing nodes: nodes of the pool,
// and nodes whose VM or scale set carries a user-assigned identity of an AzureAssignedIdentity (whatever its
// status: until the assigner has detached it, it may be there).
func Audit(in Input, r Rules) Report {
	bearing := map[string]bool{} // resource keys
	for i := range in.Assigned {
		a := &in.Assigned[i]
		if a.Spec.AzureIdentityRef == nil || a.Spec.AzureIdentityRef.Spec.Type != aadv1.UserAssignedMSI {
			continue
		}
		if res, err := providerid.ParseResourceID(a.Annotations[desired.ResourceAnnotation]); err == nil {
			bearing[res.Key()] = true
		}
	}
	identityNodes := map[string]bool{}
	for i := range in.Nodes {
		n := &in.Nodes[i]
		if r.Pool != nil && r.Pool.Contains(n) {
			identityNodes[n.Name] = true
			continue
		}
		if res, err := providerid.Parse(n.Spec.ProviderID); err == nil && bearing[res.Key()] {
			identityNodes[n.Name] = true
		}
	}
	nsLabels := map[string]map[string]string{}
	namespaces := map[string]*corev1.Namespace{}
	for i := range in.Namespaces {
		nsLabels[in.Namespaces[i].Name] = in.Namespaces[i].Labels
		namespaces[in.Namespaces[i].Name] = &in.Namespaces[i]
	}
	rep := Report{IdentityNodes: len(identityNodes)}
	for i := range in.Pods {
		p := &in.Pods[i]
		if !identityNodes[p.Spec.NodeName] || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		labels := nsLabels[p.Namespace]
		if r.Injected(p, labels) || r.Trusted(p) || r.FencedByCNI(p, namespaces[p.Namespace], in.Exceptions) {
			continue
		}
		rep.Untrusted = append(rep.Untrusted, Finding{
			Pod: p.Namespace + "/" + p.Name, Node: p.Spec.NodeName,
			Message: fmt.Sprintf("pod is not isolated from the node's IMDS (%s) and runs on node %s, which carries user-assigned identities: it can request tokens for any of them. "+
				"Delete it or move it off the node, opt its namespace in (label %s=enabled) and recreate it, or, if it is a system component, add its namespace or service account to guard.trustedNamespaces / guard.trustedServiceAccounts",
				r.Why(p, labels), p.Spec.NodeName, r.InjectionLabel),
		})
	}
	sort.Slice(rep.Untrusted, func(i, j int) bool { return rep.Untrusted[i].Pod < rep.Untrusted[j].Pod })
	return rep
}

// Setup adds the audit to mgr: every interval on the elected replica, and at most every minGap (0: 5s) after
// a pod is created or scheduled, with Events from the manager's recorder and metrics on reg.
// attachUninjected is the assigner's --attach-uninjected-pods.
func Setup(mgr manager.Manager, r Rules, b binding.Options, attachUninjected bool, interval, minGap time.Duration, reg prometheus.Registerer) error {
	if interval <= 0 {
		return nil
	}
	if r.Pool == nil {
		return errors.New("the guard audit needs the identity pool label (--identity-pool-label)")
	}
	a := NewAuditor(Auditor{Reader: mgr.GetClient(), Rules: r, Binding: b, AttachUninjected: attachUninjected, Interval: interval, MinGap: minGap,
		Recorder: mgr.GetEventRecorder("podidentity-assigner"), Metrics: NewMetrics(reg), Log: mgr.GetLogger().WithName("guard-audit")})
	// A new pod, or one just scheduled, may be planted on the pool or bound outside it: audit soon.
	inf, err := mgr.GetCache().GetInformer(context.Background(), &corev1.Pod{})
	if err != nil {
		return fmt.Errorf("watching pods for the guard audit: %w", err)
	}
	if _, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { a.Kick() },
		UpdateFunc: func(o, n any) {
			op, ok1 := o.(*corev1.Pod)
			np, ok2 := n.(*corev1.Pod)
			if ok1 && ok2 && op.Spec.NodeName != np.Spec.NodeName {
				a.Kick()
			}
		},
	}); err != nil {
		return fmt.Errorf("watching pods for the guard audit: %w", err)
	}
	return mgr.Add(a)
}
