package admission

import (
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
	duration   prometheus.Histogram
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
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "podidentity_webhook_admission_duration_seconds",
			Help:    "Time to decide one admission, from request decoded to response built.",
			Buckets: []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5},
		}),
	}
	for _, c := range []prometheus.Collector{m.admissions, m.injected, m.skipped, m.denied, m.liveReads, m.duration} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
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
