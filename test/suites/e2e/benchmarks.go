// Package e2e is the end-to-end suite: one real single-node cluster (test/cluster) with the podidentity chart
// installed and an emulated Azure, and scenarios as subtests (see e2e_test.go). This file holds the suite's
// figure report, which the suite writes itself into BENCHMARKS.md.
package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/podidentity/podidentity/test/toolbox/testenv"
)

// Section is a part of BENCHMARKS.md that the suite owns, between two markers; everything outside the suite's
// sections is left as it is.
type Section struct{ Begin, End string }

// The suite's sections: its figures, and the attacker matrix.
var (
	FiguresSection = Section{
		Begin: "<!-- BEGIN e2e figures: written by `go test ./test/suites/e2e/`, do not edit by hand -->",
		End:   "<!-- END e2e figures -->",
	}
	MatrixSection = Section{
		Begin: "<!-- BEGIN attacker matrix: written by `go test ./test/suites/e2e/`, do not edit by hand -->",
		End:   "<!-- END attacker matrix -->",
	}
)

// ReplaceSection returns doc with the text between the section's markers replaced by body, or with a new
// marked section appended when doc has none. A doc with a begin marker but no end marker after it is an error:
// the file was damaged by hand and overwriting could lose text.
func ReplaceSection(doc string, sec Section, body string) (string, error) {
	section := sec.Begin + "\n" + strings.TrimRight(body, "\n") + "\n" + sec.End
	b := strings.Index(doc, sec.Begin)
	if b < 0 {
		if strings.Contains(doc, sec.End) {
			return "", fmt.Errorf("BENCHMARKS.md has %q without %q before it: fix the markers by hand", sec.End, sec.Begin)
		}
		if doc != "" && !strings.HasSuffix(doc, "\n") {
			doc += "\n"
		}
		if doc != "" {
			doc += "\n"
		}
		return doc + section + "\n", nil
	}
	e := strings.Index(doc[b:], sec.End)
	if e < 0 {
		return "", fmt.Errorf("BENCHMARKS.md has %q without %q after it: fix the markers by hand", sec.Begin, sec.End)
	}
	if strings.Contains(doc[b+len(sec.Begin):], sec.Begin) {
		return "", fmt.Errorf("BENCHMARKS.md has %q twice: fix the markers by hand", sec.Begin)
	}
	return doc[:b] + section + doc[b+e+len(sec.End):], nil
}

// Figure is one measured number of the suite.
type Figure struct {
	// Scenario is the subtest that measured it; Name what it is; Value the number with its unit.
	Scenario, Name, Value string
	// Target is the goal it is compared with ("" when none) and Met whether it was reached.
	Target string
	Met    bool
}

// Figures collects what the scenarios measure; safe for concurrent use.
type Figures struct {
	mu  sync.Mutex
	all []Figure
}

// Add records a figure.
func (f *Figures) Add(fig Figure) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.all = append(f.all, fig)
}

// List returns the figures sorted by scenario, in the order each scenario recorded them.
func (f *Figures) List() []Figure {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := append([]Figure(nil), f.all...)
	sort.SliceStable(out, func(i, j int) bool { return out[i].Scenario < out[j].Scenario })
	return out
}

// MatrixRow is one line of the attacker matrix: a route a pod tries for a token of an identity attached to
// the node but not bound to it, and where it ended.
type MatrixRow struct {
	// Pod says what kind of pod tried (its namespace, injection, privileges).
	Pod, Route string
	// Verdict is "no token" or "token"; Stopped says where the route ended.
	Verdict, Stopped string
	// Mode is the chart's configuration the row ran with (defaults, guard mode, ...).
	Mode string
}

// Matrix collects the rows; safe for concurrent use.
type Matrix struct {
	mu   sync.Mutex
	rows []MatrixRow
}

// Add records a row.
func (m *Matrix) Add(r MatrixRow) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.rows = append(m.rows, r)
}

// Rows returns the rows in the order they were recorded.
func (m *Matrix) Rows() []MatrixRow {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]MatrixRow(nil), m.rows...)
}

// Outcome says whether a scenario that ran passed.
type Outcome struct {
	Scenario string
	Passed   bool
}

// Machine describes where the figures were measured.
type Machine struct {
	CPUs      int
	CPUModel  string
	Kernel    string
	GoVersion string
	LoadAvg   string
	When      time.Time
	Command   string
}

// ThisMachine reads the machine's description from /proc (best effort: unknown parts stay empty).
func ThisMachine(command string, now time.Time) Machine {
	m := Machine{CPUs: runtime.NumCPU(), GoVersion: runtime.Version(), When: now.UTC(), Command: command}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		if f := strings.Fields(string(b)); len(f) >= 3 {
			m.LoadAvg = strings.Join(f[:3], " ")
		}
	}
	return m
}

// Render is the markdown of the suite's section: the run, the machine, the scenarios' outcomes (a figure of a
// failed scenario may stand for a run that went wrong) and the figures.
func Render(m Machine, outcomes []Outcome, figs []Figure) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Last run: %s, `%s`.\n\n", m.When.Format("2006-01-02 15:04 MST"), m.Command)
	fmt.Fprintf(&b, "Machine: %d CPU (%s), Linux %s, %s, load average %s at the end of the run.\n\n",
		m.CPUs, orUnknown(m.CPUModel), orUnknown(m.Kernel), m.GoVersion, orUnknown(m.LoadAvg))
	var failed []string
	for _, o := range outcomes {
		if !o.Passed {
			failed = append(failed, o.Scenario)
		}
	}
	fmt.Fprintf(&b, "Scenarios: %d ran, %d passed", len(outcomes), len(outcomes)-len(failed))
	if len(failed) > 0 {
		fmt.Fprintf(&b, "; failed: %s", strings.Join(failed, "; "))
	}
	b.WriteString(".\n\n")
	if len(figs) == 0 {
		b.WriteString("No figures: no scenario that measures ran to its end.\n")
		return b.String()
	}
	b.WriteString("| scenario | figure | value | target |\n|---|---|---:|---|\n")
	for _, f := range figs {
		target := ""
		if f.Target != "" {
			verdict := "missed"
			if f.Met {
				verdict = "met"
			}
			target = f.Target + ": " + verdict
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", cell(f.Scenario), cell(f.Name), cell(f.Value), cell(target))
	}
	return b.String()
}

// RenderMatrix is the markdown of the attacker matrix: one row per route tried.
func RenderMatrix(m Machine, rows []MatrixRow) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Last run: %s, `%s`, Linux %s.\n\n", m.When.Format("2006-01-02 15:04 MST"), m.Command, orUnknown(m.Kernel))
	if len(rows) == 0 {
		b.WriteString("No rows: the attacker scenarios did not run to their end.\n")
		return b.String()
	}
	b.WriteString("| chart values | pod | route | verdict | where it was stopped |\n|---|---|---|---|---|\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", cell(r.Mode), cell(r.Pod), cell(r.Route), cell(r.Verdict), cell(r.Stopped))
	}
	return b.String()
}

// WriteSection replaces a section of the suite in the markdown file at path (creating the file if needed).
func WriteSection(path string, sec Section, body string) error {
	doc, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	out, err := ReplaceSection(string(doc), sec, body)
	if err != nil {
		return err
	}
	return os.WriteFile(path, []byte(out), 0o644)
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

func cell(s string) string { return strings.ReplaceAll(strings.ReplaceAll(s, "|", "\\|"), "\n", " ") }

// benchmarksPage is the repository's BENCHMARKS.md, whose "End to end" section holds the suite's marked sections.
func benchmarksPage() string { return filepath.Join(testenv.RepoRoot(), "BENCHMARKS.md") }
