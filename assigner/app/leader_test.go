package app

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/test/emulators/arm"
	"github.com/podidentity/podidentity/test/emulators/imds"
	"github.com/podidentity/podidentity/test/toolbox/testenv"
	"github.com/podidentity/podidentity/test/toolbox/wait"
)

// childEnv makes the test binary run the assigner (Run with its command line) instead of the tests, so that
// a test can start several real assigner processes: each has its own controller-runtime globals, its own
// signal handling and its own trust store (SSL_CERT_FILE), as replicas in a cluster do.
const childEnv = "PODIDENTITY_ASSIGNER_TEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		os.Exit(runChild(os.Args[1:]))
	}
	os.Exit(m.Run())
}

// runChild is the assigner's main, with the test binary as its executable.
func runChild(args []string) int {
	f, err := ParseFlags(args)
	if err != nil {
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := Run(ctx, f); err != nil {
		fmt.Fprintln(os.Stderr, "podidentity-assigner:", err)
		return 1
	}
	return 0
}

// syncBuffer collects a child's output.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// assignerProcess is a running assigner replica.
type assignerProcess struct {
	name string
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan error
}

func startAssignerProcess(t *testing.T, name, caFile string, args ...string) *assignerProcess {
	t.Helper()
	p := &assignerProcess{name: name, out: &syncBuffer{}, done: make(chan error, 1)}
	p.cmd = exec.Command(os.Args[0], args...)
	env := []string{childEnv + "=1", "SSL_CERT_FILE=" + caFile, "POD_NAMESPACE=default"}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "AZURE_") && !strings.HasPrefix(kv, "SSL_CERT_") && !strings.HasPrefix(kv, "KUBECONFIG=") {
			env = append(env, kv)
		}
	}
	p.cmd.Env = env
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting assigner %s: %v", name, err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		var exit error // how it ended: stopped by the test (stop checks that), or killed here
		select {
		case exit = <-p.done:
		default:
			_ = p.cmd.Process.Kill()
			exit = <-p.done
		}
		if t.Failed() || os.Getenv("ASSIGNER_TEST_LOGS") != "" {
			t.Logf("assigner %s output (exit: %v):\n%s", name, exit, p.out.String())
		}
	})
	return p
}

// stop sends SIGTERM (what the kubelet sends) and waits for a clean exit.
func (p *assignerProcess) stop(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.done:
		p.done <- err // for the cleanup
		if err != nil {
			t.Fatalf("assigner %s exited with %v", p.name, err)
		}
	case <-time.After(time.Minute):
		t.Fatalf("assigner %s did not stop within a minute of SIGTERM", p.name)
	}
}

func (p *assignerProcess) logged(s string) bool { return strings.Contains(p.out.String(), s) }

// TestLeaderElectionHandOver runs two assigner processes (Run, as main runs it) against one real
// kube-apiserver, one emulated Azure AD and one ARM emulator. Each replica authenticates as its own
// application, so ARM tells who wrote: the first replica leads and does all the work while the second
// waits; SIGTERM makes the leader release the Lease (ReleaseOnCancel); the second takes over, attaches
// the identities of new pods and detaches the one the first attached (its record lives in the ledger
// ConfigMap, not in the process). ARM never sees two PATCHes in flight on one resource, and never a
// request of the standby while the leader ran.
func TestLeaderElectionHandOver(t *testing.T) {
	env := testenv.Start(t, nil)
	c := env.Client
	ctx := context.Background()
	dir := t.TempDir()
	cert, certPath := newCertificate(t, dir, "replica-b")
	const appA, appB = secretAppID, certAppID
	fc := newFakeCloud(t, arm.Options{Latency: 300 * time.Millisecond},
		imds.App{TenantID: fakeTenant, ClientID: appA, Secret: appSecret},
		imds.App{TenantID: fakeTenant, ClientID: appB, Certificate: cert})
	ss1, ss2 := scaleSetID("pool1"), scaleSetID("pool2")
	kubelet := uamiID("kubelet")
	fc.ARM.AddVMSS(ss1, true, kubelet)
	fc.ARM.AddVMSS(ss2, false, kubelet)

	for _, o := range []client.Object{
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "pool1-0"}, Spec: corev1.NodeSpec{ProviderID: "azure://" + ss1 + "/virtualMachines/0"}},
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "pool2-0"}, Spec: corev1.NodeSpec{ProviderID: "azure://" + ss2 + "/virtualMachines/0"}},
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "apps", Labels: map[string]string{contract.NamespaceInjectionLabel: "enabled"}}},
	} {
		if err := c.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range []string{"id1", "id2"} {
		mustCreate(t, c, &aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: id},
			Spec: aadv1.AzureIdentitySpec{Type: aadv1.UserAssignedMSI, ResourceID: uamiID(id), ClientID: arm.ClientIDOf(uamiID(id))}})
		mustCreate(t, c, &aadv1.AzureIdentityBinding{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: id},
			Spec: aadv1.AzureIdentityBindingSpec{AzureIdentity: id, Selector: id}})
	}

	kubeconfig := kubeconfigFor(t, env)
	caFile := fc.CAFile(t)
	replicaArgs := func(azureJSON string) []string {
		return []string{"--kubeconfig", kubeconfig, "--namespace", "default", "--leader-election-namespace", "default",
			"--metrics-bind-address=0", "--health-probe-bind-address=0", "--azure-config", azureJSON,
			"--arm-endpoint", fc.ARM.URL(), "--arm-audience", fakeAudience, "--aad-authority", fc.AADURL() + "/",
			"--poll-frequency=50ms", "--debounce=100ms"}
	}
	azA := writeAzureJSON(t, dir, "a", map[string]any{"tenantId": fakeTenant, "aadClientId": appA, "aadClientSecret": appSecret, "userAssignedIdentityID": kubelet})
	azB := writeAzureJSON(t, dir, "b", map[string]any{"tenantId": fakeTenant, "aadClientId": appB, "aadClientCertPath": certPath, "userAssignedIdentityID": kubelet})

	// Replica A starts alone and leads.
	a := startAssignerProcess(t, "a", caFile, replicaArgs(azA)...)
	waitFor(t, time.Minute, "replica a leads", func() error {
		if !a.logged("Successfully acquired lease") {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	holderA := leaseHolder(t, c)
	if holderA == "" {
		t.Fatal("replica a logged that it leads, but the Lease has no holder")
	}
	mustCreate(t, c, testPod("p1", "pool1-0", "id1"))
	waitFor(t, time.Minute, "p1's identity attached by the leader", func() error {
		return converged(c, fc, map[string]string{"p1": aadv1.AssignedIDAssigned},
			map[string][]string{ss1: {kubelet, uamiID("id1")}, ss2: {kubelet}})
	})

	// Replica B starts and waits for the Lease; A keeps doing the work.
	b := startAssignerProcess(t, "b", caFile, replicaArgs(azB)...)
	waitFor(t, time.Minute, "replica b contends for the lease", func() error {
		if !b.logged("Attempting to acquire leader lease") {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	mustCreate(t, c, testPod("p2", "pool2-0", "id2"))
	waitFor(t, time.Minute, "p2's identity attached by the leader", func() error {
		return converged(c, fc, map[string]string{"p1": aadv1.AssignedIDAssigned, "p2": aadv1.AssignedIDAssigned},
			map[string][]string{ss1: {kubelet, uamiID("id1")}, ss2: {kubelet, uamiID("id2")}})
	})
	if n := fc.PatchesBy()[appB]; n != 0 || b.logged("Successfully acquired lease") {
		t.Fatalf("the standby acted while the leader ran: %d PATCHes", n)
	}

	// SIGTERM to the leader: it releases the Lease on its way out.
	stopAt := time.Now()
	a.stop(t)
	aExited := time.Now()
	if h := leaseHolder(t, c); h == holderA {
		t.Fatalf("replica a exited but the Lease is still held by it (%q): it was not released on cancel", h)
	}
	waitFor(t, time.Minute, "replica b takes over", func() error {
		if !b.logged("Successfully acquired lease") {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	tookOver := time.Since(stopAt)

	// New work for the new leader: a pod on pool1 with id2, and p1 gone (its id1 was attached by A).
	mustCreate(t, c, testPod("p3", "pool1-0", "id2"))
	if err := c.Delete(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "p1"}}, client.GracePeriodSeconds(0)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Minute, "the new leader converges", func() error {
		return converged(c, fc, map[string]string{"p2": aadv1.AssignedIDAssigned, "p3": aadv1.AssignedIDAssigned},
			map[string][]string{ss1: {kubelet, uamiID("id2")}, ss2: {kubelet, uamiID("id2")}})
	})
	converged := time.Since(stopAt)
	b.stop(t)

	// Who wrote when: A only while it ran, B only after A was told to stop; never two PATCHes at once.
	for _, call := range fc.Calls() {
		switch call.AppID {
		case appA:
			if call.At.After(aExited) {
				t.Errorf("replica a called ARM after it exited: %s %s", call.Method, call.Path)
			}
		case appB:
			if call.At.Before(stopAt) {
				t.Errorf("standby replica b called ARM while a led: %s %s", call.Method, call.Path)
			}
		}
	}
	patches := fc.PatchesBy()
	if patches[appA] == 0 || patches[appB] == 0 {
		t.Errorf("PATCHes by replica: a %d, b %d; both should have worked in turn", patches[appA], patches[appB])
	}
	if n := fc.ARM.MaxConcurrentWrites(""); n != 1 {
		t.Errorf("at most %d PATCHes were in flight on one resource at once, want exactly 1", n)
	}
	t.Logf("hand-over: b led %v after SIGTERM to a; the new work converged %v after that SIGTERM; PATCHes a=%d b=%d",
		tookOver.Round(time.Millisecond), converged.Round(time.Millisecond), patches[appA], patches[appB])
}

// leaseHolder is the holder of the assigner's Lease ("" when released).
func leaseHolder(t *testing.T, c client.Client) string {
	t.Helper()
	var lease coordinationv1.Lease
	if err := c.Get(context.Background(), client.ObjectKey{Namespace: "default", Name: "podidentity-assigner"}, &lease); err != nil {
		t.Fatal(err)
	}
	if lease.Spec.HolderIdentity == nil {
		return ""
	}
	return *lease.Spec.HolderIdentity
}

func scaleSetID(name string) string {
	return "/subscriptions/sub/resourceGroups/MC_rg/providers/Microsoft.Compute/virtualMachineScaleSets/" + name
}

func uamiID(name string) string {
	return "/subscriptions/sub/resourceGroups/identities/providers/Microsoft.ManagedIdentity/userAssignedIdentities/" + name
}

// testPod is a bound pod as the webhook leaves it in an opted-in namespace (the annotation's value does not
// matter to attachment; the assigner rewrites it).
func testPod(name, node, selector string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: name, Labels: map[string]string{aadv1.PodLabelBinding: selector},
			Annotations: map[string]string{contract.IdentitiesAnnotation: "[]"}},
		Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "app", Image: "app"}}},
	}
}

func mustCreate(t *testing.T, c client.Client, o client.Object) {
	t.Helper()
	if err := c.Create(context.Background(), o); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}

func writeAzureJSON(t *testing.T, dir, name string, v map[string]any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, name+"-azure.json")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// converged checks the AzureAssignedIdentity statuses by pod (exactly these pods) and the user-assigned
// identities of each scale set (exactly these).
func converged(c client.Client, fc *fakeCloud, pods map[string]string, azure map[string][]string) error {
	var l aadv1.AzureAssignedIdentityList
	if err := c.List(context.Background(), &l); err != nil {
		return err
	}
	got := map[string]string{}
	for _, a := range l.Items {
		got[a.Spec.Pod] = a.Status.Status
	}
	if fmt.Sprint(got) != fmt.Sprint(pods) {
		return fmt.Errorf("AzureAssignedIdentity statuses by pod %v, want %v", got, pods)
	}
	for id, want := range azure {
		_, users := fc.ARM.Identities(id)
		want = append([]string(nil), want...)
		sort.Strings(want)
		if strings.Join(users, ",") != strings.Join(want, ",") {
			return fmt.Errorf("%s has %v, want %v", id, users, want)
		}
	}
	return nil
}

func waitFor(t *testing.T, timeout time.Duration, what string, check func() error) {
	t.Helper()
	wait.For(t, timeout, 50*time.Millisecond, what, check)
}
