package packaging

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

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

// TestKubeVersionSupport: the chart installs on every minor from Chart.yaml's kubeVersion (1.29, native sidecars
// on by default) with its defaults and each layout, and refuses a feature that needs a newer minor with a
// message that names the feature, the minor it needs and the value that turns it off (docs/install.md,
// "Supported versions"). Providers' version strings (EKS's, k3s's) compare by their release.
func TestKubeVersionSupport(t *testing.T) {
	guardRefused := []string{"guard mode (guard.enabled=true) needs Kubernetes 1.30 or newer", "ValidatingAdmissionPolicy", "Set guard.enabled=false", "Supported versions"}
	for _, tc := range []struct {
		kube string
		sets []string
		// want: substrings of helm's error, each required; nil: rendered.
		want []string
		// rendered: kind/name of objects that must (true) or must not (false) be rendered.
		rendered map[string]bool
	}{
		{kube: "v1.28.15", want: []string{"chart requires kubeVersion: >=1.29.0-0", "incompatible with Kubernetes v1.28.15"}},
		{kube: "v1.28.15", sets: []string{"webhook.mode=classic"}, want: []string{"chart requires kubeVersion: >=1.29.0-0"}},
		{kube: "v1.29.0", rendered: map[string]bool{
			"Deployment/podidentity-webhook": true,
			// Below 1.30 the annotation policy is skipped (a NOTES warning says so), so the defaults install.
			"ValidatingAdmissionPolicy/podidentity-identities-annotation": false,
		}},
		{kube: "v1.29.0", sets: []string{"webhook.mode=native"}, rendered: map[string]bool{"Deployment/podidentity-webhook": true}},
		{kube: "v1.29.0", sets: []string{"webhook.mode=classic"}, rendered: map[string]bool{"Deployment/podidentity-webhook": true}},
		{kube: "v1.29.0", sets: []string{"redirect.mode=cni"}, rendered: map[string]bool{"DaemonSet/podidentity-node": true}},
		{kube: "v1.29.0", sets: []string{"identityAnnotationPolicy.enabled=false"}, rendered: map[string]bool{"Deployment/podidentity-webhook": true}},
		{kube: "v1.29.0", sets: []string{"guard.enabled=true"}, want: guardRefused},
		{kube: "v1.29.15", sets: []string{"guard.enabled=true", "redirect.mode=cni"}, want: guardRefused},
		{kube: "v1.29.10-eks-1a2b3c4", rendered: map[string]bool{"Deployment/podidentity-webhook": true}},
		{kube: "v1.29.10-eks-1a2b3c4", sets: []string{"guard.enabled=true"}, want: guardRefused},
		{kube: "v1.30.0", rendered: map[string]bool{"ValidatingAdmissionPolicy/podidentity-identities-annotation": true}},
		{kube: "v1.30.0", sets: []string{"guard.enabled=true"}, rendered: map[string]bool{
			"ValidatingAdmissionPolicy/podidentity-guard":        true,
			"ValidatingAdmissionPolicyBinding/podidentity-guard": true,
		}},
		{kube: "v1.30.2+k3s1", sets: []string{"guard.enabled=true"}, rendered: map[string]bool{"ValidatingAdmissionPolicy/podidentity-guard": true}},
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

// TestSupportedVersionsDocumented: docs/install.md's "Supported versions" quotes Chart.yaml's kubeVersion and names
// the Kubernetes version the suites run on, so that the statement cannot drift from the chart or the tests.
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
	install, err := os.ReadFile(filepath.Join(repoRoot(), "docs", "install.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, section, found := strings.Cut(string(install), "\n## Supported versions\n")
	if !found {
		t.Fatal(`docs/install.md has no "## Supported versions" section`)
	}
	section, _, _ = strings.Cut(section, "\n## ")
	for _, want := range []string{"`kubeVersion: \"" + meta.KubeVersion + "\"`", kubeVersion, "guard.enabled", "identityAnnotationPolicy"} {
		if !strings.Contains(section, want) {
			t.Errorf("docs/install.md, \"Supported versions\", does not mention %s", want)
		}
	}
}
