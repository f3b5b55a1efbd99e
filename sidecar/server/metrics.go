package server

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/podidentity/podidentity/api/identitytype"
	"github.com/podidentity/podidentity/internal/contract"
)

// Metrics are the sidecar's Prometheus metrics. Labels are bounded: identity is the namespace/name of an
// identity bound to the pod (or "none"), backend one of Backend's values, never a resource or a
// client-supplied value.
type Metrics struct {
	TokenRequests   *prometheus.CounterVec
	TokenDuration   *prometheus.HistogramVec
	UpstreamFetch   *prometheus.CounterVec
	Proxied         *prometheus.CounterVec
	RefusedPaths    prometheus.Counter
	BoundIdentities prometheus.Gauge
}

// NewMetrics creates the metrics and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		TokenRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podidentity_sidecar_token_requests_total",
			Help: "Token requests by identity, the backend that serves it (node, federated, service-principal; none when refused) and result (hit, miss, refused, error).",
		}, []string{"identity", "backend", "result"}),
		TokenDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "podidentity_sidecar_token_request_duration_seconds",
			Help:    "Time to answer a token request, by result.",
			Buckets: []float64{0.0001, 0.00025, 0.0005, 0.001, 0.005, 0.025, 0.1, 0.5, 1, 5, 15, 30},
		}, []string{"result"}),
		UpstreamFetch: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podidentity_sidecar_upstream_fetches_total",
			Help: "Token fetches from IMDS or Azure AD (after the cache), by identity, backend (node, federated, service-principal) and result (ok, error).",
		}, []string{"identity", "backend", "result"}),
		Proxied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podidentity_sidecar_proxied_requests_total",
			Help: "Requests for other IMDS paths, by path root and outcome (proxied, blocked).",
		}, []string{"root", "outcome"}),
		RefusedPaths: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "podidentity_sidecar_refused_paths_total",
			Help: "Requests refused because their path was a non-canonical variant (encoded, doubled slashes, backslashes, case).",
		}),
		BoundIdentities: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "podidentity_sidecar_bound_identities",
			Help: "Identities bound to the pod, from the identities file.",
		}),
	}
	reg.MustRegister(m.TokenRequests, m.TokenDuration, m.UpstreamFetch, m.Proxied, m.RefusedPaths, m.BoundIdentities)
	return m
}

// The values of the backend label and of the audit log's backend field.
const (
	BackendNode             = "node"              // a user-assigned managed identity from the node's IMDS
	BackendFederated        = "federated"         // workload identity federation at Azure AD
	BackendServicePrincipal = "service-principal" // a service principal's mounted secret or certificate at Azure AD
	BackendNone             = "none"              // a refused request: no identity chosen
)

// Backend names the backend that serves the identity's tokens.
func Backend(id contract.Identity) string {
	switch {
	case id.Federated():
		return BackendFederated
	case id.Type == identitytype.UserAssignedMSI:
		return BackendNode
	default:
		return BackendServicePrincipal
	}
}
