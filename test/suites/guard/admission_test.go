package guard_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	admissionregv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/assigner/desired"
	"github.com/podidentity/podidentity/assigner/guard"
	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/test/toolbox/testenv"
	"github.com/podidentity/podidentity/test/toolbox/wait"
	"github.com/podidentity/podidentity/webhook/app"
	"github.com/podidentity/podidentity/webhook/config"
)

// reader is the ARM ID of the identity the test binds.
const reader = "/subscriptions/sub/resourceGroups/ids/providers/Microsoft.ManagedIdentity/userAssignedIdentities/reader"

// poolKey is the node label and taint key of the identity pool in the chart values this test renders.
const poolKey = "podidentity.io/pool"

// poolTaint is the taint of the chart values the admission test renders.
var poolTaint = corev1.Taint{Key: poolKey, Value: "identities", Effect: corev1.TaintEffectNoExecute}

// newestKube is the Kubernetes version of bin/kube-apiserver, which the chart-only tests render for.
const newestKube = "v1.37.2"

// helmTemplate renders the chart's guard policy with guard mode on and the given --set values, as helm would
// for a cluster of Kubernetes version kube.
func helmTemplate(t *testing.T, kube string, sets ...string) (string, string, error) {
	t.Helper()
	helm := filepath.Join(testenv.RepoRoot(), "bin", "helm")
	if _, err := os.Stat(helm); err != nil {
		t.Fatalf("%s not found: run `make packaging-tools` (it builds helm from Go modules)", helm)
	}
	home := t.TempDir()
	args := []string{"template", "pi", filepath.Join(testenv.RepoRoot(), "charts", "podidentity"),
		"--namespace", "podidentity-system", "--kube-version", kube, "--show-only", "templates/guard-policy.yaml", "--set", "guard.enabled=true"}
	for _, s := range sets {
		args = append(args, "--set", s)
	}
	cmd := exec.Command(helm, args...)
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+home, "HELM_CONFIG_HOME="+home, "HELM_DATA_HOME="+home)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return out.String(), errb.String(), err
}

// renderGuardPolicy returns the chart's ValidatingAdmissionPolicy and binding: the test evaluates the chart's
// own CEL, not a copy, rendered for the test control plane's Kubernetes version (kube).
func renderGuardPolicy(t *testing.T, kube string) (*admissionregv1.ValidatingAdmissionPolicy, *admissionregv1.ValidatingAdmissionPolicyBinding) {
	t.Helper()
	out, errOut, err := helmTemplate(t, kube, "guard.trustedServiceAccounts={monitoring/agent}")
	if err != nil {
		t.Fatalf("helm template: %v\n%s", err, errOut)
	}
	var vap *admissionregv1.ValidatingAdmissionPolicy
	var vapb *admissionregv1.ValidatingAdmissionPolicyBinding
	for _, doc := range strings.Split(out, "\n---\n") {
		js, err := yaml.ToJSON([]byte(doc))
		if err != nil {
			t.Fatal(err)
		}
		var meta metav1.TypeMeta
		_ = json.Unmarshal(js, &meta)
		switch meta.Kind {
		case "ValidatingAdmissionPolicy":
			vap = &admissionregv1.ValidatingAdmissionPolicy{}
			must(t, json.Unmarshal(js, vap))
		case "ValidatingAdmissionPolicyBinding":
			vapb = &admissionregv1.ValidatingAdmissionPolicyBinding{}
			must(t, json.Unmarshal(js, vapb))
		}
	}
	if vap == nil || vapb == nil {
		t.Fatalf("the chart rendered no policy and binding:\n%s", out)
	}
	return vap, vapb
}

// TestGuardChartRefuses checks the chart refuses guard mode settings that would break its guarantee.
func TestGuardChartRefuses(t *testing.T) {
	if testing.Short() {
		t.Skip("runs helm")
	}
	tests := []struct{ name, set, want string }{
		{"failurePolicy Ignore", "webhook.failurePolicy=Ignore", "guard.enabled=true needs webhook.failurePolicy=Fail"},
		{"NoSchedule taint", "guard.poolTaint.effect=NoSchedule", "guard/poolTaint/effect"},
		{"malformed trusted service account", "guard.trustedServiceAccounts={agent}", "guard/trustedServiceAccounts/0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, errOut, err := helmTemplate(t, newestKube, tc.set)
			if err == nil || !strings.Contains(errOut, tc.want) {
				t.Fatalf("helm template with %s: err %v, stderr %q; want a refusal naming %q", tc.set, err, errOut, tc.want)
			}
		})
	}
}

// TestGuardAdmission runs the chart's ValidatingAdmissionPolicy and the real webhook (guard flags on) in a
// real kube-apiserver: an injected pod gets the pool's nodeSelector and toleration and is admitted; a pod
// that tolerates the pool's taint is refused unless injected or trusted, whatever shape its toleration takes;
// a forged injection is refused; and the Go rules of the audit agree with the policy on every case.
func TestGuardAdmission(t *testing.T) {
	env := &envtest.Environment{WebhookInstallOptions: envtest.WebhookInstallOptions{
		Paths: []string{filepath.Join(testenv.RepoRoot(), "manifests", "kustomize", "base", "podidentity.yaml")},
	}}
	te := testenv.Start(t, env)
	vap, vapb := renderGuardPolicy(t, te.Version.GitVersion)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	c := te.Client
	for _, ns := range []*corev1.Namespace{
		{ObjectMeta: metav1.ObjectMeta{Name: "apps", Labels: map[string]string{contract.NamespaceInjectionLabel: "enabled"}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "other"}},
		{ObjectMeta: metav1.ObjectMeta{Name: "monitoring"}},
	} {
		must(t, c.Create(ctx, ns))
	}
	for _, sa := range []string{"agent", "other"} {
		must(t, c.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "monitoring", Name: sa}}))
	}
	must(t, c.Create(ctx, &aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "reader"},
		Spec: aadv1.AzureIdentitySpec{Type: aadv1.UserAssignedMSI, ResourceID: reader, ClientID: "c"}}))
	must(t, c.Create(ctx, &aadv1.AzureIdentityBinding{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "reader"},
		Spec: aadv1.AzureIdentityBindingSpec{AzureIdentity: "reader", Selector: "reader"}}))
	must(t, c.Create(ctx, vap))
	must(t, c.Create(ctx, vapb))

	fs := flag.NewFlagSet("webhook", flag.ContinueOnError)
	cfg := config.Bind(fs)
	must(t, fs.Parse([]string{"--mode=native", "--metrics-bind-address=0", "--health-probe-bind-address=0",
		"--identity-pool-label=" + poolKey + "=identities", "--identity-pool-taint=" + poolKey + "=identities:NoExecute"}))
	must(t, cfg.Complete())
	wio := &env.WebhookInstallOptions
	cfg.Port, cfg.CertDir = wio.LocalServingPort, wio.LocalServingCertDir
	mgr, err := app.New(cfg, te.Config, wio.LocalServingHost, logr.Discard())
	must(t, err)
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("webhook manager: %v", err)
		}
	})
	addr := net.JoinHostPort(wio.LocalServingHost, strconv.Itoa(wio.LocalServingPort))
	wait.For(t, 30*time.Second, 100*time.Millisecond, "the webhook server at "+addr+" comes up", wait.TLSHandshake(addr))
	waitPolicyActive(t, c)

	rules := guard.Rules{Pool: &desired.Pool{Key: poolKey, Value: "identities"}, InjectionLabel: contract.NamespaceInjectionLabel,
		TrustedNamespaces: []string{"kube-system"}, TrustedServiceAccounts: []string{"monitoring/agent"}}
	nsLabels := map[string]map[string]string{"apps": {contract.NamespaceInjectionLabel: "enabled"}}

	t.Run("injected pod is placed on the pool and admitted", func(t *testing.T) {
		p := newPod("apps", "reader-0", "", map[string]string{aadv1.PodLabelBinding: "reader"})
		must(t, c.Create(ctx, p))
		if p.Spec.NodeSelector[poolKey] != "identities" {
			t.Errorf("nodeSelector = %v, want %s=identities", p.Spec.NodeSelector, poolKey)
		}
		tolerated := false
		for _, tol := range p.Spec.Tolerations {
			tolerated = tolerated || tol.ToleratesTaint(logr.Discard(), &poolTaint, false)
		}
		if !tolerated {
			t.Errorf("tolerations %v do not tolerate the pool taint", p.Spec.Tolerations)
		}
		if !rules.Injected(p, nsLabels["apps"]) {
			t.Errorf("the audit's rules do not see the webhook's pod as injected")
		}
	})

	exists := corev1.TolerationOpExists
	tolerations := []struct {
		name string
		tol  corev1.Toleration
	}{
		{"exact", corev1.Toleration{Key: poolKey, Operator: corev1.TolerationOpEqual, Value: "identities", Effect: corev1.TaintEffectNoExecute}},
		{"operator defaults to Equal", corev1.Toleration{Key: poolKey, Value: "identities"}},
		{"key Exists", corev1.Toleration{Key: poolKey, Operator: exists}},
		{"tolerate everything (DaemonSet style)", corev1.Toleration{Operator: exists}},
		{"everything, NoExecute only", corev1.Toleration{Operator: exists, Effect: corev1.TaintEffectNoExecute}},
		{"everything, NoSchedule only", corev1.Toleration{Operator: exists, Effect: corev1.TaintEffectNoSchedule}},
		{"other value", corev1.Toleration{Key: poolKey, Value: "general", Effect: corev1.TaintEffectNoExecute}},
		{"other effect", corev1.Toleration{Key: poolKey, Operator: exists, Effect: corev1.TaintEffectNoSchedule}},
		{"other key", corev1.Toleration{Key: "gpu", Operator: exists}},
	}
	for i, tc := range tolerations {
		t.Run("untrusted pod, toleration "+tc.name, func(t *testing.T) {
			p := newPod("other", "tol-"+strconv.Itoa(i), "", nil)
			p.Spec.Tolerations = []corev1.Toleration{tc.tol}
			err := c.Create(ctx, p)
			// Kubernetes' own matching decides what the policy must refuse.
			if want := tc.tol.ToleratesTaint(logr.Discard(), &poolTaint, false); want {
				wantRefused(t, err)
			} else if err != nil {
				t.Fatalf("a pod that does not tolerate the pool taint was refused: %v", err)
			}
		})
	}

	all := []corev1.Toleration{{Operator: exists}}
	cases := []struct {
		name, ns, sa string
		forge        bool
		optOut       bool
		admitted     bool
	}{
		{name: "trusted namespace", ns: "kube-system", admitted: true},
		{name: "trusted service account", ns: "monitoring", sa: "agent", admitted: true},
		{name: "other service account of the trusted one's namespace", ns: "monitoring", sa: "other"},
		{name: "forged injection in a namespace that is not opted in", ns: "other", forge: true},
		{name: "opted-in namespace, pod opted out", ns: "apps", optOut: true},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := newPod(tc.ns, "case-"+strconv.Itoa(i), tc.sa, nil)
			p.Spec.Tolerations = all
			if tc.forge {
				p.Annotations = map[string]string{contract.IdentitiesAnnotation: "[]"}
				p.Spec.InitContainers = []corev1.Container{{Name: contract.InitContainerName, Image: "ghcr.io/podidentity/podidentity-init:latest"}}
			}
			if tc.optOut {
				p.Annotations = map[string]string{contract.InjectAnnotation: "false"}
			}
			err := c.Create(ctx, p)
			if tc.admitted {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
			} else {
				wantRefused(t, err)
			}
			// The audit's Go rules say the same as the API server's policy.
			goAdmits := rules.Trusted(p) || rules.Injected(p, nsLabels[tc.ns])
			if goAdmits != tc.admitted {
				t.Errorf("Go rules: trusted or injected = %v, the policy admitted = %v", goAdmits, tc.admitted)
			}
		})
	}

	t.Run("update that adds the toleration is refused", func(t *testing.T) {
		p := newPod("other", "later", "", nil)
		must(t, c.Create(ctx, p))
		p.Spec.Tolerations = append(p.Spec.Tolerations, corev1.Toleration{Key: poolKey, Operator: exists})
		wantRefused(t, c.Update(ctx, p))
	})
}

func newPod(ns, name, sa string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec: corev1.PodSpec{ServiceAccountName: sa, Containers: []corev1.Container{{Name: "app", Image: "registry.example.com/app:1"}}}}
}

func wantRefused(t *testing.T, err error) {
	t.Helper()
	if err == nil {
		t.Fatal("admitted; want the guard policy to refuse it")
	}
	for _, frag := range []string{"podidentity guard mode", "tolerates the identity pool's taint " + poolKey + "=identities:NoExecute", "Remove the toleration"} {
		if !strings.Contains(err.Error(), frag) {
			t.Fatalf("refusal %q lacks %q", err, frag)
		}
	}
}

// waitPolicyActive waits until the API server enforces the policy (it compiles and loads it asynchronously):
// a probe pod that tolerates everything is refused.
func waitPolicyActive(t *testing.T, c client.Client) {
	t.Helper()
	wait.For(t, 30*time.Second, 100*time.Millisecond, "the guard policy is enforced", func() error {
		p := newPod("other", "probe", "", nil)
		p.Spec.Tolerations = []corev1.Toleration{{Operator: corev1.TolerationOpExists}}
		err := c.Create(context.Background(), p, client.DryRunAll)
		if err == nil {
			return errors.New("a probe pod that tolerates everything was admitted")
		}
		if !strings.Contains(err.Error(), "podidentity guard mode") {
			return fmt.Errorf("not refused by the guard: %w", err)
		}
		return nil
	})
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
