package packaging

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/podidentity/podidentity/test/toolbox/testenv"
)

// startAPIServer starts the real kube-apiserver with the project's CRDs and cert-manager's own.
func startAPIServer(t *testing.T) *testenv.Env {
	t.Helper()
	crds := certManagerCRDs(t)
	return testenv.Start(t, &envtest.Environment{CRDDirectoryPaths: []string{crds}})
}

// applyAll server-side applies every object with strict field validation: an unknown or misspelt field, a
// wrong type or a schema violation (built-in or CRD) fails the test with the server's message.
func applyAll(t *testing.T, cfg *rest.Config, objs []*unstructured.Unstructured) {
	t.Helper()
	ctx := context.Background()
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	disc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(disc))
	force := true
	for _, o := range objs {
		gvk := o.GroupVersionKind()
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			t.Errorf("%s %s: the API server does not serve this kind: %v", gvk, o.GetName(), err)
			continue
		}
		body, err := json.Marshal(o.Object)
		if err != nil {
			t.Fatal(err)
		}
		var ri dynamic.ResourceInterface = dyn.Resource(m.Resource)
		if m.Scope.Name() == "namespace" {
			ri = dyn.Resource(m.Resource).Namespace(o.GetNamespace())
		}
		if _, err := ri.Patch(ctx, o.GetName(), types.ApplyPatchType, body, metav1.PatchOptions{
			FieldManager: "packaging-test", Force: &force, FieldValidation: metav1.FieldValidationStrict,
		}); err != nil {
			t.Errorf("the API server rejected %s %s/%s: %v", gvk.Kind, o.GetNamespace(), o.GetName(), err)
		}
	}
}

func createNamespaces(t *testing.T, env *testenv.Env, names ...string) {
	t.Helper()
	for _, n := range names {
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: n}}
		if err := env.Client.Create(context.Background(), ns); err != nil {
			t.Fatalf("creating namespace %s: %v", n, err)
		}
	}
}

// TestChartInstallsIntoAPIServer installs the chart's rendered objects (default values: cert-manager mode;
// then the no-cert-manager and "full" value sets) into a real API server with cert-manager's CRDs, and runs
// `helm install` itself against it.
func TestChartInstallsIntoAPIServer(t *testing.T) {
	helm := helmBin(t)
	env := startAPIServer(t)
	createNamespaces(t, env, "podidentity-system", "apps", "batch")

	for _, tc := range goldenCases {
		t.Run("apply/"+tc.name, func(t *testing.T) {
			// Rendered for the control plane's own version (the newest or the oldest supported minor).
			var files []string
			for _, f := range tc.values {
				files = append(files, "--values", f)
			}
			out, errOut, err := helmTemplateOn(t, env.Version.GitVersion, files)
			if err != nil {
				t.Fatalf("helm template: %v\n%s", err, errOut)
			}
			var objs []*unstructured.Unstructured
			for _, o := range decodeAll(t, out) {
				// The Prometheus operator's CRDs are not installed here; the ServiceMonitor is checked by
				// the golden file only.
				// The helm test Pod is applied once (pods are immutable; helm recreates it per `helm test`).
				_, hook := o.GetAnnotations()["helm.sh/hook"]
				if o.GetKind() != "ServiceMonitor" && (!hook || tc.name == "defaults") {
					objs = append(objs, o)
				}
			}
			if len(objs) < 10 {
				t.Fatalf("only %d objects rendered", len(objs))
			}
			applyAll(t, env.Config, objs)
		})
	}

	t.Run("helm-install", func(t *testing.T) {
		kubeconfig := writeKubeconfig(t, env.Config)
		out, errOut, err := run(t, helm, "install", "pi", chartDir(), "--kubeconfig", kubeconfig,
			"--namespace", "podidentity-helm", "--create-namespace")
		if err != nil {
			t.Fatalf("helm install: %v\n%s%s", err, out, errOut)
		}
		// The release's webhook configuration exists with cert-manager's annotation and no caBundle.
		var mwc unstructured.Unstructured
		mwc.SetAPIVersion("admissionregistration.k8s.io/v1")
		mwc.SetKind("MutatingWebhookConfiguration")
		if err := env.Client.Get(context.Background(), types.NamespacedName{Name: "pi-podidentity-webhook"}, &mwc); err != nil {
			t.Fatalf("after helm install: %v", err)
		}
		if got := mwc.GetAnnotations()["cert-manager.io/inject-ca-from"]; got != "podidentity-helm/pi-podidentity-webhook" {
			t.Errorf("inject-ca-from = %q", got)
		}
		out, errOut, err = run(t, helm, "upgrade", "pi", chartDir(), "--kubeconfig", kubeconfig,
			"--namespace", "podidentity-helm", "--set", "webhook.replicas=3")
		if err != nil {
			t.Fatalf("helm upgrade: %v\n%s%s", err, out, errOut)
		}
		// No webhook replica runs here (no controllers, no kubelet): a pod of an opted-in namespace is refused with
		// the message docs/troubleshooting.md quotes, failurePolicy Fail.
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "opted-in", Labels: map[string]string{"podidentity.io/injection": "enabled"}}}
		if err := env.Client.Create(context.Background(), ns); err != nil {
			t.Fatal(err)
		}
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "app", Namespace: "opted-in"},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app"}}}}
		err = env.Client.Create(context.Background(), pod)
		if err == nil || !strings.Contains(err.Error(), webhookDownRefusal) {
			t.Errorf("a pod of an opted-in namespace with no webhook running: err %v, want %q", err, webhookDownRefusal)
		}
		t.Logf("with no webhook running: %v", err)
	})
}

// writeKubeconfig writes a kubeconfig for cfg (envtest's admin client certificate).
func writeKubeconfig(t *testing.T, cfg *rest.Config) string {
	t.Helper()
	kc := clientcmdapi.NewConfig()
	kc.Clusters["envtest"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos["admin"] = &clientcmdapi.AuthInfo{ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData, Token: cfg.BearerToken}
	kc.Contexts["envtest"] = &clientcmdapi.Context{Cluster: "envtest", AuthInfo: "admin"}
	kc.CurrentContext = "envtest"
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestChartManagesCRDs: helm installs crds/ once and never upgrades them (a changed CRD in a new chart version
// does not reach the cluster); with crds.manage=true the chart renders them as the release's own objects, so
// `helm upgrade` carries the change, and helm.sh/resource-policy: keep spares them (and every object of their
// kinds) when crds.manage is turned off or the release is uninstalled. The CRDs start as envtest installs them,
// which is how helm's crds/ or `kubectl apply` leave them: without helm's ownership metadata, so the switch
// needs --take-ownership once, and helm's refusal without it is the message docs/troubleshooting.md quotes.
func TestChartManagesCRDs(t *testing.T) {
	helm := helmBin(t)
	env := startAPIServer(t)
	createNamespaces(t, env, "apps")
	kubeconfig := writeKubeconfig(t, env.Config)
	changed := chartWithChangedCRD(t)
	const ns = "podidentity-crds"
	helmRun := func(args ...string) (string, error) {
		out, errOut, err := run(t, helm, append(args, "--kubeconfig", kubeconfig)...)
		return out + errOut, err
	}
	mustHelm := func(t *testing.T, args ...string) {
		t.Helper()
		if out, err := helmRun(args...); err != nil {
			t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	dyn, err := dynamic.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	identities := dyn.Resource(schema.GroupVersionResource{Group: "aadpodidentity.k8s.io", Version: "v1", Resource: "azureidentities"}).Namespace("apps")
	crds := dyn.Resource(schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"})
	// createProbe creates an AzureIdentity that uses the changed CRD's new field, with strict field validation:
	// the API server accepts it only once the changed CRD is in place.
	probes := 0
	createProbe := func() error {
		probes++
		u := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureIdentity",
			"metadata": map[string]any{"name": fmt.Sprintf("probe-%d", probes), "namespace": "apps"},
			"spec": map[string]any{"type": int64(1), "clientID": "00000000-0000-0000-0000-000000000001", "tenantID": "t",
				"upgradeProbe": "present"},
		}}
		_, err := identities.Create(context.Background(), u, metav1.CreateOptions{FieldValidation: metav1.FieldValidationStrict})
		return err
	}
	crdNames := []string{"azureassignedidentities", "azureidentities", "azureidentitybindings", "azurepodidentityexceptions"}
	checkCRDs := func(t *testing.T, owner string) {
		t.Helper()
		for _, n := range crdNames {
			crd, err := crds.Get(context.Background(), n+".aadpodidentity.k8s.io", metav1.GetOptions{})
			if err != nil {
				t.Fatalf("CRD %s: %v", n, err)
			}
			a := crd.GetAnnotations()
			if owner != "" && (a["meta.helm.sh/release-name"] != owner || a["helm.sh/resource-policy"] != "keep") {
				t.Errorf("CRD %s annotations %v: want release %s and helm.sh/resource-policy: keep", n, a, owner)
			}
			if crd.GetDeletionTimestamp() != nil {
				t.Errorf("CRD %s is being deleted", n)
			}
		}
	}

	// Default (crds.manage=false): the upgrade with the changed chart leaves the CRD as it was.
	mustHelm(t, "install", "pc", chartDir(), "--namespace", ns, "--create-namespace")
	mustHelm(t, "upgrade", "pc", changed, "--namespace", ns)
	if err := createProbe(); err == nil || !strings.Contains(err.Error(), "upgradeProbe") {
		t.Fatalf("with crds.manage=false the changed CRD reached the API server (or the probe failed otherwise): %v", err)
	}

	// Switching to crds.manage=true: refused while the CRDs lack helm's metadata, then adopted with --take-ownership.
	out, err := helmRun("upgrade", "pc", changed, "--namespace", ns, "--set", "crds.manage=true")
	if err == nil {
		t.Fatal("helm upgrade --set crds.manage=true adopted CRDs without helm's ownership metadata and without --take-ownership")
	}
	t.Logf("helm's refusal without --take-ownership:\n%s", out)
	for _, want := range []string{crdOwnershipRefusal, `CustomResourceDefinition "azureassignedidentities.aadpodidentity.k8s.io"`} {
		if !strings.Contains(out, want) {
			t.Errorf("helm's refusal lacks %q (docs/troubleshooting.md quotes it):\n%s", want, out)
		}
	}
	mustHelm(t, "upgrade", "pc", changed, "--namespace", ns, "--set", "crds.manage=true", "--take-ownership")
	if err := createProbe(); err != nil {
		t.Fatalf("after helm upgrade with crds.manage=true the changed CRD is not served: %v", err)
	}
	checkCRDs(t, "pc")

	// The next upgrade needs no flag; turning crds.manage off, and uninstalling, keep the CRDs and their objects.
	mustHelm(t, "upgrade", "pc", changed, "--namespace", ns, "--set", "crds.manage=true")
	mustHelm(t, "upgrade", "pc", chartDir(), "--namespace", ns)
	checkCRDs(t, "pc")
	mustHelm(t, "upgrade", "pc", changed, "--namespace", ns, "--set", "crds.manage=true")
	out, err = helmRun("uninstall", "pc", "--namespace", ns, "--wait")
	if err != nil {
		t.Fatalf("helm uninstall: %v\n%s", err, out)
	}
	checkCRDs(t, "")
	if _, err := identities.Get(context.Background(), "probe-2", metav1.GetOptions{}); err != nil {
		t.Errorf("the AzureIdentity created through the managed CRD is gone after uninstall: %v", err)
	}

	// A first install with crds.manage=true into a cluster that has the CRDs (crds/ creates them just before the
	// templates, or another release kept them): --take-ownership once.
	if out, err := helmRun("install", "pd", changed, "--namespace", ns, "--set", "crds.manage=true"); err == nil || !strings.Contains(out, crdOwnershipRefusal) {
		t.Errorf("helm install with crds.manage=true adopted CRDs of another release without --take-ownership (err %v):\n%s", err, out)
	}
	mustHelm(t, "install", "pd", changed, "--namespace", ns, "--set", "crds.manage=true", "--take-ownership")
	checkCRDs(t, "pd")
}

// crdOwnershipRefusal is what helm says when the release is to take over a CRD it did not create;
// webhookDownRefusal what the API server says when the webhook does not answer (docs/troubleshooting.md, Install).
const (
	crdOwnershipRefusal = "exists and cannot be imported into the current release"
	webhookDownRefusal  = `failed calling webhook "pods.podidentity.io"`
)

// chartWithChangedCRD copies the chart and adds a field, spec.upgradeProbe, to the AzureIdentity CRD: a new
// chart version whose CRD changed.
func chartWithChangedCRD(t *testing.T) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "podidentity")
	err := filepath.WalkDir(chartDir(), func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(chartDir(), path)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if rel == filepath.Join("crds", "aadpodidentity.k8s.io_azureidentities.yaml") {
			const at = "          spec:\n            description: AzureIdentitySpec describes the identity's credentials in\n              Azure.\n            properties:\n"
			if !bytes.Contains(b, []byte(at)) {
				return fmt.Errorf("%s: the spec's properties are not where this test expects them; adjust chartWithChangedCRD", rel)
			}
			b = bytes.Replace(b, []byte(at), []byte(at+"              upgradeProbe:\n                type: string\n"), 1)
		}
		return os.WriteFile(filepath.Join(dst, rel), b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	return dst
}
