package controller

import (
	"context"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/client"
	crmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	aadv1 "github.com/podidentity/podidentity/api/v1"
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
	waiting            *prometheus.GaugeVec
	isolated           *prometheus.GaugeVec
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
		waiting: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "podidentity_assigner_resources_waiting",
			Help: "VMs and scale sets whose identity changes wait (backoff, another operation, throttling, missing rights), by reason: " +
				"ResourceNotAuthorized, ResourceNotFound, ResourceBusy, ResourceBlocked, Throttled, ARMError.",
		}, []string{"reason"}),
		isolated: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "podidentity_assigner_isolated_identities",
			Help: "Identities left out of a VM's or scale set's changes because ARM refused them (counted per resource), by reason: " +
				"IdentityNotAuthorized, IdentityNotFound.",
		}, []string{"reason"}),
	}
	for _, c := range []prometheus.Collector{m.armRequests, m.patchDuration, m.passDuration, m.identityRejections, m.driftRepairs, m.assignedObjects, m.annotationUpdates, m.unattached, m.waiting, m.isolated} {
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

// Age buckets of AzureAssignedIdentity objects: an assignment Created for more than 5 minutes is what an
// operator alerts on (the identity is stuck unattached); the buckets stay few so the labels stay bounded.
const (
	ageUnder5m = "under_5m"
	age5mTo1h  = "5m_to_1h"
	ageOver1h  = "over_1h"
)

// assignmentStatuses are the statuses the gauge reports; any other value (an object written by hand) is "other".
var assignmentStatuses = []string{aadv1.AssignedIDCreated, aadv1.AssignedIDAssigned, aadv1.AssignedIDUnassigned, "other"}

// assignmentsCollector counts the AzureAssignedIdentity objects by status and age when scraped, from the
// informer cache, so the gauge is the objects' state and needs no bookkeeping of its own.
type assignmentsCollector struct {
	reader client.Reader
	now    func() time.Time
	desc   *prometheus.Desc
}

func newAssignmentsCollector(reader client.Reader) *assignmentsCollector {
	return &assignmentsCollector{reader: reader, now: time.Now, desc: prometheus.NewDesc(
		"podidentity_assigner_assigned_identities",
		"AzureAssignedIdentity objects by status (Created: the identity is not attached yet, see the annotation podidentity.io/assignment-reason; "+
			"Assigned; Unassigned: being detached; other) and age since creation (under_5m, 5m_to_1h, over_1h).",
		[]string{"status", "age"}, nil)}
}

func (a *assignmentsCollector) Describe(ch chan<- *prometheus.Desc) { ch <- a.desc }

func (a *assignmentsCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var l aadv1.AzureAssignedIdentityList
	if err := a.reader.List(ctx, &l, client.UnsafeDisableDeepCopy); err != nil { // counted, not kept
		return // the cache has not synced yet: no series rather than zeros that would read as "none stuck"
	}
	counts := countAssignments(l.Items, a.now())
	for _, status := range assignmentStatuses {
		for _, age := range []string{ageUnder5m, age5mTo1h, ageOver1h} {
			ch <- prometheus.MustNewConstMetric(a.desc, prometheus.GaugeValue, float64(counts[status+"/"+age]), status, age)
		}
	}
}

// countAssignments counts objects by "status/age".
func countAssignments(objs []aadv1.AzureAssignedIdentity, now time.Time) map[string]int {
	out := map[string]int{}
	for i := range objs {
		status := objs[i].Status.Status
		if !slices.Contains(assignmentStatuses[:3], status) {
			status = "other"
		}
		age := ageUnder5m
		switch d := now.Sub(objs[i].CreationTimestamp.Time); {
		case d >= time.Hour:
			age = ageOver1h
		case d >= 5*time.Minute:
			age = age5mTo1h
		}
		out[status+"/"+age]++
	}
	return out
}
