package controller

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zapcore"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/assigner/azure"
	"github.com/podidentity/podidentity/assigner/cachetrim"
	"github.com/podidentity/podidentity/assigner/podaudit"
	"github.com/podidentity/podidentity/internal/binding"
	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/test/emulators/arm"
	"github.com/podidentity/podidentity/test/toolbox/testenv"
	"github.com/podidentity/podidentity/test/toolbox/wait"
)

const ledgerNS = "podidentity-system"

func uami(name string) string {
	return "/subscriptions/sub/resourceGroups/identities/providers/Microsoft.ManagedIdentity/userAssignedIdentities/" + name
}

func ssID(name string) string {
	return "/subscriptions/sub/resourceGroups/MC_rg/providers/Microsoft.Compute/virtualMachineScaleSets/" + name
}

func vmID(name string) string {
	return "/subscriptions/sub/resourceGroups/MC_rg/providers/Microsoft.Compute/virtualMachines/" + name
}

// startEnv starts kube-apiserver and etcd and creates the ledger namespace.
func startEnv(t testing.TB) *testenv.Env { return startEnvWith(t, nil) }

// startEnvWith is startEnv with envtest settings of the caller's (nil: the defaults).
func startEnvWith(t testing.TB, te *envtest.Environment) *testenv.Env {
	env := testenv.Start(t, te)
	if err := env.Client.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ledgerNS}}); err != nil {
		t.Fatal(err)
	}
	if os.Getenv("ASSIGNER_TEST_LOGS") != "" {
		ctrl.SetLogger(zap.New(zap.UseDevMode(true)))
	} else {
		ctrl.SetLogger(logr.Discard())
	}
	return env
}

// testLogger is the log of the assigners one test runs: printed as it comes with ASSIGNER_TEST_LOGS set;
// otherwise its last lines are kept and printed only when the test fails, so that a failure that shows only
// under load (in CI) carries the passes that led to it.
func testLogger(t testing.TB) logr.Logger {
	if os.Getenv("ASSIGNER_TEST_LOGS") != "" {
		return zap.New(zap.UseDevMode(true))
	}
	tail := &logTail{max: 3000}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("the assigner's log, last %d lines (all of it: ASSIGNER_TEST_LOGS=1):\n%s", tail.max, tail.String())
		}
	})
	return zap.New(zap.WriteTo(tail), func(o *zap.Options) { o.Level = zapcore.DebugLevel })
}

// logTail keeps the last max lines written to it.
type logTail struct {
	mu    sync.Mutex
	max   int
	lines []string
}

func (l *logTail) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, strings.Split(strings.TrimRight(string(p), "\n"), "\n")...)
	if over := len(l.lines) - l.max; over > 0 {
		l.lines = append(l.lines[:0], l.lines[over:]...)
	}
	return len(p), nil
}

func (l *logTail) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

func armClient(srv *arm.Server) *azure.ARM {
	return azure.NewARM(arm.Credential{}, azure.ARMOptions{Cloud: srv.Cloud(), Transport: srv.HTTPClient(), PollFrequency: 20 * time.Millisecond,
		Retry: policy.RetryOptions{MaxRetries: 1, RetryDelay: 10 * time.Millisecond, MaxRetryDelay: 50 * time.Millisecond, TryTimeout: 3 * time.Second}})
}

func testOptions() Options {
	return Options{Namespace: ledgerNS, Debounce: 50 * time.Millisecond, Resync: time.Minute, IsolationTTL: time.Minute,
		BaseBackoff: 20 * time.Millisecond, MaxBackoff: 300 * time.Millisecond, BusyBackoff: 20 * time.Millisecond, BusyMaxBackoff: 300 * time.Millisecond,
		ARMTimeout: 5 * time.Minute}
}

// startAssigner runs a manager with the controllers until the returned stop is called (or the test ends).
func startAssigner(t testing.TB, env *testenv.Env, c azure.Client, opts Options) (stop func()) {
	t.Helper()
	return startManager(t, env, c, opts, nil)
}

// startAssignerAndAudit is startAssigner with the pod audit too (as the binary runs them), its passes kicked
// by changes at most every minGap; it returns the registry of the audit's metrics.
func startAssignerAndAudit(t testing.TB, env *testenv.Env, c azure.Client, opts Options, minGap time.Duration) (*prometheus.Registry, func()) {
	t.Helper()
	reg := prometheus.NewRegistry()
	stop := startManager(t, env, c, opts, func(mgr ctrl.Manager) error {
		_, err := podaudit.Setup(mgr, podaudit.Options{Injection: opts.Injection, Binding: opts.Binding, Interval: time.Hour,
			MinGap: minGap, Registerer: reg})
		return err
	})
	return reg, stop
}

func startManager(t testing.TB, env *testenv.Env, c azure.Client, opts Options, more func(ctrl.Manager) error) (stop func()) {
	t.Helper()
	return startManagerWith(t, env, c, opts, nil, more)
}

// startManagerWith is startManager with the manager's options changed by tweak first (when not nil).
func startManagerWith(t testing.TB, env *testenv.Env, c azure.Client, opts Options, tweak func(*manager.Options), more func(ctrl.Manager) error) (stop func()) {
	t.Helper()
	mo := manager.Options{
		Scheme:                 env.Scheme,
		Cache:                  cachetrim.Options(), // as the binary runs
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		Controller:             config.Controller{SkipNameValidation: ptr.To(true)},
		Logger:                 testLogger(t),
	}
	if tweak != nil {
		tweak(&mo)
	}
	mgr, err := ctrl.NewManager(env.Config, mo)
	if err != nil {
		t.Fatal(err)
	}
	if opts.Registerer == nil {
		opts.Registerer = prometheus.NewRegistry()
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := Setup(ctx, mgr, c, opts); err != nil {
		t.Fatal(err)
	}
	if more != nil {
		if err := more(mgr); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := mgr.Start(ctx); err != nil {
			t.Errorf("manager: %v", err)
		}
	}()
	stopped := false
	stop = func() {
		if !stopped {
			stopped = true
			cancel()
			<-done
		}
	}
	t.Cleanup(stop)
	return stop
}

func mkNode(t testing.TB, c client.Client, name, providerID string) {
	t.Helper()
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.NodeSpec{ProviderID: providerID}}
	if err := c.Create(context.Background(), n); err != nil {
		t.Fatal(err)
	}
}

func instanceOf(ss string, i int) string { return fmt.Sprintf("azure://%s/virtualMachines/%d", ss, i) }

// mkNamespace creates a namespace opted in to injection (the assigner attaches identities only for pods the
// webhook injected there).
func mkNamespace(t testing.TB, c client.Client, name string) {
	t.Helper()
	mkNamespaceLabels(t, c, name, map[string]string{contract.NamespaceInjectionLabel: "enabled"})
}

func mkNamespaceLabels(t testing.TB, c client.Client, name string, labels map[string]string) {
	t.Helper()
	if err := c.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}

func mkIdentity(t testing.TB, c client.Client, ns, name, resourceID string) *aadv1.AzureIdentity {
	t.Helper()
	id := &aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: aadv1.AzureIdentitySpec{Type: aadv1.UserAssignedMSI, ResourceID: resourceID, ClientID: arm.ClientIDOf(resourceID)}}
	if err := c.Create(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	return id
}

func mkBinding(t testing.TB, c client.Client, ns, name, identity, selector string) *aadv1.AzureIdentityBinding {
	t.Helper()
	b := &aadv1.AzureIdentityBinding{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: aadv1.AzureIdentityBindingSpec{AzureIdentity: identity, Selector: selector}}
	if err := c.Create(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	return b
}

// mkPod creates a pod as the webhook leaves it when it injects it: with the identities annotation (the
// bindings' current answer, as the webhook computes it, unless annotations give one). The webhook itself does
// not run here, nor do its containers matter to the assigner.
func mkPod(t testing.TB, c client.Client, ns, name, node, selector string, annotations map[string]string) *corev1.Pod {
	t.Helper()
	if _, ok := annotations[contract.IdentitiesAnnotation]; !ok {
		all := map[string]string{contract.IdentitiesAnnotation: webhookAnnotation(t, c, ns, selector)}
		for k, v := range annotations {
			all[k] = v
		}
		annotations = all
	}
	return mkUninjectedPod(t, c, ns, name, node, selector, annotations)
}

// webhookAnnotation is the identities annotation the webhook would give a pod of namespace ns labelled with
// selector.
func webhookAnnotation(t testing.TB, c client.Client, ns, selector string) string {
	t.Helper()
	var bl aadv1.AzureIdentityBindingList
	var il aadv1.AzureIdentityList
	for _, l := range []client.ObjectList{&bl, &il} {
		if err := c.List(context.Background(), l); err != nil {
			t.Fatal(err)
		}
	}
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Labels: map[string]string{aadv1.PodLabelBinding: selector}}}
	ids, _ := binding.Resolve(p, bl.Items, il.Items, binding.Options{})
	return binding.Encode(ids)
}

// mkUninjectedPod creates a pod the webhook did not inject (unless annotations say otherwise).
func mkUninjectedPod(t testing.TB, c client.Client, ns, name, node, selector string, annotations map[string]string) *corev1.Pod {
	t.Helper()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{aadv1.PodLabelBinding: selector}, Annotations: annotations},
		Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "app", Image: "app"}}},
	}
	if err := c.Create(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	return p
}

// deletePod removes a pod at once (there is no kubelet to finish it gracefully).
func deletePod(t testing.TB, c client.Client, ns, name string) {
	t.Helper()
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	if err := c.Delete(context.Background(), p, client.GracePeriodSeconds(0)); err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
}

func eventually(t testing.TB, timeout time.Duration, what string, check func() error) {
	t.Helper()
	wait.For(t, timeout, 25*time.Millisecond, what, check)
}

// eventuallyEvery polls check every interval (benchmarks poll slowly so as not to load the apiserver they
// measure).
func eventuallyEvery(t testing.TB, timeout, interval time.Duration, what string, check func() error) {
	t.Helper()
	wait.For(t, timeout, interval, what, check)
}

// azureHas checks a resource's identities: exactly want (any order), and the system-assigned identity.
func azureHas(srv *arm.Server, id string, system bool, want ...string) error {
	gotSystem, got := srv.Identities(id)
	sort.Strings(want)
	if gotSystem != system || strings.Join(got, ",") != strings.Join(want, ",") {
		return fmt.Errorf("%s: system=%v users=%v, want system=%v users=%v", id, gotSystem, got, system, want)
	}
	return nil
}

// assignedStates returns namespace/name -> status of every AzureAssignedIdentity.
func assignedStates(c client.Client) (map[string]string, error) {
	var l aadv1.AzureAssignedIdentityList
	if err := c.List(context.Background(), &l); err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, a := range l.Items {
		out[a.Namespace+"/"+a.Name] = a.Status.Status
	}
	return out, nil
}

func expectAssigned(c client.Client, want map[string]string) error {
	got, err := assignedStates(c)
	if err != nil {
		return err
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		return fmt.Errorf("AzureAssignedIdentities = %v, want %v", got, want)
	}
	return nil
}
