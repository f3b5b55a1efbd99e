package app

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/podidentity/podidentity/test/toolbox/testenv"
)

func TestMICRunning(t *testing.T) {
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	rec := func(holder string, renewedAgo time.Duration, leaseSeconds int) *resourcelock.LeaderElectionRecord {
		return &resourcelock.LeaderElectionRecord{HolderIdentity: holder, LeaseDurationSeconds: leaseSeconds, RenewTime: metav1.NewTime(now.Add(-renewedAgo))}
	}
	for _, tc := range []struct {
		name string
		rec  *resourcelock.LeaderElectionRecord
		want bool
	}{
		{"no record", nil, false},
		{"renewed just now", rec("mic-7d9f-abc", 0, 15), true},
		{"renewed within the lease", rec("mic-7d9f-abc", 14*time.Second, 15), true},
		{"lease passed, within the skew allowance", rec("mic-7d9f-abc", 29*time.Second, 15), true},
		{"stale: MIC uninstalled a while ago (its record stays behind)", rec("mic-7d9f-abc", 31*time.Second, 15), false},
		{"stepped down: holder cleared", rec("", 0, 15), false},
		{"renew time in the future (clock skew)", rec("mic-7d9f-abc", -10*time.Second, 15), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := micRunning(tc.rec, now); got != tc.want {
				t.Fatalf("micRunning = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestMICWatch reads MIC's leader record from a real API server: as MIC 1.8 writes it (an Endpoints
// annotation), as a client-go elector holds a Lease, and without the right to read it.
func TestMICWatch(t *testing.T) {
	env := testenv.Start(t, nil)
	c := env.Client
	ctx := context.Background()
	reg := prometheus.NewRegistry()
	w, err := newMICWatch(env.Client, DefaultMICLock, logr.Discard(), reg)
	if err != nil {
		t.Fatal(err)
	}
	w.checkEvery = 0
	expect := func(step, contains string) {
		t.Helper()
		err := w.Check(ctx)
		gauge := testutil.ToFloat64(w.gauge)
		switch {
		case contains == "" && err != nil:
			t.Fatalf("%s: Check = %v, want nil", step, err)
		case contains == "" && gauge != 0:
			t.Fatalf("%s: gauge %v, want 0", step, gauge)
		case contains != "" && (err == nil || !strings.Contains(err.Error(), contains)):
			t.Fatalf("%s: Check = %v, want an error containing %q", step, err, contains)
		case contains != "" && gauge != 1:
			t.Fatalf("%s: gauge %v, want 1", step, gauge)
		}
	}
	expect("no record", "")

	// MIC 1.8: an Endpoints object carrying the record in an annotation.
	record := func(holder string, renewed time.Time) map[string]string {
		b, _ := json.Marshal(resourcelock.LeaderElectionRecord{HolderIdentity: holder, LeaseDurationSeconds: 15,
			AcquireTime: metav1.NewTime(renewed.Add(-time.Hour)), RenewTime: metav1.NewTime(renewed)})
		return map[string]string{resourcelock.LeaderElectionRecordAnnotationKey: string(b)}
	}
	ep := &corev1.Endpoints{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "aad-pod-identity-mic", Annotations: record("mic-5c8d-x7", time.Now())}} //nolint:staticcheck // MIC keeps its leader record on an Endpoints object, deprecated since Kubernetes v1.33
	if err := c.Create(ctx, ep); err != nil {
		t.Fatal(err)
	}
	expect("MIC 1.8 renewing its Endpoints record", "mic-5c8d-x7 holds its leader record default/aad-pod-identity-mic")
	ep.Annotations = record("mic-5c8d-x7", time.Now().Add(-time.Minute))
	if err := c.Update(ctx, ep); err != nil {
		t.Fatal(err)
	}
	expect("MIC uninstalled a minute ago, its Endpoints left behind", "")

	// A client-go elector holding a Lease of that name (what a newer lock would write).
	cs := kubernetes.NewForConfigOrDie(env.Config)
	lock, err := resourcelock.New(resourcelock.LeasesResourceLock, "default", "aad-pod-identity-mic", cs.CoreV1(), cs.CoordinationV1(),
		resourcelock.ResourceLockConfig{Identity: "mic-lease-holder"})
	if err != nil {
		t.Fatal(err)
	}
	electCtx, stopElector := context.WithCancel(ctx)
	leading := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		leaderelection.RunOrDie(electCtx, leaderelection.LeaderElectionConfig{
			Lock: lock, LeaseDuration: 15 * time.Second, RenewDeadline: 10 * time.Second, RetryPeriod: 2 * time.Second,
			ReleaseOnCancel: true,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(context.Context) { close(leading) },
				OnStoppedLeading: func() {},
			},
		})
	}()
	select {
	case <-leading:
	case <-time.After(30 * time.Second):
		t.Fatal("the elector did not acquire the Lease")
	}
	expect("an elector holding the Lease", "mic-lease-holder holds")
	stopElector()
	<-done
	expect("the elector released the Lease on its way out", "")

	// Without the right to read the record the assigner must not guess.
	cfg := rest.CopyConfig(env.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: "no-rights"}
	nobody, err := client.New(cfg, client.Options{Scheme: env.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	w2, err := newMICWatch(nobody, DefaultMICLock, logr.Discard(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := w2.Check(ctx); err == nil || !strings.Contains(err.Error(), "cannot tell whether AAD Pod Identity's MIC is running") ||
		!strings.Contains(err.Error(), "grant the assigner get on endpoints and leases") {
		t.Fatalf("Check without rights = %v, want the error that says which rights to grant", err)
	}

	if _, err := newMICWatch(c, "aad-pod-identity-mic", logr.Discard(), nil); err == nil || !strings.Contains(err.Error(), "is not namespace/name") {
		t.Fatalf("a lock without namespace: %v, want a clear error", err)
	}
}
