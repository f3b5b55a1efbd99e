// Package docs checks docs/ against the code: the flag tables of docs/reference.md are generated from the
// binaries' own -h output (go test ./test/suites/docs -update rewrites them), every leaf of the chart's values.yaml
// has a row with its default, and every error message quoted in docs/troubleshooting.md occurs in the
// components' Go sources.
package docs

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "rewrite the generated flag tables of docs/reference.md")

const root = "../../.."

// binaries are the commands whose flags the reference documents.
var binaries = []struct{ name, pkg string }{
	{"podidentity-webhook", "./webhook/cmd/podidentity-webhook"},
	{"podidentity-sidecar", "./sidecar/cmd/podidentity-sidecar"},
	{"podidentity-assigner", "./assigner/cmd/podidentity-assigner"},
	{"podidentity-init", "./init/cmd/podidentity-init"},
	{"podidentity-node", "./cni/cmd/podidentity-node"},
}

// cliFlag is one flag as the flag package prints it in its usage.
type cliFlag struct{ name, typ, def, usage string }

var (
	flagLine    = regexp.MustCompile(`^  -(\S+)(?: (\S+))?$`)
	defaultTail = regexp.MustCompile(`^(.*) \(default (.*)\)$`)
)

// parseUsage reads the output of a flag.FlagSet's PrintDefaults.
func parseUsage(out string) ([]cliFlag, error) {
	var flags []cliFlag
	for _, line := range strings.Split(out, "\n") {
		if m := flagLine.FindStringSubmatch(line); m != nil {
			flags = append(flags, cliFlag{name: m[1], typ: m[2]})
			continue
		}
		if strings.HasPrefix(line, "    \t") && len(flags) > 0 {
			f := &flags[len(flags)-1]
			text := strings.TrimPrefix(line, "    \t")
			if f.usage != "" {
				text = f.usage + " " + text
			}
			f.usage = text
		}
	}
	for i := range flags {
		if m := defaultTail.FindStringSubmatch(flags[i].usage); m != nil {
			flags[i].usage, flags[i].def = m[1], m[2]
			if uq, err := strconv.Unquote(flags[i].def); err == nil {
				flags[i].def = uq
			}
		}
	}
	if len(flags) == 0 {
		return nil, fmt.Errorf("no flags in usage output:\n%s", out)
	}
	return flags, nil
}

// renderFlags is the generated markdown table of one binary.
func renderFlags(flags []cliFlag) string {
	var b strings.Builder
	b.WriteString("| flag | type | default | meaning |\n|---|---|---|---|\n")
	for _, f := range flags {
		typ := f.typ
		if typ == "" {
			typ = "bool"
		}
		def := "`" + f.def + "`"
		switch {
		case f.def == "" && f.typ == "":
			def = "`false`"
		case f.def == "":
			def = "(none)"
		}
		fmt.Fprintf(&b, "| `--%s` | %s | %s | %s |\n", f.name, typ, def, strings.ReplaceAll(f.usage, "|", `\|`))
	}
	return b.String()
}

// usageOf builds the four binaries once and returns each one's -h output.
func usageOf(t *testing.T) map[string]string {
	t.Helper()
	dir := t.TempDir()
	args := []string{"build", "-o", dir + string(os.PathSeparator)}
	for _, b := range binaries {
		args = append(args, b.pkg)
	}
	build := exec.Command("go", args...)
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	// Defaults must not depend on the machine running the test.
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "POD_NAMESPACE=") && !strings.HasPrefix(kv, "POD_NAME=") {
			env = append(env, kv)
		}
	}
	usages := map[string]string{}
	for _, b := range binaries {
		cmd := exec.Command(filepath.Join(dir, b.name), "-h")
		cmd.Env = env
		out, _ := cmd.CombinedOutput() // -h exits 0 or 2 depending on the binary; the text is what counts
		if !bytes.Contains(out, []byte("Usage of ")) {
			t.Fatalf("%s -h printed no usage:\n%s", b.name, out)
		}
		usages[b.name] = string(out)
	}
	return usages
}

func markers(name string) (begin, end string) {
	return "<!-- BEGIN GENERATED FLAGS " + name + " (go test ./test/suites/docs -update) -->\n",
		"<!-- END GENERATED FLAGS " + name + " -->"
}

// TestReferenceFlags fails when a binary's flag table in docs/reference.md differs from its -h output:
// a flag added, removed, renamed, re-defaulted or re-described.
func TestReferenceFlags(t *testing.T) {
	path := filepath.Join(root, "docs", "reference.md")
	doc, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	text := string(doc)
	usages := usageOf(t)
	for _, b := range binaries {
		flags, err := parseUsage(usages[b.name])
		if err != nil {
			t.Fatalf("%s: %v", b.name, err)
		}
		want := renderFlags(flags)
		begin, end := markers(b.name)
		i := strings.Index(text, begin)
		j := strings.Index(text, end)
		if i < 0 || j < i {
			t.Errorf("docs/reference.md has no generated table for %s: add the lines\n%s%s\nand run go test ./test/suites/docs -update", b.name, begin, end)
			continue
		}
		got := text[i+len(begin) : j]
		if got == want {
			continue
		}
		if *update {
			text = text[:i+len(begin)] + want + text[j:]
			continue
		}
		t.Errorf("docs/reference.md: flag table of %s is stale (run go test ./test/suites/docs -update, then check the prose around it):\n%s",
			b.name, lineDiff(got, want))
	}
	if *update && text != string(doc) {
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// lineDiff lists the lines only in got (-) and only in want (+).
func lineDiff(got, want string) string {
	in := func(s string) map[string]bool {
		m := map[string]bool{}
		for _, l := range strings.Split(s, "\n") {
			m[l] = true
		}
		return m
	}
	g, w := in(got), in(want)
	var b strings.Builder
	for _, l := range strings.Split(got, "\n") {
		if !w[l] {
			b.WriteString("- " + l + "\n")
		}
	}
	for _, l := range strings.Split(want, "\n") {
		if !g[l] {
			b.WriteString("+ " + l + "\n")
		}
	}
	return b.String()
}

func TestParseUsage(t *testing.T) {
	out := "Usage of x:\n  -a string\n    \tfirst (default: here) (default \"v\")\n  -b\n    \ta bool\n  -c duration\n    \tline one\n    \tline two (default 5s)\n"
	got, err := parseUsage(out)
	if err != nil {
		t.Fatal(err)
	}
	want := []cliFlag{{"a", "string", "v", "first (default: here)"}, {"b", "", "", "a bool"}, {"c", "duration", "5s", "line one line two"}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("parseUsage:\n got %v\nwant %v", got, want)
	}
	if _, err := parseUsage("nothing here"); err == nil {
		t.Fatal("parseUsage accepted output without flags")
	}
}

// valueLeaves returns each leaf of a values tree as dotted path -> default rendered as in the reference
// (scalars as text, the empty string as "", empty maps and lists as JSON).
func valueLeaves(prefix string, v any, out map[string]string) {
	if m, ok := v.(map[string]any); ok && len(m) > 0 {
		for k, sub := range m {
			p := k
			if prefix != "" {
				p = prefix + "." + k
			}
			valueLeaves(p, sub, out)
		}
		return
	}
	switch x := v.(type) {
	case string:
		out[prefix] = x
		if x == "" {
			out[prefix] = `""`
		}
	case map[string]any, []any:
		j, _ := json.Marshal(x)
		out[prefix] = string(j)
	default:
		out[prefix] = fmt.Sprint(x)
	}
}

var valueRow = regexp.MustCompile("(?m)^\\| `([^`]+)` \\| `([^`]*)` \\|")

// TestReferenceValues fails when a leaf of charts/podidentity/values.yaml has no row in docs/reference.md, when
// the row's default differs from values.yaml, or when a row names a value the chart no longer has.
func TestReferenceValues(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(root, "charts", "podidentity", "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var values map[string]any
	if err := yaml.Unmarshal(raw, &values); err != nil {
		t.Fatal(err)
	}
	leaves := map[string]string{}
	valueLeaves("", values, leaves)
	doc, err := os.ReadFile(filepath.Join(root, "docs", "reference.md"))
	if err != nil {
		t.Fatal(err)
	}
	section := string(doc)
	if i := strings.Index(section, "## Chart values"); i >= 0 {
		section = section[i:]
	} else {
		t.Fatal(`docs/reference.md has no "## Chart values" section`)
	}
	documented := map[string]string{}
	for _, m := range valueRow.FindAllStringSubmatch(section, -1) {
		documented[m[1]] = m[2]
	}
	var paths []string
	for p := range leaves {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		def, ok := documented[p]
		switch {
		case !ok:
			t.Errorf("chart value %s (default %q) has no row \"| `%s` | `%s` | ... |\" in docs/reference.md", p, leaves[p], p, leaves[p])
		case def != leaves[p]:
			t.Errorf("docs/reference.md: chart value %s has default %q, values.yaml has %q", p, def, leaves[p])
		}
	}
	for p := range documented {
		if _, ok := leaves[p]; !ok {
			t.Errorf("docs/reference.md documents chart value %s, which values.yaml does not have", p)
		}
	}
	if len(leaves) < 20 {
		t.Fatalf("only %d chart values found; is values.yaml parsed?", len(leaves))
	}
}

// sourceStrings returns the string literals of the components' non-test Go files; a chain of literals joined
// with + becomes one string, and a non-literal operand becomes a gap (so a message's parts must each match).
func sourceStrings(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, dir := range []string{"webhook", "init", "sidecar", "assigner", "cni", "internal", "api"} {
		err := filepath.WalkDir(filepath.Join(root, dir), func(path string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
				return err
			}
			f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.SkipObjectResolution)
			if err != nil {
				return err
			}
			ast.Inspect(f, func(n ast.Node) bool {
				switch x := n.(type) {
				case *ast.BinaryExpr:
					if x.Op == token.ADD {
						out = append(out, flatten(x)...)
					}
				case *ast.BasicLit:
					if x.Kind == token.STRING {
						if s, err := strconv.Unquote(x.Value); err == nil {
							out = append(out, s)
						}
					}
				}
				return true
			})
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// flatten joins the adjacent string literals of a + chain; other operands split it.
func flatten(e ast.Expr) []string {
	var parts []string
	cur := ""
	var walk func(ast.Expr)
	walk = func(e ast.Expr) {
		switch x := e.(type) {
		case *ast.BinaryExpr:
			if x.Op == token.ADD {
				walk(x.X)
				walk(x.Y)
				return
			}
		case *ast.ParenExpr:
			walk(x.X)
			return
		case *ast.BasicLit:
			if s, err := strconv.Unquote(x.Value); err == nil && x.Kind == token.STRING {
				cur += s
				return
			}
		}
		if cur != "" {
			parts = append(parts, cur)
		}
		cur = ""
	}
	walk(e)
	if cur != "" {
		parts = append(parts, cur)
	}
	return parts
}

// placeholder matches what a quoted message may leave open: printf verbs, <placeholders> and "...".
var placeholder = regexp.MustCompile(`%[-+# 0-9.]*[a-zA-Z]|<[^<>]+>|\.\.\.|…`)

var messageHeading = regexp.MustCompile("(?m)^### `(.+)`\\s*$")

// foreignMessages are the messages docs/troubleshooting.md quotes in "### `message`" headings that are not the
// components': Kubernetes', helm's, Gatekeeper's (its "Install" section). Each is listed with who prints it and,
// where the text can be produced locally, the test in test/suites/packaging that checks it against the real helm or API
// server. Every other heading must quote the code; an entry no heading quotes any more fails, so the list can
// neither grow stale nor hide a stale message of ours.
var foreignMessages = map[string]string{
	`violates PodSecurity "<level>:latest"`:                             "kube-apiserver's Pod Security admission (TestSelfSignedCertificatesEndToEnd)",
	`has a disallowed capability. Allowed capabilities are`:             "Gatekeeper's capabilities constraint, as Azure Policy's AKS initiatives deploy it (not reproduced locally)",
	`no matches for kind "Certificate" in version "cert-manager.io/v1"`: "helm and kubectl, mapping cert-manager's kinds (TestSelfSignedCertificatesEndToEnd)",
	`ImagePullBackOff`: "the kubelet's reason for a container waiting on an image pull",
	`failed calling webhook "pods.podidentity.io"`:           "kube-apiserver, calling the chart's webhook (TestChartInstallsIntoAPIServer)",
	`exists and cannot be imported into the current release`: "helm, adopting an object another manager created (TestChartManagesCRDs)",
}

// TestTroubleshootingMessagesExist fails when a message quoted in a "### `message`" heading of
// docs/troubleshooting.md does not occur in the code: each literal part between placeholders must appear in one
// string literal (or literal + chain) of the components. foreignMessages are exempt, and each must be quoted.
func TestTroubleshootingMessagesExist(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join(root, "docs", "troubleshooting.md"))
	if err != nil {
		t.Fatal(err)
	}
	lits := sourceStrings(t)
	headings := messageHeading.FindAllStringSubmatch(string(doc), -1)
	if len(headings) < 10 {
		t.Fatalf("docs/troubleshooting.md quotes only %d messages as ### `message` headings", len(headings))
	}
	quoted := map[string]bool{}
	for _, h := range headings {
		msg := h[1]
		if _, foreign := foreignMessages[msg]; foreign {
			quoted[msg] = true
			continue
		}
		for _, part := range placeholder.Split(msg, -1) {
			part = strings.Trim(part, " \"'")
			if len(part) < 3 {
				continue
			}
			if !containsAny(lits, part) {
				t.Errorf("docs/troubleshooting.md: message %q: %q occurs in no string literal of the components (a message of Kubernetes or helm belongs in foreignMessages)", msg, part)
			}
		}
	}
	for msg := range foreignMessages {
		if !quoted[msg] {
			t.Errorf("foreignMessages lists %q, which no \"### `message`\" heading of docs/troubleshooting.md quotes any more: remove it", msg)
		}
	}
}

func containsAny(lits []string, s string) bool {
	for _, l := range lits {
		if strings.Contains(l, s) {
			return true
		}
	}
	return false
}

func TestPlaceholderSplit(t *testing.T) {
	got := placeholder.Split(`container %q adds <cap> and ... done`, -1)
	want := []string{"container ", " adds ", " and ", " done"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("got %q want %q", got, want)
	}
}

// repoPath matches a backticked repository path in the docs, e.g. `webhook/inject/inject.go`.
var repoPath = regexp.MustCompile("`((?:webhook|init|sidecar|assigner|internal|api|manifests|charts|test)/[A-Za-z0-9_./-]+)`")

// TestCitedPathsExist fails when a doc cites a file or directory of the repository that does not exist, so
// the threat model's references to the code cannot silently rot.
func TestCitedPathsExist(t *testing.T) {
	docs, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil || len(docs) == 0 {
		t.Fatalf("no docs found: %v", err)
	}
	cited := 0
	for _, d := range docs {
		b, err := os.ReadFile(d)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range repoPath.FindAllStringSubmatch(string(b), -1) {
			cited++
			if _, err := os.Stat(filepath.Join(root, strings.TrimSuffix(m[1], "/"))); err != nil {
				t.Errorf("%s cites %s, which does not exist", filepath.Base(d), m[1])
			}
		}
	}
	if cited < 10 {
		t.Fatalf("only %d repository paths cited in docs/", cited)
	}
}

// TestQuotedMeshRefusal fails when the refusal of a mesh's init container that docs/install.md and
// docs/troubleshooting.md quote in full no longer is the webhook's: the golden decision of
// webhook/testdata/golden/istio-init-netadmin (rewritten by go test ./webhook/inject -update).
func TestQuotedMeshRefusal(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(root, "webhook", "testdata", "golden", "istio-init-netadmin.out.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var golden struct {
		Message string `json:"message"`
	}
	if err := yaml.Unmarshal(raw, &golden); err != nil || golden.Message == "" {
		t.Fatalf("istio-init-netadmin.out.yaml: no message (%v)", err)
	}
	spaces := regexp.MustCompile(`\s+`)
	want := spaces.ReplaceAllString(golden.Message, " ")
	block := regexp.MustCompile("(?s)```\n(podidentity: init container \"istio-init\".*?)\n```")
	for _, doc := range []string{"install.md", "troubleshooting.md"} {
		b, err := os.ReadFile(filepath.Join(root, "docs", doc))
		if err != nil {
			t.Fatal(err)
		}
		m := block.FindStringSubmatch(string(b))
		if m == nil {
			t.Errorf("docs/%s quotes no refusal of istio-init in a ``` block", doc)
			continue
		}
		if got := spaces.ReplaceAllString(m[1], " "); got != want {
			t.Errorf("docs/%s quotes the refusal of istio-init as\n%s\nthe webhook says\n%s", doc, got, want)
		}
	}
}
