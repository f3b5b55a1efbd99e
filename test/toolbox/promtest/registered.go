package promtest

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// Registered returns the Prometheus metrics the components under root define, by name, with their kind (the
// prometheus.*Opts type: CounterOpts, GaugeOpts, HistogramOpts, SummaryOpts; "Desc" for a collector's
// prometheus.NewDesc): every such composite literal or call in the non-test Go sources of webhook, sidecar,
// assigner, cni and internal whose name is a string literal. Docs, alerting rules and dashboards are checked
// against it, so that none of them names a metric that no component exports.
func Registered(root string) (map[string]string, error) {
	out := map[string]string{}
	for _, dir := range []string{"webhook", "sidecar", "assigner", "cni", "internal"} {
		err := filepath.WalkDir(filepath.Join(root, dir), func(path string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
				return err
			}
			f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.SkipObjectResolution)
			if err != nil {
				return err
			}
			ast.Inspect(f, func(n ast.Node) bool {
				switch n := n.(type) {
				case *ast.CompositeLit:
					sel, ok := n.Type.(*ast.SelectorExpr)
					if !ok || !strings.HasSuffix(sel.Sel.Name, "Opts") || !isIdent(sel.X, "prometheus") {
						return true
					}
					for _, e := range n.Elts {
						if kv, ok := e.(*ast.KeyValueExpr); ok && isIdent(kv.Key, "Name") {
							if name, ok := stringLit(kv.Value); ok {
								out[name] = sel.Sel.Name
							}
						}
					}
				case *ast.CallExpr:
					sel, ok := n.Fun.(*ast.SelectorExpr)
					if ok && sel.Sel.Name == "NewDesc" && isIdent(sel.X, "prometheus") && len(n.Args) > 0 {
						if name, ok := stringLit(n.Args[0]); ok {
							out[name] = "Desc"
						}
					}
				}
				return true
			})
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

func isIdent(e ast.Expr, name string) bool {
	id, ok := e.(*ast.Ident)
	return ok && id.Name == name
}

func stringLit(e ast.Expr) (string, bool) {
	v, ok := e.(*ast.BasicLit)
	if !ok || v.Kind != token.STRING {
		return "", false
	}
	s, err := strconv.Unquote(v.Value)
	return s, err == nil
}

// Defined says whether name is a registered metric, or a series of one: a histogram's or summary's _bucket,
// _sum or _count.
func Defined(reg map[string]string, name string) bool {
	if _, ok := reg[name]; ok {
		return true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suffix); ok {
			if kind := reg[base]; kind == "HistogramOpts" || (kind == "SummaryOpts" && suffix != "_bucket") {
				return true
			}
		}
	}
	return false
}

// OurMetric matches a podidentity metric name in text (submatch 1), not the tail of an aadpodidentity_ one.
var OurMetric = regexp.MustCompile(`(?:^|[^a-z0-9_])(podidentity_[a-z0-9_]+)`)
