// Package admission is the webhook's controller-runtime admission handler for pods: it reads the namespace,
// bindings, identities and exceptions through the manager's cached client, lets package inject decide, and
// turns the decision into an admission response, metrics, logs and Events. On UPDATE it guards what only the
// webhook and the assigner may change.
//
// The cached reads are keyed by what the pod asks for (index.go): the bindings of its aadpodidbinding
// selector, the identities those name, the exceptions of its namespace. An admission costs the same with
// one binding in the cluster or a hundred thousand.
//
// The cache is trusted only in the direction that cannot open a hole. Whenever what it holds would make the
// webhook skip a pod or record fewer identities for it (a namespace not cached yet, or cached without the
// opt-in label; a selector that no cached binding resolves; an exception that would exempt the pod), the
// handler reads the API server directly and decides on that. No admission is answered before the caches
// have synced.
package admission

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/binding"
	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/webhook/inject"
)

// ReasonNamespaceNotEnabled is the skip reason for a pod whose namespace lacks the opt-in label (the
// webhook configuration's namespaceSelector normally keeps those away).
const ReasonNamespaceNotEnabled inject.Reason = "namespace-not-enabled"

// EventSecurityWarning is the reason of the Warning Event for a pod admitted in a state that weakens its
// isolation (not injected in an opted-in namespace, or able to bypass the uid exemption).
const EventSecurityWarning = "PodIdentitySecurityWarning"

// EventIdentityNotServed is the reason of the Warning Event for an injected pod whose binding selects an
// identity the webhook left out of its annotation (inject.NotServed: a service principal's Secret outside the
// pod's namespace, a name that makes no valid volume, two service principals of one name). It is not a
// security warning: the pod is as isolated as any other, it lacks an identity it expects.
const EventIdentityNotServed = "PodIdentityNotServed"

// ReasonNotSynced is the error reason of an admission that arrived before the caches synced.
const ReasonNotSynced inject.Reason = "caches-not-synced"

// Handler handles pod admissions.
type Handler struct {
	// Reader is the manager's cached client (Namespaces, AzureIdentityBindings, AzureIdentities,
	// AzurePodIdentityExceptions). An admission reads from it by key only: the namespace, the bindings of the
	// pod's selector through the index BindingSelectorField (registered on the first admission when Reader is
	// a client.FieldIndexer), the identities they name, the exceptions of the pod's namespace. A Reader
	// without that index and unable to take it is listed whole for every admission.
	Reader client.Reader
	// Live reads the API server directly (the manager's API reader). It confirms every answer of Reader that
	// would skip a pod or bind it to fewer identities. Nil: Reader is used (tests whose Reader is not a cache).
	Live client.Reader
	// Synced reports whether Reader's caches have synced, waiting at most until ctx ends; until they have,
	// pod creations are answered with an error (the API server then refuses them under failurePolicy Fail).
	// Nil: always synced.
	Synced   func(ctx context.Context) bool
	Settings inject.Settings
	// Injector renders Settings once; nil means rendering them for each admission.
	Injector *inject.Injector
	// InjectionLabel is the namespace label (value "enabled") that opts a namespace in, as in the webhook
	// configuration's namespaceSelector; empty means contract.NamespaceInjectionLabel.
	InjectionLabel string
	// AssignerUsername may change the identities annotation and the injected containers of a running pod.
	AssignerUsername string
	Metrics          *Metrics
	// Events, when set, records skips and denials on the pod's owner (or its namespace).
	Events events.EventRecorder
	Log    logr.Logger

	synced atomic.Bool
	// indexed: Reader answers keyed reads of bindings (BindingSelectorField); decided once, by indexOnce.
	indexOnce sync.Once
	indexed   bool
	// fullWalk lists every binding and identity for each admission, as before the index (tests, benchmark
	// baseline).
	fullWalk bool
}

var _ admission.Handler = (*Handler)(nil)

// Handle implements admission.Handler.
func (h *Handler) Handle(ctx context.Context, req admission.Request) admission.Response {
	start := time.Now()
	resp, result, reason := h.handle(ctx, req)
	if h.Metrics != nil {
		h.Metrics.duration.Observe(time.Since(start).Seconds())
		h.Metrics.admissions.WithLabelValues(operationLabel(string(req.Operation)), string(result)).Inc()
		switch result {
		case ResultInjected:
			mode := "classic"
			if h.Settings.Native {
				mode = "native"
			}
			h.Metrics.injected.WithLabelValues(mode).Inc()
		case ResultSkipped:
			h.Metrics.skipped.WithLabelValues(string(reason)).Inc()
		case ResultDenied:
			h.Metrics.denied.WithLabelValues(string(reason)).Inc()
		}
	}
	log := h.Log.WithValues("uid", req.UID, "operation", req.Operation, "namespace", req.Namespace, "name", req.Name, "result", result)
	if reason != "" {
		log = log.WithValues("reason", reason)
	}
	if result == ResultError || result == ResultDenied {
		log.Info("admission", "message", resp.Result.Message)
	} else {
		log.V(1).Info("admission")
	}
	return resp
}

func (h *Handler) handle(ctx context.Context, req admission.Request) (admission.Response, Result, inject.Reason) {
	if req.Kind.Kind != "Pod" && req.Resource.Resource != "pods" {
		return admission.Allowed("not a pod"), ResultAllowed, ""
	}
	switch {
	case req.Operation == admissionv1.Create && req.SubResource == "":
		return h.create(ctx, req)
	case req.Operation == admissionv1.Update && req.SubResource == "":
		return h.update(req)
	case req.Operation == admissionv1.Update && req.SubResource == "ephemeralcontainers":
		reason, msg, warnings, patch, err := inject.EphemeralDecision(req.OldObject.Raw, req.Object.Raw, h.Settings)
		if err != nil {
			return admission.Errored(http.StatusBadRequest, fmt.Errorf("podidentity webhook: cannot read the pod: %w", err)), ResultError, ""
		}
		if msg != "" {
			h.record(req, corev1.EventTypeWarning, "PodIdentityDenied", msg)
			return admission.Denied(msg), ResultDenied, reason // msg already starts with "podidentity: "
		}
		if len(warnings) > 0 {
			h.countSecurityWarnings(req.Namespace, []inject.Reason{inject.ReasonUIDChange})
			h.record(req, corev1.EventTypeWarning, EventSecurityWarning, strings.Join(warnings, "; "))
		}
		if len(patch) > 0 {
			return admission.Patched("", patch...).WithWarnings(warnings...), ResultAllowed, ""
		}
		return admission.Allowed("").WithWarnings(warnings...), ResultAllowed, ""
	}
	return admission.Allowed(""), ResultAllowed, ""
}

// syncWait bounds how long an admission waits for the caches at start-up before it is answered with an error.
const syncWait = 2 * time.Second

func (h *Handler) create(ctx context.Context, req admission.Request) (admission.Response, Result, inject.Reason) {
	if h.Synced != nil && !h.synced.Load() {
		wait, cancel := context.WithTimeout(ctx, syncWait)
		synced := h.Synced(wait)
		cancel()
		h.synced.Store(synced) // once synced, an informer's cache stays synced
		if !synced {
			return admission.Errored(http.StatusServiceUnavailable, errors.New("podidentity webhook: starting, its caches of namespaces, bindings, identities and exceptions have not synced yet; retry in a few seconds")), ResultError, ReasonNotSynced
		}
	}
	enabled, err := h.namespaceEnabled(ctx, req.Namespace)
	if err != nil {
		return admission.Errored(http.StatusInternalServerError, fmt.Errorf("podidentity webhook: reading namespace %s: %w; retry, and check the webhook's RBAC (get/list/watch namespaces)", req.Namespace, err)), ResultError, ""
	}
	if !enabled {
		return admission.Allowed("namespace not opted in"), ResultSkipped, ReasonNamespaceNotEnabled
	}
	const rbacHint = "; retry, and check the webhook's RBAC (get/list/watch) on aadpodidentity.k8s.io"
	cluster, err := h.readCached(ctx, req)
	if err != nil {
		return admission.Errored(http.StatusInternalServerError, fmt.Errorf("podidentity webhook: reading bindings, identities and exceptions: %w%s", err, rbacHint)), ResultError, ""
	}
	injector := h.Injector
	if injector == nil {
		injector = inject.NewInjector(h.Settings)
	}
	d := injector.Decide(req.Object.Raw, req.Namespace, cluster)
	if parts := confirm(d); parts != 0 {
		// The cache may lag behind the API server: decide again on what the API server holds now.
		live, err := readCluster(ctx, h.live(), req.Namespace, h.Settings.ForceNamespaced, parts)
		if err != nil {
			return admission.Errored(http.StatusInternalServerError, fmt.Errorf("podidentity webhook: reading bindings, identities and exceptions from the API server: %w%s", err, rbacHint)), ResultError, ""
		}
		if parts&partsExceptions == 0 {
			live.Exceptions = cluster.Exceptions
		}
		if parts&partsBindings == 0 {
			live.Bindings, live.Identities = cluster.Bindings, cluster.Identities
		}
		again := injector.Decide(req.Object.Raw, req.Namespace, live)
		h.countLiveRead(parts.label(), !sameOutcome(d, again))
		d = again
	}
	if len(d.SecurityWarnings) > 0 {
		// The admission response's warnings reach a person only for kubectl; a controller's pods are
		// created by kube-controller-manager. The Event on the owner, the metric, the pod's annotation (and
		// the assigner's Event on the pod) are what an operator sees.
		h.countSecurityWarnings(req.Namespace, d.SecurityWarnings)
		note := d.Message
		if d.Action != inject.ActionSkip {
			note = strings.Join(d.Warnings, "; ")
		}
		h.record(req, corev1.EventTypeWarning, EventSecurityWarning, note)
	}
	if len(d.NotServed) > 0 && d.Action != inject.ActionDeny {
		// Like the security warnings: the admission warning alone would reach nobody for a controller's pods.
		msgs := make([]string, len(d.NotServed))
		for i, n := range d.NotServed {
			msgs[i] = n.Message
			if h.Metrics != nil {
				h.Metrics.notServed.WithLabelValues(string(n.Reason), req.Namespace).Inc()
			}
		}
		h.record(req, corev1.EventTypeWarning, EventIdentityNotServed, strings.Join(msgs, "; "))
	}
	switch d.Action {
	case inject.ActionDeny:
		h.record(req, corev1.EventTypeWarning, "PodIdentityDenied", d.Message)
		return admission.Denied(d.Message).WithWarnings(d.Warnings...), ResultDenied, d.Reason
	case inject.ActionSkip:
		return patched(d), ResultSkipped, d.Reason
	case inject.ActionUnchanged:
		return patched(d), ResultUnchanged, ""
	}
	return patched(d), ResultInjected, ""
}

func patched(d inject.Decision) admission.Response {
	if len(d.Patch) == 0 {
		return admission.Allowed("").WithWarnings(d.Warnings...)
	}
	return admission.Patched("", d.Patch...).WithWarnings(d.Warnings...)
}

func (h *Handler) update(req admission.Request) (admission.Response, Result, inject.Reason) {
	if req.UserInfo.Username == h.AssignerUsername {
		return admission.Allowed(""), ResultAllowed, ""
	}
	what, err := inject.ProtectedChange(req.OldObject.Raw, req.Object.Raw)
	if err != nil {
		return admission.Errored(http.StatusBadRequest, fmt.Errorf("podidentity webhook: cannot read the pod: %w", err)), ResultError, ""
	}
	if what != "" {
		return admission.Denied(fmt.Sprintf("podidentity: %s of a running pod is managed by podidentity; only %s may change it. Change the AzureIdentityBinding instead, or recreate the pod", what, h.AssignerUsername)), ResultDenied, inject.ReasonProtectedUpdate
	}
	return admission.Allowed(""), ResultAllowed, ""
}

// namespaceEnabled reports whether the namespace carries the opt-in label. The API server calls the webhook
// only for namespaces that match its namespaceSelector, by its own, newer view: a namespace created or
// labelled a moment before the pod may be missing from the cache, or cached without the label. Neither may
// skip the pod, so both are confirmed with a live read; only the cached "enabled" is taken as it is (at
// worst it injects a pod whose namespace was opted out a moment ago).
func (h *Handler) namespaceEnabled(ctx context.Context, name string) (bool, error) {
	var ns corev1.Namespace
	err := h.Reader.Get(ctx, client.ObjectKey{Name: name}, &ns)
	switch {
	case err == nil && h.optedIn(&ns):
		return true, nil
	case err != nil && !apierrors.IsNotFound(err):
		return false, err
	}
	if err := h.live().Get(ctx, client.ObjectKey{Name: name}, &ns); err != nil {
		if apierrors.IsNotFound(err) {
			h.countLiveRead("namespace", false)
			return false, nil
		}
		return false, err
	}
	enabled := h.optedIn(&ns)
	h.countLiveRead("namespace", enabled)
	return enabled, nil
}

func (h *Handler) optedIn(ns *corev1.Namespace) bool {
	label := h.InjectionLabel
	if label == "" {
		label = contract.NamespaceInjectionLabel
	}
	return ns.Labels[label] == "enabled"
}

func (h *Handler) countSecurityWarnings(namespace string, reasons []inject.Reason) {
	if h.Metrics == nil {
		return
	}
	for _, r := range reasons {
		h.Metrics.securityWarnings.WithLabelValues(string(r), namespace).Inc()
	}
}

func (h *Handler) live() client.Reader {
	if h.Live != nil {
		return h.Live
	}
	return h.Reader
}

func (h *Handler) countLiveRead(object string, changed bool) {
	if h.Metrics != nil {
		h.Metrics.liveReads.WithLabelValues(object, strconv.FormatBool(changed)).Inc()
	}
}

// parts selects what readCluster lists.
type parts uint8

const (
	partsBindings   parts = 1 << iota // bindings and identities
	partsExceptions                   // exceptions of the pod's namespace
	partsAll        = partsBindings | partsExceptions
)

// label is the "object" label of podidentity_webhook_live_reads_total.
func (p parts) label() string {
	switch p {
	case partsBindings:
		return "bindings"
	case partsExceptions:
		return "exceptions"
	}
	return "bindings-and-exceptions"
}

// confirm says which cached reads a decision rests on that a lagging cache could have got wrong in the
// direction that weakens isolation: a skip because of an exception (deleted a moment ago?), or a pod that
// asks for identities and was bound to none or not to all of them (binding or identity created a moment ago?).
func confirm(d inject.Decision) parts {
	var p parts
	if d.Action == inject.ActionSkip && d.Reason == inject.ReasonException {
		p |= partsExceptions
	}
	if d.Unresolved {
		p |= partsBindings
	}
	return p
}

// sameOutcome: the live read changed neither the action nor the identities recorded.
func sameOutcome(a, b inject.Decision) bool {
	return a.Action == b.Action && a.Reason == b.Reason && binding.Encode(a.Identities) == binding.Encode(b.Identities)
}

// readCluster lists what identity resolution needs from r. Bindings and identities of every namespace can
// bind a pod unless forceNamespaced; exceptions apply only in their own namespace.
func readCluster(ctx context.Context, r client.Reader, namespace string, forceNamespaced bool, what parts) (inject.Cluster, error) {
	var (
		bindings   aadv1.AzureIdentityBindingList
		identities aadv1.AzureIdentityList
		exceptions aadv1.AzurePodIdentityExceptionList
		errs       []error
	)
	// The lists are only read, so a cache may hand out its own objects (a live reader ignores the option).
	scope := []client.ListOption{client.UnsafeDisableDeepCopy}
	if forceNamespaced {
		scope = append(scope, client.InNamespace(namespace))
	}
	if what&partsBindings != 0 {
		errs = append(errs, r.List(ctx, &bindings, scope...), r.List(ctx, &identities, scope...))
	}
	if what&partsExceptions != 0 {
		errs = append(errs, r.List(ctx, &exceptions, client.InNamespace(namespace), client.UnsafeDisableDeepCopy))
	}
	return inject.Cluster{Bindings: bindings.Items, Identities: identities.Items, Exceptions: exceptions.Items}, errors.Join(errs...)
}

// record emits an Event for a skip or a denial on the pod's controlling owner, or on its namespace: the pod
// itself may not exist (denied) or have no name yet (generateName). Dry runs record nothing.
func (h *Handler) record(req admission.Request, eventType, reason, note string) {
	if h.Events == nil || (req.DryRun != nil && *req.DryRun) {
		return
	}
	var meta struct {
		Metadata metav1.ObjectMeta `json:"metadata"`
	}
	_ = json.Unmarshal(req.Object.Raw, &meta) // best effort: without an owner the namespace gets the Event
	var regarding runtime.Object = &corev1.ObjectReference{Kind: "Namespace", APIVersion: "v1", Name: req.Namespace, Namespace: req.Namespace}
	if owner := metav1.GetControllerOfNoCopy(&meta.Metadata); owner != nil {
		regarding = &corev1.ObjectReference{Kind: owner.Kind, APIVersion: owner.APIVersion, Name: owner.Name, UID: owner.UID, Namespace: req.Namespace}
	}
	if len(note) > 1000 {
		note = note[:1000]
	}
	h.Events.Eventf(regarding, nil, eventType, reason, "Admit", "%s", note)
}
