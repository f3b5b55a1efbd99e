package packaging

import (
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// TestAzureJSONStaging: with the node's azure.json (AKS: root's, mode 0600) and a non-root assigner, a root init
// container without capabilities stages a copy into a memory volume owned by the pod's fsGroup, and only that
// copy is mounted in the assigner; the other credential sources, or an assigner run as root, need none.
func TestAzureJSONStaging(t *testing.T) {
	for _, tc := range []struct {
		name       string
		sets       []string
		stage      bool
		azureCfg   string
		hostPathIn string // container that mounts the node's file
	}{
		{name: "defaults: hostPath, uid 65532", stage: true, azureCfg: "/var/run/podidentity/azure/azure.json", hostPathIn: "stage-azure-json"},
		{name: "runAsUser 0", sets: []string{"assigner.runAsUser=0"}, azureCfg: "/etc/kubernetes/azure.json", hostPathIn: "assigner"},
		{name: "secret", sets: []string{"assigner.credentials.azureJSON=secret", "assigner.credentials.secretName=azure"}, azureCfg: "/etc/kubernetes/azure/azure.json"},
		{name: "none", sets: []string{"assigner.credentials.azureJSON=none"}, azureCfg: ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, err := helmTemplate(t, nil, tc.sets...)
			if err != nil {
				t.Fatalf("helm template: %v\n%s", err, errOut)
			}
			var spec map[string]any
			for _, o := range decodeAll(t, out) {
				if o.GetKind() == "Deployment" && strings.HasSuffix(o.GetName(), "-assigner") {
					spec, _, _ = unstructured.NestedMap(o.Object, "spec", "template", "spec")
				}
			}
			if spec == nil {
				t.Fatal("no assigner Deployment")
			}
			inits, _, _ := unstructured.NestedSlice(spec, "initContainers")
			containers, _, _ := unstructured.NestedSlice(spec, "containers")
			fsGroup, hasFSGroup, _ := unstructured.NestedInt64(spec, "securityContext", "fsGroup")
			if tc.stage != (len(inits) == 1) || tc.stage != hasFSGroup {
				t.Fatalf("init containers %d, fsGroup %v (%d): want staging %v", len(inits), hasFSGroup, fsGroup, tc.stage)
			}
			mountsNodeFile := map[string]bool{}
			for _, c := range append(append([]any{}, inits...), containers...) {
				c := c.(map[string]any)
				mounts, _, _ := unstructured.NestedSlice(c, "volumeMounts")
				for _, m := range mounts {
					if m.(map[string]any)["name"] == "azure-json" && m.(map[string]any)["mountPath"] == "/etc/kubernetes/azure.json" {
						mountsNodeFile[c["name"].(string)] = true
					}
				}
			}
			if tc.hostPathIn == "" && len(mountsNodeFile) != 0 || tc.hostPathIn != "" && (len(mountsNodeFile) != 1 || !mountsNodeFile[tc.hostPathIn]) {
				t.Errorf("the node's azure.json is mounted in %v, want only in %q", mountsNodeFile, tc.hostPathIn)
			}
			args, _, _ := unstructured.NestedStringSlice(containers[0].(map[string]any), "args")
			if !strings.Contains(strings.Join(args, " "), "--azure-config="+tc.azureCfg+" ") {
				t.Errorf("assigner args %q lack --azure-config=%s", args, tc.azureCfg)
			}
			if !tc.stage {
				return
			}
			init := inits[0].(map[string]any)
			sc, _, _ := unstructured.NestedMap(init, "securityContext")
			drop, _, _ := unstructured.NestedStringSlice(sc, "capabilities", "drop")
			if sc["runAsUser"] != int64(0) || sc["allowPrivilegeEscalation"] != false || sc["readOnlyRootFilesystem"] != true || len(drop) != 1 || drop[0] != "ALL" {
				t.Errorf("stage-azure-json securityContext %v: want root with every capability dropped, no escalation, read-only root", sc)
			}
			if fsGroup != 65532 {
				t.Errorf("fsGroup %d, want the assigner's uid 65532", fsGroup)
			}
		})
	}
}
