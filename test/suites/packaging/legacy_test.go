package packaging

// Values files of AAD Pod Identity's chart (aad-pod-identity 3.x and 4.x): the chart accepts them, maps what has a
// meaning here (charts/podidentity/templates/_legacy.tpl), lists what it ignored and why in NOTES, and refuses
// what would be unsafe to ignore. docs/migration.md, "Values files from AAD Pod Identity's chart".

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/yaml"
)

const (
	legacy3x = "testdata/aad-pod-identity-3.x-values.yaml"
	legacy4x = "testdata/aad-pod-identity-4.x-values.yaml"
	// legacyKeyPrefix starts the schema description of every key of AAD Pod Identity's chart.
	legacyKeyPrefix = "AAD Pod Identity chart key; "
	// notesHeading starts the NOTES section that lists them.
	notesHeading = "Values of AAD Pod Identity's chart"
	// migrationSection is the heading of the mapping table in docs/migration.md.
	migrationSection = "## Values files from AAD Pod Identity's chart"
)

// legacyLeaves walks values.schema.json and returns the dotted paths of the keys of AAD Pod Identity's chart
// (schema description starting with legacyKeyPrefix) that have no declared sub-keys.
func legacyLeaves(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(chartDir(), "values.schema.json"))
	if err != nil {
		t.Fatal(err)
	}
	var schema map[string]any
	if err := json.Unmarshal(b, &schema); err != nil {
		t.Fatalf("values.schema.json: %v", err)
	}
	var leaves []string
	var walk func(path string, node map[string]any)
	walk = func(path string, node map[string]any) {
		props, _ := node["properties"].(map[string]any)
		desc, _ := node["description"].(string)
		if len(props) == 0 && strings.HasPrefix(desc, legacyKeyPrefix) {
			leaves = append(leaves, path)
		}
		for k, sub := range props {
			p := k
			if path != "" {
				p = path + "." + k
			}
			if m, ok := sub.(map[string]any); ok {
				walk(p, m)
			}
		}
	}
	walk("", schema)
	sort.Strings(leaves)
	if len(leaves) < 60 {
		t.Fatalf("only %d keys of AAD Pod Identity's chart declared in values.schema.json (descriptions starting %q)", len(leaves), legacyKeyPrefix)
	}
	return leaves
}

// lookup returns the value at a dotted path and whether it is there (a null counts as absent, as for helm).
func lookup(values map[string]any, path string) (any, bool) {
	var cur any = values
	for _, k := range strings.Split(path, ".") {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = m[k]; !ok || cur == nil {
			return nil, false
		}
	}
	return cur, true
}

// setPath sets a dotted path in a nested map, creating the maps on the way.
func setPath(values map[string]any, path string, v any) {
	keys := strings.Split(path, ".")
	m := values
	for _, k := range keys[:len(keys)-1] {
		sub, ok := m[k].(map[string]any)
		if !ok {
			sub = map[string]any{}
			m[k] = sub
		}
		m = sub
	}
	m[keys[len(keys)-1]] = v
}

func readValues(t *testing.T, file string) map[string]any {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var v map[string]any
	if err := yaml.Unmarshal(b, &v); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return v
}

// writeValues writes values as a YAML file in the test's temporary directory.
func writeValues(t *testing.T, values map[string]any) string {
	t.Helper()
	b, err := yaml.Marshal(values)
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(t.TempDir(), "values.yaml")
	if err := os.WriteFile(f, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

// mentions reports whether text names the dotted path as a whole word: "mic.replicas: ...",
// "mic.resources -> ...", "adminsecret.tenantID, ...", "WARNING: nmi.metadataHeaderRequired=false ...".
func mentions(text, path string) bool {
	return regexp.MustCompile(`(^|[\s,])` + regexp.QuoteMeta(path) + `([:,=]|\s|$)`).MatchString(text)
}

// legacyNotes returns the NOTES section about AAD Pod Identity's values in helm's output ("" when absent).
func legacyNotes(out string) string {
	i := strings.Index(out, "\nNOTES:\n")
	if i < 0 {
		return ""
	}
	notes := out[i:]
	j := strings.Index(notes, notesHeading)
	if j < 0 {
		return ""
	}
	return notes[j:]
}

// TestLegacyDefaultsMatchValues: _legacy.tpl applies a key of AAD Pod Identity's chart only while this chart's
// value is at its default, which it keeps in the define podidentity.legacy.defaults; those must be values.yaml's.
func TestLegacyDefaultsMatchValues(t *testing.T) {
	tpl, err := os.ReadFile(filepath.Join(chartDir(), "templates", "_legacy.tpl"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?s)define "podidentity\.legacy\.defaults" -\}\}\n(.*?)\{\{- end -\}\}`).FindSubmatch(tpl)
	if m == nil {
		t.Fatal(`_legacy.tpl has no define "podidentity.legacy.defaults"`)
	}
	var defaults map[string]any
	if err := yaml.Unmarshal(m[1], &defaults); err != nil {
		t.Fatalf("podidentity.legacy.defaults: %v", err)
	}
	values := readValues(t, filepath.Join(chartDir(), "values.yaml"))
	leaves := map[string]any{}
	var walk func(string, any)
	walk = func(p string, v any) {
		if mm, ok := v.(map[string]any); ok && p != "assigner.nodeSelector" && p != "assigner.resources" {
			for k, sub := range mm {
				walk(strings.TrimPrefix(p+"."+k, "."), sub)
			}
			return
		}
		leaves[p] = v
	}
	walk("", defaults)
	if len(leaves) < 10 {
		t.Fatalf("only %d defaults parsed from _legacy.tpl", len(leaves))
	}
	for p, want := range leaves {
		got, ok := lookup(values, p)
		if !ok {
			t.Errorf("_legacy.tpl's defaults name %s, which values.yaml does not have", p)
			continue
		}
		if !reflect.DeepEqual(got, want) && !(isEmpty(got) && isEmpty(want)) {
			t.Errorf("_legacy.tpl's default of %s is %v, values.yaml's is %v: make podidentity.legacy.defaults equal values.yaml", p, want, got)
		}
	}
}

func isEmpty(v any) bool {
	switch x := v.(type) {
	case []any:
		return len(x) == 0
	case map[string]any:
		return len(x) == 0
	}
	return false
}

// TestTemplatesApplyLegacyValues: a template that reads a value _legacy.tpl may change must include
// podidentity.legacy before it reads any value, or it may render before the mapping (helm renders templates in
// name order) and miss it.
func TestTemplatesApplyLegacyValues(t *testing.T) {
	reads := regexp.MustCompile(`\.Values\.(forceNamespaced|image\b|assigner(\.[A-Za-z]+)?|sidecar\.(metadataHeaderRequired|blockInstanceMetadata|logLevel)|rbac\b|azureIdentities)|_aadPodIdentity`)
	const include = `include "podidentity.legacy" .`
	checked := 0
	err := filepath.WalkDir(filepath.Join(chartDir(), "templates"), func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.HasPrefix(d.Name(), "_") {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		s := string(b)
		needs := false
		for _, m := range reads.FindAllStringSubmatch(s, -1) {
			needs = needs || m[2] != ".enabled" // assigner.enabled is never changed
		}
		if !needs {
			return nil
		}
		checked++
		i, first := strings.Index(s, include), strings.Index(s, ".Values")
		if i < 0 || i > first {
			t.Errorf("%s reads values that podidentity.legacy may change: start it with {{- %s -}}", filepath.Base(path), include)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if checked < 5 {
		t.Fatalf("only %d templates read mapped values; is the pattern stale?", checked)
	}
}

// TestLegacyKeysDocumented: every key of AAD Pod Identity's chart the schema declares has a row in docs/migration.md.
func TestLegacyKeysDocumented(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(repoRoot(), "docs", "migration.md"))
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	i := strings.Index(doc, migrationSection+"\n")
	if i < 0 {
		t.Fatalf("docs/migration.md has no section %q", migrationSection)
	}
	section := doc[i+len(migrationSection):]
	if j := strings.Index(section, "\n## "); j >= 0 {
		section = section[:j]
	}
	for _, p := range legacyLeaves(t) {
		if !strings.Contains(section, "`"+p+"`") {
			t.Errorf("docs/migration.md, %q, does not name `%s`", migrationSection, p)
		}
	}
}

func TestLegacyValuesLint(t *testing.T) {
	for _, f := range []string{legacy3x, legacy4x} {
		t.Run(filepath.Base(f), func(t *testing.T) {
			out, errOut, err := run(t, helmBin(t), "lint", "--strict", chartDir(), "--namespace", "podidentity-system",
				"--kube-version", kubeVersion, "--values", f)
			if err != nil {
				t.Fatalf("helm lint: %v\n%s%s", err, out, errOut)
			}
		})
	}
}

type identityWant struct {
	namespace, name, clientID string
	clientPassword            map[string]any // nil: none
	binding, selector         string
}

// TestLegacyValuesMapped renders the chart with AAD Pod Identity values files (and our own keys on top, as
// `helm upgrade -f <4.x file> --set ...` does) and checks that what they say reached the rendered objects.
func TestLegacyValuesMapped(t *testing.T) {
	for _, tc := range []struct {
		name          string
		files         []string
		extra         map[string]any // another values file on top
		sets          []string
		assignerArgs  []string // each present
		noArgPrefixes []string // none of these present
		webhookArgs   []string
		replicas      int64
		pullPolicy    string
		pullSecrets   []string
		resources     string // JSON of the assigner container's resources
		nodeSelector  map[string]any
		tolerations   string // JSON
		annotations   map[string]any
		podLabels     map[string]any    // the assigner's pod labels beyond the chart's
		nodeAffinity  string            // JSON of the assigner's affinity.nodeAffinity; "" none
		pdb           any               // the assigner PodDisruptionBudget's minAvailable; nil: none rendered
		userRoles     bool              // the aggregated view/edit ClusterRoles rendered
		sidecarV      string            // the webhook's --sidecar-log-verbosity
		hostPath      string            // the azure-json hostPath volume; "" none
		secret        map[string]string // the adminsecret Secret's data; nil: not rendered
		identities    []identityWant
	}{
		{
			name:  "3.x",
			files: []string{legacy3x},
			assignerArgs: []string{"--forceNamespaced=false", "--managed=false", "--azure-config=", "--cloud=AzurePublicCloud", "--zap-log-level=2",
				"--zap-encoder=json", "--immutable-user-msis=0b7c3f12-6d4e-4a8b-9c1d-2e3f4a5b6c7d,5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f7a8b9"},
			noArgPrefixes: []string{"--azure-config=/"},
			webhookArgs:   []string{"--block-instance-metadata=true", "--metadata-header-required=true", "--force-namespaced=false", "--image-pull-policy=Always"},
			replicas:      2,
			pdb:           int64(1),
			userRoles:     false, // the file does not ask for them, and ours default to off
			sidecarV:      "0",
			pullPolicy:    "Always",
			pullSecrets:   []string{"acr-pull"},
			resources:     `{"limits":{"cpu":"200m","memory":"1024Mi"},"requests":{"cpu":"100m","memory":"256Mi"}}`,
			nodeSelector:  map[string]any{"kubernetes.io/os": "linux", "agentpool": "system"},
			tolerations:   `[{"key":"CriticalAddonsOnly","operator":"Exists"}]`,
			annotations:   map[string]any{"cluster-autoscaler.kubernetes.io/safe-to-evict": "true"},
			secret: map[string]string{"AZURE_TENANT_ID": "72f988bf-86f1-41af-91ab-2d7cd011db47", "AZURE_CLIENT_ID": "9a1b2c3d-4e5f-4061-8273-94a5b6c7d8e9",
				"AZURE_CLIENT_SECRET": "fake-service-principal-secret~for.tests"},
			identities: []identityWant{
				{"apps", "orders-api", "d3e4f5a6-b7c8-4d9e-8f0a-1b2c3d4e5f6a", nil, "orders-api-binding", "orders-api"},
				{"batch", "billing-sp", "e4f5a6b7-c8d9-4e0f-9a1b-2c3d4e5f6a7b", map[string]any{"name": "billing-sp-secret", "namespace": "batch"}, "billing-sp-binding", "billing"},
			},
		},
		{
			name:          "4.x",
			files:         []string{legacy4x},
			assignerArgs:  []string{"--forceNamespaced=false", "--managed=false", "--azure-config=/var/run/podidentity/azure/azure.json", "--zap-log-level=info", "--zap-encoder=json", "--immutable-user-msis=1f2e3d4c-5b6a-4798-8a7b-6c5d4e3f2a1b"},
			noArgPrefixes: []string{"--cloud"},
			webhookArgs:   []string{"--block-instance-metadata=false", "--metadata-header-required=true", "--force-namespaced=false", "--image-pull-policy=IfNotPresent"},
			replicas:      2,
			podLabels:     map[string]any{"team": "platform"},
			pdb:           int64(1),
			userRoles:     true,
			sidecarV:      "0",
			pullPolicy:    "IfNotPresent",
			resources:     `{"limits":{"cpu":"200m","memory":"1024Mi"},"requests":{"cpu":"100m","memory":"256Mi"}}`,
			nodeSelector:  map[string]any{"kubernetes.io/os": "linux"},
			tolerations:   `[{"key":"CriticalAddonsOnly","operator":"Exists"}]`,
			hostPath:      "/etc/kubernetes/azure.json",
			identities: []identityWant{
				{"podidentity-system", "storage-reader", "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d", nil, "storage-reader-binding", "storage-reader"},
				{"apps", "orders", "b2c3d4e5-f6a7-4b8c-9d0e-1f2a3b4c5d6e", nil, "orders-binding", "orders"},
				{"batch", "orders", "b2c3d4e5-f6a7-4b8c-9d0e-1f2a3b4c5d6e", nil, "orders-binding", "orders-batch"},
				{"batch", "reporting-sp", "c3d4e5f6-a7b8-4c9d-8e0f-2a3b4c5d6e7f", map[string]any{"name": "reporting-sp-secret", "namespace": "batch"}, "reporting-sp-binding", "reporting"},
			},
		},
		{
			// helm upgrade -f <4.x file> with our own keys: ours win where both are given, the rest still maps.
			name:  "4.x with our own keys",
			files: []string{legacy4x},
			sets: []string{"assigner.replicas=3", "assigner.credentials.azureJSON=secret", "assigner.credentials.secretName=podidentity-azure-json",
				"assigner.immutableUserMSIs[0]=00000000-0000-0000-0000-00000000000a", "assigner.nodeSelector.agentpool=system",
				"sidecar.blockInstanceMetadata=true", "certManager.enabled=false", "webhook.replicas=3", "image.pullPolicy=Always"},
			assignerArgs: []string{"--azure-config=/etc/kubernetes/azure/azure.json", "--zap-encoder=json",
				"--immutable-user-msis=00000000-0000-0000-0000-00000000000a,1f2e3d4c-5b6a-4798-8a7b-6c5d4e3f2a1b"},
			webhookArgs:  []string{"--self-signed-certs=true", "--block-instance-metadata=true", "--image-pull-policy=Always"},
			replicas:     3,
			podLabels:    map[string]any{"team": "platform"},
			pdb:          int64(1),
			userRoles:    true,
			sidecarV:     "0",
			pullPolicy:   "Always",
			resources:    `{"limits":{"cpu":"200m","memory":"1024Mi"},"requests":{"cpu":"100m","memory":"256Mi"}}`,
			nodeSelector: map[string]any{"kubernetes.io/os": "linux", "agentpool": "system"},
			tolerations:  `[{"key":"CriticalAddonsOnly","operator":"Exists"}]`,
			identities:   []identityWant{{"apps", "orders", "b2c3d4e5-f6a7-4b8c-9d0e-1f2a3b4c5d6e", nil, "orders-binding", "orders"}},
		},
		{
			// operationMode: managed: the assigner never calls ARM, and bindings are namespaced as NMI's were.
			name:         "4.x in managed mode",
			files:        []string{legacy4x},
			sets:         []string{"operationMode=managed"},
			assignerArgs: []string{"--managed=true", "--forceNamespaced=true"},
			webhookArgs:  []string{"--force-namespaced=true"},
			replicas:     2,
			podLabels:    map[string]any{"team": "platform"},
			pdb:          int64(1),
			userRoles:    true,
			sidecarV:     "0",
			pullPolicy:   "IfNotPresent",
			resources:    `{"limits":{"cpu":"200m","memory":"1024Mi"},"requests":{"cpu":"100m","memory":"256Mi"}}`,
			nodeSelector: map[string]any{"kubernetes.io/os": "linux"},
			tolerations:  `[{"key":"CriticalAddonsOnly","operator":"Exists"}]`,
			hostPath:     "/etc/kubernetes/azure.json",
		},
		{
			// Chart 2.x's list of identities (two of the same name), MIC with a user-assigned managed identity
			// (adminsecret.useMSI), the weaker NMI header setting carried over.
			name: "2.x list and adminsecret.useMSI",
			extra: map[string]any{
				"forceNamespaced": "true",
				"adminsecret": map[string]any{"cloud": "AzureUSGovernmentCloud", "subscriptionID": "s", "resourceGroup": "rg", "vmType": "vmss",
					"tenantID": "t", "clientID": "msi", "clientSecret": "msi", "useMSI": "true", "userAssignedMSIClientID": "6b7c8d9e-0f1a-4b2c-8d3e-4f5a6b7c8d9e"},
				"nmi": map[string]any{"metadataHeaderRequired": "false", "logVerbosity": 1},
				"mic": map[string]any{
					"replicas":            3,
					"podDisruptionBudget": map[string]any{"minAvailable": 2},
					"affinity": map[string]any{"nodeAffinity": map[string]any{"requiredDuringSchedulingIgnoredDuringExecution": map[string]any{
						"nodeSelectorTerms": []any{map[string]any{"matchExpressions": []any{map[string]any{"key": "agentpool", "operator": "In", "values": []any{"system"}}}}}}}},
					"podLabels": map[string]any{"app.kubernetes.io/name": "mic", "cost-center": "42"},
				},
				"rbac": map[string]any{"createUserFacingClusterRoles": "false"},
				"azureIdentities": []any{
					map[string]any{"name": "api", "namespace": "apps", "type": 0, "clientID": "11111111-2222-4333-8444-555555555555",
						"resourceID": "/subscriptions/s/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/api",
						"binding":    map[string]any{"name": "api-binding", "selector": "api"}},
					map[string]any{"name": "api", "namespace": "batch", "type": 0, "clientID": "11111111-2222-4333-8444-555555555555",
						"resourceID": "/subscriptions/s/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/api",
						"binding":    map[string]any{"name": "api-binding", "selector": "api-batch"}},
				},
			},
			assignerArgs:  []string{"--forceNamespaced=true", "--azure-config=", "--cloud=AzureUSGovernmentCloud"},
			noArgPrefixes: []string{"--azure-config=/"},
			webhookArgs:   []string{"--metadata-header-required=false", "--force-namespaced=true"},
			replicas:      3,
			podLabels:     map[string]any{"cost-center": "42"},
			nodeAffinity:  `{"requiredDuringSchedulingIgnoredDuringExecution":{"nodeSelectorTerms":[{"matchExpressions":[{"key":"agentpool","operator":"In","values":["system"]}]}]}}`,
			pdb:           int64(2),
			sidecarV:      "1",
			pullPolicy:    "IfNotPresent",
			resources:     `{"limits":{"cpu":"1","memory":"256Mi"},"requests":{"cpu":"50m","memory":"64Mi"}}`,
			nodeSelector:  map[string]any{"kubernetes.io/os": "linux"},
			secret:        map[string]string{"AZURE_CLIENT_ID": "6b7c8d9e-0f1a-4b2c-8d3e-4f5a6b7c8d9e"},
			identities: []identityWant{
				{"apps", "api", "11111111-2222-4333-8444-555555555555", nil, "api-binding", "api"},
				{"batch", "api", "11111111-2222-4333-8444-555555555555", nil, "api-binding", "api-batch"},
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			files := tc.files
			if tc.extra != nil {
				files = append(append([]string{}, files...), writeValues(t, tc.extra))
			}
			out, errOut, err := helmTemplate(t, files, tc.sets...)
			if err != nil {
				t.Fatalf("helm template: %v\n%s", err, errOut)
			}
			objs := decodeAll(t, out)
			dep := find(t, objs, "Deployment", "podidentity-assigner")
			pod, _, _ := unstructured.NestedMap(dep.Object, "spec", "template", "spec")
			c := container(t, pod, "assigner")
			args, _, _ := unstructured.NestedStringSlice(c, "args")
			for _, want := range tc.assignerArgs {
				if !contains(args, want) {
					t.Errorf("assigner args lack %s: %v", want, args)
				}
			}
			for _, p := range tc.noArgPrefixes {
				for _, a := range args {
					if strings.HasPrefix(a, p) {
						t.Errorf("assigner has %s; want no %s...", a, p)
					}
				}
			}
			if r, _, _ := unstructured.NestedInt64(dep.Object, "spec", "replicas"); r != tc.replicas {
				t.Errorf("assigner replicas %d, want %d", r, tc.replicas)
			}
			if got := c["imagePullPolicy"]; got != tc.pullPolicy {
				t.Errorf("assigner imagePullPolicy %v, want %s", got, tc.pullPolicy)
			}
			var secrets []string
			ps, _, _ := unstructured.NestedSlice(pod, "imagePullSecrets")
			for _, s := range ps {
				secrets = append(secrets, s.(map[string]any)["name"].(string))
			}
			if strings.Join(secrets, ",") != strings.Join(tc.pullSecrets, ",") {
				t.Errorf("assigner imagePullSecrets %v, want %v", secrets, tc.pullSecrets)
			}
			if got := jsonOf(t, c["resources"]); got != tc.resources {
				t.Errorf("assigner resources %s, want %s", got, tc.resources)
			}
			if got := pod["nodeSelector"]; !reflect.DeepEqual(got, tc.nodeSelector) {
				t.Errorf("assigner nodeSelector %v, want %v", got, tc.nodeSelector)
			}
			if got := jsonOf(t, pod["tolerations"]); got != jsonOf(t, jsonValue(t, tc.tolerations)) {
				t.Errorf("assigner tolerations %s, want %s", got, tc.tolerations)
			}
			if got, _, _ := unstructured.NestedMap(dep.Object, "spec", "template", "metadata", "annotations"); !reflect.DeepEqual(got, tc.annotations) && len(got)+len(tc.annotations) > 0 {
				t.Errorf("assigner pod annotations %v, want %v", got, tc.annotations)
			}
			labels, _, _ := unstructured.NestedStringMap(dep.Object, "spec", "template", "metadata", "labels")
			extra := map[string]any{}
			for k, v := range labels {
				if !strings.HasPrefix(k, "app.kubernetes.io/") && k != "helm.sh/chart" && k != "azure.workload.identity/use" {
					extra[k] = v
				}
			}
			if !reflect.DeepEqual(extra, tc.podLabels) && len(extra)+len(tc.podLabels) > 0 {
				t.Errorf("assigner pod labels beyond the chart's %v, want %v", extra, tc.podLabels)
			}
			if name := labels["app.kubernetes.io/name"]; name != "podidentity-assigner" {
				t.Errorf("assigner pod label app.kubernetes.io/name %q: a mapped label replaced the chart's", name)
			}
			na, _, _ := unstructured.NestedFieldNoCopy(pod, "affinity", "nodeAffinity")
			if got := jsonOf(t, na); (na != nil || tc.nodeAffinity != "") && got != tc.nodeAffinity {
				t.Errorf("assigner nodeAffinity %s, want %q", got, tc.nodeAffinity)
			}
			var pdb any
			for _, o := range objs {
				if o.GetKind() == "PodDisruptionBudget" && o.GetName() == "podidentity-assigner" {
					pdb, _, _ = unstructured.NestedFieldNoCopy(o.Object, "spec", "minAvailable")
				}
			}
			if !reflect.DeepEqual(pdb, tc.pdb) {
				t.Errorf("assigner PodDisruptionBudget minAvailable %v (%T), want %v", pdb, pdb, tc.pdb)
			}
			roles := 0
			for _, o := range objs {
				if o.GetKind() == "ClusterRole" && (o.GetName() == "podidentity-view" || o.GetName() == "podidentity-edit") {
					roles++
				}
			}
			if (roles == 2) != tc.userRoles || (roles != 0 && roles != 2) {
				t.Errorf("%d aggregated user-facing ClusterRoles rendered, want them: %v", roles, tc.userRoles)
			}
			var hostPath string
			vols, _, _ := unstructured.NestedSlice(pod, "volumes")
			for _, v := range vols {
				if p, ok, _ := unstructured.NestedString(v.(map[string]any), "hostPath", "path"); ok && v.(map[string]any)["name"] == "azure-json" {
					hostPath = p
				}
			}
			if hostPath != tc.hostPath {
				t.Errorf("assigner azure.json hostPath %q, want %q", hostPath, tc.hostPath)
			}
			checkAdminSecret(t, objs, c, tc.secret)

			wh := find(t, objs, "Deployment", "podidentity-webhook")
			whPod, _, _ := unstructured.NestedMap(wh.Object, "spec", "template", "spec")
			whArgs, _, _ := unstructured.NestedStringSlice(container(t, whPod, "webhook"), "args")
			for _, want := range append([]string{"--sidecar-log-verbosity=" + tc.sidecarV}, tc.webhookArgs...) {
				if !contains(whArgs, want) {
					t.Errorf("webhook args lack %s: %v", want, whArgs)
				}
			}
			for _, flag := range []string{"--zap-log-level=", "--zap-encoder="} {
				n := 0
				for _, a := range args {
					if strings.HasPrefix(a, flag) {
						n++
					}
				}
				if n != 1 {
					t.Errorf("assigner args give %s %d times, want once: %v", flag, n, args)
				}
			}
			for _, id := range tc.identities {
				ai := findIn(t, objs, "AzureIdentity", id.namespace, id.name)
				if got, _, _ := unstructured.NestedString(ai.Object, "spec", "clientID"); got != id.clientID {
					t.Errorf("AzureIdentity %s/%s clientID %q, want %q", id.namespace, id.name, got, id.clientID)
				}
				got, found, _ := unstructured.NestedMap(ai.Object, "spec", "clientPassword")
				if found != (id.clientPassword != nil) || (found && !reflect.DeepEqual(got, id.clientPassword)) {
					t.Errorf("AzureIdentity %s/%s clientPassword %v, want %v", id.namespace, id.name, got, id.clientPassword)
				}
				b := findIn(t, objs, "AzureIdentityBinding", id.namespace, id.binding)
				if ref, _, _ := unstructured.NestedString(b.Object, "spec", "azureIdentity"); ref != id.name {
					t.Errorf("binding %s/%s names identity %q, want %q", id.namespace, id.binding, ref, id.name)
				}
				if sel, _, _ := unstructured.NestedString(b.Object, "spec", "selector"); sel != id.selector {
					t.Errorf("binding %s/%s selector %q, want %q", id.namespace, id.binding, sel, id.selector)
				}
			}
		})
	}
}

// checkAdminSecret: with want, the Secret <assigner>-adminsecret holds exactly want and the assigner reads each
// key from it as an environment variable; without, neither exists.
func checkAdminSecret(t *testing.T, objs []*unstructured.Unstructured, c map[string]any, want map[string]string) {
	t.Helper()
	const name = "podidentity-assigner-adminsecret"
	var secret *unstructured.Unstructured
	for _, o := range objs {
		if o.GetKind() == "Secret" && o.GetName() == name {
			secret = o
		}
	}
	env, _, _ := unstructured.NestedSlice(c, "env")
	fromSecret := map[string]bool{}
	for _, e := range env {
		if ref, ok, _ := unstructured.NestedString(e.(map[string]any), "valueFrom", "secretKeyRef", "name"); ok && ref == name {
			key, _, _ := unstructured.NestedString(e.(map[string]any), "valueFrom", "secretKeyRef", "key")
			fromSecret[key] = e.(map[string]any)["name"] == key
		}
	}
	if want == nil {
		if secret != nil || len(fromSecret) > 0 {
			t.Errorf("Secret %s rendered (%v) or read by the assigner (%v) without an adminsecret", name, secret != nil, fromSecret)
		}
		return
	}
	if secret == nil {
		t.Fatalf("no Secret %s rendered for adminsecret", name)
	}
	data, _, _ := unstructured.NestedStringMap(secret.Object, "data")
	got := map[string]string{}
	for k, v := range data {
		b, err := base64.StdEncoding.DecodeString(v)
		if err != nil {
			t.Fatalf("Secret %s key %s: %v", name, k, err)
		}
		got[k] = string(b)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Secret %s holds %v, want %v", name, got, want)
	}
	for k := range want {
		if !fromSecret[k] {
			t.Errorf("the assigner does not read %s from the Secret %s: env %v", k, name, env)
		}
	}
	if len(fromSecret) != len(want) {
		t.Errorf("the assigner reads %v from %s, want exactly the keys of %v", fromSecret, name, want)
	}
}

func container(t *testing.T, pod map[string]any, name string) map[string]any {
	t.Helper()
	cs, _, _ := unstructured.NestedSlice(pod, "containers")
	for _, c := range cs {
		if m := c.(map[string]any); m["name"] == name {
			return m
		}
	}
	t.Fatalf("no container %s", name)
	return nil
}

func findIn(t *testing.T, objs []*unstructured.Unstructured, kind, namespace, name string) *unstructured.Unstructured {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() == kind && o.GetNamespace() == namespace && o.GetName() == name {
			return o
		}
	}
	t.Fatalf("no %s %s/%s rendered", kind, namespace, name)
	return nil
}

func jsonOf(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func jsonValue(t *testing.T, s string) any {
	t.Helper()
	if s == "" {
		return nil
	}
	var v any
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatal(err)
	}
	return v
}

// inEmpty is the want of a key whose value has nothing to carry over: NOTES lists it under "Empty".
const inEmpty = "(empty)"

// legacyKeyMessages: for every key of AAD Pod Identity's chart, a value an operator may have and what NOTES says
// about it. All rows are rendered together (with legacyKeyContext); a row's messages must be on a line naming
// its key.
var legacyKeyMessages = []struct {
	path  string
	value any
	want  []string
}{
	{"image.repository", "myacr.azurecr.io/oss/azure/aad-pod-identity", []string{"mirror them and set image.registry"}},
	{"image.imagePullPolicy", "Always", []string{"Always -> image.pullPolicy"}},
	{"forceNamespaced", "true", []string{`"true" (a string) -> forceNamespaced=true`}},
	{"forceNameSpaced", "true", []string{"chart 3.0.0's deprecated spelling) -> forceNamespaced=true"}},
	{"installMICException", "true", []string{"the webhook never injects the release namespace or kube-system"}},
	{"installCRDs", true, []string{"crds/ on first install"}},
	{"customUserAgent", "contoso-ops", []string{"no user-agent setting"}},
	{"operationMode", "managed", []string{"managed -> assigner.managedMode=true"}},
	{"adminsecret.cloud", "AzureChinaCloud", []string{"-> assigner.cloud=AzureChinaCloud"}},
	{"adminsecret.subscriptionID", "2c4d7e91-5a3b-4f60-9d1e-8b7a6c5d4e3f", []string{"from the node's providerID"}},
	{"adminsecret.resourceGroup", "MC_rg_aks_westeurope", []string{"from the node's providerID"}},
	{"adminsecret.vmType", "vmss", []string{"from the node's providerID"}},
	{"adminsecret.tenantID", "72f988bf-86f1-41af-91ab-2d7cd011db47", []string{"read by the assigner as AZURE_TENANT_ID"}},
	{"adminsecret.clientID", "9a1b2c3d-4e5f-4061-8273-94a5b6c7d8e9", []string{"AZURE_CLIENT_ID"}},
	{"adminsecret.clientSecret", "fake-secret", []string{"AZURE_CLIENT_SECRET", "assigner.credentials.azureJSON=none"}},
	{"adminsecret.useMSI", false, []string{inEmpty}},
	{"adminsecret.userAssignedMSIClientID", "6b7c8d9e-0f1a-4b2c-8d3e-4f5a6b7c8d9e", []string{"not used without adminsecret.useMSI=true"}},
	{"mic.image", "mic", []string{"MIC's image"}},
	{"mic.tag", "v1.8.17", []string{"MIC's image tag"}},
	{"mic.priorityClassName", "system-node-critical", []string{"system-node-critical -> assigner.priorityClassName"}},
	{"mic.logVerbosity", 4, []string{"--zap-log-level=4"}},
	{"mic.loggingFormat", "text", []string{"--zap-encoder=console"}},
	{"mic.replicas", 2, []string{"2 -> assigner.replicas"}},
	{"mic.resources", map[string]any{"limits": map[string]any{"memory": "512Mi"}}, []string{`-> assigner.resources {"limits":{"cpu":"1","memory":"512Mi"}`}},
	{"mic.podAnnotations", map[string]any{"team": "platform"}, []string{`-> assigner.podAnnotations {"team":"platform"}`}},
	{"mic.podLabels", map[string]any{"team": "platform"}, []string{`-> assigner.podLabels {"team":"platform"}`}},
	{"mic.nodeSelector", map[string]any{"agentpool": "system"}, []string{`-> assigner.nodeSelector {"agentpool":"system"}`}},
	{"mic.tolerations", []any{map[string]any{"operator": "Exists"}}, []string{`-> assigner.tolerations [{"operator":"Exists"}]`}},
	{"mic.affinity", map[string]any{"nodeAffinity": map[string]any{"preferredDuringSchedulingIgnoredDuringExecution": []any{}}, "podAntiAffinity": map[string]any{"x": 1}},
		[]string{"nodeAffinity -> assigner.affinity.nodeAffinity", "podAntiAffinity: MIC's terms select MIC's pods"}},
	{"mic.topologySpreadConstraints", []any{map[string]any{"maxSkew": 1}}, []string{"MIC's constraints select MIC's pods", "assigner.topologySpreadConstraints"}},
	{"mic.podDisruptionBudget", map[string]any{"minAvailable": 1, "maxUnavailable": 1}, []string{"minAvailable 1 -> assigner.podDisruptionBudget.minAvailable", "maxUnavailable: the assigner's budget takes minAvailable"}},
	{"mic.leaderElection.instance", "mic-0", []string{"the pod's name"}},
	{"mic.leaderElection.namespace", "kube-system", []string{"-> assigner.aadPodIdentityMICLock=kube-system/mic-leader"}},
	{"mic.leaderElection.name", "mic-leader", []string{"-> assigner.aadPodIdentityMICLock=kube-system/mic-leader"}},
	{"mic.leaderElection.duration", "15s", []string{"controller-runtime's"}},
	{"mic.probePort", "8080", []string{"port 8081"}},
	{"mic.syncRetryDuration", "3600s", []string{"--resync"}},
	{"mic.immutableUserMSIs", []any{"0b7c3f12-6d4e-4a8b-9c1d-2e3f4a5b6c7d"}, []string{"--immutable-user-msis=0b7c3f12-6d4e-4a8b-9c1d-2e3f4a5b6c7d"}},
	{"mic.createDeleteBatch", "20", []string{"no batches"}},
	{"mic.clientQps", "5", []string{"--kube-api-qps"}},
	{"mic.prometheusPort", "8888", []string{"port 8080"}},
	{"mic.cloudConfig", "/etc/kubernetes/azure.json", []string{"adminsecret is used instead"}},
	{"mic.customCloud.enabled", true, []string{"assigner.extraArgs gives --arm-endpoint"}},
	{"mic.customCloud.configPath", "/etc/kubernetes/akscustom.json", []string{"does not read AZURE_ENVIRONMENT_FILEPATH"}},
	{"mic.updateUserMSIMaxRetry", "2", []string{"per-resource backoff"}},
	{"mic.updateUserMSIRetryInterval", "1s", []string{"per-resource backoff"}},
	{"mic.identityAssignmentReconcileInterval", "3m", []string{"--resync"}},
	{"nmi.image", "nmi", []string{"there is no node agent"}},
	{"nmi.tag", "v1.8.17", []string{"NMI's image tag"}},
	{"nmi.priorityClassName", "system-node-critical", []string{"with that pod's priority"}},
	{"nmi.logVerbosity", 3, []string{"3 -> sidecar.logLevel=3"}},
	{"nmi.loggingFormat", "json", []string{"always logs JSON lines"}},
	{"nmi.resources", map[string]any{"requests": map[string]any{"memory": "256Mi"}}, []string{"size it with sidecar.resources"}},
	{"nmi.updateStrategy", map[string]any{"type": "RollingUpdate"}, []string{"no NMI DaemonSet to roll"}},
	{"nmi.podAnnotations", map[string]any{"a": "b"}, []string{"no NMI DaemonSet"}},
	{"nmi.podLabels", map[string]any{"a": "b"}, []string{"no NMI DaemonSet"}},
	{"nmi.nodeSelector", map[string]any{"kubernetes.io/os": "linux"}, []string{"cni.nodeSelector"}},
	{"nmi.tolerations", []any{map[string]any{"operator": "Exists"}}, []string{"cni.tolerations"}},
	{"nmi.affinity", map[string]any{"nodeAffinity": map[string]any{}}, []string{"no NMI DaemonSet"}},
	{"nmi.ipTableUpdateTimeIntervalInSeconds", "60", []string{"installed once in each pod's own network namespace"}},
	{"nmi.micNamespace", "default", []string{"never asks the sidecar for tokens"}},
	{"nmi.probePort", "8085", []string{"/healthz and /readyz on sidecar.healthPort"}},
	{"nmi.retryAttemptsForCreated", "16", []string{"503 with Retry-After"}},
	{"nmi.retryAttemptsForAssigned", "4", []string{"503 with Retry-After"}},
	{"nmi.findIdentityRetryIntervalInSeconds", "5", []string{"503 with Retry-After"}},
	{"nmi.enableScaleFeatures", true, []string{"watches nothing"}},
	{"nmi.prometheusPort", "9090", []string{"/metrics on sidecar.healthPort"}},
	{"nmi.blockInstanceMetadata", true, []string{"true -> sidecar.blockInstanceMetadata"}},
	{"nmi.metadataHeaderRequired", false, []string{"false -> sidecar.metadataHeaderRequired", "carried over", "request forgery"}},
	{"nmi.allowNetworkPluginKubenet", true, []string{"kubenet is no concern"}},
	{"nmi.kubeletConfig", "/etc/default/kubelet", []string{"does not identify pods by source IP"}},
	{"nmi.setRetryAfterHeader", false, []string{"always sends Retry-After"}},
	{"nmi.enableConntrackDeletion", true, []string{"before the pod's app containers start"}},
	{"rbac.enabled", false, []string{"always creates its least-privilege RBAC"}},
	{"rbac.allowAccessToSecrets", false, []string{"sidecar mounts the Secret"}},
	{"rbac.pspEnabled", true, []string{"PodSecurityPolicy was removed"}},
	{"rbac.createUserFacingClusterRoles", false, []string{"false -> rbac.userFacingClusterRoles"}},
}

// legacyKeyContext: our own values rendered with legacyKeyMessages (mic.customCloud.enabled=true is accepted
// only with the custom cloud's endpoints).
var legacyKeyContext = map[string]any{
	"assigner": map[string]any{"extraArgs": []any{"--arm-endpoint=https://management.local.azurestack.external"}},
}

// legacyRefusals: values whose loss would be unsafe, or that are malformed, and the message each gets.
var legacyRefusals = []struct {
	name   string
	values map[string]any
	want   []string
}{
	{"custom cloud", map[string]any{"mic": map[string]any{"customCloud": map[string]any{"enabled": true}}},
		[]string{"mic.customCloud.enabled=true", "does not read the custom cloud file /etc/kubernetes/akscustom.json", "--arm-endpoint", "mic.customCloud.enabled=false"}},
	{"custom cloud as a string", map[string]any{"mic": map[string]any{"customCloud": map[string]any{"enabled": "true", "configPath": "/etc/azs.json"}}},
		[]string{"mic.customCloud.enabled=true", "/etc/azs.json"}},
	{"adminsecret without a secret", map[string]any{"adminsecret": map[string]any{"tenantID": "t", "clientID": "c"}},
		[]string{"adminsecret.clientSecret", "adminsecret.useMSI=true", "remove adminsecret"}},
	{"adminsecret msi without useMSI", map[string]any{"adminsecret": map[string]any{"tenantID": "t", "clientID": "msi", "clientSecret": "msi"}},
		[]string{`(not "msi")`, "adminsecret.useMSI=true"}},
	{"adminsecret unknown cloud", map[string]any{"adminsecret": map[string]any{"cloud": "AzureStackCloud", "useMSI": true}},
		[]string{"adminsecret.cloud=AzureStackCloud", "AzurePublicCloud, AzureChinaCloud and AzureUSGovernmentCloud", "--arm-endpoint"}},
	{"clientPassword not JSON", identityWithPassword("billing-sp-secret"),
		[]string{"azureIdentities.sp.clientPassword", `"billing-sp-secret" is not the JSON string`, `{"name":"<secret name>","namespace":"<secret namespace>"}`}},
	{"clientPassword without name", identityWithPassword(`{"namespace":"batch"}`),
		[]string{"azureIdentities.sp.clientPassword", "is not the JSON string"}},
	{"clientPassword with other keys", identityWithPassword(`{"name":"s","secretKey":"k"}`),
		[]string{"azureIdentities.sp.clientPassword", "is not the JSON string"}},
	{"forceNamespaced not a boolean", map[string]any{"forceNamespaced": "yes"}, []string{"/forceNamespaced", "'true', 'false'"}},
	{"operationMode", map[string]any{"operationMode": "Managed"}, []string{"/operationMode", "'standard', 'managed'"}},
	{"misspelt MIC key", map[string]any{"mic": map[string]any{"immutableUserMSI": []any{"x"}}}, []string{"/mic", "additional properties 'immutableUserMSI'"}},
	{"NMI header not a boolean", map[string]any{"nmi": map[string]any{"metadataHeaderRequired": "yes"}}, []string{"/nmi/metadataHeaderRequired"}},
	{"MIC logging format", map[string]any{"mic": map[string]any{"loggingFormat": "xml"}}, []string{"/mic/loggingFormat", "'json'"}},
	{"identity list entry without name", map[string]any{"azureIdentities": []any{map[string]any{"clientID": "11111111-2222-4333-8444-555555555555", "type": 1,
		"binding": map[string]any{"name": "b", "selector": "s"}}}}, []string{"/azureIdentities/0", "name"}},
}

func identityWithPassword(p string) map[string]any {
	return map[string]any{"azureIdentities": map[string]any{"sp": map[string]any{"type": 1, "clientID": "11111111-2222-4333-8444-555555555555",
		"tenantID": "t", "clientPassword": p, "binding": map[string]any{"name": "sp-binding", "selector": "sp"}}}}
}

// TestLegacyValuesRefused: each unsafe or malformed value of AAD Pod Identity's chart stops the rendering with
// a message that names it and says what to do.
func TestLegacyValuesRefused(t *testing.T) {
	for _, tc := range legacyRefusals {
		t.Run(tc.name, func(t *testing.T) {
			_, errOut, err := helmTemplate(t, []string{writeValues(t, tc.values)})
			if err == nil {
				t.Fatalf("helm template accepted %v", tc.values)
			}
			for _, w := range tc.want {
				if !strings.Contains(errOut, w) {
					t.Errorf("error lacks %q:\n%s", w, errOut)
				}
			}
		})
	}
}

// TestLegacyValuesNotes installs and upgrades the chart with AAD Pod Identity values files into a real API server
// and checks NOTES: every key of the file is listed with what it became; our own keys given on top win.
func TestLegacyValuesNotes(t *testing.T) {
	helm := helmBin(t)
	env := startAPIServer(t)
	createNamespaces(t, env, "apps", "batch")
	kubeconfig := writeKubeconfig(t, env.Config)
	helmRun := func(t *testing.T, args ...string) string {
		t.Helper()
		out, errOut, err := run(t, helm, append(args, "--kubeconfig", kubeconfig)...)
		if err != nil {
			t.Fatalf("helm %s: %v\n%s%s", strings.Join(args, " "), err, out, errOut)
		}
		return out
	}
	leaves := legacyLeaves(t)
	// every key of the file is named (or a key above it: adminsecret as a whole, when assigner.credentials wins).
	checkFileListed := func(t *testing.T, notes, file string) {
		t.Helper()
		values := readValues(t, file)
		listed := 0
		for _, p := range leaves {
			if _, ok := lookup(values, p); !ok {
				continue
			}
			named := false
			for q := p; q != "" && !named; q = q[:max(strings.LastIndex(q, "."), 0)] {
				named = mentions(notes, q)
			}
			if !named {
				t.Errorf("NOTES do not list %s, which %s sets", p, filepath.Base(file))
			}
			listed++
		}
		if listed < 50 {
			t.Fatalf("only %d keys of AAD Pod Identity's chart found in %s", listed, file)
		}
	}

	t.Run("no such values, no such notes", func(t *testing.T) {
		out := helmRun(t, "install", "pi", chartDir(), "--namespace", "legacy", "--create-namespace")
		if !strings.Contains(out, "NOTES:") || strings.Contains(out, notesHeading) {
			t.Errorf("NOTES of an install without AAD Pod Identity values mention them, or are missing:\n%s", out)
		}
	})

	t.Run("helm upgrade -f 4.x with our own keys", func(t *testing.T) {
		out := helmRun(t, "upgrade", "pi", chartDir(), "--namespace", "legacy", "-f", legacy4x,
			"--set", "assigner.replicas=3", "--set", "certManager.enabled=false")
		notes := legacyNotes(out)
		if notes == "" {
			t.Fatalf("no %q in NOTES:\n%s", notesHeading, out)
		}
		checkFileListed(t, notes, legacy4x)
		for _, want := range []string{
			"mic.replicas: assigner.replicas=3 is set and wins",
			"mic.loggingFormat: json -> assigner.logFormat=json (--zap-encoder=json)",
			"mic.podLabels -> assigner.podLabels {\"team\":\"platform\"}",
			"mic.podDisruptionBudget: minAvailable 1 -> assigner.podDisruptionBudget.minAvailable",
			"mic.affinity: podAntiAffinity: MIC's terms select MIC's pods",
			"azureIdentities.orders-batch.name: orders -> the AzureIdentity's name (chart 4.x)",
			"MIC ran as root to read it, the assigner gets a copy from its init container stage-azure-json",
			"rbac.createUserFacingClusterRoles: true -> rbac.userFacingClusterRoles (pi-podidentity-view and pi-podidentity-edit",
		} {
			if !strings.Contains(notes, want) {
				t.Errorf("NOTES lack %q:\n%s", want, notes)
			}
		}
		// The upgrade reached the API server: ours where both are given, the 4.x file's identities.
		var dep unstructured.Unstructured
		dep.SetAPIVersion("apps/v1")
		dep.SetKind("Deployment")
		if err := env.Client.Get(context.Background(), types.NamespacedName{Namespace: "legacy", Name: "pi-podidentity-assigner"}, &dep); err != nil {
			t.Fatal(err)
		}
		if r, _, _ := unstructured.NestedInt64(dep.Object, "spec", "replicas"); r != 3 {
			t.Errorf("assigner replicas %d after the upgrade, want 3 (assigner.replicas wins over mic.replicas)", r)
		}
		for _, ns := range []string{"apps", "batch"} {
			var id unstructured.Unstructured
			id.SetAPIVersion("aadpodidentity.k8s.io/v1")
			id.SetKind("AzureIdentity")
			if err := env.Client.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: "orders"}, &id); err != nil {
				t.Errorf("AzureIdentity %s/orders of the 4.x file: %v", ns, err)
			}
		}
	})

	t.Run("3.x", func(t *testing.T) {
		out := helmRun(t, "install", "pi3", chartDir(), "--namespace", "legacy3", "--create-namespace", "--dry-run=server", "-f", legacy3x)
		notes := legacyNotes(out)
		checkFileListed(t, notes, legacy3x)
		for _, want := range []string{
			`forceNamespaced: "false" (a string) -> forceNamespaced=false`,
			"azureIdentities.billing-sp.clientPassword: the JSON string -> spec.clientPassword",
			"mic.cloudConfig: adminsecret is used instead",
		} {
			if !strings.Contains(notes, want) {
				t.Errorf("NOTES lack %q:\n%s", want, notes)
			}
		}
		if strings.Contains(notes, "WARNING") {
			t.Errorf("NOTES warn about the 3.x file, which carries nothing weaker over:\n%s", notes)
		}
	})

	t.Run("each key", func(t *testing.T) {
		values := map[string]any{}
		for k, v := range legacyKeyContext {
			values[k] = v
		}
		rows := map[string]bool{}
		for _, r := range legacyKeyMessages {
			if _, dup := lookup(values, r.path); dup {
				t.Fatalf("legacyKeyMessages: %s twice", r.path)
			}
			setPath(values, r.path, r.value)
			rows[r.path] = true
		}
		for _, p := range leaves {
			if !rows[p] {
				t.Errorf("values.schema.json declares %s but legacyKeyMessages has no row for it: add one with the message NOTES gives", p)
			}
		}
		out := helmRun(t, "install", "pk", chartDir(), "--namespace", "legacy-keys", "--create-namespace", "--dry-run=server", "-f", writeValues(t, values))
		notes := legacyNotes(out)
		if notes == "" {
			t.Fatalf("no %q in NOTES:\n%s", notesHeading, out)
		}
		var emptyList string
		if i := strings.Index(notes, "Empty, nothing to carry over:"); i >= 0 {
			emptyList = notes[i:]
			if j := strings.Index(emptyList, "\n\n"); j >= 0 {
				emptyList = emptyList[:j]
			}
		}
		for _, r := range legacyKeyMessages {
			t.Run(r.path, func(t *testing.T) {
				var lines []string
				for _, l := range strings.Split(notes, "\n") {
					if mentions(l, r.path) {
						lines = append(lines, l)
					}
				}
				for _, w := range r.want {
					if w == inEmpty {
						if !mentions(emptyList, r.path) {
							t.Errorf("NOTES do not list %s as empty:\n%s", r.path, notes)
						}
						continue
					}
					found := false
					for _, l := range lines {
						found = found || strings.Contains(l, w)
					}
					if !found {
						t.Errorf("no NOTES line about %s says %q; lines about it: %q", r.path, w, lines)
					}
				}
			})
		}
	})
}

// TestLegacyNotesMentions: mentions, which the NOTES checks rely on, matches whole keys only.
func TestLegacyNotesMentions(t *testing.T) {
	for _, tc := range []struct {
		text, path string
		want       bool
	}{
		{"    mic.replicas: 2 -> assigner.replicas", "mic.replicas", true},
		{"    mic.resources -> assigner.resources {}", "mic.resources", true},
		{"    adminsecret.tenantID, adminsecret.clientID, adminsecret.clientSecret -> x", "adminsecret.clientID", true},
		{"WARNING: nmi.metadataHeaderRequired=false carried over", "nmi.metadataHeaderRequired", true},
		{"    mic.leaderElection.namespace: x", "mic.leaderElection.name", false},
		{"    nmi.tolerations: x", "mic.tolerations", false},
		{"    -> assigner.replicas", "replicas", false},
	} {
		if got := mentions(tc.text, tc.path); got != tc.want {
			t.Errorf("mentions(%q, %q) = %v, want %v", tc.text, tc.path, got, tc.want)
		}
	}
	if got := fmt.Sprint(legacyNotes("x\nNOTES:\nhello\n" + notesHeading + " y")); got != notesHeading+" y" {
		t.Errorf("legacyNotes = %q", got)
	}
}
