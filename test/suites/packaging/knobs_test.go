package packaging

// The operator's knobs (affinity, topology spread, pod labels, the assigner's replicas and budget, image
// digests, log levels, the aggregated user-facing ClusterRoles, the components' NetworkPolicies, CRDs managed by
// the release): each rendered with the value set, and the field it must reach checked.

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"
)

const testDigest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// field returns the value at a path of an object, where a number in the path indexes a list; found reports
// whether it is there.
func field(obj map[string]any, path ...string) (any, bool) {
	var cur any = obj
	for _, p := range path {
		switch c := cur.(type) {
		case map[string]any:
			v, ok := c[p]
			if !ok {
				return nil, false
			}
			cur = v
		case []any:
			i := -1
			if err := json.Unmarshal([]byte(p), &i); err != nil || i < 0 || i >= len(c) {
				return nil, false
			}
			cur = c[i]
		default:
			return nil, false
		}
	}
	return cur, true
}

// podSpec is the pod template's spec of a Deployment or DaemonSet.
func podSpec(t *testing.T, objs []*unstructured.Unstructured, kind, name string) map[string]any {
	t.Helper()
	spec, _, _ := unstructured.NestedMap(find(t, objs, kind, name).Object, "spec", "template", "spec")
	return spec
}

func podLabelsOf(t *testing.T, objs []*unstructured.Unstructured, kind, name string) map[string]string {
	t.Helper()
	l, _, _ := unstructured.NestedStringMap(find(t, objs, kind, name).Object, "spec", "template", "metadata", "labels")
	return l
}

func argsOf(t *testing.T, objs []*unstructured.Unstructured, kind, name, containerName string) []string {
	t.Helper()
	args, _, _ := unstructured.NestedStringSlice(container(t, podSpec(t, objs, kind, name), containerName), "args")
	return args
}

// asJSON normalises a value to compare it with a JSON literal.
func asJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func wantJSON(t *testing.T, what string, got any, want string) {
	t.Helper()
	var w any
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatalf("bad want %s: %v", want, err)
	}
	if g := asJSON(t, got); g != asJSON(t, w) {
		t.Errorf("%s = %s, want %s", what, g, asJSON(t, w))
	}
}

var (
	webhookSelector  = `{"matchLabels":{"app.kubernetes.io/name":"podidentity-webhook","app.kubernetes.io/instance":"podidentity"}}`
	assignerSelector = `{"matchLabels":{"app.kubernetes.io/name":"podidentity-assigner","app.kubernetes.io/instance":"podidentity"}}`
	nodeAffinity     = `{"requiredDuringSchedulingIgnoredDuringExecution":{"nodeSelectorTerms":[{"matchExpressions":[{"key":"agentpool","operator":"In","values":["system"]}]}]}}`
)

func TestChartKnobs(t *testing.T) {
	for _, tc := range []struct {
		name  string
		sets  []string
		json  []string // --set-json
		check func(t *testing.T, objs []*unstructured.Unstructured)
	}{
		{
			name: "webhook affinity keeps the generated anti-affinity",
			json: []string{`webhook.affinity={"nodeAffinity":` + nodeAffinity + `}`},
			check: func(t *testing.T, objs []*unstructured.Unstructured) {
				spec := podSpec(t, objs, "Deployment", "podidentity-webhook")
				got, _ := field(spec, "affinity", "nodeAffinity")
				wantJSON(t, "webhook nodeAffinity", got, nodeAffinity)
				got, _ = field(spec, "affinity", "podAntiAffinity", "preferredDuringSchedulingIgnoredDuringExecution", "0", "podAffinityTerm", "labelSelector")
				wantJSON(t, "webhook generated podAntiAffinity selector", got, webhookSelector)
			},
		},
		{
			name: "webhook podAntiAffinity replaces antiAffinity's",
			sets: []string{"webhook.antiAffinity=hard"},
			json: []string{`webhook.affinity={"podAntiAffinity":{"preferredDuringSchedulingIgnoredDuringExecution":[{"weight":50,"podAffinityTerm":{"topologyKey":"topology.kubernetes.io/zone","labelSelector":{"matchLabels":{"a":"b"}}}}]}}`},
			check: func(t *testing.T, objs []*unstructured.Unstructured) {
				got, _ := field(podSpec(t, objs, "Deployment", "podidentity-webhook"), "affinity")
				wantJSON(t, "webhook affinity", got, `{"podAntiAffinity":{"preferredDuringSchedulingIgnoredDuringExecution":[{"weight":50,"podAffinityTerm":{"topologyKey":"topology.kubernetes.io/zone","labelSelector":{"matchLabels":{"a":"b"}}}}]}}`)
			},
		},
		{
			name: "webhook topology spread gets the selector where it has none",
			json: []string{`webhook.topologySpreadConstraints=[{"maxSkew":1,"topologyKey":"topology.kubernetes.io/zone","whenUnsatisfiable":"ScheduleAnyway"},{"maxSkew":2,"topologyKey":"kubernetes.io/hostname","whenUnsatisfiable":"DoNotSchedule","labelSelector":{"matchLabels":{"x":"y"}}}]`},
			check: func(t *testing.T, objs []*unstructured.Unstructured) {
				got, _ := field(podSpec(t, objs, "Deployment", "podidentity-webhook"), "topologySpreadConstraints")
				wantJSON(t, "webhook topologySpreadConstraints", got, `[{"maxSkew":1,"topologyKey":"topology.kubernetes.io/zone","whenUnsatisfiable":"ScheduleAnyway","labelSelector":`+webhookSelector+`},{"maxSkew":2,"topologyKey":"kubernetes.io/hostname","whenUnsatisfiable":"DoNotSchedule","labelSelector":{"matchLabels":{"x":"y"}}}]`)
			},
		},
		{
			name: "assigner GOMEMLIMIT follows its memory limit",
			sets: []string{"assigner.resources.limits.memory=1Gi"},
			check: func(t *testing.T, objs []*unstructured.Unstructured) {
				if got := assignerEnv(t, objs)["GOMEMLIMIT"]; got != "921MiB" {
					t.Errorf("GOMEMLIMIT %q with a 1Gi limit, want 921MiB (90%%)", got)
				}
			},
		},
		{
			name: "assigner GOMEMLIMIT in decimal units and another share",
			sets: []string{"assigner.resources.limits.memory=500M", "assigner.goMemLimitPercent=80"},
			check: func(t *testing.T, objs []*unstructured.Unstructured) {
				if got := assignerEnv(t, objs)["GOMEMLIMIT"]; got != "381MiB" { // 400,000,000 bytes
					t.Errorf("GOMEMLIMIT %q with a 500M limit at 80%%, want 381MiB", got)
				}
			},
		},
		{
			name: "assigner GOMEMLIMIT off",
			sets: []string{"assigner.goMemLimitPercent=0"},
			check: func(t *testing.T, objs []*unstructured.Unstructured) {
				if got, ok := assignerEnv(t, objs)["GOMEMLIMIT"]; ok {
					t.Errorf("GOMEMLIMIT %q set with goMemLimitPercent=0", got)
				}
			},
		},
		{
			name: "pod labels of the three components",
			sets: []string{"redirect.mode=cni", "webhook.podLabels.team=platform", "assigner.podLabels.team=identity", "cni.podLabels.tier=node"},
			check: func(t *testing.T, objs []*unstructured.Unstructured) {
				for _, c := range []struct{ kind, name, key, value string }{
					{"Deployment", "podidentity-webhook", "team", "platform"},
					{"Deployment", "podidentity-assigner", "team", "identity"},
					{"DaemonSet", "podidentity-node", "tier", "node"},
				} {
					l := podLabelsOf(t, objs, c.kind, c.name)
					if l[c.key] != c.value || l["app.kubernetes.io/name"] != c.name {
						t.Errorf("%s pod labels %v: want %s=%s beside the chart's", c.name, l, c.key, c.value)
					}
					sel, _, _ := unstructured.NestedStringMap(find(t, objs, c.kind, c.name).Object, "spec", "selector", "matchLabels")
					if _, in := sel[c.key]; in {
						t.Errorf("%s: podLabels reached the selector %v (immutable on a Deployment)", c.name, sel)
					}
				}
			},
		},
		{
			name: "assigner affinity, topology spread and hard anti-affinity",
			sets: []string{"assigner.antiAffinity=hard"},
			json: []string{`assigner.affinity={"nodeAffinity":` + nodeAffinity + `}`,
				`assigner.topologySpreadConstraints=[{"maxSkew":1,"topologyKey":"topology.kubernetes.io/zone","whenUnsatisfiable":"ScheduleAnyway"}]`},
			check: func(t *testing.T, objs []*unstructured.Unstructured) {
				spec := podSpec(t, objs, "Deployment", "podidentity-assigner")
				got, _ := field(spec, "affinity", "nodeAffinity")
				wantJSON(t, "assigner nodeAffinity", got, nodeAffinity)
				got, _ = field(spec, "affinity", "podAntiAffinity", "requiredDuringSchedulingIgnoredDuringExecution", "0", "labelSelector")
				wantJSON(t, "assigner required podAntiAffinity selector", got, assignerSelector)
				got, _ = field(spec, "topologySpreadConstraints", "0", "labelSelector")
				wantJSON(t, "assigner topology spread selector", got, assignerSelector)
			},
		},
		{
			name: "node agent affinity",
			sets: []string{"redirect.mode=cni"},
			json: []string{`cni.affinity={"nodeAffinity":` + nodeAffinity + `}`},
			check: func(t *testing.T, objs []*unstructured.Unstructured) {
				got, _ := field(podSpec(t, objs, "DaemonSet", "podidentity-node"), "affinity")
				wantJSON(t, "node agent affinity", got, `{"nodeAffinity":`+nodeAffinity+`}`)
			},
		},
		{
			name: "assigner: two replicas, leader election, a budget by default",
			check: func(t *testing.T, objs []*unstructured.Unstructured) {
				dep := find(t, objs, "Deployment", "podidentity-assigner")
				if r, _, _ := unstructured.NestedInt64(dep.Object, "spec", "replicas"); r != 2 {
					t.Errorf("assigner replicas %d, want 2", r)
				}
				if a := argsOf(t, objs, "Deployment", "podidentity-assigner", "assigner"); !contains(a, "--leader-elect=true") {
					t.Errorf("assigner args %v lack --leader-elect=true", a)
				}
				pdb := find(t, objs, "PodDisruptionBudget", "podidentity-assigner")
				got, _ := field(pdb.Object, "spec")
				wantJSON(t, "assigner PodDisruptionBudget spec", got, `{"minAvailable":1,"selector":`+assignerSelector+`}`)
			},
		},
		{
			name: "assigner: one replica, no budget (it would block every drain)",
			sets: []string{"assigner.replicas=1"},
			check: func(t *testing.T, objs []*unstructured.Unstructured) {
				for _, o := range objs {
					if o.GetKind() == "PodDisruptionBudget" && o.GetName() == "podidentity-assigner" {
						t.Error("PodDisruptionBudget rendered for a single assigner replica")
					}
				}
			},
		},
		{
			name: "assigner budget off",
			sets: []string{"assigner.podDisruptionBudget.enabled=false"},
			check: func(t *testing.T, objs []*unstructured.Unstructured) {
				for _, o := range objs {
					if o.GetKind() == "PodDisruptionBudget" && o.GetName() == "podidentity-assigner" {
						t.Error("PodDisruptionBudget rendered with assigner.podDisruptionBudget.enabled=false")
					}
				}
			},
		},
		{
			name: "assigner budget minAvailable",
			sets: []string{"assigner.replicas=3", "assigner.podDisruptionBudget.minAvailable=2"},
			check: func(t *testing.T, objs []*unstructured.Unstructured) {
				got, _ := field(find(t, objs, "PodDisruptionBudget", "podidentity-assigner").Object, "spec", "minAvailable")
				wantJSON(t, "assigner minAvailable", got, `2`)
			},
		},
		{
			name: "digests win over tags, and every holder of the sidecar image agrees",
			sets: []string{"redirect.mode=cni", "image.tag=v9", "webhook.digest=" + testDigest, "assigner.digest=" + testDigest,
				"sidecar.digest=" + testDigest, "init.digest=" + testDigest, "cni.digest=" + testDigest},
			check: func(t *testing.T, objs []*unstructured.Unstructured) {
				reg := "ghcr.io/podidentity/"
				for _, c := range []struct{ kind, name, container, repo string }{
					{"Deployment", "podidentity-webhook", "webhook", "podidentity-webhook"},
					{"Deployment", "podidentity-assigner", "assigner", "podidentity-assigner"},
					{"DaemonSet", "podidentity-node", "node", "podidentity-node"},
				} {
					img := container(t, podSpec(t, objs, c.kind, c.name), c.container)["image"]
					if want := reg + c.repo + "@" + testDigest; img != want {
						t.Errorf("%s image %v, want %s", c.name, img, want)
					}
				}
				sidecar := "--sidecar-image=" + reg + "podidentity-sidecar@" + testDigest
				for _, c := range []struct{ kind, name, container string }{
					{"Deployment", "podidentity-webhook", "webhook"}, {"Deployment", "podidentity-assigner", "assigner"}, {"DaemonSet", "podidentity-node", "node"},
				} {
					if a := argsOf(t, objs, c.kind, c.name, c.container); !contains(a, sidecar) {
						t.Errorf("%s args lack %s: %v", c.name, sidecar, a)
					}
				}
				if a := argsOf(t, objs, "Deployment", "podidentity-webhook", "webhook"); !contains(a, "--init-image="+reg+"podidentity-init@"+testDigest) {
					t.Errorf("webhook args lack the init image by digest: %v", a)
				}
			},
		},
		{
			name: "a digest of one image leaves the others on the tag",
			sets: []string{"image.tag=v9", "sidecar.digest=" + testDigest},
			check: func(t *testing.T, objs []*unstructured.Unstructured) {
				a := argsOf(t, objs, "Deployment", "podidentity-webhook", "webhook")
				if !contains(a, "--sidecar-image=ghcr.io/podidentity/podidentity-sidecar@"+testDigest) || !contains(a, "--init-image=ghcr.io/podidentity/podidentity-init:v9") {
					t.Errorf("webhook args %v", a)
				}
			},
		},
		{
			name: "log levels and formats",
			sets: []string{"webhook.logLevel=debug", "webhook.logFormat=console", "assigner.logLevel=3", "assigner.logFormat=console", "sidecar.logLevel=debug"},
			check: func(t *testing.T, objs []*unstructured.Unstructured) {
				w := argsOf(t, objs, "Deployment", "podidentity-webhook", "webhook")
				for _, want := range []string{"--zap-log-level=debug", "--zap-encoder=console", "--sidecar-log-verbosity=1"} {
					if !contains(w, want) {
						t.Errorf("webhook args lack %s: %v", want, w)
					}
				}
				a := argsOf(t, objs, "Deployment", "podidentity-assigner", "assigner")
				for _, want := range []string{"--zap-log-level=3", "--zap-encoder=console"} {
					if !contains(a, want) {
						t.Errorf("assigner args lack %s: %v", want, a)
					}
				}
			},
		},
		{
			name: "sidecar verbosity as a number, and the default",
			sets: []string{"sidecar.logLevel=2"},
			check: func(t *testing.T, objs []*unstructured.Unstructured) {
				if w := argsOf(t, objs, "Deployment", "podidentity-webhook", "webhook"); !contains(w, "--sidecar-log-verbosity=2") {
					t.Errorf("webhook args lack --sidecar-log-verbosity=2: %v", w)
				}
			},
		},
		{
			name: "user-facing ClusterRoles",
			sets: []string{"rbac.userFacingClusterRoles=true"},
			check: func(t *testing.T, objs []*unstructured.Unstructured) {
				view := find(t, objs, "ClusterRole", "podidentity-view")
				if l := view.GetLabels(); l["rbac.authorization.k8s.io/aggregate-to-view"] != "true" {
					t.Errorf("podidentity-view labels %v: want aggregate-to-view", l)
				}
				rules, _ := field(view.Object, "rules")
				wantJSON(t, "podidentity-view rules", rules, `[{"apiGroups":["aadpodidentity.k8s.io"],"resources":["azureidentities","azureidentitybindings","azureassignedidentities","azurepodidentityexceptions"],"verbs":["get","list","watch"]}]`)
				edit := find(t, objs, "ClusterRole", "podidentity-edit")
				if l := edit.GetLabels(); l["rbac.authorization.k8s.io/aggregate-to-edit"] != "true" || l["rbac.authorization.k8s.io/aggregate-to-admin"] != "true" || l["rbac.authorization.k8s.io/aggregate-to-view"] != "" {
					t.Errorf("podidentity-edit labels %v: want aggregate-to-edit and -admin only", l)
				}
				rules, _ = field(edit.Object, "rules")
				wantJSON(t, "podidentity-edit rules", rules, `[{"apiGroups":["aadpodidentity.k8s.io"],"resources":["azureidentities","azureidentitybindings","azurepodidentityexceptions"],"verbs":["create","update","patch","delete"]}]`)
			},
		},
		{
			name: "no user-facing ClusterRoles by default",
			check: func(t *testing.T, objs []*unstructured.Unstructured) {
				for _, o := range objs {
					if o.GetKind() == "ClusterRole" && (o.GetName() == "podidentity-view" || o.GetName() == "podidentity-edit") {
						t.Errorf("ClusterRole %s rendered with rbac.userFacingClusterRoles=false", o.GetName())
					}
				}
			},
		},
		{
			name: "components' NetworkPolicies",
			sets: []string{"networkPolicy.components.enabled=true", "networkPolicy.components.metricsNamespaces={monitoring,observability}"},
			check: func(t *testing.T, objs []*unstructured.Unstructured) {
				metrics := `{"from":[{"namespaceSelector":{"matchExpressions":[{"key":"kubernetes.io/metadata.name","operator":"In","values":["monitoring","observability"]}]}}],"ports":[{"protocol":"TCP","port":8080}]}`
				got, _ := field(find(t, objs, "NetworkPolicy", "podidentity-webhook").Object, "spec")
				wantJSON(t, "webhook NetworkPolicy", got, `{"podSelector":`+webhookSelector+`,"policyTypes":["Ingress"],"ingress":[{"ports":[{"protocol":"TCP","port":9443}]},`+metrics+`]}`)
				got, _ = field(find(t, objs, "NetworkPolicy", "podidentity-assigner").Object, "spec")
				wantJSON(t, "assigner NetworkPolicy", got, `{"podSelector":`+assignerSelector+`,"policyTypes":["Ingress"],"ingress":[`+metrics+`]}`)
			},
		},
		{
			name: "components' NetworkPolicies without metrics scrapers, assigner off",
			sets: []string{"networkPolicy.components.enabled=true", "webhook.port=10250", "assigner.enabled=false"},
			check: func(t *testing.T, objs []*unstructured.Unstructured) {
				got, _ := field(find(t, objs, "NetworkPolicy", "podidentity-webhook").Object, "spec", "ingress")
				wantJSON(t, "webhook NetworkPolicy ingress", got, `[{"ports":[{"protocol":"TCP","port":10250}]}]`)
				for _, o := range objs {
					if o.GetKind() == "NetworkPolicy" && o.GetName() == "podidentity-assigner" {
						t.Error("assigner NetworkPolicy rendered without the assigner")
					}
				}
			},
		},
		{
			name: "components' NetworkPolicies: the assigner accepts nothing without scrapers",
			sets: []string{"networkPolicy.components.enabled=true"},
			check: func(t *testing.T, objs []*unstructured.Unstructured) {
				got, found := field(find(t, objs, "NetworkPolicy", "podidentity-assigner").Object, "spec", "ingress")
				if !found {
					t.Fatal("assigner NetworkPolicy has no ingress list")
				}
				wantJSON(t, "assigner NetworkPolicy ingress", got, `[]`)
			},
		},
		{
			name: "CRDs managed by the release",
			sets: []string{"crds.manage=true"},
			check: func(t *testing.T, objs []*unstructured.Unstructured) {
				files, _ := filepath.Glob(filepath.Join(chartDir(), "crds", "*.yaml"))
				if len(files) != 4 {
					t.Fatalf("%d files in crds/", len(files))
				}
				for _, f := range files {
					raw, err := os.ReadFile(f)
					if err != nil {
						t.Fatal(err)
					}
					var want map[string]any
					if err := yaml.Unmarshal(raw, &want); err != nil {
						t.Fatal(err)
					}
					name, _, _ := unstructured.NestedString(want, "metadata", "name")
					crd := find(t, objs, "CustomResourceDefinition", name)
					if !reflect.DeepEqual(asJSON(t, crd.Object["spec"]), asJSON(t, want["spec"])) {
						t.Errorf("CRD %s: spec differs from crds/%s", name, filepath.Base(f))
					}
					a := crd.GetAnnotations()
					if a["helm.sh/resource-policy"] != "keep" {
						t.Errorf("CRD %s lacks helm.sh/resource-policy: keep (uninstall would delete every object of its kind): %v", name, a)
					}
					if !strings.HasPrefix(a["api-approved.kubernetes.io"], "unapproved") {
						t.Errorf("CRD %s lost its api-approved.kubernetes.io annotation: %v", name, a)
					}
					if l := crd.GetLabels(); l["app.kubernetes.io/instance"] != "podidentity" {
						t.Errorf("CRD %s labels %v", name, l)
					}
				}
			},
		},
		{
			name: "CRDs not rendered by default",
			check: func(t *testing.T, objs []*unstructured.Unstructured) {
				for _, o := range objs {
					if o.GetKind() == "CustomResourceDefinition" {
						t.Errorf("CRD %s rendered from templates with crds.manage=false (helm installs crds/)", o.GetName())
					}
				}
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sets := append([]string{}, tc.sets...)
			args := []string{}
			for _, j := range tc.json {
				args = append(args, "--set-json", j)
			}
			out, errOut, err := helmTemplateArgs(t, args, sets...)
			if err != nil {
				t.Fatalf("helm template: %v\n%s", err, errOut)
			}
			tc.check(t, decodeAll(t, out))
		})
	}
}

// TestChartKnobsRefused: values the templates refuse (the schema's refusals are in TestSchemaRejectsBadValues).
func TestChartKnobsRefused(t *testing.T) {
	for _, tc := range []struct {
		name string
		sets []string
		want []string
	}{
		{"assigner GOMEMLIMIT share over 100", []string{"assigner.goMemLimitPercent=150"}, []string{"goMemLimitPercent"}},
		{"webhook pod label the chart sets", []string{`webhook.podLabels.app\.kubernetes\.io/name=x`}, []string{"webhook.podLabels", "app.kubernetes.io/name"}},
		{"assigner pod label of workload identity", []string{`assigner.podLabels.azure\.workload\.identity/use=yes`}, []string{"assigner.podLabels", "azure.workload.identity/use"}},
		{"node agent pod label the chart sets", []string{"redirect.mode=cni", `cni.podLabels.app\.kubernetes\.io/instance=x`}, []string{"cni.podLabels", "app.kubernetes.io/instance"}},
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

// assignerEnv is the assigner container's environment, name to value.
func assignerEnv(t *testing.T, objs []*unstructured.Unstructured) map[string]string {
	t.Helper()
	containers, _, _ := unstructured.NestedSlice(podSpec(t, objs, "Deployment", "podidentity-assigner"), "containers")
	out := map[string]string{}
	for _, c := range containers {
		c := c.(map[string]any)
		if c["name"] != "assigner" {
			continue
		}
		env, _, _ := unstructured.NestedSlice(c, "env")
		for _, e := range env {
			e := e.(map[string]any)
			v, _ := e["value"].(string)
			out[e["name"].(string)] = v
		}
	}
	if len(out) == 0 {
		t.Fatal("the assigner container has no environment")
	}
	return out
}
