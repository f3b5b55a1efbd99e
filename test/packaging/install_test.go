package packaging

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/podidentity/podidentity/internal/testenv"
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
			out, errOut, err := helmTemplate(t, tc.values)
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
