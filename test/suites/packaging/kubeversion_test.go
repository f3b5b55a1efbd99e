package packaging

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"golang.org/x/mod/modfile"
	"sigs.k8s.io/yaml"
)

// helmTemplateFor renders the chart as helmTemplate does, for the Kubernetes version given instead of the test
// control plane's: what `helm install` against a cluster of that version would render or refuse.
func helmTemplateFor(t *testing.T, kube string, sets ...string) (string, string, error) {
	t.Helper()
	args := []string{"template", "podidentity", chartDir(), "--namespace", "podidentity-system", "--kube-version", kube, "--include-crds=false"}
	for _, s := range sets {
		args = append(args, "--set", s)
	}
	return run(t, helmBin(t), args...)
}

// TestKubeVersionSupport: the chart installs on every minor from Chart.yaml's kubeVersion (1.32, the oldest minor
// AKS still supports, under long-term support) with its defaults and each layout, including the policies that
// need a ValidatingAdmissionPolicy (1.30+), and helm refuses older clusters with a message that names the
// floor (docs/install.md, "Supported versions"). Providers' version strings (EKS's, k3s's) compare by their release.
func TestKubeVersionSupport(t *testing.T) {
	refused := func(v string) []string {
		return []string{"chart requires kubeVersion: >=1.32.0-0", "incompatible with Kubernetes " + v}
	}
	for _, tc := range []struct {
		kube string
		sets []string
		// want: substrings of helm's error, each required; nil: rendered.
		want []string
		// rendered: kind/name of objects that must (true) or must not (false) be rendered.
		rendered map[string]bool
	}{
		{kube: "v1.29.15", want: refused("v1.29.15")},
		{kube: "v1.31.14", want: refused("v1.31.14")},
		{kube: "v1.31.14", sets: []string{"webhook.mode=classic"}, want: refused("v1.31.14")},
		{kube: "v1.31.14", sets: []string{"guard.enabled=true"}, want: refused("v1.31.14")},
		{kube: "v1.31.9-eks-1a2b3c4", want: refused("v1.31.9")}, // helm names the release without the suffix
		{kube: "v1.32.0", rendered: map[string]bool{
			"Deployment/podidentity-webhook":                              true,
			"ValidatingAdmissionPolicy/podidentity-identities-annotation": true,
		}},
		{kube: "v1.32.0", sets: []string{"webhook.mode=native"}, rendered: map[string]bool{"Deployment/podidentity-webhook": true}},
		{kube: "v1.32.0", sets: []string{"webhook.mode=classic"}, rendered: map[string]bool{"Deployment/podidentity-webhook": true}},
		{kube: "v1.32.0", sets: []string{"redirect.mode=cni"}, rendered: map[string]bool{"DaemonSet/podidentity-node": true}},
		{kube: "v1.32.0", sets: []string{"identityAnnotationPolicy.enabled=false"}, rendered: map[string]bool{
			"Deployment/podidentity-webhook":                              true,
			"ValidatingAdmissionPolicy/podidentity-identities-annotation": false,
		}},
		{kube: "v1.32.0", sets: []string{"guard.enabled=true"}, rendered: map[string]bool{
			"ValidatingAdmissionPolicy/podidentity-guard":        true,
			"ValidatingAdmissionPolicyBinding/podidentity-guard": true,
		}},
		{kube: "v1.32.4-eks-1a2b3c4", rendered: map[string]bool{"Deployment/podidentity-webhook": true}},
		{kube: "v1.32.2+k3s1", sets: []string{"guard.enabled=true"}, rendered: map[string]bool{"ValidatingAdmissionPolicy/podidentity-guard": true}},
		{kube: kubeVersion, sets: []string{"guard.enabled=true", "redirect.mode=cni", "webhook.mode=classic"}, rendered: map[string]bool{
			"ValidatingAdmissionPolicy/podidentity-guard": true,
			"DaemonSet/podidentity-node":                  true,
		}},
	} {
		t.Run(tc.kube+"/"+strings.Join(append([]string{"defaults"}, tc.sets...), ","), func(t *testing.T) {
			out, errOut, err := helmTemplateFor(t, tc.kube, tc.sets...)
			if tc.want != nil {
				if err == nil {
					t.Fatalf("helm template --kube-version %s accepted %v", tc.kube, tc.sets)
				}
				for _, w := range tc.want {
					if !strings.Contains(errOut, w) {
						t.Errorf("error lacks %q:\n%s", w, errOut)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("helm template --kube-version %s: %v\n%s", tc.kube, err, errOut)
			}
			have := map[string]bool{}
			for _, o := range decodeAll(t, out) {
				have[o.GetKind()+"/"+o.GetName()] = true
			}
			for obj, want := range tc.rendered {
				if have[obj] != want {
					t.Errorf("%s rendered = %v, want %v", obj, have[obj], want)
				}
			}
		})
	}
}

// TestSupportedVersionsDocumented: the oldest minor Chart.yaml's kubeVersion admits is the one whose
// kube-apiserver the integration suites run against a second time (hack/tools/k8s-oldest pins it, the Makefile's
// test-oldest builds and runs it), and docs/install.md's "Supported versions" quotes the kubeVersion and names both
// tested versions, so that the claim cannot drift from the chart or the tests.
func TestSupportedVersionsDocumented(t *testing.T) {
	chart, err := os.ReadFile(filepath.Join(chartDir(), "Chart.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var meta struct {
		KubeVersion string `json:"kubeVersion"`
	}
	if err := yaml.Unmarshal(chart, &meta); err != nil || meta.KubeVersion == "" {
		t.Fatalf("Chart.yaml: no kubeVersion (%v)", err)
	}
	floor := regexp.MustCompile(`^>=1\.(\d+)\.0-0$`).FindStringSubmatch(meta.KubeVersion)
	if floor == nil {
		t.Fatalf("Chart.yaml: kubeVersion %q is not \">=1.MINOR.0-0\" (a floor the suites can run on)", meta.KubeVersion)
	}
	oldest := oldestTested(t)
	if want := "v1." + floor[1] + "."; !strings.HasPrefix(oldest, want) {
		t.Errorf("Chart.yaml admits 1.%s and up but the oldest kube-apiserver the suites run on is %s "+
			"(hack/tools/k8s-oldest/go.mod): test the oldest minor the chart claims", floor[1], oldest)
	}
	makefile, err := os.ReadFile(filepath.Join(repoRoot(), "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"K8S_OLDEST_VERSION := " + oldest + "\n", "K8S_OLDEST_MINOR   := " + floor[1] + "\n"} {
		if !strings.Contains(string(makefile), want) {
			t.Errorf("Makefile lacks %q: it must build and run the kube-apiserver hack/tools/k8s-oldest pins", strings.TrimSpace(want))
		}
	}
	install, err := os.ReadFile(filepath.Join(repoRoot(), "docs", "install.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, section, found := strings.Cut(string(install), "\n## Supported versions\n")
	if !found {
		t.Fatal(`docs/install.md has no "## Supported versions" section`)
	}
	section, _, _ = strings.Cut(section, "\n## ")
	for _, want := range []string{"`kubeVersion: \"" + meta.KubeVersion + "\"`", kubeVersion, oldest, "make test-oldest", "guard.enabled", "identityAnnotationPolicy"} {
		if !strings.Contains(section, want) {
			t.Errorf("docs/install.md, \"Supported versions\", does not mention %s", want)
		}
	}
}

// oldestTested is the Kubernetes release hack/tools/k8s-oldest pins (k8s.io/kubernetes in its go.mod).
func oldestTested(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot(), "hack", "tools", "k8s-oldest", "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	f, err := modfile.ParseLax("go.mod", data, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range f.Require {
		if r.Mod.Path == "k8s.io/kubernetes" {
			return r.Mod.Version
		}
	}
	t.Fatal("hack/tools/k8s-oldest/go.mod does not require k8s.io/kubernetes")
	return ""
}
