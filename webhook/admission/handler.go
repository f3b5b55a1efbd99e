// Package admission is the webhook's controller-runtime admission handler for pods: it reads the namespace,
// bindings, identities and exceptions through the manager's cached client, lets package inject decide, and
// turns the decision into an admission response, metrics, logs and Events. On UPDATE it guards what only the
// webhook and the assigner may change.
package admission

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
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
	"github.com/podidentity/podidentity/internal/defaults"
	"github.com/podidentity/podidentity/webhook/inject"
)

// ReasonNamespaceNotEnabled is the skip reason for a pod whose namespace lacks the opt-in label (the
// webhook configuration's namespaceSelector normally keeps those away).
const ReasonNamespaceNotEnabled inject.Reason = "namespace-not-enabled"

// Handler handles pod admissions.
type Handler struct {
	// Reader is the manager's cached client (Namespaces, AzureIdentityBindings, AzureIdentities,
	// AzurePodIdentityExceptions).
	Reader   client.Reader
	Settings inject.Settings
	// Injector renders Settings once; nil means rendering them for each admission.
	Injector *inject.Injector
	// AssignerUsername may change the identities annotation and the injected containers of a running pod.
	AssignerUsername string
	Metrics          *Metrics
	// Events, when set, records skips and denials on the pod's owner (or its namespace).
	Events events.EventRecorder
	Log    logr.Logger
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
		reason, msg, warnings, err := inject.EphemeralDenial(req.Object.Raw, h.Settings)
		if err != nil {
			return admission.Errored(http.StatusBadRequest, fmt.Errorf("podidentity webhook: cannot read the pod: %w", err)), ResultError, ""
		}
		if msg != "" {
			h.record(req, corev1.EventTypeWarning, "PodIdentityDenied", msg)
			return admission.Denied(msg), ResultDenied, reason // msg already starts with "podidentity: "
		}
		return admission.Allowed("").WithWarnings(warnings...), ResultAllowed, ""
	}
	return admission.Allowed(""), ResultAllowed, ""
}

func (h *Handler) create(ctx context.Context, req admission.Request) (admission.Response, Result, inject.Reason) {
	enabled, err := h.namespaceEnabled(ctx, req.Namespace)
	if err != nil {
		return admission.Errored(http.StatusInternalServerError, fmt.Errorf("podidentity webhook: reading namespace %s: %w; retry, and check the webhook's RBAC (get/list/watch namespaces)", req.Namespace, err)), ResultError, ""
	}
	if !enabled {
		return admission.Allowed("namespace not opted in"), ResultSkipped, ReasonNamespaceNotEnabled
	}
	cluster, err := h.readCluster(ctx, req.Namespace)
	if err != nil {
		return admission.Errored(http.StatusInternalServerError, fmt.Errorf("podidentity webhook: reading bindings, identities and exceptions: %w; retry, and check the webhook's RBAC on aadpodidentity.k8s.io", err)), ResultError, ""
	}
	injector := h.Injector
	if injector == nil {
		injector = inject.NewInjector(h.Settings)
	}
	d := injector.Decide(req.Object.Raw, req.Namespace, cluster)
	switch d.Action {
	case inject.ActionDeny:
		h.record(req, corev1.EventTypeWarning, "PodIdentityDenied", d.Message)
		return admission.Denied(d.Message).WithWarnings(d.Warnings...), ResultDenied, d.Reason
	case inject.ActionSkip:
		h.record(req, corev1.EventTypeNormal, "PodIdentitySkipped", d.Message)
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

func (h *Handler) namespaceEnabled(ctx context.Context, name string) (bool, error) {
	var ns corev1.Namespace
	if err := h.Reader.Get(ctx, client.ObjectKey{Name: name}, &ns); err != nil {
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		return false, err
	}
	return ns.Labels[defaults.NamespaceInjectionLabel] == "enabled", nil
}

// readCluster lists what identity resolution needs. Bindings and identities of every namespace can bind a
// pod unless --force-namespaced; exceptions apply only in their own namespace.
func (h *Handler) readCluster(ctx context.Context, namespace string) (inject.Cluster, error) {
	var (
		bindings   aadv1.AzureIdentityBindingList
		identities aadv1.AzureIdentityList
		exceptions aadv1.AzurePodIdentityExceptionList
	)
	// The lists are only read, so the cache may hand out its own objects.
	scope := []client.ListOption{client.UnsafeDisableDeepCopy}
	if h.Settings.ForceNamespaced {
		scope = append(scope, client.InNamespace(namespace))
	}
	err := errors.Join(
		h.Reader.List(ctx, &bindings, scope...),
		h.Reader.List(ctx, &identities, scope...),
		h.Reader.List(ctx, &exceptions, client.InNamespace(namespace), client.UnsafeDisableDeepCopy),
	)
	return inject.Cluster{Bindings: bindings.Items, Identities: identities.Items, Exceptions: exceptions.Items}, err
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
