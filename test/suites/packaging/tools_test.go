package packaging

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/go-logr/logr"
	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/podidentity/podidentity/test/toolbox/testenv"
)

var update = flag.Bool("update", false, "rewrite the golden files and the chart's copy of the CRDs")

// certManagerVersion is the cert-manager release whose CRDs (deploy/crds in its Go module) the install tests
// load into the API server.
const certManagerVersion = "v1.21.2"

// kubeVersion is the Kubernetes version helm renders and lints for (the test control plane's; helm built
// from Go modules otherwise assumes an old default that the chart's kubeVersion refuses).
const kubeVersion = "v1.37.2"

// TestMain silences controller-runtime's global logger (envtest and cert-controller log through it; unset, it
// prints a stack trace).
func TestMain(m *testing.M) {
	ctrl.SetLogger(logr.Discard())
	os.Exit(m.Run())
}

func repoRoot() string { return testenv.RepoRoot() }

func chartDir() string { return filepath.Join(repoRoot(), "charts", "podidentity") }

// tool returns bin/<name>, building it from hack/tools/<name> (its own module, pinned there) when missing.
// Building helm or kustomize takes minutes on a cold cache, so -short skips the tests that need them.
func tool(t *testing.T, name, pkg string) string {
	t.Helper()
	if testing.Short() {
		t.Skipf("needs %s built from Go modules (hack/tools/%s); run without -short", name, name)
	}
	bin := filepath.Join(repoRoot(), "bin", name)
	modDir := filepath.Join(repoRoot(), "hack", "tools", name)
	// Reuse the binary unless the pinned version (go.mod) changed after it was built.
	if b, err := os.Stat(bin); err == nil {
		if m, err := os.Stat(filepath.Join(modDir, "go.mod")); err == nil && !m.ModTime().After(b.ModTime()) {
			return bin
		}
	}
	t.Logf("building %s from hack/tools/%s into bin/ (once; a few minutes cold)", name, name)
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", bin, pkg)
	cmd.Dir = modDir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building %s: %v\n%s", name, err, out)
	}
	return bin
}

func helmBin(t *testing.T) string { return tool(t, "helm", "helm.sh/helm/v3/cmd/helm") }

func kustomizeBin(t *testing.T) string {
	return tool(t, "kustomize", "sigs.k8s.io/kustomize/kustomize/v5")
}

// run runs a command and returns stdout, stderr and whether it succeeded.
func run(t *testing.T, bin string, args ...string) (string, string, error) {
	t.Helper()
	var out, errb bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	// helm keeps caches and config under $HOME; keep them out of the user's.
	home := t.TempDir()
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+home, "HELM_CONFIG_HOME="+home, "HELM_DATA_HOME="+home)
	err := cmd.Run()
	return out.String(), errb.String(), err
}

// helmTemplate renders the chart as release "podidentity" in namespace "podidentity-system" with the values
// files and --set arguments given.
func helmTemplate(t *testing.T, valuesFiles []string, sets ...string) (string, string, error) {
	t.Helper()
	var extra []string
	for _, f := range valuesFiles {
		extra = append(extra, "--values", f)
	}
	return helmTemplateArgs(t, extra, sets...)
}

// helmTemplateArgs is helmTemplate with any other arguments of helm template (--set-json, --values).
func helmTemplateArgs(t *testing.T, extra []string, sets ...string) (string, string, error) {
	t.Helper()
	return helmTemplateOn(t, kubeVersion, extra, sets...)
}

// helmTemplateOn is helmTemplateArgs for a cluster of Kubernetes version kube: what `helm install` against
// such a cluster would render or refuse.
func helmTemplateOn(t *testing.T, kube string, extra []string, sets ...string) (string, string, error) {
	t.Helper()
	args := []string{"template", "podidentity", chartDir(), "--namespace", "podidentity-system", "--kube-version", kube, "--include-crds=false"}
	args = append(args, extra...)
	for _, s := range sets {
		args = append(args, "--set", s)
	}
	return run(t, helmBin(t), args...)
}

// certManagerCRDs returns the directory of cert-manager's CRDs in its Go module (downloaded through the module
// proxy like any dependency).
func certManagerCRDs(t *testing.T) string {
	t.Helper()
	cmd := exec.Command("go", "mod", "download", "-json", "github.com/cert-manager/cert-manager@"+certManagerVersion)
	cmd.Dir = t.TempDir()
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go mod download cert-manager %s: %v\n%s", certManagerVersion, err, out)
	}
	var mod struct{ Dir, Error string }
	if err := json.Unmarshal(out, &mod); err != nil || mod.Dir == "" {
		t.Fatalf("go mod download cert-manager: no module directory (%v): %s", err, out)
	}
	dir := filepath.Join(mod.Dir, "deploy", "crds")
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("cert-manager %s has no deploy/crds: %v", certManagerVersion, err)
	}
	return dir
}

// checkGolden compares got with testdata/<name> or, with -update, rewrites it.
func checkGolden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%s: %v (run `go test ./test/suites/packaging -update` to create it)", path, err)
	}
	if string(want) != got {
		t.Errorf("%s is stale: the rendering changed. Review the diff below, then run `go test ./test/suites/packaging -update`.\n%s", path, lineDiff(string(want), got))
	}
}

// lineDiff shows the first lines that differ, enough to see what changed.
func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	shown := 0
	for i := 0; i < len(w) || i < len(g); i++ {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			b.WriteString("line " + strconv.Itoa(i+1) + ":\n  want: " + wl + "\n  got:  " + gl + "\n")
			if shown++; shown == 10 {
				b.WriteString("...\n")
				break
			}
		}
	}
	return b.String()
}
