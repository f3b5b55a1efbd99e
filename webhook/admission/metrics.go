package admission

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Result is the bounded "result" label of admissions.
type Result string

const (
	ResultInjected  Result = "injected"
	ResultUnchanged Result = "unchanged"
	ResultSkipped   Result = "skipped"
	ResultDenied    Result = "denied"
	ResultAllowed   Result = "allowed" // updates and other operations that pass the guard
	ResultError     Result = "error"
)

// Metrics are the webhook's Prometheus metrics. Every label takes a value from a fixed set.
type Metrics struct {
	admissions *prometheus.CounterVec
	injected   *prometheus.CounterVec
	skipped    *prometheus.CounterVec
	denied     *prometheus.CounterVec
	liveReads  *prometheus.CounterVec
	// securityWarnings is labelled by namespace too: an operator must find the namespace to fix. Namespaces
	// are few compared with pods, and only opted-in namespaces reach the webhook.
	securityWarnings *prometheus.CounterVec
	// notServed counts bound identities left out of injected pods, by reason and namespace (bounded as above).
	notServed *prometheus.CounterVec
	duration  prometheus.Histogram
}

// NewMetrics registers the metrics on reg (controller-runtime's metrics.Registry in the binary).
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		admissions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podidentity_webhook_admissions_total",
			Help: "Pod admission requests handled, by operation (CREATE, UPDATE, other) and result.",
		}, []string{"operation", "result"}),
		injected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podidentity_webhook_injected_total",
			Help: "Pods injected, by sidecar mode (native, classic).",
		}, []string{"mode"}),
		skipped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podidentity_webhook_skipped_total",
			Help: "Pods admitted without injection, by reason.",
		}, []string{"reason"}),
		denied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podidentity_webhook_denied_total",
			Help: "Pod admissions denied, by reason.",
		}, []string{"reason"}),
		liveReads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podidentity_webhook_live_reads_total",
			Help: "Reads from the API server that confirmed what the cache would have made the webhook skip or bind to fewer identities, by object (namespace, bindings, exceptions, bindings-and-exceptions) and whether the live answer changed the decision (changed=true: the cache lagged).",
		}, []string{"object", "changed"}),
		securityWarnings: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podidentity_webhook_security_warnings_total",
			Help: "Pods (and debug containers) admitted in an opted-in namespace in a state that weakens their isolation, by reason (opt-out-annotation, exception, host-network, windows: not injected, the pod can reach the node's IMDS directly; uid-change: a container can change to the exempt uid) and namespace.",
		}, []string{"reason", "namespace"}),
		notServed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podidentity_webhook_identities_not_served_total",
			Help: "Bound identities left out of an injected pod's annotation, so its sidecar does not serve them, by reason (secret-other-namespace: a service principal's Secret is not in the pod's namespace; invalid-volume-name; duplicate-name) and namespace. Each also raises a Warning Event PodIdentityNotServed on the pod's owner.",
		}, []string{"reason", "namespace"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "podidentity_webhook_admission_duration_seconds",
			Help:    "Time to decide one admission, from request decoded to response built.",
			Buckets: []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5},
		}),
	}
	// A second webhook in the same process (tests) reuses the collectors the first registered.
	for _, c := range []**prometheus.CounterVec{&m.admissions, &m.injected, &m.skipped, &m.denied, &m.liveReads, &m.securityWarnings, &m.notServed} {
		if err := register(reg, *c, c); err != nil {
			return nil, err
		}
	}
	if err := register(reg, m.duration, &m.duration); err != nil {
		return nil, err
	}
	return m, nil
}

func operationLabel(op string) string {
	switch op {
	case "CREATE", "UPDATE":
		return op
	}
	return "other"
}

// register registers c on reg; when an equal collector is registered already, *into becomes that one.
func register[T prometheus.Collector](reg prometheus.Registerer, c T, into *T) error {
	err := reg.Register(c)
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if existing, ok := are.ExistingCollector.(T); ok {
			*into = existing
			return nil
		}
	}
	return err
}
