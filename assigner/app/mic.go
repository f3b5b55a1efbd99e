package app

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// DefaultMICLock is where AAD Pod Identity's MIC keeps its leader election record (its flags
// --leader-election-namespace and --leader-election-name, whose defaults these are). MIC 1.8 writes it as
// an Endpoints annotation; a Lease of the same name is read too.
const DefaultMICLock = "default/aad-pod-identity-mic"

// micSkew is added to MIC's lease duration before its record counts as stale, for clock skew between MIC's
// node and ours.
const micSkew = 15 * time.Second

// micRunning decides from MIC's leader election record whether MIC is running now: someone holds the record
// and renewed it within the lease duration (plus micSkew). A MIC that stepped down clears the holder.
func micRunning(rec *resourcelock.LeaderElectionRecord, now time.Time) bool {
	if rec == nil || rec.HolderIdentity == "" {
		return false
	}
	lease := time.Duration(rec.LeaseDurationSeconds) * time.Second
	return now.Before(rec.RenewTime.Add(lease + micSkew))
}

// micWatch tells the assigner's passes to hold while AAD Pod Identity's MIC runs: two controllers changing the
// identities of the same VMs and scale sets undo each other's work (MIC detaches what it did not assign).
// It reads MIC's record from the API server, at most every checkEvery, and says so in the log when the answer
// changes, in the readiness check, and in a gauge.
type micWatch struct {
	reader     client.Reader
	ns, name   string
	log        logr.Logger
	gauge      prometheus.Gauge
	checkEvery time.Duration
	now        func() time.Time

	mu      sync.Mutex
	checked time.Time
	last    error
}

func newMICWatch(reader client.Reader, lock string, log logr.Logger, reg prometheus.Registerer) (*micWatch, error) {
	ns, name, ok := strings.Cut(lock, "/")
	if !ok || ns == "" || name == "" {
		return nil, fmt.Errorf("--aad-pod-identity-mic-lock %q is not namespace/name: give MIC's --leader-election-namespace and --leader-election-name (default %s), or an empty value to skip the check", lock, DefaultMICLock)
	}
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "podidentity_assigner_aad_pod_identity_mic_running",
		Help: "1 while AAD Pod Identity's MIC holds its leader election record: the assigner then changes no VM, scale set or AzureAssignedIdentity.",
	})
	if reg != nil {
		if err := reg.Register(g); err != nil {
			return nil, err
		}
	}
	return &micWatch{reader: reader, ns: ns, name: name, log: log, gauge: g, checkEvery: 5 * time.Second, now: time.Now}, nil
}

// Check answers nil when MIC does not run, and an error saying what to do while it does or while the record
// cannot be read (the assigner must not act on a guess).
func (m *micWatch) Check(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	if !m.checked.IsZero() && now.Sub(m.checked) < m.checkEvery {
		return m.last
	}
	err := m.read(ctx, now)
	if (err == nil) != (m.last == nil) || m.checked.IsZero() {
		if err != nil {
			m.log.Error(err, "holding: no identity is attached or detached and no AzureAssignedIdentity written until this is resolved")
		} else {
			m.log.Info("AAD Pod Identity's MIC is not running; the assigner acts", "record", m.ns+"/"+m.name)
		}
	}
	m.checked, m.last = now, err
	if err != nil {
		m.gauge.Set(1)
	} else {
		m.gauge.Set(0)
	}
	return err
}

func (m *micWatch) read(ctx context.Context, now time.Time) error {
	key := client.ObjectKey{Namespace: m.ns, Name: m.name}
	var recs []*resourcelock.LeaderElectionRecord
	var ep corev1.Endpoints //nolint:staticcheck // MIC 1.8 keeps its record on an Endpoints object
	switch err := m.reader.Get(ctx, key, &ep); {
	case apierrors.IsNotFound(err):
	case err != nil:
		return m.unreadable("endpoints", err)
	default:
		if raw := ep.Annotations[resourcelock.LeaderElectionRecordAnnotationKey]; raw != "" {
			var rec resourcelock.LeaderElectionRecord
			if err := json.Unmarshal([]byte(raw), &rec); err != nil {
				return fmt.Errorf("AAD Pod Identity's MIC leader record on Endpoints %s is not readable (%w): if MIC is uninstalled, delete that Endpoints object", key, err)
			}
			recs = append(recs, &rec)
		}
	}
	var lease coordinationv1.Lease
	switch err := m.reader.Get(ctx, key, &lease); {
	case apierrors.IsNotFound(err):
	case err != nil:
		return m.unreadable("leases", err)
	default:
		recs = append(recs, resourcelock.LeaseSpecToLeaderElectionRecord(&lease.Spec))
	}
	for _, rec := range recs {
		if micRunning(rec, now) {
			return fmt.Errorf("AAD Pod Identity's MIC is running (%s holds its leader record %s, renewed %s ago): "+
				"two controllers must not change the identities of the same VMs and scale sets, so this assigner waits; "+
				"uninstall AAD Pod Identity (keep its CRDs and objects) as docs/migration.md says, and it starts by itself",
				rec.HolderIdentity, key, now.Sub(rec.RenewTime.Time).Round(time.Second))
		}
	}
	return nil
}

func (m *micWatch) unreadable(resource string, err error) error {
	return fmt.Errorf("cannot tell whether AAD Pod Identity's MIC is running: reading its leader record %s/%s (%s): %w; "+
		"grant the assigner get on endpoints and leases named %s in namespace %s (the chart does), "+
		"or start it with --aad-pod-identity-mic-lock= to skip the check once MIC is surely gone", m.ns, m.name, resource, err, m.name, m.ns)
}
