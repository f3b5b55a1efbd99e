package controller

import (
	"github.com/prometheus/client_golang/prometheus"
	crmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/podidentity/podidentity/assigner/azure"
)

type metrics struct {
	armRequests        *prometheus.CounterVec
	patchDuration      *prometheus.HistogramVec
	passDuration       prometheus.Histogram
	identityRejections *prometheus.CounterVec
	driftRepairs       prometheus.Counter
	assignedObjects    *prometheus.CounterVec
	annotationUpdates  prometheus.Counter
	unattached         *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	if reg == nil {
		reg = crmetrics.Registry
	}
	m := &metrics{
		armRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podidentity_assigner_arm_requests_total",
			Help: "ARM requests by operation (get, patch) and result (success or failure kind).",
		}, []string{"operation", "result"}),
		patchDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "podidentity_assigner_arm_patch_duration_seconds",
			Help:    "Time from sending an identity PATCH to its long-running operation's end, by resource kind.",
			Buckets: []float64{0.1, 0.5, 1, 5, 15, 30, 60, 120, 300, 600, 1200},
		}, []string{"kind"}),
		passDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "podidentity_assigner_resource_pass_duration_seconds",
			Help:    "Duration of one reconcile pass over one VM or scale set, ARM calls included.",
			Buckets: prometheus.ExponentialBuckets(0.01, 4, 10),
		}),
		identityRejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podidentity_assigner_identity_rejections_total",
			Help: "Identities ARM refused, by error code (LinkedAuthorizationFailed, FailedIdentityOperation).",
		}, []string{"code"}),
		driftRepairs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "podidentity_assigner_drift_repairs_total",
			Help: "Identities found missing from a resource on a periodic read and re-added.",
		}),
		assignedObjects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podidentity_assigner_assigned_identity_objects_total",
			Help: "AzureAssignedIdentity objects created and deleted.",
		}, []string{"action"}),
		annotationUpdates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "podidentity_assigner_pod_annotation_updates_total",
			Help: "Pods whose podidentity.io/identities annotation was rewritten after a binding or identity change.",
		}),
		unattached: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "podidentity_assigner_unattached_assignments",
			Help: "AzureAssignedIdentity objects whose identity is not attached, by reason (the annotation podidentity.io/assignment-reason): " +
				"IdentityNotAuthorized, IdentityNotFound, ResourceNotAuthorized, ResourceNotFound, ResourceBusy, ResourceBlocked, Throttled, ARMError.",
		}, []string{"reason"}),
	}
	for _, c := range []prometheus.Collector{m.armRequests, m.patchDuration, m.passDuration, m.identityRejections, m.driftRepairs, m.assignedObjects, m.annotationUpdates, m.unattached} {
		// A second registration (a restarted manager in the same process) fails; the collectors of the
		// first keep being served, which is all a restart in tests needs.
		_ = reg.Register(c)
	}
	return m
}

func (m *metrics) armRequest(op string, err error) {
	result := "success"
	if err != nil {
		result = azure.Classify(err).Kind.String()
	}
	m.armRequests.WithLabelValues(op, result).Inc()
}
