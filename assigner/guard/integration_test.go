package guard

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/assigner/azure"
	"github.com/podidentity/podidentity/assigner/controller"
	"github.com/podidentity/podidentity/assigner/desired"
	"github.com/podidentity/podidentity/internal/binding"
	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/test/emulators/arm"
	"github.com/podidentity/podidentity/test/toolbox/promtest"
	"github.com/podidentity/podidentity/test/toolbox/testenv"
	"github.com/podidentity/podidentity/test/toolbox/wait"
)

const (
	poolSS  = "/subscriptions/sub/resourceGroups/MC_rg/providers/Microsoft.Compute/virtualMachineScaleSets/idpool"
	plainSS = "/subscriptions/sub/resourceGroups/MC_rg/providers/Microsoft.Compute/virtualMachineScaleSets/general"
	reader  = "/subscriptions/sub/resourceGroups/ids/providers/Microsoft.ManagedIdentity/userAssignedIdentities/reader"
)

// TestGuardModeAssignerAndAudit runs the real assigner (controllers and audit) against a real kube-apiserver
// and the ARM emulator: with guard mode on, a pod bound to an identity on a node outside the pool causes no
// ARM write and gets a Warning Event, the pool's pod gets its identity, and a planted untrusted pod on the
// pool is reported by the audit (Event and metric).
func TestGuardModeAssignerAndAudit(t *testing.T) {
	env := testenv.Start(t, nil)
	ctrl.SetLogger(logr.Discard())
	c := env.Client
	ctx := context.Background()
	for _, ns := range []*corev1.Namespace{
		{ObjectMeta: metav1.ObjectMeta{Name: "podidentity-system"}},
		{ObjectMeta: metav1.ObjectMeta{Name: "apps", Labels: map[string]string{contract.NamespaceInjectionLabel: "enabled"}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "other"}},
		{ObjectMeta: metav1.ObjectMeta{Name: "monitoring"}},
	} {
		must(t, c.Create(ctx, ns))
	}
	srv := arm.New(t, arm.Options{})
	srv.AddVMSS(poolSS, false)
	srv.AddVMSS(plainSS, false)
	mkNode(t, c, "idpool-0", poolSS, true)
	mkNode(t, c, "general-0", plainSS, false)
	must(t, c.Create(ctx, &aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "reader"},
		Spec: aadv1.AzureIdentitySpec{Type: aadv1.UserAssignedMSI, ResourceID: reader, ClientID: arm.ClientIDOf(reader)}}))
	must(t, c.Create(ctx, &aadv1.AzureIdentityBinding{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "reader"},
		Spec: aadv1.AzureIdentityBindingSpec{AzureIdentity: "reader", Selector: "reader"}}))

	pool := &desired.Pool{Key: poolKey, Value: "identities"}
	rules := Rules{Pool: pool, InjectionLabel: contract.NamespaceInjectionLabel, TrustedNamespaces: []string{"kube-system"},
		TrustedServiceAccounts: []string{"monitoring/agent"}}
	reg := prometheus.NewRegistry()
	mgr, err := ctrl.NewManager(env.Config, manager.Options{Scheme: env.Scheme, Metrics: metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0", Controller: config.Controller{SkipNameValidation: ptr.To(true)}})
	must(t, err)
	armc := azure.NewARM(arm.Credential{}, azure.ARMOptions{Cloud: srv.Cloud(), Transport: srv.HTTPClient(), PollFrequency: 20 * time.Millisecond,
		Retry: policy.RetryOptions{MaxRetries: 1, RetryDelay: 10 * time.Millisecond, TryTimeout: 3 * time.Second}})
	mctx, cancel := context.WithCancel(ctx)
	must(t, controller.Setup(mctx, mgr, armc, controller.Options{Namespace: "podidentity-system", Debounce: 20 * time.Millisecond,
		Resync: time.Minute, Pool: pool, Registerer: prometheus.NewRegistry()}))
	// An hour between ticks: what the test sees comes from the first pass and from kicks (pod created or
	// scheduled), which must make reports prompt.
	must(t, Setup(mgr, rules, binding.Options{}, false, time.Hour, 100*time.Millisecond, reg))
	done := make(chan struct{})
	go func() { defer close(done); _ = mgr.Start(mctx) }()
	t.Cleanup(func() { cancel(); <-done })

	injectedPod(t, c, "apps", "on-pool", "idpool-0", "reader")
	injectedPod(t, c, "apps", "off-pool", "general-0", "reader")

	wait.For(t, 30*time.Second, 50*time.Millisecond, "the pool's scale set gets the identity", func() error {
		if _, ids := srv.Identities(poolSS); len(ids) != 1 || !strings.EqualFold(ids[0], reader) {
			return fmt.Errorf("pool identities %v", ids)
		}
		return nil
	})
	wait.For(t, 30*time.Second, 50*time.Millisecond, "the pod outside the pool gets a Warning Event", func() error {
		return hasEvent(c, "apps", "off-pool", ReasonOutsidePool, "node general-0 is outside the identity pool")
	})
	if n := srv.WritesTo(plainSS); n != 0 {
		t.Errorf("%d ARM writes to the scale set outside the pool; want none", n)
	}
	if _, ids := srv.Identities(plainSS); len(ids) != 0 {
		t.Errorf("identities attached outside the pool: %v", ids)
	}
	var aais aadv1.AzureAssignedIdentityList
	must(t, c.List(ctx, &aais))
	for _, a := range aais.Items {
		if a.Spec.Pod == "off-pool" {
			t.Errorf("AzureAssignedIdentity %s created for the pod outside the pool", a.Name)
		}
	}
	wait.For(t, 30*time.Second, 50*time.Millisecond, "the refused pod is counted", func() error {
		if v := promtest.Value(t, reg, "podidentity_guard_refused_pods", map[string]string{"node": ""}); v != 1 {
			return fmt.Errorf("podidentity_guard_refused_pods = %v", v)
		}
		return nil
	})

	// Planted on the pool: not injected, not trusted. Trusted ones beside it are not reported.
	plainPod(t, c, "other", "planted", "idpool-0", "")
	plainPod(t, c, "kube-system", "kube-proxy-x", "idpool-0", "")
	plainPod(t, c, "monitoring", "agent-x", "idpool-0", "agent")
	wait.For(t, 30*time.Second, 50*time.Millisecond, "the audit reports the planted pod", func() error {
		return hasEvent(c, "other", "planted", ReasonUntrustedPod, "namespace other is not labelled podidentity.io/injection=enabled")
	})
	wait.For(t, 30*time.Second, 50*time.Millisecond, "the gauge counts the planted pod on its node", func() error {
		if v := promtest.Value(t, reg, "podidentity_guard_untrusted_pods", map[string]string{"node": "idpool-0"}); v != 1 {
			return fmt.Errorf("podidentity_guard_untrusted_pods{node=idpool-0} = %v", v)
		}
		return nil
	})
	for _, p := range []struct{ ns, name string }{{"kube-system", "kube-proxy-x"}, {"monitoring", "agent-x"}, {"apps", "on-pool"}} {
		if err := hasEvent(c, p.ns, p.name, ReasonUntrustedPod, ""); err == nil {
			t.Errorf("%s/%s reported as untrusted", p.ns, p.name)
		}
	}

	// The node leaves the pool: its scale set loses the identity, and the pod is told why.
	var n corev1.Node
	must(t, c.Get(ctx, client.ObjectKey{Name: "idpool-0"}, &n))
	delete(n.Labels, poolKey)
	must(t, c.Update(ctx, &n))
	wait.For(t, 30*time.Second, 50*time.Millisecond, "the identity is detached from the scale set that left the pool", func() error {
		if _, ids := srv.Identities(poolSS); len(ids) != 0 {
			return fmt.Errorf("identities still attached: %v", ids)
		}
		return nil
	})
	// The audit runs on its next kick: a pod created anywhere.
	plainPod(t, c, "other", "kick", "general-0", "")
	wait.For(t, 30*time.Second, 50*time.Millisecond, "the pod on the node that left the pool gets a Warning Event", func() error {
		return hasEvent(c, "apps", "on-pool", ReasonOutsidePool, "node idpool-0 is outside the identity pool")
	})
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func mkNode(t *testing.T, c client.Client, name, ss string, inPool bool) {
	t.Helper()
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.NodeSpec{ProviderID: "azure://" + ss + "/virtualMachines/0"}}
	if inPool {
		n.Labels = map[string]string{poolKey: "identities"}
	}
	must(t, c.Create(context.Background(), n))
}

// injectedPod is a pod as the webhook leaves it (the webhook itself is not running here).
func injectedPod(t *testing.T, c client.Client, ns, name, node, selector string) {
	t.Helper()
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{aadv1.PodLabelBinding: selector},
		Annotations: map[string]string{contract.IdentitiesAnnotation: "[]"}},
		Spec: corev1.PodSpec{NodeName: node, InitContainers: []corev1.Container{{Name: contract.InitContainerName, Image: "init"}},
			Containers: []corev1.Container{{Name: "app", Image: "app"}}}}
	must(t, c.Create(context.Background(), p))
}

func plainPod(t *testing.T, c client.Client, ns, name, node, sa string) {
	t.Helper()
	if sa != "" {
		must(t, c.Create(context.Background(), &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: sa}}))
	}
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.PodSpec{NodeName: node, ServiceAccountName: sa, Containers: []corev1.Container{{Name: "app", Image: "app"}}}}
	must(t, c.Create(context.Background(), p))
}

func hasEvent(c client.Client, ns, pod, reason, fragment string) error {
	var l eventsv1.EventList
	if err := c.List(context.Background(), &l, client.InNamespace(ns)); err != nil {
		return err
	}
	for _, e := range l.Items {
		if e.Regarding.Kind == "Pod" && e.Regarding.Name == pod && e.Reason == reason && e.Type == corev1.EventTypeWarning && strings.Contains(e.Note, fragment) {
			return nil
		}
	}
	return fmt.Errorf("no %s Event on pod %s/%s containing %q among %d events", reason, ns, pod, fragment, len(l.Items))
}
