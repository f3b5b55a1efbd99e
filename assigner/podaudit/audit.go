// Package podaudit reports the pods whose isolation from the node's IMDS is weaker than their labels
// suggest, on the elected assigner, with or without guard mode:
//
//   - bound pods the webhook did not inject (labelled aadpodidbinding, bound to at least one identity, not
//     excepted, scheduled, not finished): the assigner attaches nothing for them (package desired), and
//     each gets one Warning Event PodNotInjected saying why and what to do; the gauge
//     podidentity_assigner_uninjected_bound_pods counts them by namespace;
//   - pods the webhook admitted with security warnings (annotation podidentity.io/security-warnings): one
//     Warning Event PodIdentitySecurityWarning each, naming the reasons and what they mean; the gauge
//     podidentity_pods_with_security_warnings counts them by namespace and reason.
//
// The decision (Audit) is pure; the Auditor only reads the informer cache, records Events and sets gauges.
package podaudit

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	crmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/assigner/desired"
	"github.com/podidentity/podidentity/assigner/internal/periodic"
	"github.com/podidentity/podidentity/internal/binding"
	"github.com/podidentity/podidentity/internal/contract"
)

// Event reasons.
const (
	// ReasonNotInjected: a bound pod the webhook did not inject; its identities are not attached.
	ReasonNotInjected = "PodNotInjected"
	// ReasonSecurityWarning: the webhook admitted the pod in a state that weakens its isolation.
	ReasonSecurityWarning = "PodIdentitySecurityWarning"
)

// Input is what the pure part of the audit reads.
type Input struct {
	Pods []corev1.Pod
	// NamespaceLabels by namespace name (a namespace missing here is not known yet).
	NamespaceLabels map[string]map[string]string
	Bindings        []aadv1.AzureIdentityBinding
	Identities      []aadv1.AzureIdentity
	Exceptions      []aadv1.AzurePodIdentityException
	Binding         binding.Options
	Injection       desired.Injection
}

// Finding is one pod to report.
type Finding struct {
	Namespace, Name string
	UID             types.UID
	// Note is the Event's note: what is wrong and what to do.
	Note string
	// Warnings are the security-warning reasons (bounded: the Warning* constants), for the metric.
	Warnings []string
	// Provisional findings are counted but get no Event yet: the pod's namespace is not known, and the
	// Event is recorded once per pod, so it waits until its message can be right.
	Provisional bool
}

// Report is the outcome of one audit pass.
type Report struct {
	// NotInjected are the bound pods that get no attachment because the webhook did not inject them (none
	// with Injection.AttachUninjected).
	NotInjected []Finding
	// SecurityWarnings are the unfinished pods that carry the security-warnings annotation.
	SecurityWarnings []Finding
}

// Audit finds the pods to report.
func Audit(in Input) Report {
	uids := make(map[string]types.UID, len(in.Pods))
	for i := range in.Pods {
		uids[in.Pods[i].Namespace+"/"+in.Pods[i].Name] = in.Pods[i].UID
	}
	var rep Report
	for _, u := range desired.NotInjected(desired.Input{Pods: in.Pods, Bindings: in.Bindings, Identities: in.Identities,
		Exceptions: in.Exceptions, Options: in.Binding, NamespaceLabels: in.NamespaceLabels, Injection: in.Injection}) {
		rep.NotInjected = append(rep.NotInjected, Finding{Namespace: u.Namespace, Name: u.Name, UID: uids[u.Pod], Note: u.Message,
			Provisional: u.NamespaceUnknown})
	}
	for i := range in.Pods {
		p := &in.Pods[i]
		v, ok := p.Annotations[contract.SecurityWarningsAnnotation]
		if !ok || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue // a finished pod reaches nothing any more
		}
		reasons, unknown := ParseWarnings(v)
		if len(reasons) == 0 {
			continue
		}
		rep.SecurityWarnings = append(rep.SecurityWarnings, Finding{Namespace: p.Namespace, Name: p.Name, UID: p.UID,
			Note: WarningNote(reasons, unknown), Warnings: reasons})
	}
	return rep
}

// Recorder is the part of an events recorder the audit uses.
type Recorder interface {
	Eventf(regarding, related runtime.Object, eventtype, reason, action, note string, args ...interface{})
}

// Metrics of the audit. Labels: namespace (bounded by the cluster's namespaces) and reason (the Warning*
// constants).
type Metrics struct {
	uninjected *prometheus.GaugeVec
	warnings   *prometheus.GaugeVec
	runs       *prometheus.CounterVec

	// The series set by the last pass, so that the next deletes those that are gone without a moment at 0
	// for the others (as a Reset would show to a scrape).
	lastUninjected map[string]bool
	lastWarnings   map[[2]string]bool
}

// NewMetrics registers the audit's metrics on reg (nil: controller-runtime's registry, served on /metrics).
// Metrics already registered there (a manager restarted in the same process) are reused.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	if reg == nil {
		reg = crmetrics.Registry
	}
	m := &Metrics{
		uninjected: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "podidentity_assigner_uninjected_bound_pods",
			Help: "Pods labelled aadpodidbinding and bound to at least one identity that the podidentity webhook did not inject, so the assigner attaches nothing for them (event PodNotInjected), by namespace, at the last audit; always 0 with --attach-uninjected-pods."},
			[]string{"namespace"}),
		warnings: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "podidentity_pods_with_security_warnings",
			Help: "Unfinished pods that the podidentity webhook admitted with security warnings (annotation podidentity.io/security-warnings), by namespace and reason (opt-out-annotation, exception, host-network, windows, uid-change, other), at the last audit."},
			[]string{"namespace", "reason"}),
		runs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "podidentity_assigner_pod_audits_total",
			Help: "Passes of the assigner's pod audit (uninjected bound pods, security warnings) by result (ok, error)."}, []string{"result"}),
		lastUninjected: map[string]bool{}, lastWarnings: map[[2]string]bool{},
	}
	var err error
	if m.uninjected, err = register(reg, m.uninjected); err != nil {
		return nil, err
	}
	if m.warnings, err = register(reg, m.warnings); err != nil {
		return nil, err
	}
	if m.runs, err = register(reg, m.runs); err != nil {
		return nil, err
	}
	return m, nil
}

func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing, nil
			}
		}
		return c, fmt.Errorf("registering the pod audit's metrics: %w", err)
	}
	return c, nil
}

// set publishes a report.
func (m *Metrics) set(rep Report) {
	uninjected := map[string]float64{}
	for _, f := range rep.NotInjected {
		uninjected[f.Namespace]++
	}
	warnings := map[[2]string]float64{}
	for _, f := range rep.SecurityWarnings {
		for _, r := range f.Warnings {
			warnings[[2]string{f.Namespace, r}]++
		}
	}
	for ns := range m.lastUninjected {
		if _, ok := uninjected[ns]; !ok {
			m.uninjected.DeleteLabelValues(ns)
		}
	}
	for k := range m.lastWarnings {
		if _, ok := warnings[k]; !ok {
			m.warnings.DeleteLabelValues(k[0], k[1])
		}
	}
	m.lastUninjected, m.lastWarnings = map[string]bool{}, map[[2]string]bool{}
	for ns, n := range uninjected {
		m.uninjected.WithLabelValues(ns).Set(n)
		m.lastUninjected[ns] = true
	}
	for k, n := range warnings {
		m.warnings.WithLabelValues(k[0], k[1]).Set(n)
		m.lastWarnings[k] = true
	}
}

// Auditor runs the audit every Interval, and early (at most every MinGap) after Kick. It is a
// manager.Runnable that runs on the elected replica only.
type Auditor struct {
	// Reader is the informer cache.
	Reader    client.Reader
	Injection desired.Injection
	Binding   binding.Options
	Interval  time.Duration
	MinGap    time.Duration
	Recorder  Recorder
	Metrics   *Metrics
	Log       logr.Logger

	loop *periodic.Loop
	// mu serializes passes: warned and the metrics' last series belong to one pass at a time.
	mu sync.Mutex
	// warned holds the pods (by Event reason, namespace, name and uid) that got their Event, so that each
	// gets it once rather than once per pass; entries go with their pods. A new leader starts empty, so a
	// failover repeats each Event once.
	warned map[warnedKey]bool
}

type warnedKey struct {
	reason, namespace, name string
	uid                     types.UID
}

// NewAuditor returns an Auditor ready for Kick, with defaults: Interval 1m, MinGap 5s.
func NewAuditor(a *Auditor) *Auditor {
	a.warned = map[warnedKey]bool{}
	if a.Interval <= 0 {
		a.Interval = time.Minute
	}
	if a.MinGap <= 0 {
		a.MinGap = 5 * time.Second
	}
	a.loop = periodic.New(a.Interval, a.MinGap)
	return a
}

// Kick asks for an early pass; it never blocks, and kicks while one is pending are merged.
func (a *Auditor) Kick() { a.loop.Kick() }

// NeedLeaderElection makes only the elected assigner audit: one Event per finding, not one per replica.
func (a *Auditor) NeedLeaderElection() bool { return true }

// Start audits at once, then every Interval and after kicks, until ctx ends.
func (a *Auditor) Start(ctx context.Context) error {
	a.loop.Run(ctx, func(ctx context.Context) {
		if _, err := a.Run(ctx); err != nil && ctx.Err() == nil {
			a.Log.Error(err, "pod audit failed; retrying at the next interval or change")
		}
	})
	return nil
}

// Run does one pass: it reads the cache, sets the gauges, and records each finding's Event once per pod.
func (a *Auditor) Run(ctx context.Context) (Report, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	in, err := a.read(ctx)
	if err != nil {
		if a.Metrics != nil {
			a.Metrics.runs.WithLabelValues("error").Inc()
		}
		return Report{}, err
	}
	rep := Audit(in)
	if a.Metrics != nil {
		a.Metrics.set(rep)
		a.Metrics.runs.WithLabelValues("ok").Inc()
	}

	present := map[types.UID]bool{}
	for i := range in.Pods {
		present[in.Pods[i].UID] = true
	}
	for k := range a.warned {
		if !present[k.uid] {
			delete(a.warned, k)
		}
	}
	for _, f := range rep.NotInjected {
		if !f.Provisional && a.once(ReasonNotInjected, f) {
			a.Log.Info("identities not attached: bound pod not injected by the webhook", "pod", klogRef(f), "message", f.Note)
			a.event(f, ReasonNotInjected, "AttachIdentity")
		}
	}
	for _, f := range rep.SecurityWarnings {
		if a.once(ReasonSecurityWarning, f) {
			a.Log.Info("pod admitted with security warnings", "pod", klogRef(f), "reasons", f.Warnings)
			a.event(f, ReasonSecurityWarning, "Audit")
		}
	}
	a.Log.V(1).Info("pod audit", "uninjectedBoundPods", len(rep.NotInjected), "podsWithSecurityWarnings", len(rep.SecurityWarnings))
	return rep, nil
}

// once tells whether the finding's Event is due, and records that it is being recorded.
func (a *Auditor) once(reason string, f Finding) bool {
	k := warnedKey{reason: reason, namespace: f.Namespace, name: f.Name, uid: f.UID}
	if a.warned[k] {
		return false
	}
	a.warned[k] = true
	return true
}

func klogRef(f Finding) string { return f.Namespace + "/" + f.Name }

func (a *Auditor) event(f Finding, reason, action string) {
	if a.Recorder == nil {
		return
	}
	ref := &corev1.ObjectReference{Kind: "Pod", APIVersion: "v1", Namespace: f.Namespace, Name: f.Name, UID: f.UID}
	note := f.Note
	if len(note) > 1000 {
		note = strings.ToValidUTF8(note[:1000], "") // the API's limit is 1 kB; do not cut a character in two
	}
	a.Recorder.Eventf(ref, nil, corev1.EventTypeWarning, reason, action, "%s", note)
}

func (a *Auditor) read(ctx context.Context) (Input, error) {
	var (
		pods       corev1.PodList
		namespaces corev1.NamespaceList
		bindings   aadv1.AzureIdentityBindingList
		identities aadv1.AzureIdentityList
		exceptions aadv1.AzurePodIdentityExceptionList
	)
	// The cache's own objects, not copies: Audit only reads them, and a copy of every pod of a large cluster
	// on each pass would be hundreds of MiB of garbage.
	ro := client.UnsafeDisableDeepCopy
	if err := errors.Join(a.Reader.List(ctx, &pods, ro), a.Reader.List(ctx, &namespaces, ro), a.Reader.List(ctx, &bindings, ro),
		a.Reader.List(ctx, &identities, ro), a.Reader.List(ctx, &exceptions, ro)); err != nil {
		return Input{}, fmt.Errorf("listing what the pod audit reads (check the assigner's RBAC: list pods, namespaces and the aadpodidentity.k8s.io kinds): %w", err)
	}
	labels := make(map[string]map[string]string, len(namespaces.Items))
	for i := range namespaces.Items {
		labels[namespaces.Items[i].Name] = namespaces.Items[i].Labels
	}
	return Input{Pods: pods.Items, NamespaceLabels: labels, Bindings: bindings.Items, Identities: identities.Items,
		Exceptions: exceptions.Items, Binding: a.Binding, Injection: a.Injection}, nil
}

// Options configure Setup.
type Options struct {
	Injection desired.Injection
	Binding   binding.Options
	// Interval between passes (default 1m); MinGap bounds how often changes start one (default 5s): a pass
	// reads every pod from the cache.
	Interval, MinGap time.Duration
	// Registerer receives the metrics (default: controller-runtime's registry, served on /metrics).
	Registerer prometheus.Registerer
	// Recorder emits Events; default: the manager's recorder.
	Recorder Recorder
}

// Setup adds the audit to mgr: at once and every Interval on the elected replica, and within MinGap of a
// change that can alter a finding (a pod created, scheduled, finished, relabelled or deleted; a namespace
// opted in or out; a binding, identity or exception changed).
func Setup(mgr manager.Manager, o Options) (*Auditor, error) {
	m, err := NewMetrics(o.Registerer)
	if err != nil {
		return nil, err
	}
	rec := o.Recorder
	if rec == nil {
		rec = mgr.GetEventRecorder("podidentity-assigner")
	}
	a := NewAuditor(&Auditor{Reader: mgr.GetClient(), Injection: o.Injection, Binding: o.Binding, Interval: o.Interval,
		MinGap: o.MinGap, Recorder: rec, Metrics: m, Log: mgr.GetLogger().WithName("pod-audit")})
	kick := func(any) { a.Kick() }
	kick2 := func(any, any) { a.Kick() }
	label := o.Injection.LabelKey()
	handlers := []struct {
		obj client.Object
		h   toolscache.ResourceEventHandlerFuncs
	}{
		{&corev1.Pod{}, toolscache.ResourceEventHandlerFuncs{AddFunc: kick, DeleteFunc: kick, UpdateFunc: func(o, n any) {
			op, ok1 := o.(*corev1.Pod)
			np, ok2 := n.(*corev1.Pod)
			// Only what a finding depends on; status updates of running pods are frequent and change nothing.
			if !ok1 || !ok2 || op.Spec.NodeName != np.Spec.NodeName || op.Status.Phase != np.Status.Phase ||
				!equalMaps(op.Labels, np.Labels) || !equalMaps(op.Annotations, np.Annotations) {
				a.Kick()
			}
		}}},
		{&corev1.Namespace{}, toolscache.ResourceEventHandlerFuncs{AddFunc: kick, DeleteFunc: kick, UpdateFunc: func(o, n any) {
			on, ok1 := o.(*corev1.Namespace)
			nn, ok2 := n.(*corev1.Namespace)
			if !ok1 || !ok2 || desired.OptedIn(on.Labels, label) != desired.OptedIn(nn.Labels, label) {
				a.Kick()
			}
		}}},
		{&aadv1.AzureIdentityBinding{}, toolscache.ResourceEventHandlerFuncs{AddFunc: kick, DeleteFunc: kick, UpdateFunc: kick2}},
		{&aadv1.AzureIdentity{}, toolscache.ResourceEventHandlerFuncs{AddFunc: kick, DeleteFunc: kick, UpdateFunc: kick2}},
		{&aadv1.AzurePodIdentityException{}, toolscache.ResourceEventHandlerFuncs{AddFunc: kick, DeleteFunc: kick, UpdateFunc: kick2}},
	}
	for _, h := range handlers {
		inf, err := mgr.GetCache().GetInformer(context.Background(), h.obj)
		if err != nil {
			return nil, fmt.Errorf("watching %T for the pod audit: %w", h.obj, err)
		}
		if _, err := inf.AddEventHandler(h.h); err != nil {
			return nil, fmt.Errorf("watching %T for the pod audit: %w", h.obj, err)
		}
	}
	return a, mgr.Add(a)
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if bv, ok := b[k]; !ok || bv != v {
			return false
		}
	}
	return true
}
