package packaging

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// TestChartCRDsAreGenerated fails when the chart's crds/ differ from manifests/crds/ (generated from api/ by
// `make generate`). helm reads crds/ only from inside the chart, so the copy is kept by this test:
// `go test ./test/suites/packaging -run CRDs -update` refreshes it.
func TestChartCRDsAreGenerated(t *testing.T) {
	src := filepath.Join(repoRoot(), "manifests", "crds")
	dst := filepath.Join(chartDir(), "crds")
	srcFiles, err := filepath.Glob(filepath.Join(src, "*.yaml"))
	if err != nil || len(srcFiles) == 0 {
		t.Fatalf("no CRDs in %s (%v): run `make generate`", src, err)
	}
	if *update {
		old, _ := filepath.Glob(filepath.Join(dst, "*.yaml"))
		for _, f := range old {
			if err := os.Remove(f); err != nil {
				t.Fatal(err)
			}
		}
		for _, f := range srcFiles {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dst, filepath.Base(f)), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	dstFiles, _ := filepath.Glob(filepath.Join(dst, "*.yaml"))
	names := func(fs []string) []string {
		var n []string
		for _, f := range fs {
			n = append(n, filepath.Base(f))
		}
		sort.Strings(n)
		return n
	}
	if got, want := strings.Join(names(dstFiles), ","), strings.Join(names(srcFiles), ","); got != want {
		t.Fatalf("charts/podidentity/crds holds %s, manifests/crds holds %s: run `go test ./test/suites/packaging -run CRDs -update`", got, want)
	}
	for _, f := range srcFiles {
		want, _ := os.ReadFile(f)
		got, _ := os.ReadFile(filepath.Join(dst, filepath.Base(f)))
		if !bytes.Equal(got, want) {
			t.Errorf("charts/podidentity/crds/%s differs from manifests/crds: run `go test ./test/suites/packaging -run CRDs -update`", filepath.Base(f))
		}
	}
}

func TestHelmLint(t *testing.T) {
	for _, tc := range []struct {
		name   string
		values []string
	}{
		{"defaults", nil},
		{"no-cert-manager", []string{"testdata/values/no-cert-manager.yaml"}},
		{"full", []string{"testdata/values/full.yaml"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := []string{"lint", "--strict", chartDir(), "--namespace", "podidentity-system", "--kube-version", kubeVersion}
			for _, v := range tc.values {
				args = append(args, "--values", v)
			}
			out, errOut, err := run(t, helmBin(t), args...)
			if err != nil {
				t.Fatalf("helm lint: %v\n%s%s", err, out, errOut)
			}
		})
	}
}

// goldenCases are the value sets rendered to golden files (testdata/golden/<name>.yaml).
var goldenCases = []struct {
	name   string
	values []string
}{
	{"defaults", nil},
	{"no-cert-manager", []string{"testdata/values/no-cert-manager.yaml"}},
	{"full", []string{"testdata/values/full.yaml"}},
	{"cni", []string{"testdata/values/cni.yaml"}},
	// Values files of AAD Pod Identity's chart (legacy_test.go checks what they map to).
	{"aad-pod-identity-3.x", []string{legacy3x}},
	{"aad-pod-identity-4.x", []string{legacy4x}},
}

func TestHelmTemplateGolden(t *testing.T) {
	// A golden file without a case is stale too (a value set was renamed or removed).
	files, _ := filepath.Glob(filepath.Join("testdata", "golden", "*.yaml"))
	for _, f := range files {
		known := false
		for _, tc := range goldenCases {
			known = known || filepath.Base(f) == tc.name+".yaml"
		}
		if !known {
			t.Errorf("%s belongs to no value set in goldenCases: delete it", f)
		}
	}
	for _, tc := range goldenCases {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, err := helmTemplate(t, tc.values)
			if err != nil {
				t.Fatalf("helm template: %v\n%s", err, errOut)
			}
			checkGolden(t, filepath.Join("golden", tc.name+".yaml"), out)
		})
	}
}

// TestHelmTemplateInvariants checks, on each golden value set, what the issue requires of the objects
// (independently of the golden files, which only say "unchanged").
func TestHelmTemplateInvariants(t *testing.T) {
	for _, tc := range goldenCases {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, err := helmTemplate(t, tc.values)
			if err != nil {
				t.Fatalf("helm template: %v\n%s", err, errOut)
			}
			objs := decodeAll(t, out)
			mwc := find(t, objs, "MutatingWebhookConfiguration", "podidentity-webhook")
			hooks, _, _ := unstructured.NestedSlice(mwc.Object, "webhooks")
			if len(hooks) != 1 {
				t.Fatalf("want 1 webhook, got %d", len(hooks))
			}
			h := hooks[0].(map[string]any)
			for field, want := range map[string]string{"failurePolicy": "Fail", "sideEffects": "None", "reinvocationPolicy": "IfNeeded"} {
				if got, _, _ := unstructured.NestedString(h, field); got != want {
					t.Errorf("webhook %s = %q, want %q", field, got, want)
				}
			}
			if got, _, _ := unstructured.NestedInt64(h, "timeoutSeconds"); got < 1 || got > 10 {
				t.Errorf("timeoutSeconds = %d, want a short timeout (1-10)", got)
			}
			if _, found, _ := unstructured.NestedFieldNoCopy(h, "clientConfig", "caBundle"); found {
				t.Error("caBundle is templated; it must be injected (cert-manager or the webhook), never rendered")
			}
			exprs, _, _ := unstructured.NestedSlice(h, "namespaceSelector", "matchExpressions")
			var optIn, excluded bool
			for _, e := range exprs {
				m := e.(map[string]any)
				vals, _, _ := unstructured.NestedStringSlice(m, "values")
				switch {
				case m["key"] == "podidentity.io/injection" && m["operator"] == "In" && strings.Join(vals, ",") == "enabled":
					optIn = true
				case m["key"] == "kubernetes.io/metadata.name" && m["operator"] == "NotIn":
					excluded = contains(vals, "kube-system") && contains(vals, "podidentity-system")
				}
			}
			if !optIn || !excluded {
				t.Errorf("namespaceSelector must require podidentity.io/injection=enabled and exclude kube-system and the release namespace: %v", exprs)
			}
			_, annotated := mwc.GetAnnotations()["cert-manager.io/inject-ca-from"]
			certManager := tc.name != "no-cert-manager"
			if annotated != certManager {
				t.Errorf("cert-manager.io/inject-ca-from present = %v, want %v", annotated, certManager)
			}
			if certManager {
				if got, want := mwc.GetAnnotations()["cert-manager.io/inject-ca-from"], "podidentity-system/podidentity-webhook"; got != want {
					t.Errorf("inject-ca-from = %q, want %q (the serving Certificate)", got, want)
				}
				cert := find(t, objs, "Certificate", "podidentity-webhook")
				dns, _, _ := unstructured.NestedStringSlice(cert.Object, "spec", "dnsNames")
				if !contains(dns, "podidentity-webhook.podidentity-system.svc") {
					t.Errorf("serving certificate dnsNames %v lack <svc>.<ns>.svc", dns)
				}
				if issuer, _, _ := unstructured.NestedString(cert.Object, "spec", "issuerRef", "name"); issuer != "podidentity-ca" {
					t.Errorf("serving certificate issued by %q, want the CA Issuer podidentity-ca", issuer)
				}
				ca := find(t, objs, "Certificate", "podidentity-ca")
				if isCA, _, _ := unstructured.NestedBool(ca.Object, "spec", "isCA"); !isCA {
					t.Error("podidentity-ca Certificate is not a CA")
				}
				find(t, objs, "Issuer", "podidentity-selfsigned")
				find(t, objs, "Issuer", "podidentity-ca")
			}
			dep := find(t, objs, "Deployment", "podidentity-webhook")
			if r, _, _ := unstructured.NestedInt64(dep.Object, "spec", "replicas"); r < 2 {
				t.Errorf("webhook replicas = %d, want >= 2", r)
			}
			if _, found, _ := unstructured.NestedMap(dep.Object, "spec", "template", "spec", "affinity", "podAntiAffinity"); !found {
				t.Error("webhook Deployment has no pod anti-affinity")
			}
			find(t, objs, "PodDisruptionBudget", "podidentity-webhook")
			find(t, objs, "Service", "podidentity-webhook")
			// Least privilege: only the webhook, the assigner and (CNI mode) the node agent have accounts; the
			// sidecar and init none.
			cni := tc.name == "cni"
			for _, o := range objs {
				if o.GetKind() == "ServiceAccount" && o.GetName() != "podidentity-webhook" && o.GetName() != "podidentity-assigner" &&
					(!cni || o.GetName() != "podidentity-node") {
					t.Errorf("unexpected ServiceAccount %s", o.GetName())
				}
			}
			// CNI mode: the node agent on every node, and its RBAC read-only but for Events.
			if cni {
				ds := find(t, objs, "DaemonSet", "podidentity-node")
				spec, _, _ := unstructured.NestedMap(ds.Object, "spec", "template", "spec")
				if spec["hostNetwork"] != true || spec["hostPID"] != true {
					t.Errorf("node agent: hostNetwork %v, hostPID %v; it needs both (it enters pods' network namespaces)", spec["hostNetwork"], spec["hostPID"])
				}
				role := find(t, objs, "ClusterRole", "podidentity-node")
				rules, _, _ := unstructured.NestedSlice(role.Object, "rules")
				for _, r := range rules {
					m := r.(map[string]any)
					res, _, _ := unstructured.NestedStringSlice(m, "resources")
					verbs, _, _ := unstructured.NestedStringSlice(m, "verbs")
					if !contains(res, "events") && (contains(verbs, "create") || contains(verbs, "update") || contains(verbs, "patch") || contains(verbs, "delete")) {
						t.Errorf("node agent may %v %v: it needs only to read pods, namespaces, exceptions and its DaemonSet", verbs, res)
					}
				}
			} else {
				for _, o := range objs {
					if o.GetKind() == "DaemonSet" {
						t.Errorf("DaemonSet %s rendered outside CNI mode", o.GetName())
					}
				}
			}
		})
	}
}

func TestAzureIdentitiesMapFormat(t *testing.T) {
	out, errOut, err := helmTemplate(t, []string{"testdata/values/full.yaml"})
	if err != nil {
		t.Fatalf("helm template: %v\n%s", err, errOut)
	}
	objs := decodeAll(t, out)
	for _, tc := range []struct{ identity, namespace, binding, selector, clientID string }{
		{"app-identity", "apps", "app-identity-binding", "app", "33333333-3333-3333-3333-333333333333"},
		{"batch-sp", "batch", "batch-sp-binding", "batch", "44444444-4444-4444-4444-444444444444"},
	} {
		id := find(t, objs, "AzureIdentity", tc.identity)
		if id.GetNamespace() != tc.namespace {
			t.Errorf("AzureIdentity %s in namespace %q, want %q", tc.identity, id.GetNamespace(), tc.namespace)
		}
		if got, _, _ := unstructured.NestedString(id.Object, "spec", "clientID"); got != tc.clientID {
			t.Errorf("AzureIdentity %s clientID %q, want %q", tc.identity, got, tc.clientID)
		}
		b := find(t, objs, "AzureIdentityBinding", tc.binding)
		if got, _, _ := unstructured.NestedString(b.Object, "spec", "azureIdentity"); got != tc.identity {
			t.Errorf("binding %s names identity %q, want %q", tc.binding, got, tc.identity)
		}
		if got, _, _ := unstructured.NestedString(b.Object, "spec", "selector"); got != tc.selector {
			t.Errorf("binding %s selector %q, want %q", tc.binding, got, tc.selector)
		}
	}
}

// TestSchemaRejectsBadValues: values.schema.json turns mistakes into messages that name the value.
func TestSchemaRejectsBadValues(t *testing.T) {
	for _, tc := range []struct {
		name string
		sets []string
		want []string // substrings of helm's error, each required
	}{
		{"zero webhook replicas", []string{"webhook.replicas=0"}, []string{"/webhook/replicas", "minimum"}},
		{"unknown mode", []string{"webhook.mode=sidecar"}, []string{"/webhook/mode", "auto", "native", "classic"}},
		{"failure policy", []string{"webhook.failurePolicy=Maybe"}, []string{"/webhook/failurePolicy", "Fail", "Ignore"}},
		{"long timeout", []string{"webhook.timeoutSeconds=60"}, []string{"/webhook/timeoutSeconds", "maximum"}},
		{"port out of range", []string{"sidecar.port=70000"}, []string{"/sidecar/port", "maximum"}},
		{"root sidecar", []string{"sidecar.uid=0"}, []string{"/sidecar/uid", "minimum"}},
		{"pull policy", []string{"image.pullPolicy=Sometimes"}, []string{"/image/pullPolicy", "IfNotPresent"}},
		{"misspelled value", []string{"webhook.replica=3"}, []string{"replica", "additional properties"}},
		{"bad quantity", []string{"sidecar.resources.limits.memory=lots"}, []string{"/sidecar/resources/limits/memory"}},
		{"bad duration", []string{"certManager.duration=1year"}, []string{"/certManager/duration"}},
		{"credentials source", []string{"assigner.credentials.azureJSON=file"}, []string{"/assigner/credentials/azureJSON", "hostPath", "secret"}},
		{"secret without name", []string{"assigner.credentials.azureJSON=secret"}, []string{"/assigner/credentials", "secretName"}},
		{"workload identity without client id", []string{"assigner.credentials.workloadIdentity.enabled=true"}, []string{"/assigner/credentials/workloadIdentity/clientID"}},
		{"replicas without leader election", []string{"assigner.replicas=2", "assigner.leaderElection=false"}, []string{"/assigner/leaderElection"}},
		{"default replicas without leader election", []string{"assigner.leaderElection=false"}, []string{"/assigner/leaderElection"}},
		{"short digest", []string{"webhook.digest=sha256:0123"}, []string{"/webhook/digest"}},
		{"digest with a tag", []string{"sidecar.digest=v1@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}, []string{"/sidecar/digest"}},
		{"uppercase digest", []string{"init.digest=sha256:0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef"}, []string{"/init/digest"}},
		{"log level", []string{"webhook.logLevel=verbose"}, []string{"/webhook/logLevel"}},
		{"log level number", []string{"assigner.logLevel=0"}, []string{"/assigner/logLevel"}},
		{"log format", []string{"assigner.logFormat=text"}, []string{"/assigner/logFormat"}},
		{"sidecar log level", []string{"sidecar.logLevel=trace"}, []string{"/sidecar/logLevel"}},
		{"negative sidecar verbosity", []string{"sidecar.logLevel=-1"}, []string{"/sidecar/logLevel"}},
		{"affinity key", []string{"webhook.affinity.nodeSelector.a=b"}, []string{"/webhook/affinity", "additional properties 'nodeSelector'"}},
		{"topology spread without topologyKey", []string{"assigner.topologySpreadConstraints[0].maxSkew=1", "assigner.topologySpreadConstraints[0].whenUnsatisfiable=DoNotSchedule"}, []string{"/assigner/topologySpreadConstraints/0", "topologyKey"}},
		{"topology spread policy", []string{"webhook.topologySpreadConstraints[0].maxSkew=1", "webhook.topologySpreadConstraints[0].topologyKey=zone", "webhook.topologySpreadConstraints[0].whenUnsatisfiable=Never"}, []string{"/webhook/topologySpreadConstraints/0/whenUnsatisfiable"}},
		{"pod label value", []string{"cni.podLabels.tier=not valid"}, []string{"/cni/podLabels/tier"}},
		{"pod label key", []string{"webhook.podLabels.-bad=x"}, []string{"/webhook/podLabels", "'-bad'"}},
		{"assigner budget", []string{"assigner.podDisruptionBudget.enable=true"}, []string{"/assigner/podDisruptionBudget", "enable"}},
		{"metrics namespace", []string{"networkPolicy.components.enabled=true", "networkPolicy.components.metricsNamespaces={Monitoring}"}, []string{"/networkPolicy/components/metricsNamespaces/0"}},
		{"user-facing roles", []string{"rbac.userFacingClusterRoles=sometimes"}, []string{"/rbac/userFacingClusterRoles"}},
		{"crds.manage", []string{"crds.manage=yes"}, []string{"/crds/manage"}},
		{"identity without binding", []string{"azureIdentities.a.clientID=00000000-0000-0000-0000-000000000000", "azureIdentities.a.resourceID=/subscriptions/s/resourcegroups/r/providers/Microsoft.ManagedIdentity/userAssignedIdentities/a"}, []string{"/azureIdentities/a", "binding"}},
		{"identity client id", []string{"azureIdentities.a.clientID=nope", "azureIdentities.a.binding.name=b", "azureIdentities.a.binding.selector=s", "azureIdentities.a.type=1"}, []string{"/azureIdentities/a/clientID"}},
		{"msi without resource id", []string{"azureIdentities.a.clientID=00000000-0000-0000-0000-000000000000", "azureIdentities.a.binding.name=b", "azureIdentities.a.binding.selector=s"}, []string{"/azureIdentities/a", "resourceID"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, errOut, err := helmTemplate(t, nil, tc.sets...)
			if err == nil {
				t.Fatalf("helm template accepted %v", tc.sets)
			}
			for _, w := range tc.want {
				if !strings.Contains(errOut, w) {
					t.Errorf("error lacks %q:\n%s", w, errOut)
				}
			}
		})
	}
}

func decodeAll(t *testing.T, s string) []*unstructured.Unstructured {
	t.Helper()
	r := utilyaml.NewYAMLReader(bufio.NewReader(strings.NewReader(s)))
	var objs []*unstructured.Unstructured
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("reading rendered YAML: %v", err)
		}
		j, err := yaml.YAMLToJSON(doc)
		if err != nil {
			t.Fatalf("rendered YAML: %v\n%s", err, doc)
		}
		if string(j) == "null" || len(bytes.TrimSpace(j)) == 0 {
			continue
		}
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(j); err != nil {
			t.Fatalf("rendered object: %v\n%s", err, doc)
		}
		objs = append(objs, u)
	}
	return objs
}

func find(t *testing.T, objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
			return o
		}
	}
	t.Fatalf("no %s %s rendered", kind, name)
	return nil
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}
