package packaging

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// TestFieldUpgradeJob keeps manifests/migration/crd-field-upgrade.yaml in step with the chart and the binary:
// its image is the assigner's at the chart's appVersion, and its arguments are flags the assigner accepts. (The
// migration rehearsal of the end-to-end suite runs the Job for real.)
func TestFieldUpgradeJob(t *testing.T) {
	var chart struct {
		AppVersion string `json:"appVersion"`
	}
	raw, err := os.ReadFile(filepath.Join(chartDir(), "Chart.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(raw, &chart); err != nil {
		t.Fatal(err)
	}
	raw, err = os.ReadFile(filepath.Join(repoRoot(), "manifests", "migration", "crd-field-upgrade.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var job map[string]any
	for _, o := range decodeAll(t, string(raw)) {
		if o.GetKind() == "Job" {
			job = o.Object
		}
	}
	if job == nil {
		t.Fatal("manifests/migration/crd-field-upgrade.yaml has no Job")
	}
	containers := job["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)["containers"].([]any)
	c := containers[0].(map[string]any)
	if want := "ghcr.io/podidentity/podidentity-assigner:" + chart.AppVersion; c["image"] != want {
		t.Errorf("the Job's image is %v, want %s (the chart's image.registry, the assigner and appVersion)", c["image"], want)
	}
	var args []string
	for _, a := range c["args"].([]any) {
		args = append(args, a.(string))
	}
	if !strings.Contains(strings.Join(args, " "), "--upgrade-crd-fields-only") {
		t.Errorf("the Job's args %q do not run the one-shot upgrade", args)
	}
	if err := argsChecker(t, "assigner")(args); err != nil {
		t.Error(err)
	}
}
