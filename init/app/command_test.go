package app

import (
	"bytes"
	"context"
	"flag"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/podidentity/podidentity/internal/cmdline"
)

var update = flag.Bool("update", false, "rewrite the golden files under init/testdata")

// run is what main does (ParseFlags, Run, the exit code), with the output in buffers.
func run(args []string, stdout, stderr io.Writer) int {
	opts, err := parseFlags(args, stdout, stderr)
	if err != nil {
		return cmdline.ParseExit(err)
	}
	return cmdline.RunExit(stderr, programName, Run(context.Background(), opts))
}

// TestDryRunGolden pins the --dry-run output: the exact ruleset the init container installs, for the injected
// defaults and for non-default flags.
func TestDryRunGolden(t *testing.T) {
	cases := []struct {
		name   string
		args   []string
		golden string
	}{
		{"defaults", []string{"--dry-run"}, "../testdata/dry-run-defaults.golden"},
		{"custom flags", []string{"--dry-run", "--sidecar-port=8181",
			"--imds-address=169.254.170.2", "--imds-port=8080"}, "../testdata/dry-run-custom.golden"},
		{"uid exemption", []string{"--dry-run", "--exemption=uid", "--sidecar-uid=2000"}, "../testdata/dry-run-uid.golden"},
		{"fence", []string{"--dry-run", "--fence"}, "../testdata/dry-run-fence.golden"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := run(tc.args, &stdout, &stderr); code != ExitOK {
				t.Fatalf("exit code %d, stderr:\n%s", code, stderr.String())
			}
			if *update {
				if err := os.WriteFile(tc.golden, stdout.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(tc.golden)
			if err != nil {
				t.Fatalf("%v (run go test ./init/... -update to create it)", err)
			}
			if got := stdout.String(); got != string(want) {
				t.Errorf("%s is stale or --dry-run changed (rerun with -update after checking):\n--- want\n%s\n--- got\n%s",
					tc.golden, want, got)
			}
		})
	}
}

// TestDryRunIsStable: the plan is a pure function of the flags.
func TestDryRunIsStable(t *testing.T) {
	var first, second, stderr bytes.Buffer
	run([]string{"--dry-run"}, &first, &stderr)
	run([]string{"--dry-run"}, &second, &stderr)
	if first.String() != second.String() || first.Len() == 0 {
		t.Errorf("two dry runs differ or are empty:\n%s\n---\n%s", first.String(), second.String())
	}
}

func TestUsageErrors(t *testing.T) {
	cases := []struct {
		name    string
		args    []string
		message string
	}{
		{"two modes", []string{"--verify", "--cleanup"}, "exclude each other"},
		{"port out of range", []string{"--sidecar-port=70000"}, "--sidecar-port=70000 is not a port"},
		{"imds port zero", []string{"--imds-port=0"}, "pass --imds-port=80"},
		{"uid out of range", []string{"--exemption=uid", "--sidecar-uid=4294967296"}, "use the sidecar's own non-root uid"},
		{"root uid", []string{"--exemption=uid", "--sidecar-uid=0"}, "use the sidecar's own non-root uid"},
		{"unknown exemption", []string{"--exemption=mark"}, "use cgroup or uid"},
		{"not an address", []string{"--imds-address=imds.local"}, "is not an IP address"},
		{"ipv6 address", []string{"--imds-address=fd00:ec2::254"}, "handles IPv4 only"},
		{"loopback address", []string{"--imds-address=127.0.0.1"}, "loopback"},
		{"stray argument", []string{"install"}, "unexpected arguments"},
		{"unknown flag", []string{"--sidecar-prot=1"}, "flag provided but not defined"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := run(tc.args, &stdout, &stderr); code != ExitUsage {
				t.Errorf("exit code %d, want %d", code, ExitUsage)
			}
			if !strings.Contains(stderr.String(), tc.message) {
				t.Errorf("stderr does not say %q:\n%s", tc.message, stderr.String())
			}
			if stdout.Len() != 0 {
				t.Errorf("stdout should be empty on a usage error, got:\n%s", stdout.String())
			}
		})
	}
}

// TestNoStaleGoldenFiles fails on golden files no test writes any more: a renamed case must not leave its old
// file behind looking authoritative.
func TestNoStaleGoldenFiles(t *testing.T) {
	used := map[string]bool{
		"dry-run-defaults.golden": true, // TestDryRunGolden
		"dry-run-custom.golden":   true, // TestDryRunGolden
		"dry-run-uid.golden":      true, // TestDryRunGolden
		"dry-run-fence.golden":    true, // TestDryRunGolden
	}
	entries, err := os.ReadDir("../testdata")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if !used[e.Name()] {
			t.Errorf("init/testdata/%s is not used by any test: delete it or add its test", e.Name())
		}
		delete(used, e.Name())
	}
	for name := range used {
		t.Errorf("init/testdata/%s is missing (run go test ./init/... -update)", name)
	}
}
