package e2e

import (
	"strings"
	"testing"
	"time"
)

func TestReplaceSection(t *testing.T) {
	SectionBegin, SectionEnd := FiguresSection.Begin, FiguresSection.End
	sec := func(body string) string { return SectionBegin + "\n" + body + "\n" + SectionEnd }
	tests := []struct {
		name, doc, body, want, wantErr string
	}{
		{name: "empty file", doc: "", body: "new", want: sec("new") + "\n"},
		{name: "appended after text", doc: "# Title\ntext", body: "new\n", want: "# Title\ntext\n\n" + sec("new") + "\n"},
		{name: "replaced in place", doc: "# T\n\n" + sec("old\nrows") + "\n\nafter\n", body: "new", want: "# T\n\n" + sec("new") + "\n\nafter\n"},
		{name: "end without begin", doc: "x\n" + SectionEnd, body: "new", wantErr: "without"},
		{name: "begin without end", doc: SectionBegin + "\nold", body: "new", wantErr: "without"},
		{name: "two sections", doc: sec("a") + sec("b"), body: "new", wantErr: "twice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ReplaceSection(tt.doc, FiguresSection, tt.body)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("got\n%q\nwant\n%q", got, tt.want)
			}
			if again, err := ReplaceSection(got, FiguresSection, tt.body); err != nil || again != got {
				t.Errorf("replacing again changed the file: %v\n%q", err, again)
			}
		})
	}
}

func TestRender(t *testing.T) {
	m := Machine{CPUs: 2, CPUModel: "AMD EPYC", Kernel: "6.18", GoVersion: "go1.26.8", LoadAvg: "1.0 2.0 3.0",
		When: time.Date(2026, 11, 28, 1, 2, 0, 0, time.UTC), Command: "go test ./test/suites/e2e/"}
	var f Figures
	f.Add(Figure{Scenario: "wait", Name: "token after attach", Value: "2.1 s"})
	f.Add(Figure{Scenario: "latency", Name: "first token | Go", Value: "0.12 s", Target: "<= 1 s", Met: true})
	f.Add(Figure{Scenario: "latency", Name: "first token, JS", Value: "1.5 s", Target: "<= 1 s", Met: false})
	got := Render(m, []Outcome{{"latency", true}, {"rollout", false}, {"wait", true}}, f.List())
	for _, want := range []string{
		"Last run: 2026-11-28 01:02 UTC, `go test ./test/suites/e2e/`.",
		"Machine: 2 CPU (AMD EPYC), Linux 6.18, go1.26.8, load average 1.0 2.0 3.0",
		"Scenarios: 3 ran, 2 passed; failed: rollout.",
		"| latency | first token \\| Go | 0.12 s | <= 1 s: met |\n| latency | first token, JS | 1.5 s | <= 1 s: missed |\n| wait | token after attach | 2.1 s |  |\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("render lacks %q:\n%s", want, got)
		}
	}
	if got := Render(Machine{}, nil, nil); !strings.Contains(got, "No figures") || !strings.Contains(got, "unknown") || !strings.Contains(got, "Scenarios: 0 ran, 0 passed.") {
		t.Errorf("empty render = %q", got)
	}
}
