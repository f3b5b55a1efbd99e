package packaging

import (
	"bytes"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/podidentity/podidentity/webhook/certs"
	webhookconfig "github.com/podidentity/podidentity/webhook/config"
)

// parseErrors are what Go's flag package (and pflag) print when an argument is not a defined flag or its
// value does not parse.
var parseErrors = regexp.MustCompile(`flag provided but not defined|unknown flag|invalid value|invalid boolean|bad flag syntax|invalid argument`)

// argsChecker returns a function that reports whether args parse as the component's command line. When the
// component's main exists it is built and run as `<binary> <args> -h` (the flag package parses every argument
// before it stops at -h); before that, the webhook's flags come from its registration functions.
func argsChecker(t *testing.T, component string) func(args []string) error {
	t.Helper()
	binary := "podidentity-" + component
	mainDir := filepath.Join(repoRoot(), component, "cmd", binary)
	if _, err := os.Stat(filepath.Join(mainDir, "main.go")); err == nil {
		bin := filepath.Join(t.TempDir(), binary)
		cmd := exec.Command("go", "build", "-o", bin, "./"+component+"/cmd/"+binary)
		cmd.Dir = repoRoot()
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("building %s: %v\n%s", binary, err, out)
		}
		return func(args []string) error {
			var out bytes.Buffer
			c := exec.Command(bin, append(append([]string{}, args...), "-h")...)
			c.Stdout, c.Stderr = &out, &out
			_ = c.Run() // -h exits 0 or 2 depending on the binary; the output says whether the args parsed
			if m := parseErrors.FindString(out.String()); m != "" {
				return &argsError{binary, out.String()}
			}
			for _, a := range args {
				name := strings.TrimLeft(strings.SplitN(a, "=", 2)[0], "-")
				if !regexp.MustCompile(`(?m)^\s+--?` + regexp.QuoteMeta(name) + `\b`).MatchString(out.String()) {
					return &argsError{binary, "flag --" + name + " is not in the usage:\n" + out.String()}
				}
			}
			return nil
		}
	}
	if component != "webhook" {
		t.Fatalf("%s has no main yet (%s)", binary, mainDir)
	}
	t.Logf("%s has no main yet: checking against webhook/config.Bind and webhook/certs flags (what the main registers)", binary)
	// The Deployment sets POD_NAMESPACE from the downward API; the certs flags default to it.
	t.Setenv("POD_NAMESPACE", "podidentity-system")
	return func(args []string) error {
		fs := flag.NewFlagSet(binary, flag.ContinueOnError)
		var out bytes.Buffer
		fs.SetOutput(&out)
		cfg := webhookconfig.Bind(fs)
		var o certs.Options
		o.BindFlags(fs)
		if err := fs.Parse(args); err != nil {
			return err
		}
		if err := cfg.Complete(); err != nil {
			return err
		}
		o.CertDir = cfg.CertDir
		return o.Validate()
	}
}

type argsError struct{ binary, out string }

func (e *argsError) Error() string { return e.binary + " rejects the chart's args: " + e.out }

// TestContainerArgsAreFlags renders every golden value set and checks each Deployment's container args against
// the flags its binary defines.
func TestContainerArgsAreFlags(t *testing.T) {
	helmBin(t)
	// Built once for all value sets (in the parent test's temporary directory, which outlives the subtests).
	checkers := map[string]func([]string) error{"webhook": argsChecker(t, "webhook"), "assigner": argsChecker(t, "assigner")}
	for _, tc := range goldenCases {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, err := helmTemplate(t, tc.values)
			if err != nil {
				t.Fatalf("helm template: %v\n%s", err, errOut)
			}
			checked := 0
			for _, o := range decodeAll(t, out) {
				if o.GetKind() != "Deployment" {
					continue
				}
				containers, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "containers")
				for _, c := range containers {
					cm := c.(map[string]any)
					name := cm["name"].(string)
					args, _, _ := unstructured.NestedStringSlice(cm, "args")
					if checkers[name] == nil {
						t.Fatalf("%s: no flag set known for container %s", o.GetName(), name)
					}
					if err := checkers[name](args); err != nil {
						t.Errorf("%s container %s: %v", o.GetName(), name, err)
					}
					checked++
				}
			}
			if checked == 0 {
				t.Fatal("no Deployment container rendered")
			}
		})
	}
}
