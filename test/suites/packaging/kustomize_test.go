package packaging

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"
)

func kustomizeDir() string { return filepath.Join(repoRoot(), "manifests", "kustomize") }

const generatedHeader = "# Generated from charts/podidentity by `go test ./test/suites/packaging -run Kustomize -update`; do not edit.\n"

// kustomizeInputs renders the generated files of manifests/kustomize from the chart's default values:
// base/podidentity.yaml (every object but cert-manager's, and no inject-ca-from annotation),
// overlays/cert-manager/certificates.yaml (cert-manager's objects) and base/crds.yaml (manifests/crds).
func kustomizeInputs(t *testing.T) map[string]string {
	t.Helper()
	out, errOut, err := helmTemplate(t, nil)
	if err != nil {
		t.Fatalf("helm template: %v\n%s", err, errOut)
	}
	var base, certs bytes.Buffer
	base.WriteString(generatedHeader)
	certs.WriteString(generatedHeader)
	for _, o := range decodeAll(t, out) {
		if _, hook := o.GetAnnotations()["helm.sh/hook"]; hook {
			continue // `helm test` only
		}
		dst := &base
		if o.GroupVersionKind().Group == "cert-manager.io" {
			dst = &certs
		}
		if o.GetKind() == "MutatingWebhookConfiguration" {
			a := o.GetAnnotations()
			delete(a, "cert-manager.io/inject-ca-from")
			if len(a) == 0 {
				a = nil
			}
			o.SetAnnotations(a)
		}
		b, err := yaml.Marshal(o.Object)
		if err != nil {
			t.Fatal(err)
		}
		dst.WriteString("---\n")
		dst.Write(b)
	}
	var crds bytes.Buffer
	crds.WriteString("# Generated from manifests/crds by `go test ./test/suites/packaging -run Kustomize -update`; do not edit.\n")
	files, _ := filepath.Glob(filepath.Join(repoRoot(), "manifests", "crds", "*.yaml"))
	sort.Strings(files)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.HasPrefix(b, []byte("---")) {
			crds.WriteString("---\n")
		}
		crds.Write(b)
	}
	return map[string]string{
		"base/podidentity.yaml":                   base.String(),
		"base/crds.yaml":                          crds.String(),
		"overlays/cert-manager/certificates.yaml": certs.String(),
	}
}

// TestKustomizeManifestsAreCurrent fails when manifests/kustomize's generated files no longer match the chart.
func TestKustomizeManifestsAreCurrent(t *testing.T) {
	for rel, want := range kustomizeInputs(t) {
		path := filepath.Join(kustomizeDir(), rel)
		if *update {
			if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v: run `go test ./test/suites/packaging -run Kustomize -update`", err)
		}
		if string(got) != want {
			t.Errorf("manifests/kustomize/%s is stale (the chart or the CRDs changed): run `go test ./test/suites/packaging -run Kustomize -update`\n%s", rel, lineDiff(string(got), want))
		}
	}
}

func kustomizeBuild(t *testing.T, overlay string) []*unstructured.Unstructured {
	t.Helper()
	out, errOut, err := run(t, kustomizeBin(t), "build", filepath.Join(kustomizeDir(), overlay))
	if err != nil {
		t.Fatalf("kustomize build %s: %v\n%s", overlay, err, errOut)
	}
	return decodeAll(t, out)
}

// TestKustomizeMatchesChart: the cert-manager overlay produces the same objects as the chart's defaults
// (plus the CRDs, which helm installs from crds/, and the namespace, which helm's --create-namespace makes).
func TestKustomizeMatchesChart(t *testing.T) {
	got := byKey(t, kustomizeBuild(t, "overlays/cert-manager"))
	out, errOut, err := helmTemplate(t, nil)
	if err != nil {
		t.Fatalf("helm template: %v\n%s", err, errOut)
	}
	var chart []*unstructured.Unstructured
	for _, o := range decodeAll(t, out) {
		if _, hook := o.GetAnnotations()["helm.sh/hook"]; !hook {
			chart = append(chart, o)
		}
	}
	files, _ := filepath.Glob(filepath.Join(chartDir(), "crds", "*.yaml"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		chart = append(chart, decodeAll(t, string(b))...)
	}
	ns := &unstructured.Unstructured{}
	ns.SetAPIVersion("v1")
	ns.SetKind("Namespace")
	ns.SetName("podidentity-system")
	chart = append(chart, ns)
	want := byKey(t, chart)

	for k, w := range want {
		g, ok := got[k]
		if !ok {
			t.Errorf("kustomize lacks %s", k)
			continue
		}
		if !reflect.DeepEqual(g, w) {
			gj, _ := json.MarshalIndent(g, "", " ")
			wj, _ := json.MarshalIndent(w, "", " ")
			t.Errorf("%s differs from the chart's:\n%s", k, lineDiff(string(wj), string(gj)))
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("kustomize adds %s, which the chart does not render", k)
		}
	}
}

// TestKustomizeInstallsIntoAPIServer applies `kustomize build overlays/cert-manager` to a real API server with
// cert-manager's CRDs, with strict field validation.
func TestKustomizeInstallsIntoAPIServer(t *testing.T) {
	objs := kustomizeBuild(t, "overlays/cert-manager")
	env := startAPIServer(t)
	// The namespace and the CRDs first (the rest depends on them), as `kubectl apply` users are told to.
	var first, rest []*unstructured.Unstructured
	for _, o := range objs {
		if o.GetKind() == "Namespace" || o.GetKind() == "CustomResourceDefinition" {
			first = append(first, o)
		} else {
			rest = append(rest, o)
		}
	}
	applyAll(t, env.Config, first)
	applyAll(t, env.Config, rest)
}

func byKey(t *testing.T, objs []*unstructured.Unstructured) map[string]map[string]any {
	t.Helper()
	m := map[string]map[string]any{}
	for _, o := range objs {
		k := strings.Join([]string{o.GroupVersionKind().String(), o.GetNamespace(), o.GetName()}, " ")
		if _, dup := m[k]; dup {
			t.Errorf("%s appears twice", k)
		}
		// Normalise through JSON so that numbers and empty values compare alike from both sources.
		b, err := json.Marshal(o.Object)
		if err != nil {
			t.Fatal(err)
		}
		var v map[string]any
		if err := json.Unmarshal(b, &v); err != nil {
			t.Fatal(err)
		}
		m[k] = v
	}
	return m
}
