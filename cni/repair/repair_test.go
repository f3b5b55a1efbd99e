package repair_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/events"

	"github.com/podidentity/podidentity/cni/cgroups"
	"github.com/podidentity/podidentity/cni/internal/cnitest"
	"github.com/podidentity/podidentity/cni/kubeapi"
	"github.com/podidentity/podidentity/cni/repair"
	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/internal/imdspolicy"
	"github.com/podidentity/podidentity/internal/redirect"
	"github.com/podidentity/podidentity/test/toolbox/nstest"
	"github.com/podidentity/podidentity/test/toolbox/promtest"
	"github.com/podidentity/podidentity/test/toolbox/testenv"
)

const (
	sidecarImage = "ghcr.io/podidentity/podidentity-sidecar:test"
	imds         = "169.254.169.254"
	node         = "node-1"
	helperEnv    = "PODIDENTITY_REPAIR_TEST_HELPER"
)

// TestMain makes the test binary a helper process when helperEnv is set: "dial <addr>" connects and prints
// "ok <banner>" or "error <why>"; "sleep" waits to be killed. The tests start it in a network namespace and a
// cgroup of their choosing, because a socket belongs to the cgroup of the process that creates it.
func TestMain(m *testing.M) {
	switch arg := os.Getenv(helperEnv); {
	case arg == "sleep":
		time.Sleep(time.Hour)
	case strings.HasPrefix(arg, "dial "):
		dial(strings.TrimPrefix(arg, "dial "))
	default:
		os.Exit(m.Run())
	}
}

func dial(addr string) { fmt.Println(nstest.DialBanner(addr, 2*time.Second)) }

// helper runs the test binary as a helper in ns and cg and returns its output line (arg "sleep": starts it
// and returns "", killed when the test ends).
func helper(t *testing.T, ns *nstest.NS, cg *nstest.Cgroup, arg string) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), helperEnv+"="+arg)
	cg.Into(cmd)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := ns.Start(cmd); err != nil {
		t.Fatalf("starting helper %q: %v", arg, err)
	}
	if arg == "sleep" {
		t.Cleanup(func() { _ = cmd.Process.Signal(syscall.SIGKILL); _ = cmd.Wait() })
		return ""
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("helper %q: %v: %s", arg, err, out.String())
	}
	return strings.TrimSpace(out.String())
}

// fakePod is a pod as the kubelet would run it: an API object, and on the "node" a cgroup per container below
// a pod cgroup in the kubelet's layout, with a sandbox process holding the pod's network namespace, which a
// veth joins to a "node" namespace holding 169.254.169.254.
type fakePod struct {
	obj        *corev1.Pod
	link       *nstest.Link
	layout     *nstest.CgroupTree
	podRel     string // the pod cgroup below the layout's base
	systemd    bool
	containers map[string]string // container name -> runtime id
	cgroups    map[string]*nstest.Cgroup
}

func (p *fakePod) containerDir(id string) string {
	if p.systemd {
		return "cri-containerd-" + id + ".scope"
	}
	return id
}

// start makes the container's cgroup (a new id each call: a restart) and, for the sandbox, its process.
func (p *fakePod) start(t *testing.T, name string) {
	t.Helper()
	id := cnitest.ContainerID(t)
	p.containers[name] = id
	p.cgroups[name] = p.layout.Mkdir(p.podRel + "/" + p.containerDir(id))
	if name == "sandbox" {
		helper(t, p.link.Pod, p.cgroups[name], "sleep")
	}
}

type harness struct {
	cs  kubernetes.Interface
	rec *repair.Reconciler
	reg *prometheus.Registry
	lay *nstest.CgroupTree
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	cnitest.RequireRoot(t)
	host, err := repair.HostNetns()
	if err != nil {
		t.Fatal(err)
	}
	env := testenv.Start(t, nil)
	admin := kubernetes.NewForConfigOrDie(env.Config)
	token := cnitest.ServiceAccount(t, admin, "podidentity-system", "podidentity-node", cnitest.RBACRules())
	agentCfg := cnitest.AsToken(env.Config, token)
	agent := kubernetes.NewForConfigOrDie(agentCfg)
	cnitest.WaitAuthorized(t, agent, "apps")
	for _, ns := range []*corev1.Namespace{
		{ObjectMeta: metav1.ObjectMeta{Name: "apps", Labels: map[string]string{contract.NamespaceInjectionLabel: "enabled"}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "plain"}},
	} {
		if _, err := admin.CoreV1().Namespaces().Create(context.Background(), ns, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	lookup, err := kubeapi.New(agentCfg, "the agent's service account")
	if err != nil {
		t.Fatal(err)
	}
	// Events go through the agent's own credentials, as in production: the test proves the RBAC rules.
	broadcaster := events.NewBroadcaster(&events.EventSinkImpl{Interface: agent.EventsV1()})
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); broadcaster.Shutdown() })
	if err := broadcaster.StartRecordingToSinkWithContext(ctx); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	lay := nstest.NewCgroupTree(t)
	return &harness{
		cs:  admin,
		reg: reg,
		lay: lay,
		rec: &repair.Reconciler{
			Policy: imdspolicy.Policy{InjectionLabel: contract.NamespaceInjectionLabel, SidecarImage: sidecarImage,
				ExemptNamespaces: []string{"kube-system"}, Scope: imdspolicy.ScopeAll},
			Redirect:   redirect.DefaultConfig(),
			CgroupRoot: lay.Root,
			Lookup:     lookup,
			Events:     broadcaster.NewRecorder(scheme.Scheme, "podidentity-node"),
			Metrics:    repair.NewMetrics(reg),
			Log:        testr.New(t),
			LookupTTL:  time.Millisecond,
			HostNetns:  host,
		},
	}
}

// newPod creates the pod object and its node side: sandbox running, containers' cgroups made, statuses set
// (phase Running, every container running with its runtime id).
func (h *harness) newPod(t *testing.T, namespace, name, image string, systemd bool) *fakePod {
	t.Helper()
	spec := corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "app", Image: "app:test"}}}
	var annotations map[string]string
	if image != "" {
		always := corev1.ContainerRestartPolicyAlways
		spec.InitContainers = []corev1.Container{
			{Name: contract.InitContainerName, Image: "init:test"},
			{Name: contract.SidecarContainerName, Image: image, RestartPolicy: &always},
		}
		annotations = map[string]string{contract.IdentitiesAnnotation: "[]"}
	}
	obj, err := h.cs.CoreV1().Pods(namespace).Create(context.Background(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace, Annotations: annotations}, Spec: spec,
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p := &fakePod{obj: obj, link: nstest.NewLink(t, imds), layout: h.lay, systemd: systemd,
		containers: map[string]string{}, cgroups: map[string]*nstest.Cgroup{}}
	uid := string(obj.UID)
	if systemd {
		u := strings.ReplaceAll(uid, "-", "_")
		p.podRel = "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + u + ".slice"
	} else {
		p.podRel = "kubepods/besteffort/pod" + uid
	}
	nstest.Serve(t, p.link.Node, imds+":80", "node")
	nstest.Serve(t, p.link.Pod, fmt.Sprintf("127.0.0.1:%d", contract.SidecarPort), "sidecar")
	p.start(t, "sandbox")
	p.start(t, "app")
	if image != "" {
		p.start(t, contract.SidecarContainerName)
	}
	h.setStatus(t, p)
	return p
}

// setStatus reports every container as running with its current runtime id.
func (h *harness) setStatus(t *testing.T, p *fakePod) {
	t.Helper()
	running := corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.Now()}}
	st := corev1.PodStatus{Phase: corev1.PodRunning,
		ContainerStatuses: []corev1.ContainerStatus{{Name: "app", Image: "app:test", ContainerID: "containerd://" + p.containers["app"], State: running, Ready: true}}}
	if id, ok := p.containers[contract.SidecarContainerName]; ok {
		st.InitContainerStatuses = []corev1.ContainerStatus{
			{Name: contract.InitContainerName, Image: "init:test", ContainerID: "containerd://" + cnitest.ContainerID(t),
				State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 0}}},
			{Name: contract.SidecarContainerName, Image: p.obj.Spec.InitContainers[1].Image, ContainerID: "containerd://" + id, State: running, Ready: true},
		}
	}
	pod, err := h.cs.CoreV1().Pods(p.obj.Namespace).Get(context.Background(), p.obj.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod.Status = st
	if p.obj, err = h.cs.CoreV1().Pods(pod.Namespace).UpdateStatus(context.Background(), pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func kernel(t *testing.T, ns *nstest.NS) *redirect.Kernel {
	t.Helper()
	k, err := redirect.NewKernel(ns.FD())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k.Close() })
	return k
}

func liveTable(t *testing.T, ns *nstest.NS) (redirect.Ruleset, bool) {
	t.Helper()
	live, found, err := kernel(t, ns).Live()
	if err != nil {
		t.Fatal(err)
	}
	return live, found
}

// waitEvent waits for an Event with reason on the pod and returns its note.
func (h *harness) waitEvent(t *testing.T, p *fakePod, reason string) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		list, err := h.cs.EventsV1().Events(p.obj.Namespace).List(context.Background(), metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range list.Items {
			if e.Reason == reason && e.Regarding.UID == p.obj.UID {
				if e.Type != corev1.EventTypeWarning && reason != repair.EventExempted {
					t.Errorf("event %s is %s, want Warning", reason, e.Type)
				}
				return e.Note
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s Event on %s/%s", reason, p.obj.Namespace, p.obj.Name)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func reconcile(t *testing.T, h *harness, p *fakePod) repair.Outcome {
	t.Helper()
	out, err := h.rec.Reconcile(context.Background(), p.obj)
	if err != nil {
		t.Fatalf("Reconcile(%s/%s): %v", p.obj.Namespace, p.obj.Name, err)
	}
	return out
}

// TestRepairAndExemption: pods whose sandbox came up before the plugin was chained have no table; the agent
// finds them through their cgroups, fences or redirects them in place, and exempts the genuine sidecar's
// container cgroup (again after a restart), never an imitation's.
func TestRepairAndExemption(t *testing.T) {
	h := newHarness(t)
	cfg := redirect.DefaultConfig()

	t.Run("plain pod without a table is fenced in place (cgroupfs layout)", func(t *testing.T) {
		p := h.newPod(t, "plain", "late", "", false)
		if got := helper(t, p.link.Pod, p.cgroups["app"], "dial "+imds+":80"); got != "ok node" {
			t.Fatalf("before the repair the pod reaches %q; the test network is broken", got)
		}
		out := reconcile(t, h, p)
		if out.Decision.Action != imdspolicy.Fence || out.Step.Kind != imdspolicy.StepRepair || out.Step.Was != imdspolicy.TableMissing {
			t.Fatalf("outcome = %+v, want a fence repair of a missing table", out)
		}
		if live, found := liveTable(t, p.link.Pod); !found || redirect.Render(live) != redirect.Render(redirect.Fence(cfg)) {
			t.Fatalf("after the repair the table is:\n%s", redirect.Render(live))
		}
		if got := helper(t, p.link.Pod, p.cgroups["app"], "dial "+imds+":80"); !strings.HasPrefix(got, "error") {
			t.Errorf("after the repair the pod reaches %q", got)
		}
		note := h.waitEvent(t, p, repair.EventRepaired)
		for _, want := range []string{"had no podidentity table", "fence", "Tokens it obtained before stay valid"} {
			if !strings.Contains(note, want) {
				t.Errorf("the %s Event does not say %q: %s", repair.EventRepaired, want, note)
			}
		}
		if got := promtest.Value(t, h.reg, "podidentity_node_repairs_total", map[string]string{"action": "fence", "result": "repaired"}); got != 1 {
			t.Errorf("repairs{fence,repaired} = %v, want 1", got)
		}
		if s := h.rec.StateOf(p.obj.UID); s != repair.StateFenced {
			t.Errorf("state = %q", s)
		}
		if out := reconcile(t, h, p); out.Step.Kind != imdspolicy.StepNone {
			t.Errorf("a second reconcile = %+v, want nothing to do", out.Step)
		}
	})

	t.Run("injected pod: exemption of the sidecar's cgroup, again after a restart (systemd layout)", func(t *testing.T) {
		p := h.newPod(t, "apps", "injected", sidecarImage, true)
		// The plugin's ADD installed the redirect without exemption; the sidecar then started.
		if _, err := kernel(t, p.link.Pod).Apply(redirect.Desired(cfg)); err != nil {
			t.Fatal(err)
		}
		if got := helper(t, p.link.Pod, p.cgroups[contract.SidecarContainerName], "dial "+imds+":80"); got != "ok sidecar" {
			t.Fatalf("before the exemption the sidecar reaches %q, want its own port (the loop the sidecar's readiness waits out)", got)
		}
		out := reconcile(t, h, p)
		if out.Decision.Action != imdspolicy.Redirect || out.Step.Kind != imdspolicy.StepExempt || out.Sidecar == nil {
			t.Fatalf("outcome = %+v, want an exemption", out)
		}
		want, err := cgroups.Of(h.lay.Root, p.cgroups[contract.SidecarContainerName].Path)
		if err != nil {
			t.Fatal(err)
		}
		live, _ := liveTable(t, p.link.Pod)
		if ex := redirect.ExemptionOf(live); ex.Cgroup != want {
			t.Fatalf("the table exempts %v, want the sidecar container's cgroup %+v:\n%s", ex, want, redirect.Render(live))
		}
		t.Logf("exempted %+v (%s)", want, p.cgroups[contract.SidecarContainerName].Path)
		if got := helper(t, p.link.Pod, p.cgroups[contract.SidecarContainerName], "dial "+imds+":80"); got != "ok node" {
			t.Errorf("the sidecar's cgroup reaches %q, want the node's IMDS", got)
		}
		for _, c := range []string{"app", "sandbox"} {
			if got := helper(t, p.link.Pod, p.cgroups[c], "dial "+imds+":80"); got != "ok sidecar" {
				t.Errorf("the %s container's cgroup reaches %q, want the sidecar's port", c, got)
			}
		}
		h.waitEvent(t, p, repair.EventExempted)

		// The sidecar restarts: a new container id, a new cgroup.
		old := p.cgroups[contract.SidecarContainerName]
		p.start(t, contract.SidecarContainerName)
		h.setStatus(t, p)
		if out := reconcile(t, h, p); out.Step.Kind != imdspolicy.StepExempt {
			t.Fatalf("after the restart: %+v, want a new exemption", out.Step)
		}
		if got := helper(t, p.link.Pod, p.cgroups[contract.SidecarContainerName], "dial "+imds+":80"); got != "ok node" {
			t.Errorf("the restarted sidecar reaches %q", got)
		}
		if got := helper(t, p.link.Pod, old, "dial "+imds+":80"); got != "ok sidecar" {
			t.Errorf("the old sidecar cgroup still reaches %q, want it redirected", got)
		}
		if got := promtest.Value(t, h.reg, "podidentity_node_exemptions_total", map[string]string{"result": "installed"}); got != 2 {
			t.Errorf("exemptions{installed} = %v, want 2", got)
		}
		if out := reconcile(t, h, p); out.Step.Kind != imdspolicy.StepNone {
			t.Errorf("a reconcile with nothing new = %+v", out.Step)
		}
	})

	t.Run("injected pod without any table: repaired with the exemption in one step", func(t *testing.T) {
		p := h.newPod(t, "apps", "injected-late", sidecarImage, false)
		out := reconcile(t, h, p)
		if out.Step.Kind != imdspolicy.StepRepair || out.Sidecar == nil {
			t.Fatalf("outcome = %+v", out)
		}
		if got := helper(t, p.link.Pod, p.cgroups["app"], "dial "+imds+":80"); got != "ok sidecar" {
			t.Errorf("the app reaches %q, want the sidecar's port", got)
		}
		if got := helper(t, p.link.Pod, p.cgroups[contract.SidecarContainerName], "dial "+imds+":80"); got != "ok node" {
			t.Errorf("the sidecar reaches %q", got)
		}
		if note := h.waitEvent(t, p, repair.EventRepaired); !strings.Contains(note, "redirect to its token sidecar is installed now") {
			t.Errorf("Event: %s", note)
		}
	})

	t.Run("imitation: a podidentity-sidecar of another image is fenced, never exempted", func(t *testing.T) {
		p := h.newPod(t, "apps", "imitation", "attacker/sidecar:1", false)
		// Even with a redirect in place (say, from a hand-written table), the agent replaces it by the fence.
		if _, err := kernel(t, p.link.Pod).Apply(redirect.Desired(cfg)); err != nil {
			t.Fatal(err)
		}
		out := reconcile(t, h, p)
		if out.Decision.Action != imdspolicy.Fence || out.Decision.Reason != imdspolicy.ReasonImitation || out.Sidecar != nil {
			t.Fatalf("outcome = %+v, want the fence of an imitation", out)
		}
		if got := helper(t, p.link.Pod, p.cgroups[contract.SidecarContainerName], "dial "+imds+":80"); !strings.HasPrefix(got, "error") {
			t.Errorf("the fake sidecar reaches %q", got)
		}
	})

	t.Run("states gauge", func(t *testing.T) {
		if got := promtest.Value(t, h.reg, "podidentity_node_pods", map[string]string{"state": "fenced"}); got != 2 {
			t.Errorf("pods{fenced} = %v, want 2", got)
		}
		if got := promtest.Value(t, h.reg, "podidentity_node_pods", map[string]string{"state": "redirected"}); got != 2 {
			t.Errorf("pods{redirected} = %v, want 2", got)
		}
	})
}

// TestRepairFailsLoudly: a running pod whose cgroup cannot be found is unprotected as far as the agent can
// tell: metric, Warning Event, retry.
func TestRepairFailsLoudly(t *testing.T) {
	h := newHarness(t)
	obj, err := h.cs.CoreV1().Pods("plain").Create(context.Background(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "nowhere", Namespace: "plain"},
		Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "app", Image: "app:test"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pending, err := h.rec.Reconcile(context.Background(), obj)
	if err != nil || pending.Skipped != "no sandbox" {
		t.Errorf("a pending pod without a sandbox: %+v, %v; want it skipped", pending, err)
	}
	creating := obj.DeepCopy()
	creating.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReadyToStartContainers, Status: corev1.ConditionFalse}}
	if out, err := h.rec.Reconcile(context.Background(), creating); err != nil || out.Skipped != "sandbox not ready yet" {
		t.Errorf("a pod whose sandbox is being created: %+v, %v; want it left to the plugin's ADD", out, err)
	}
	obj.Status.Phase = corev1.PodRunning
	if obj, err = h.cs.CoreV1().Pods("plain").UpdateStatus(context.Background(), obj, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.rec.Reconcile(context.Background(), obj); err == nil || !strings.Contains(err.Error(), "no cgroup of pod UID") {
		t.Fatalf("Reconcile = %v, want the missing cgroup named", err)
	}
	if s := h.rec.StateOf(obj.UID); s != repair.StateUnprotected {
		t.Errorf("state = %q, want unprotected", s)
	}
	note := h.waitEvent(t, &fakePod{obj: obj}, repair.EventRepairFailed)
	if !strings.Contains(note, "should be fenced off the IMDS address") || !strings.Contains(note, "--cgroup-root") {
		t.Errorf("Event: %s", note)
	}
}

// TestControllerFollowsPodEvents: with the informer and no resync to speak of, a pod running before the
// agent is repaired on the first pass, and a sidecar restart reported in the pod's status is exempted
// within seconds.
func TestControllerFollowsPodEvents(t *testing.T) {
	h := newHarness(t)
	early := h.newPod(t, "plain", "early", "", false)
	injected := h.newPod(t, "apps", "injected", sidecarImage, false)
	if _, err := kernel(t, injected.link.Pod).Apply(redirect.Desired(redirect.DefaultConfig())); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	synced := make(chan struct{})
	ctl := &repair.Controller{Reconciler: h.rec, Client: h.cs, Node: node, Resync: time.Hour, Workers: 2}
	go ctl.Run(ctx, synced)
	<-synced

	waitTable := func(what string, ns *nstest.NS, ok func(redirect.Ruleset) bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			live, found := liveTable(t, ns)
			if found && ok(live) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s; table:\n%s", what, redirect.Render(live))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitTable("the early pod's fence", early.link.Pod, func(rs redirect.Ruleset) bool {
		return redirect.Render(rs) == redirect.Render(redirect.Fence(redirect.DefaultConfig()))
	})
	first, _ := cgroups.Of(h.lay.Root, injected.cgroups[contract.SidecarContainerName].Path)
	waitTable("the first exemption", injected.link.Pod, func(rs redirect.Ruleset) bool { return redirect.ExemptionOf(rs).Cgroup == first })

	injected.start(t, contract.SidecarContainerName)
	started := time.Now()
	h.setStatus(t, injected)
	second, _ := cgroups.Of(h.lay.Root, injected.cgroups[contract.SidecarContainerName].Path)
	waitTable("the exemption of the restarted sidecar", injected.link.Pod, func(rs redirect.Ruleset) bool { return redirect.ExemptionOf(rs).Cgroup == second })
	t.Logf("re-exempted %v after the status update", time.Since(started).Round(time.Millisecond))
}
