package docs

import (
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/podidentity/podidentity/test/toolbox/promtest"
)

// aadPodIdentityMetrics are the metrics AAD Pod Identity exported (upstream pkg/metrics: the views registered
// by registerViews, with the exporter's namespace aadpodidentity). The migration guide maps each of them.
var aadPodIdentityMetrics = []string{
	"aadpodidentity_assigned_identity_addition_duration_seconds",
	"aadpodidentity_assigned_identity_addition_count",
	"aadpodidentity_assigned_identity_deletion_duration_seconds",
	"aadpodidentity_assigned_identity_deletion_count",
	"aadpodidentity_assigned_identity_update_duration_seconds",
	"aadpodidentity_assigned_identity_update_count",
	"aadpodidentity_nmi_operations_duration_seconds",
	"aadpodidentity_mic_cycle_duration_seconds",
	"aadpodidentity_mic_cycle_count",
	"aadpodidentity_mic_new_leader_election_count",
	"aadpodidentity_cloud_provider_operations_errors_count",
	"aadpodidentity_cloud_provider_operations_duration_seconds",
	"aadpodidentity_kubernetes_api_operations_errors_count",
	"aadpodidentity_imds_operations_errors_count",
	"aadpodidentity_imds_operations_duration_seconds",
}

// registeredMetrics returns the metrics the components register (test/toolbox/promtest.Registered).
func registeredMetrics(t *testing.T) map[string]string {
	t.Helper()
	reg, err := promtest.Registered(root)
	if err != nil {
		t.Fatal(err)
	}
	return reg
}

func metricDefined(reg map[string]string, name string) bool { return promtest.Defined(reg, name) }

// ourMetric matches a podidentity metric name, not the tail of an aadpodidentity_ one.
var ourMetric = promtest.OurMetric

// TestMigrationMetricsTable fails when the "## Metrics and alerts" section of docs/migration.md names a
// podidentity_* metric (in its table or its example rules) that no component registers, leaves one of AAD Pod
// Identity's metrics unmapped, or has a row without a podidentity metric, a "no equivalent", or a reason.
func TestMigrationMetricsTable(t *testing.T) {
	reg := registeredMetrics(t)
	if len(reg) < 20 {
		t.Fatalf("only %d metrics found in the components' sources; is the parser still finding prometheus.*Opts{Name: ...}?", len(reg))
	}
	doc, err := os.ReadFile(filepath.Join(root, "docs", "migration.md"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(doc)
	i := strings.Index(text, "\n## Metrics and alerts\n")
	if i < 0 {
		t.Fatal(`docs/migration.md has no "## Metrics and alerts" section`)
	}
	section := text[i+1:]
	if j := strings.Index(section[3:], "\n## "); j >= 0 {
		section = section[:j+3]
	}

	named := map[string]bool{}
	for _, m := range ourMetric.FindAllStringSubmatch(section, -1) {
		named[m[1]] = true
	}
	var unknown []string
	for name := range named {
		if !metricDefined(reg, name) {
			unknown = append(unknown, name)
		}
	}
	sort.Strings(unknown)
	for _, name := range unknown {
		t.Errorf("docs/migration.md, Metrics and alerts: %s is not a metric the components register (renamed or removed?)", name)
	}
	if len(named) < 10 {
		t.Errorf("docs/migration.md, Metrics and alerts: names only %d podidentity metrics", len(named))
	}

	mapped := map[string]bool{}
	rows := 0
	for _, line := range strings.Split(section, "\n") {
		if !strings.HasPrefix(line, "| `aadpodidentity_") {
			continue
		}
		rows++
		cells := strings.Split(strings.Trim(line, "|"), " | ")
		if len(cells) != 3 {
			t.Errorf("row %q: want 3 cells (old metric, podidentity, why), got %d", line, len(cells))
			continue
		}
		for _, m := range regexp.MustCompile("`(aadpodidentity_[a-z_]+)").FindAllStringSubmatch(cells[0], -1) {
			mapped[m[1]] = true
		}
		ours := strings.TrimSpace(cells[1])
		if !ourMetric.MatchString(ours) && !strings.Contains(ours, "no equivalent") {
			t.Errorf("row %q: names no podidentity metric and does not say \"no equivalent\"", line)
		}
		if strings.TrimSpace(cells[2]) == "" {
			t.Errorf("row %q: no reason given", line)
		}
	}
	if rows == 0 {
		t.Fatal("docs/migration.md, Metrics and alerts: no table rows starting with | `aadpodidentity_")
	}
	for _, m := range aadPodIdentityMetrics {
		if !mapped[m] {
			t.Errorf("docs/migration.md, Metrics and alerts: AAD Pod Identity's %s has no row", m)
		}
	}
}

func TestMetricDefined(t *testing.T) {
	reg := map[string]string{"podidentity_x_seconds": "HistogramOpts", "podidentity_y_total": "CounterOpts", "podidentity_z": "SummaryOpts"}
	for name, want := range map[string]bool{
		"podidentity_x_seconds": true, "podidentity_x_seconds_bucket": true, "podidentity_x_seconds_count": true, "podidentity_x_seconds_sum": true,
		"podidentity_y_total": true, "podidentity_y_total_count": false, "podidentity_z_count": true, "podidentity_z_bucket": false,
		"podidentity_w": false,
	} {
		if got := metricDefined(reg, name); got != want {
			t.Errorf("metricDefined(%s) = %v, want %v", name, got, want)
		}
	}
	if m := ourMetric.FindAllStringSubmatch("`aadpodidentity_mic_cycle_count` and `podidentity_assigner_drift_repairs_total`", -1); len(m) != 1 || m[0][1] != "podidentity_assigner_drift_repairs_total" {
		t.Errorf("ourMetric matched %q", m)
	}
}
