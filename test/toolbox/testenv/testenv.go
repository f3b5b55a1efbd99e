// Package testenv starts a real kube-apiserver and etcd (controller-runtime envtest) with the project's CRDs
// installed, for integration tests. The binaries come from KUBEBUILDER_ASSETS: bin/ (the newest Kubernetes,
// `make envtest-bins`) or bin/k8s-1.NN/ (the oldest the chart claims, `make test-oldest`), built from Go
// modules; nothing is downloaded.
package testenv

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/version"
	"k8s.io/client-go/discovery"
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
	// Version is the API server's own version, as discovery reports it: the suites run against the newest
	// Kubernetes release (bin/) and the oldest one the chart claims (make test-oldest, bin/k8s-1.NN).
	Version *version.Info
}

// ExpectVersionEnv names the variable that pins the Kubernetes version the control plane must report
// (make test-oldest sets it): a run meant for the oldest minor fails instead of silently testing another
// kube-apiserver found in KUBEBUILDER_ASSETS.
const ExpectVersionEnv = "PODIDENTITY_TEST_KUBE_VERSION"

// RepoRoot is the repository's top directory, found from this source file.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", "..", ".."))
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
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		t.Fatalf("discovery client for test control plane: %v", err)
	}
	v, err := dc.ServerVersion()
	if err != nil {
		t.Fatalf("reading the test control plane's version: %v", err)
	}
	if err := CheckExpectedVersion(os.Getenv(ExpectVersionEnv), v.GitVersion); err != nil {
		t.Fatalf("%v (kube-apiserver from %s)", err, assets)
	}
	return &Env{Config: cfg, Client: c, Scheme: s, Environment: env, Version: v}
}

// CheckExpectedVersion compares the control plane's version with the one the run asked for (ExpectVersionEnv);
// an empty want accepts any version.
func CheckExpectedVersion(want, got string) error {
	if want == "" || want == got {
		return nil
	}
	return fmt.Errorf("the test control plane is Kubernetes %s but %s=%s: KUBEBUILDER_ASSETS holds the wrong "+
		"kube-apiserver; run `make test-oldest` (it builds bin/k8s-1.NN/kube-apiserver) or unset %s",
		got, ExpectVersionEnv, want, ExpectVersionEnv)
}

// Minor is the control plane's Kubernetes minor version (32 for v1.32.13), from its git version, which
// providers' builds keep in semver form ("v1.32.4-eks-...", "v1.32.4+k3s1") while their Minor field may
// carry a "+".
func (e *Env) Minor() int {
	m, err := MinorOf(e.Version.GitVersion)
	if err != nil {
		panic(err) // Start has read the version from a kube-apiserver this project built
	}
	return m
}

// MinorOf reads the minor version of a Kubernetes git version string (v1.MINOR.PATCH[-+]...).
func MinorOf(gitVersion string) (int, error) {
	parts := strings.SplitN(strings.TrimPrefix(gitVersion, "v"), ".", 3)
	if len(parts) < 2 || parts[0] != "1" {
		return 0, fmt.Errorf("version %q is not a Kubernetes version (v1.MINOR.PATCH)", gitVersion)
	}
	m, err := strconv.Atoi(parts[1])
	if err != nil {
		return 0, fmt.Errorf("version %q: the minor %q is not a number", gitVersion, parts[1])
	}
	return m, nil
}

// RequireMinor skips the test, saying why and on which version, when the control plane is older than
// 1.minor: for tests of a feature that needs a newer minor than the oldest one the suites also run on (the
// product refuses or degrades that feature there, and a test of that behaviour runs instead).
func (e *Env) RequireMinor(t testing.TB, minor int, why string) {
	t.Helper()
	if e.Minor() < minor {
		t.Skipf("needs Kubernetes 1.%d or newer (%s); the test control plane is %s", minor, why, e.Version.GitVersion)
	}
}
