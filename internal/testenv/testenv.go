// Package testenv starts a real kube-apiserver and etcd (controller-runtime envtest) with the project's CRDs
// installed, for integration tests. The binaries come from bin/, built from Go modules by `make envtest-bins`;
// nothing is downloaded.
package testenv

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	k8sruntime "k8s.io/apimachinery/pkg/runtime"

	aadv1 "github.com/podidentity/podidentity/api/v1"
)

// Env is a running control plane.
type Env struct {
	Config *rest.Config
	Client client.Client
	Scheme *k8sruntime.Scheme
	// Environment is the underlying envtest environment, for tests that need webhook options or users.
	Environment *envtest.Environment
}

// RepoRoot is the repository's top directory, found from this source file.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// Scheme returns a scheme with the built-in types and the aadpodidentity.k8s.io/v1 types.
func Scheme() *k8sruntime.Scheme {
	s := k8sruntime.NewScheme()
	if err := scheme.AddToScheme(s); err != nil {
		panic(err)
	}
	if err := aadv1.AddToScheme(s); err != nil {
		panic(err)
	}
	return s
}

// Start starts a control plane for the test and stops it when the test ends. In -short mode the test is
// skipped. env may carry extra settings (webhook install options); its CRD paths and binary directory are
// filled in here.
func Start(t testing.TB, env *envtest.Environment) *Env {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: needs kube-apiserver and etcd; run without -short (make test builds them)")
	}
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		assets = filepath.Join(RepoRoot(), "bin")
	}
	for _, b := range []string{"kube-apiserver", "etcd"} {
		if _, err := os.Stat(filepath.Join(assets, b)); err != nil {
			t.Fatalf("%s not found in %s: run `make envtest-bins` (it builds the control plane from Go modules) or set KUBEBUILDER_ASSETS", b, assets)
		}
	}
	if env == nil {
		env = &envtest.Environment{}
	}
	env.BinaryAssetsDirectory = assets
	env.CRDDirectoryPaths = append(env.CRDDirectoryPaths, filepath.Join(RepoRoot(), "manifests", "crds"))
	env.ErrorIfCRDPathMissing = true
	s := Scheme()
	env.Scheme = s
	if env.CRDInstallOptions.Scheme == nil {
		env.CRDInstallOptions.Scheme = s
	}
	cfg, err := env.Start()
	if err != nil {
		_ = env.Stop() // Start can fail after launching etcd and kube-apiserver (e.g. a CRD is refused)
		t.Fatalf("starting kube-apiserver and etcd from %s: %v", assets, err)
	}
	t.Cleanup(func() {
		if err := env.Stop(); err != nil {
			t.Logf("stopping control plane: %v", err)
		}
	})
	c, err := client.New(cfg, client.Options{Scheme: s})
	if err != nil {
		t.Fatalf("client for test control plane: %v", err)
	}
	return &Env{Config: cfg, Client: c, Scheme: s, Environment: env}
}
