package imdspolicy_test

import (
	"net/netip"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/internal/imdspolicy"
	"github.com/podidentity/podidentity/internal/redirect"
)

const sidecarImage = "ghcr.io/podidentity/podidentity-sidecar:v1"

func pol(scope imdspolicy.Scope) imdspolicy.Policy {
	return imdspolicy.Policy{
		InjectionLabel:   contract.NamespaceInjectionLabel,
		SidecarImage:     sidecarImage,
		ExemptNamespaces: []string{"kube-system", "podidentity-system"},
		Scope:            scope,
	}
}

func namespace(name string, labels map[string]string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
}

var (
	optedIn    = namespace("apps", map[string]string{contract.NamespaceInjectionLabel: "enabled"})
	disabled   = namespace("apps", map[string]string{contract.NamespaceInjectionLabel: "disabled"})
	notOptedIn = namespace("apps", nil)
	otherLabel = namespace("apps", map[string]string{"other.io/injection": "enabled"})
)

type podOpt func(*corev1.Pod)

func newPod(opts ...podOpt) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "app", Namespace: "apps", Labels: map[string]string{"app": "web"}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app:1"}}},
	}
	for _, o := range opts {
		o(p)
	}
	return p
}

func inNamespace(ns string) podOpt { return func(p *corev1.Pod) { p.Namespace = ns } }
func annotated(p *corev1.Pod) {
	p.Annotations = map[string]string{contract.IdentitiesAnnotation: `[{"name":"id"}]`}
}
func nativeSidecar(image string) podOpt {
	return func(p *corev1.Pod) {
		always := corev1.ContainerRestartPolicyAlways
		p.Spec.InitContainers = append(p.Spec.InitContainers,
			corev1.Container{Name: contract.InitContainerName, Image: "init:1"},
			corev1.Container{Name: contract.SidecarContainerName, Image: image, RestartPolicy: &always})
	}
}
func classicSidecar(image string) podOpt {
	return func(p *corev1.Pod) {
		p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: contract.SidecarContainerName, Image: image})
	}
}
func hostNetwork(p *corev1.Pod) { p.Spec.HostNetwork = true }
func labelled(k, v string) podOpt {
	return func(p *corev1.Pod) { p.Labels[k] = v }
}

func exception(ns, name string, labels map[string]string) aadv1.AzurePodIdentityException {
	return aadv1.AzurePodIdentityException{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec:       aadv1.AzurePodIdentityExceptionSpec{PodLabels: labels},
	}
}

func TestDecide(t *testing.T) {
	injected := []podOpt{annotated, nativeSidecar(sidecarImage)}
	webException := []aadv1.AzurePodIdentityException{exception("apps", "web", map[string]string{"app": "web"})}
	cases := []struct {
		name       string
		scope      imdspolicy.Scope
		pod        *corev1.Pod
		ns         *corev1.Namespace
		exceptions []aadv1.AzurePodIdentityException
		want       imdspolicy.Action
		reason     imdspolicy.Reason
		detail     string // a fragment of Detail
	}{
		{name: "injected, native sidecar", pod: newPod(injected...), ns: optedIn, want: imdspolicy.Redirect, reason: imdspolicy.ReasonInjected},
		{name: "injected, classic sidecar", pod: newPod(annotated, classicSidecar(sidecarImage)), ns: optedIn,
			want: imdspolicy.Redirect, reason: imdspolicy.ReasonInjected},
		{name: "injected with scope opted-in", scope: imdspolicy.ScopeOptedIn, pod: newPod(injected...), ns: optedIn,
			want: imdspolicy.Redirect, reason: imdspolicy.ReasonInjected},
		{name: "plain pod of an opted-in namespace (no binding, opted out)", pod: newPod(), ns: optedIn,
			want: imdspolicy.Fence, reason: imdspolicy.ReasonNotInjected},
		{name: "plain pod of another namespace", pod: newPod(), ns: notOptedIn, want: imdspolicy.Fence, reason: imdspolicy.ReasonNotInjected},
		{name: "plain pod of another namespace, scope opted-in", scope: imdspolicy.ScopeOptedIn, pod: newPod(), ns: notOptedIn,
			want: imdspolicy.None, reason: imdspolicy.ReasonOutOfScope},
		{name: "plain pod of an opted-in namespace, scope opted-in", scope: imdspolicy.ScopeOptedIn, pod: newPod(), ns: optedIn,
			want: imdspolicy.Fence, reason: imdspolicy.ReasonNotInjected},
		{name: "injection label with another value", pod: newPod(injected...), ns: disabled,
			want: imdspolicy.Fence, reason: imdspolicy.ReasonImitation, detail: "not opted in"},
		{name: "another label key is not the injection label", pod: newPod(injected...), ns: otherLabel,
			want: imdspolicy.Fence, reason: imdspolicy.ReasonImitation, detail: "not opted in"},
		{name: "sidecar with another image", pod: newPod(annotated, nativeSidecar("evil/sidecar:1")), ns: optedIn,
			want: imdspolicy.Fence, reason: imdspolicy.ReasonImitation, detail: `image "evil/sidecar:1"`},
		{name: "sidecar image differing only by tag", pod: newPod(annotated, classicSidecar(sidecarImage+"x")), ns: optedIn,
			want: imdspolicy.Fence, reason: imdspolicy.ReasonImitation, detail: "not the configured sidecar image"},
		{name: "sidecar without the annotation", pod: newPod(nativeSidecar(sidecarImage)), ns: optedIn,
			want: imdspolicy.Fence, reason: imdspolicy.ReasonImitation, detail: "without annotation"},
		{name: "annotation without a sidecar", pod: newPod(annotated), ns: optedIn,
			want: imdspolicy.Fence, reason: imdspolicy.ReasonImitation, detail: "without a podidentity-sidecar"},
		{name: "genuine-looking pod in a namespace that is not opted in", pod: newPod(injected...), ns: notOptedIn,
			want: imdspolicy.Fence, reason: imdspolicy.ReasonImitation},
		{name: "imitation with scope opted-in outside opted-in namespaces", scope: imdspolicy.ScopeOptedIn,
			pod: newPod(injected...), ns: notOptedIn, want: imdspolicy.None, reason: imdspolicy.ReasonOutOfScope},
		{name: "excepted pod", pod: newPod(), ns: optedIn, exceptions: webException,
			want: imdspolicy.None, reason: imdspolicy.ReasonException, detail: "web"},
		{name: "excepted pod of a namespace that is not opted in", pod: newPod(), ns: notOptedIn, exceptions: webException,
			want: imdspolicy.None, reason: imdspolicy.ReasonException},
		{name: "exception of another namespace does not apply", pod: newPod(), ns: optedIn,
			exceptions: []aadv1.AzurePodIdentityException{exception("other", "web", map[string]string{"app": "web"})},
			want:       imdspolicy.Fence, reason: imdspolicy.ReasonNotInjected},
		{name: "exception with other labels does not apply", pod: newPod(), ns: optedIn,
			exceptions: []aadv1.AzurePodIdentityException{exception("apps", "db", map[string]string{"app": "db"})},
			want:       imdspolicy.Fence, reason: imdspolicy.ReasonNotInjected},
		{name: "first matching exception by name", pod: newPod(labelled("tier", "front")), ns: optedIn,
			exceptions: []aadv1.AzurePodIdentityException{
				exception("apps", "zz", map[string]string{"app": "web"}),
				exception("apps", "aa", map[string]string{"tier": "front"}),
			}, want: imdspolicy.None, reason: imdspolicy.ReasonException, detail: "aa"},
		{name: "injected and excepted keeps the redirect", pod: newPod(injected...), ns: optedIn, exceptions: webException,
			want: imdspolicy.Redirect, reason: imdspolicy.ReasonInjected},
		{name: "exempt namespace", pod: newPod(inNamespace("kube-system")), ns: nil,
			want: imdspolicy.None, reason: imdspolicy.ReasonExemptNamespace, detail: "kube-system"},
		{name: "exempt namespace wins over an imitation", pod: newPod(inNamespace("podidentity-system"), annotated), ns: nil,
			want: imdspolicy.None, reason: imdspolicy.ReasonExemptNamespace},
		{name: "hostNetwork pod", pod: newPod(hostNetwork), ns: notOptedIn, want: imdspolicy.None, reason: imdspolicy.ReasonHostNetwork},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			scope := tc.scope
			if scope == "" {
				scope = imdspolicy.ScopeAll
			}
			got := imdspolicy.Decide(pol(scope), tc.pod, tc.ns, tc.exceptions)
			if got.Action != tc.want || got.Reason != tc.reason {
				t.Errorf("Decide = %v, want %s (%s)", got, tc.want, tc.reason)
			}
			if !strings.Contains(got.Detail, tc.detail) {
				t.Errorf("Detail = %q, want it to contain %q", got.Detail, tc.detail)
			}
		})
	}
}

func TestDecideNotAPod(t *testing.T) {
	if d := imdspolicy.DecideNotAPod(pol(imdspolicy.ScopeAll)); d.Action != imdspolicy.Fence || d.Reason != imdspolicy.ReasonNotAPod {
		t.Errorf("scope all: %v, want fence (not-a-pod)", d)
	}
	if d := imdspolicy.DecideNotAPod(pol(imdspolicy.ScopeOptedIn)); d.Action != imdspolicy.None {
		t.Errorf("scope opted-in: %v, want none", d)
	}
}

func TestPolicyValidate(t *testing.T) {
	for _, tc := range []struct {
		name    string
		edit    func(*imdspolicy.Policy)
		mention string
	}{
		{"valid", func(*imdspolicy.Policy) {}, ""},
		{"no injection label", func(p *imdspolicy.Policy) { p.InjectionLabel = "" }, "injection label"},
		{"no sidecar image", func(p *imdspolicy.Policy) { p.SidecarImage = "" }, "--sidecar-image"},
		{"bad scope", func(p *imdspolicy.Policy) { p.Scope = "some" }, `use "all"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := pol(imdspolicy.ScopeAll)
			tc.edit(&p)
			err := p.Validate()
			if tc.mention == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.mention) {
				t.Errorf("Validate = %v, want an error mentioning %q", err, tc.mention)
			}
		})
	}
}

func TestSidecarContainerID(t *testing.T) {
	running := corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}
	waiting := corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff"}}
	for _, tc := range []struct {
		name   string
		status corev1.PodStatus
		want   string
	}{
		{"native sidecar running", corev1.PodStatus{InitContainerStatuses: []corev1.ContainerStatus{
			{Name: contract.InitContainerName, ContainerID: "containerd://init"},
			{Name: contract.SidecarContainerName, ContainerID: "containerd://abc", State: running},
		}}, "abc"},
		{"classic sidecar running", corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{
			{Name: "app", ContainerID: "containerd://app", State: running},
			{Name: contract.SidecarContainerName, ContainerID: "cri-o://def", State: running},
		}}, "def"},
		{"sidecar waiting after a crash", corev1.PodStatus{InitContainerStatuses: []corev1.ContainerStatus{
			{Name: contract.SidecarContainerName, ContainerID: "containerd://old", State: waiting},
		}}, ""},
		{"sidecar not created yet", corev1.PodStatus{}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := imdspolicy.SidecarContainerID(&corev1.Pod{Status: tc.status}); got != tc.want {
				t.Errorf("SidecarContainerID = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestNodeUID(t *testing.T) {
	api := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{UID: "0c6b8d2e-1f2a-4b3c-9d4e-5f6a7b8c9d0e"}}
	if got := imdspolicy.NodeUID(api); got != "0c6b8d2e-1f2a-4b3c-9d4e-5f6a7b8c9d0e" {
		t.Errorf("NodeUID = %q", got)
	}
	mirror := api.DeepCopy()
	mirror.Annotations = map[string]string{imdspolicy.MirrorAnnotation: "0f1e2d3c4b5a69788796a5b4c3d2e1f0"}
	if got := imdspolicy.NodeUID(mirror); got != "0f1e2d3c4b5a69788796a5b4c3d2e1f0" {
		t.Errorf("NodeUID of a mirror pod = %q, want the static pod's", got)
	}
}

func TestAssessAndPlan(t *testing.T) {
	cfg := redirect.DefaultConfig()
	sidecar := redirect.Cgroup{ID: 4242, Level: 4}
	other := redirect.Cgroup{ID: 777, Level: 4}
	withEx := func(cg redirect.Cgroup) redirect.Ruleset {
		return redirect.Desired(cfg.WithExemption(redirect.Exemption{Cgroup: cg}))
	}
	stale := cfg
	stale.SidecarPort = 9999
	staleFence := cfg
	staleFence.IMDSAddress = netip.MustParseAddr("169.254.169.253")
	type table struct {
		rs    redirect.Ruleset
		found bool
	}
	none := table{}
	present := func(rs redirect.Ruleset) table { return table{rs, true} }
	cases := []struct {
		name      string
		action    imdspolicy.Action
		live      table
		sidecar   *redirect.Cgroup
		wantState imdspolicy.TableState
		wantKind  imdspolicy.StepKind
		wantTable redirect.Ruleset // when the step applies one
	}{
		{"fence, missing: repaired", imdspolicy.Fence, none, nil, imdspolicy.TableMissing, imdspolicy.StepRepair, redirect.Fence(cfg)},
		{"fence, in place", imdspolicy.Fence, present(redirect.Fence(cfg)), nil, imdspolicy.TableOK, imdspolicy.StepNone, redirect.Ruleset{}},
		{"fence where a redirect is: replaced", imdspolicy.Fence, present(withEx(sidecar)), nil, imdspolicy.TableWrong, imdspolicy.StepRepair, redirect.Fence(cfg)},
		{"fence of an older config", imdspolicy.Fence, present(redirect.Fence(staleFence)), nil, imdspolicy.TableWrong, imdspolicy.StepRepair, redirect.Fence(cfg)},
		{"redirect, missing, sidecar not running", imdspolicy.Redirect, none, nil, imdspolicy.TableMissing, imdspolicy.StepRepair, redirect.Desired(cfg)},
		{"redirect, missing, sidecar running: repaired with the exemption", imdspolicy.Redirect, none, &sidecar,
			imdspolicy.TableMissing, imdspolicy.StepRepair, withEx(sidecar)},
		{"redirect without exemption, sidecar not running", imdspolicy.Redirect, present(redirect.Desired(cfg)), nil,
			imdspolicy.TableOK, imdspolicy.StepNone, redirect.Ruleset{}},
		{"redirect without exemption, sidecar running: exempted", imdspolicy.Redirect, present(redirect.Desired(cfg)), &sidecar,
			imdspolicy.TableOK, imdspolicy.StepExempt, withEx(sidecar)},
		{"redirect exempting the sidecar", imdspolicy.Redirect, present(withEx(sidecar)), &sidecar, imdspolicy.TableOK, imdspolicy.StepNone, redirect.Ruleset{}},
		{"redirect exempting an older sidecar container: re-exempted", imdspolicy.Redirect, present(withEx(other)), &sidecar,
			imdspolicy.TableOK, imdspolicy.StepExempt, withEx(sidecar)},
		{"redirect exempting an older sidecar container that no longer runs: kept", imdspolicy.Redirect, present(withEx(other)), nil,
			imdspolicy.TableOK, imdspolicy.StepNone, redirect.Ruleset{}},
		{"redirect where a fence is", imdspolicy.Redirect, present(redirect.Fence(cfg)), &sidecar, imdspolicy.TableWrong, imdspolicy.StepRepair, withEx(sidecar)},
		{"redirect with a uid exemption is wrong", imdspolicy.Redirect,
			present(redirect.Desired(cfg.WithExemption(redirect.Exemption{UID: contract.SidecarUID}))), nil,
			imdspolicy.TableWrong, imdspolicy.StepRepair, redirect.Desired(cfg)},
		{"redirect exempting the root cgroup is wrong", imdspolicy.Redirect,
			present(withEx(redirect.Cgroup{ID: redirect.RootCgroupID, Level: 0})), nil,
			imdspolicy.TableWrong, imdspolicy.StepRepair, redirect.Desired(cfg)},
		{"redirect of an older config", imdspolicy.Redirect, present(redirect.Desired(stale)), &sidecar,
			imdspolicy.TableWrong, imdspolicy.StepRepair, withEx(sidecar)},
		{"a sidecar cgroup that is the root is not exempted", imdspolicy.Redirect, present(redirect.Desired(cfg)),
			&redirect.Cgroup{ID: redirect.RootCgroupID}, imdspolicy.TableOK, imdspolicy.StepNone, redirect.Ruleset{}},
		{"none leaves a fence alone", imdspolicy.None, present(redirect.Fence(cfg)), nil, imdspolicy.TableOK, imdspolicy.StepNone, redirect.Ruleset{}},
		{"none leaves no table alone", imdspolicy.None, none, &sidecar, imdspolicy.TableOK, imdspolicy.StepNone, redirect.Ruleset{}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			state, _ := imdspolicy.Assess(tc.action, cfg, tc.live.rs, tc.live.found)
			if state != tc.wantState {
				t.Errorf("Assess = %s, want %s", state, tc.wantState)
			}
			step := imdspolicy.Plan(tc.action, cfg, tc.live.rs, tc.live.found, tc.sidecar)
			if step.Kind != tc.wantKind || step.Was != tc.wantState {
				t.Errorf("Plan = %s (was %s), want %s (was %s)", step.Kind, step.Was, tc.wantKind, tc.wantState)
			}
			if step.Kind != imdspolicy.StepNone {
				if got, want := redirect.Render(step.Want), redirect.Render(tc.wantTable); got != want {
					t.Errorf("Plan applies\n%s\nwant\n%s", got, want)
				}
			}
		})
	}
}

func TestAssessReturnsTheExemption(t *testing.T) {
	cfg := redirect.DefaultConfig()
	cg := redirect.Cgroup{ID: 99, Level: 3}
	state, ex := imdspolicy.Assess(imdspolicy.Redirect, cfg, redirect.Desired(cfg.WithExemption(redirect.Exemption{Cgroup: cg})), true)
	if state != imdspolicy.TableOK || ex.Cgroup != cg {
		t.Errorf("Assess = %s, %v; want ok and cgroup %v", state, ex, cg)
	}
}

func TestWant(t *testing.T) {
	cfg := redirect.DefaultConfig()
	if _, ok := imdspolicy.Want(imdspolicy.None, cfg); ok {
		t.Error("Want(None) asks for a table")
	}
	if rs, ok := imdspolicy.Want(imdspolicy.Fence, cfg); !ok || redirect.Render(rs) != redirect.Render(redirect.Fence(cfg)) {
		t.Error("Want(Fence) is not the fence")
	}
	if rs, ok := imdspolicy.Want(imdspolicy.Redirect, cfg); !ok || redirect.ExemptionOf(rs) != (redirect.Exemption{}) ||
		redirect.Render(rs) != redirect.Render(redirect.Desired(cfg)) {
		t.Error("Want(Redirect) is not the redirect without exemption")
	}
}

func TestParseScope(t *testing.T) {
	for in, want := range map[string]imdspolicy.Scope{"": imdspolicy.ScopeAll, "all": imdspolicy.ScopeAll, "opted-in": imdspolicy.ScopeOptedIn} {
		if got, err := imdspolicy.ParseScope(in); err != nil || got != want {
			t.Errorf("ParseScope(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := imdspolicy.ParseScope("optedin"); err == nil {
		t.Error("ParseScope accepted optedin")
	}
}
