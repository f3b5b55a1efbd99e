// Package monitoring tests what the chart ships for operators: the alerting rules of
// charts/podidentity/files/prometheus-rules.yaml (Prometheus's own checker and the rules' unit tests, with
// promtool built from its Go module into bin/ by `make packaging-tools`) and the Grafana dashboard of
// charts/podidentity/files/grafana-dashboard.json (every query parses and names only metrics the components
// register). The end-to-end suite makes an alert fire on metrics scraped off real pods (test/suites/e2e).
package monitoring

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/podidentity/podidentity/test/toolbox/promtest"
	"github.com/podidentity/podidentity/test/toolbox/testenv"
)

var root = testenv.RepoRoot()

func rulesFile() string {
	return filepath.Join(root, "charts", "podidentity", "files", "prometheus-rules.yaml")
}
func dashboardFile() string {
	return filepath.Join(root, "charts", "podidentity", "files", "grafana-dashboard.json")
}

// promtool runs bin/promtool with args in dir and returns its output; it fails the test when promtool fails.
func promtool(t *testing.T, dir string, args ...string) string {
	t.Helper()
	bin := filepath.Join(root, "bin", "promtool")
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("%s is missing: run `make packaging-tools` (it builds promtool from hack/tools/promtool)", bin)
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Rules is the part of a Prometheus rules file the tests read.
type Rules struct {
	Groups []struct {
		Name  string `json:"name"`
		Rules []struct {
			Alert       string            `json:"alert"`
			Record      string            `json:"record"`
			Expr        string            `json:"expr"`
			Labels      map[string]string `json:"labels"`
			Annotations map[string]string `json:"annotations"`
		} `json:"rules"`
	} `json:"groups"`
}

func readRules(t *testing.T) Rules {
	t.Helper()
	raw, err := os.ReadFile(rulesFile())
	if err != nil {
		t.Fatal(err)
	}
	var r Rules
	if err := yaml.Unmarshal(raw, &r); err != nil {
		t.Fatal(err)
	}
	return r
}

func TestRulesCheckAndUnitTests(t *testing.T) {
	out := promtool(t, root, "check", "rules", rulesFile())
	if !strings.Contains(out, "SUCCESS") {
		t.Fatalf("promtool check rules: %s", out)
	}
	out = promtool(t, filepath.Join(root, "test", "suites", "monitoring"), "test", "rules", filepath.Join("testdata", "rules-test.yaml"))
	if !strings.Contains(out, "SUCCESS") {
		t.Fatalf("promtool test rules: %s", out)
	}
}

// TestEveryAlertIsTestedAndDocumented: each alert has a severity, a runbook that is a heading of
// docs/troubleshooting.md, and at least one unit test.
func TestEveryAlertIsTestedAndDocumented(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join(root, "docs", "troubleshooting.md"))
	if err != nil {
		t.Fatal(err)
	}
	anchors := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^#{2,4} (.+)$`).FindAllStringSubmatch(string(doc), -1) {
		anchors[slug(m[1])] = true
	}
	tests, err := os.ReadFile(filepath.Join(root, "test", "suites", "monitoring", "testdata", "rules-test.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	alerts := 0
	for _, g := range readRules(t).Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			alerts++
			switch r.Labels["severity"] {
			case "critical", "warning", "info":
			default:
				t.Errorf("alert %s: severity %q, want critical, warning or info", r.Alert, r.Labels["severity"])
			}
			url := r.Annotations["runbook_url"]
			anchor, ok := strings.CutPrefix(url, "RUNBOOK_BASE#")
			if !ok || !anchors[anchor] {
				t.Errorf("alert %s: runbook_url %q is not RUNBOOK_BASE#<a heading of docs/troubleshooting.md>", r.Alert, url)
			}
			if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("alert %s: needs a summary and a description", r.Alert)
			}
			if !strings.Contains(string(tests), "alertname: "+r.Alert+"\n") {
				t.Errorf("alert %s has no unit test in test/suites/monitoring/testdata/rules-test.yaml", r.Alert)
			}
		}
	}
	if alerts < 10 {
		t.Fatalf("only %d alerts read from %s", alerts, rulesFile())
	}
}

// slug is GitHub's anchor of a Markdown heading.
func slug(heading string) string {
	s := strings.ToLower(strings.TrimSpace(heading))
	s = regexp.MustCompile(`[^\p{L}\p{N}\- _]`).ReplaceAllString(s, "")
	return strings.ReplaceAll(s, " ", "-")
}

// dashboardQueries returns every panel title -> query of the dashboard.
func dashboardQueries(t *testing.T) map[string][]string {
	t.Helper()
	raw, err := os.ReadFile(dashboardFile())
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		UID    string `json:"uid"`
		Panels []struct {
			Type    string `json:"type"`
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatalf("%s is not JSON: %v", dashboardFile(), err)
	}
	if d.UID == "" {
		t.Errorf("the dashboard has no uid: Grafana would import a new copy on every load")
	}
	out := map[string][]string{}
	for _, p := range d.Panels {
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			out[p.Title] = append(out[p.Title], tg.Expr)
		}
	}
	return out
}

// TestQueriesUseRegisteredMetrics: every podidentity metric that an alert or a dashboard panel reads is one a
// component registers (a renamed metric would leave an alert that never fires and an empty panel).
func TestQueriesUseRegisteredMetrics(t *testing.T) {
	reg, err := promtest.Registered(root)
	if err != nil {
		t.Fatal(err)
	}
	check := func(where, expr string) {
		names := promtest.OurMetric.FindAllStringSubmatch(expr, -1)
		if len(names) == 0 {
			t.Errorf("%s: %q reads no podidentity metric", where, expr)
		}
		for _, m := range names {
			if !promtest.Defined(reg, m[1]) {
				t.Errorf("%s: %s is not a metric any component registers", where, m[1])
			}
		}
	}
	for _, g := range readRules(t).Groups {
		for _, r := range g.Rules {
			check("alert "+r.Alert, r.Expr)
		}
	}
	for title, exprs := range dashboardQueries(t) {
		for _, e := range exprs {
			check("dashboard panel "+title, e)
		}
	}
}

// TestDashboardQueriesParse hands every panel's query to promtool as a recording rule, so Prometheus's own
// parser checks it.
func TestDashboardQueriesParse(t *testing.T) {
	queries := dashboardQueries(t)
	titles := make([]string, 0, len(queries))
	for title := range queries {
		titles = append(titles, title)
	}
	sort.Strings(titles)
	type rule struct {
		Record string `json:"record"`
		Expr   string `json:"expr"`
	}
	var rules []rule
	for i, title := range titles {
		for j, e := range queries[title] {
			rules = append(rules, rule{Record: "dashboard:panel_" + strings.Repeat("x", i+1) + "_" + strings.Repeat("y", j+1), Expr: e})
		}
	}
	b, err := yaml.Marshal(map[string]any{"groups": []any{map[string]any{"name": "dashboard", "rules": rules}}})
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(t.TempDir(), "dashboard-rules.yaml")
	if err := os.WriteFile(f, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if out := promtool(t, root, "check", "rules", f); !strings.Contains(out, "SUCCESS") {
		t.Fatalf("promtool check rules on the dashboard's queries: %s", out)
	}
	t.Logf("%d dashboard queries parsed by promtool", len(rules))
}
