package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/yaml"

	"github.com/podidentity/podidentity/test/apps"
	"github.com/podidentity/podidentity/test/emulators/arm"
)

// scenarioAlertFires: ARM refuses an identity (the assigner lacks the Managed Identity Operator role on it); a
// pod bound to it waits. The assigner's metrics, scraped off its real pods, are handed to promtool with the
// chart's alerting rules: the alert PodIdentityIdentityRefusedByARM fires on them, naming the reason, and its
// expression returns the refused identity. Once ARM accepts the identity, the same rules on a new scrape stay
// quiet.
func (e *env) scenarioAlertFires(t *testing.T) {
	const sc = "alert fires"
	ns := e.namespace(t, "alert", true)
	id := e.identity(t, ns, "refused")
	e.denyIdentity(t, id.ResourceID, arm.CodeLinkedAuthorizationFailed)
	t.Cleanup(func() { e.denyIdentity(t, id.ResourceID, "") })
	created := time.Now()
	e.createPod(t, ns, appPod("app", e.goImage, id.Selector, corev1.RestartPolicyAlways,
		map[string]string{"MODE": "until-ok", "INTERVAL": "2s", "AZURE_CLIENT_ID": id.ClientID}))

	refused := func(s []sample) bool {
		for _, x := range s {
			if x.name == "podidentity_assigner_isolated_identities" && x.labels["reason"] == "IdentityNotAuthorized" && x.value >= 1 {
				return true
			}
		}
		return false
	}
	scraped := e.waitScrape(t, "the assigner reports the refused identity", refused)
	e.figures.Add(Figure{Scenario: sc, Name: "pod created to the refusal in the assigner's metrics", Value: seconds(time.Since(created))})
	rules := e.rulesFile(t)
	expr := alertExpr(t, rules, "PodIdentityIdentityRefusedByARM")
	value := 0.0
	for _, x := range scraped {
		if x.name == "podidentity_assigner_isolated_identities" && x.labels["reason"] == "IdentityNotAuthorized" {
			value = max(value, x.value)
		}
	}
	e.promtoolTest(t, rules, scraped, []map[string]any{{
		"eval_time": "6m", "alertname": "PodIdentityIdentityRefusedByARM",
		"exp_alerts": []any{map[string]any{
			"exp_labels": map[string]string{"severity": "warning", "reason": "IdentityNotAuthorized"},
			"exp_annotations": map[string]string{
				"summary":     fmt.Sprintf("ARM refuses %s identities (IdentityNotAuthorized)", strconv.FormatFloat(value, 'f', -1, 64)),
				"description": "The assigner leaves these identities out of VM and scale set changes: the assigner lacks the Managed Identity Operator role on them (IdentityNotAuthorized), or they no longer exist in Azure (IdentityNotFound).",
				"runbook_url": "RUNBOOK_BASE#podidentityidentityrefusedbyarm",
			},
		}},
	}}, []map[string]any{{
		"expr": expr, "eval_time": "0m",
		"exp_samples": []any{map[string]any{"labels": `{reason="IdentityNotAuthorized"}`, "value": value}},
	}})
	e.figures.Add(Figure{Scenario: sc, Name: "PodIdentityIdentityRefusedByARM on the scraped metrics (promtool test rules)", Value: "fires, reason IdentityNotAuthorized"})

	// The pod goes: no pod waits for the identity any more, and the alert is quiet. (A role granted instead
	// takes effect when the assigner tries the identity again, within --isolation-ttl, 5 minutes.)
	if err := e.cs.CoreV1().Pods(ns).Delete(context.Background(), "app", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	scraped = e.waitScrape(t, "the assigner no longer reports a refused identity", func(s []sample) bool { return !refused(s) })
	e.promtoolTest(t, rules, scraped, []map[string]any{{
		"eval_time": "6m", "alertname": "PodIdentityIdentityRefusedByARM", "exp_alerts": []any{},
	}}, nil)
}

// denyIdentity makes the emulated ARM refuse the identity with code (empty: accept it again).
func (e *env) denyIdentity(t *testing.T, resourceID, code string) {
	t.Helper()
	e.imds.put(t, "/arm/denied-identities", map[string]string{"id": resourceID, "code": code})
}

// sample is one scraped series of the assigner.
type sample struct {
	instance, name string
	labels         map[string]string
	value          float64
}

var sampleLine = regexp.MustCompile(`^(podidentity_[a-z0-9_]+)(?:\{(.*)\})? ([-+0-9.eE]+|NaN)$`)
var labelPair = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"`)

// scrapeAssigners reads /metrics of every assigner pod (port 8080, from the node: pod IPs are routed there),
// keeping the podidentity_assigner_ gauges the alerts read, each labelled with its pod as Prometheus would.
func (e *env) scrapeAssigners(ctx context.Context) ([]sample, error) {
	pods, err := e.cs.CoreV1().Pods(e.podidentityNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=podidentity-assigner"})
	if err != nil {
		return nil, err
	}
	var out []sample
	for _, p := range pods.Items {
		if p.Status.PodIP == "" || !podReady(&p) {
			continue
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.Status.PodIP+":8080/metrics", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return nil, fmt.Errorf("scraping assigner pod %s: %w", p.Name, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return nil, err
		}
		for _, line := range strings.Split(string(body), "\n") {
			m := sampleLine.FindStringSubmatch(line)
			if m == nil || (m[1] != "podidentity_assigner_isolated_identities" && m[1] != "podidentity_assigner_assigned_identities") {
				continue
			}
			v, err := strconv.ParseFloat(m[3], 64)
			if err != nil {
				continue
			}
			labels := map[string]string{}
			for _, kv := range labelPair.FindAllStringSubmatch(m[2], -1) {
				labels[kv[1]] = kv[2]
			}
			out = append(out, sample{instance: p.Status.PodIP + ":8080", name: m[1], labels: labels, value: v})
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no assigner pod served the gauges (%d pods)", len(pods.Items))
	}
	return out, nil
}

func (e *env) waitScrape(t *testing.T, what string, ok func([]sample) bool) []sample {
	t.Helper()
	var last []sample
	var lastErr error
	err := wait.PollUntilContextTimeout(context.Background(), time.Second, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		s, err := e.scrapeAssigners(ctx)
		if err != nil {
			lastErr = err
			return false, nil
		}
		last = s
		return ok(s), nil
	})
	if err != nil {
		t.Fatalf("%s: not within 3 minutes (last scrape %+v, error %v)\n%s", what, last, lastErr, e.diagnose(context.Background(), e.podidentityNamespace))
	}
	return last
}

func (e *env) rulesFile(t *testing.T) string {
	t.Helper()
	root, err := apps.RootDir()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(root, "charts", "podidentity", "files", "prometheus-rules.yaml")
}

// alertExpr is the expression of an alert of the rules file.
func alertExpr(t *testing.T, rulesFile, alert string) string {
	t.Helper()
	raw, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	var r struct {
		Groups []struct {
			Rules []struct{ Alert, Expr string } `json:"rules"`
		} `json:"groups"`
	}
	if err := yaml.Unmarshal(raw, &r); err != nil {
		t.Fatal(err)
	}
	for _, g := range r.Groups {
		for _, rule := range g.Rules {
			if rule.Alert == alert {
				return strings.TrimSpace(rule.Expr)
			}
		}
	}
	t.Fatalf("no alert %s in %s", alert, rulesFile)
	return ""
}

// promtoolTest runs the chart's rules on the scraped samples with promtool's rule unit tests: each sample is a
// series holding its scraped value for 30 minutes (the state seen, kept), and the alert and expression tests
// must pass.
func (e *env) promtoolTest(t *testing.T, rulesFile string, scraped []sample, alerts, exprs []map[string]any) {
	t.Helper()
	var series []map[string]string
	for _, s := range scraped {
		keys := make([]string, 0, len(s.labels))
		for k := range s.labels {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		parts := []string{fmt.Sprintf("instance=%q", s.instance)}
		for _, k := range keys {
			parts = append(parts, fmt.Sprintf("%s=%q", k, s.labels[k]))
		}
		series = append(series, map[string]string{
			"series": s.name + "{" + strings.Join(parts, ",") + "}",
			"values": fmt.Sprintf("%sx30", strconv.FormatFloat(s.value, 'f', -1, 64)),
		})
	}
	test := map[string]any{"interval": "1m", "input_series": series}
	if alerts != nil {
		test["alert_rule_test"] = alerts
	}
	if exprs != nil {
		test["promql_expr_test"] = exprs
	}
	b, err := yaml.Marshal(map[string]any{"rule_files": []string{rulesFile}, "evaluation_interval": "1m", "tests": []any{test}})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	f := filepath.Join(dir, "scraped-test.yaml")
	if err := os.WriteFile(f, b, 0o644); err != nil {
		t.Fatal(err)
	}
	root, _ := apps.RootDir()
	out, err := exec.Command(filepath.Join(root, "bin", "promtool"), "test", "rules", f).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool test rules on the scraped metrics (bin/promtool from `make packaging-tools`): %v\n%s\ntest file:\n%s", err, out, b)
	}
}
