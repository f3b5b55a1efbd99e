package app_test

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	jsonpatch "gomodules.xyz/jsonpatch/v2"
	admissionregv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	cradmission "sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/binding"
	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/test/toolbox/promtest"
	"github.com/podidentity/podidentity/test/toolbox/testenv"
	"github.com/podidentity/podidentity/test/toolbox/wait"
	"github.com/podidentity/podidentity/webhook/admission"
	"github.com/podidentity/podidentity/webhook/app"
	"github.com/podidentity/podidentity/webhook/config"
)

const assigner = "system:serviceaccount:podidentity-system:podidentity-assigner"

// prependPath serves a second mutating webhook, run after ours, that prepends an init container to pods of
// namespace "reinvoke": the API server must then reinvoke ours (reinvocationPolicy IfNeeded).
const prependPath = "/test-prepend"

// TestWebhookOnRealAPIServer installs the chart's MutatingWebhookConfiguration (as generated into
// manifests/kustomize/base) in a real kube-apiserver, which calls the webhook over TLS.
func TestWebhookOnRealAPIServer(t *testing.T) {
	fail := admissionregv1.Fail
	none := admissionregv1.SideEffectClassNone
	env := &envtest.Environment{WebhookInstallOptions: envtest.WebhookInstallOptions{
		Paths: []string{filepath.Join(testenv.RepoRoot(), "manifests", "kustomize", "base", "podidentity.yaml")},
		MutatingWebhooks: []*admissionregv1.MutatingWebhookConfiguration{{
			ObjectMeta: metav1.ObjectMeta{Name: "zz-test-prepend"},
			Webhooks: []admissionregv1.MutatingWebhook{{
				Name:                    "prepend.test.podidentity.io",
				AdmissionReviewVersions: []string{"v1"},
				ClientConfig: admissionregv1.WebhookClientConfig{Service: &admissionregv1.ServiceReference{
					Name: "test", Namespace: "test", Path: ptr(prependPath),
				}},
				Rules: []admissionregv1.RuleWithOperations{{
					Operations: []admissionregv1.OperationType{admissionregv1.Create},
					Rule:       admissionregv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}},
				}},
				NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "reinvoke"}},
				FailurePolicy:     &fail,
				SideEffects:       &none,
			}},
		}},
	}}
	te := testenv.Start(t, env)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	c := te.Client

	// Cluster state before the webhook starts, so its cache holds it from the first admission.
	for _, ns := range []struct {
		name    string
		enabled bool
	}{{"shop", true}, {"plain", false}, {"reinvoke", true}} {
		labels := map[string]string{}
		if ns.enabled {
			labels[contract.NamespaceInjectionLabel] = "enabled"
		}
		mustCreate(t, c, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns.name, Labels: labels}})
	}
	mustCreate(t, c, &aadv1.AzureIdentity{
		ObjectMeta: metav1.ObjectMeta{Name: "orders-mi", Namespace: "shop"},
		Spec: aadv1.AzureIdentitySpec{Type: aadv1.UserAssignedMSI, ClientID: "00000000-0000-0000-0000-00000000a001",
			ResourceID: "/subscriptions/1111/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/orders-mi"},
	})
	mustCreate(t, c, &aadv1.AzureIdentityBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "orders", Namespace: "shop"},
		Spec:       aadv1.AzureIdentityBindingSpec{AzureIdentity: "orders-mi", Selector: "orders"},
	})

	cfg, wh := startWebhook(t, ctx, cancel, env, te.Config, []string{"--mode=auto"}, func(mgr *app.Webhook) {
		mgr.GetWebhookServer().Register(prependPath, &cradmission.Webhook{Handler: cradmission.HandlerFunc(prependInit)})
	})
	// Every supported minor (1.32 and up, the test control plane's) has native sidecars on by default.
	if !cfg.Inject.Native {
		t.Fatalf("--mode=auto chose classic on a %s API server; want native", te.Version.GitVersion)
	}

	appPod := func(ns, name string, labels map[string]string) *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels},
			Spec: corev1.PodSpec{
				InitContainers: []corev1.Container{{Name: "migrate", Image: "registry.example.com/migrate:1"}},
				Containers:     []corev1.Container{{Name: "app", Image: "registry.example.com/app:1"}},
			},
		}
	}
	assertInjected := func(t *testing.T, pod *corev1.Pod, wantIdentity string) {
		t.Helper()
		var names []string
		for _, ic := range pod.Spec.InitContainers {
			names = append(names, ic.Name)
		}
		if len(names) < 3 || names[0] != contract.InitContainerName || names[1] != contract.SidecarContainerName {
			t.Fatalf("init containers %v: want podidentity-init, podidentity-sidecar first", names)
		}
		if rp := pod.Spec.InitContainers[1].RestartPolicy; rp == nil || *rp != corev1.ContainerRestartPolicyAlways {
			t.Errorf("sidecar is not a native sidecar (restartPolicy %v)", rp)
		}
		ids, err := binding.Decode(pod.Annotations[contract.IdentitiesAnnotation])
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, id := range ids {
			got = append(got, id.Name)
		}
		if strings.Join(got, ",") != wantIdentity {
			t.Errorf("identities annotation names %v, want %q", got, wantIdentity)
		}
	}

	t.Run("opted-in namespace: injected", func(t *testing.T) {
		pod := appPod("shop", "orders-1", map[string]string{aadv1.PodLabelBinding: "orders"})
		mustCreate(t, c, pod)
		var got corev1.Pod
		if err := c.Get(ctx, client.ObjectKeyFromObject(pod), &got); err != nil {
			t.Fatal(err)
		}
		assertInjected(t, &got, "orders-mi")
		if got.Spec.InitContainers[2].Name != "migrate" {
			t.Errorf("user init container is %q at index 2, want migrate", got.Spec.InitContainers[2].Name)
		}
	})

	t.Run("bindings are read through the cache's selector index", func(t *testing.T) {
		// The handler registered the index on the manager's cache at its first admission (above); a cache
		// without it answers a list by field with an error.
		var bl aadv1.AzureIdentityBindingList
		if err := wh.GetCache().List(ctx, &bl, client.MatchingFields{admission.BindingSelectorField: "orders"}); err != nil || len(bl.Items) != 1 {
			t.Fatalf("list by %s=orders: %d bindings, %v; want the one binding", admission.BindingSelectorField, len(bl.Items), err)
		}
	})

	t.Run("other namespace: untouched", func(t *testing.T) {
		pod := appPod("plain", "orders-1", map[string]string{aadv1.PodLabelBinding: "orders"})
		mustCreate(t, c, pod)
		var got corev1.Pod
		if err := c.Get(ctx, client.ObjectKeyFromObject(pod), &got); err != nil {
			t.Fatal(err)
		}
		if len(got.Spec.InitContainers) != 1 || len(got.Spec.Containers) != 1 || got.Annotations[contract.IdentitiesAnnotation] != "" {
			t.Errorf("pod in a namespace without %s was changed: %d init containers, %d containers, annotations %v",
				contract.NamespaceInjectionLabel, len(got.Spec.InitContainers), len(got.Spec.Containers), got.Annotations)
		}
	})

	t.Run("server-side dry-run", func(t *testing.T) {
		pod := appPod("shop", "dry", map[string]string{aadv1.PodLabelBinding: "orders"})
		if err := c.Create(ctx, pod, client.DryRunAll); err != nil {
			t.Fatalf("dry-run create: %v", err)
		}
		assertInjected(t, pod, "orders-mi")
		err := c.Get(ctx, client.ObjectKeyFromObject(pod), &corev1.Pod{})
		if !apierrors.IsNotFound(err) {
			t.Errorf("dry-run pod was persisted: get returned %v", err)
		}
	})

	t.Run("denied pod gets the message", func(t *testing.T) {
		pod := appPod("shop", "priv", nil)
		pod.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{Privileged: ptr(true)}
		err := c.Create(ctx, pod)
		if err == nil || !strings.Contains(err.Error(), `container "app" is privileged`) {
			t.Fatalf("create of a privileged pod: got %v, want a denial naming the container", err)
		}
		if v := promtest.Value(t, metrics.Registry, "podidentity_webhook_denied_total", map[string]string{"reason": "privileged"}); v < 1 {
			t.Errorf("podidentity_webhook_denied_total{reason=privileged} = %v, want >= 1", v)
		}
	})

	t.Run("reinvocation after another webhook is stable", func(t *testing.T) {
		pod := appPod("reinvoke", "r1", nil)
		mustCreate(t, c, pod)
		var got corev1.Pod
		if err := c.Get(ctx, client.ObjectKeyFromObject(pod), &got); err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, ic := range got.Spec.InitContainers {
			names = append(names, ic.Name)
		}
		want := "podidentity-init,podidentity-sidecar,test-prepended,migrate"
		if strings.Join(names, ",") != want {
			t.Errorf("init containers after reinvocation: %v, want %s", names, want)
		}
		if got.Annotations[contract.IdentitiesAnnotation] != "[]" {
			t.Errorf("identities annotation %q, want []", got.Annotations[contract.IdentitiesAnnotation])
		}
	})

	t.Run("update of the identities annotation", func(t *testing.T) {
		forged := `[{"name":"payments-mi","namespace":"shop","type":0,"binding":"shop/x"}]`
		patch := client.RawPatch(types.MergePatchType, []byte(fmt.Sprintf(`{"metadata":{"annotations":{%q:%q}}}`, contract.IdentitiesAnnotation, forged)))
		key := client.ObjectKey{Namespace: "shop", Name: "orders-1"}

		alice := userClient(t, te, env, "alice")
		err := alice.Patch(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: key.Name, Namespace: key.Namespace}}, patch)
		if err == nil || !strings.Contains(err.Error(), "only "+assigner+" may change it") {
			t.Fatalf("alice changing the identities annotation: got %v, want a denial", err)
		}
		other := client.RawPatch(types.MergePatchType, []byte(`{"metadata":{"annotations":{"team":"payments"}}}`))
		if err := alice.Patch(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: key.Name, Namespace: key.Namespace}}, other); err != nil {
			t.Fatalf("alice changing another annotation was refused: %v", err)
		}

		bot := userClient(t, te, env, assigner)
		if err := bot.Patch(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: key.Name, Namespace: key.Namespace}}, patch); err != nil {
			t.Fatalf("the assigner changing the identities annotation was refused: %v", err)
		}
		var got corev1.Pod
		if err := c.Get(ctx, key, &got); err != nil {
			t.Fatal(err)
		}
		if got.Annotations[contract.IdentitiesAnnotation] != forged {
			t.Errorf("annotation after the assigner's update: %q", got.Annotations[contract.IdentitiesAnnotation])
		}
	})
}

// startWebhook runs the webhook with args (and no metrics or health listeners) against the API server of rc,
// serving where env's webhook configuration points, until ctx ends (cancel, at the test's end, stops it);
// register runs before it starts. It returns once the server accepts connections.
func startWebhook(t *testing.T, ctx context.Context, cancel context.CancelFunc, env *envtest.Environment, rc *rest.Config, args []string, register func(*app.Webhook)) (*config.Config, *app.Webhook) {
	t.Helper()
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	cfg := config.Bind(fs)
	if err := fs.Parse(append(args, "--metrics-bind-address=0", "--health-probe-bind-address=0")); err != nil {
		t.Fatal(err)
	}
	if err := cfg.Complete(); err != nil {
		t.Fatal(err)
	}
	wio := &env.WebhookInstallOptions
	cfg.Port, cfg.CertDir = wio.LocalServingPort, wio.LocalServingCertDir
	mgr, err := app.New(cfg, rc, wio.LocalServingHost, testr.NewWithOptions(t, testr.Options{Verbosity: 0}))
	if err != nil {
		t.Fatal(err)
	}
	if register != nil {
		register(mgr)
	}
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("manager: %v", err)
		}
	})
	addr := net.JoinHostPort(wio.LocalServingHost, strconv.Itoa(wio.LocalServingPort))
	wait.For(t, 30*time.Second, 100*time.Millisecond, "the webhook server at "+addr+" comes up", wait.TLSHandshake(addr))
	return cfg, mgr
}

// prependInit is the second webhook of the reinvocation test.
func prependInit(_ context.Context, req cradmission.Request) cradmission.Response {
	var pod corev1.Pod
	if err := json.Unmarshal(req.Object.Raw, &pod); err != nil {
		return cradmission.Errored(http.StatusBadRequest, err)
	}
	for _, ic := range pod.Spec.InitContainers {
		if ic.Name == "test-prepended" {
			return cradmission.Allowed("")
		}
	}
	return cradmission.Patched("", jsonpatch.JsonPatchOperation{Operation: "add", Path: "/spec/initContainers/0", Value: corev1.Container{Name: "test-prepended", Image: "busybox:1.36"}})
}

func mustCreate(t *testing.T, c client.Client, obj client.Object) {
	t.Helper()
	if err := c.Create(context.Background(), obj); err != nil {
		t.Fatalf("create %T %s: %v", obj, obj.GetName(), err)
	}
}

// userClient authenticates as user (a client certificate), in system:masters so RBAC allows the update and
// only admission decides.
func userClient(t *testing.T, te *testenv.Env, env *envtest.Environment, user string) client.Client {
	t.Helper()
	u, err := env.AddUser(envtest.User{Name: user, Groups: []string{"system:masters"}}, te.Config)
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(u.Config(), client.Options{Scheme: te.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func ptr[T any](v T) *T { return &v }
