package redirect_test

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/podidentity/podidentity/internal/redirect"
	"github.com/podidentity/podidentity/test/toolbox/nstest"
)

var update = flag.Bool("update", false, "rewrite the golden files under init/testdata")

// goldenNftTable is nft's own listing of the installed table: it proves that what the kernel holds reads, to
// the reference tool, as the policy README.md describes (not only to our renderer).
const goldenNftTable = "testdata/nft-list-table.golden"

func kernelIn(t testing.TB, ns *nstest.NS) *redirect.Kernel {
	t.Helper()
	k, err := redirect.NewKernel(ns.FD())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k.Close() })
	return k
}

func nftScript(t testing.TB, ns *nstest.NS, script string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "rules.nft")
	if err := os.WriteFile(path, []byte(script), 0o600); err != nil {
		t.Fatal(err)
	}
	ns.Cmd(t, "nft", "-f", path)
}

func checkGolden(t *testing.T, path, got string) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./init/... -update to create it)", err)
	}
	if string(want) != got {
		t.Errorf("%s is stale or the output changed (rerun with -update after checking):\n--- want\n%s\n--- got\n%s",
			path, want, got)
	}
}

// TestApplyConverges starts from every partial or stale state we could find a pod in (earlier crashed run,
// older version, hand edits) and checks one Apply reaches exactly the desired table.
func TestApplyConverges(t *testing.T) {
	nstest.Require(t)
	def := redirect.DefaultConfig()
	stale := def
	stale.SidecarPort = 9999
	cases := []struct {
		name  string
		setup func(t *testing.T, ns *nstest.NS, k *redirect.Kernel)
	}{
		{"empty namespace", func(*testing.T, *nstest.NS, *redirect.Kernel) {}},
		{"empty table", func(t *testing.T, ns *nstest.NS, _ *redirect.Kernel) {
			ns.Cmd(t, "nft", "add", "table", "inet", redirect.TableName)
		}},
		{"guard chain missing", func(t *testing.T, ns *nstest.NS, _ *redirect.Kernel) {
			nftScript(t, ns, "table inet podidentity {\n chain imds-redirect {\n  type nat hook output priority -100; policy accept;\n }\n}\n")
		}},
		{"older config (other sidecar port)", func(t *testing.T, _ *nstest.NS, k *redirect.Kernel) {
			if _, err := k.Apply(redirect.Desired(stale)); err != nil {
				t.Fatal(err)
			}
		}},
		{"duplicated rule", func(t *testing.T, ns *nstest.NS, k *redirect.Kernel) {
			if _, err := k.Apply(redirect.Desired(def)); err != nil {
				t.Fatal(err)
			}
			ns.Cmd(t, "nft", "add", "rule", "inet", "podidentity", "imds-redirect",
				"ip", "daddr", "169.254.169.254", "tcp", "dport", "80", "dnat", "ip", "to", "127.0.0.1:15079")
		}},
		{"foreign chain inside our table", func(t *testing.T, ns *nstest.NS, k *redirect.Kernel) {
			if _, err := k.Apply(redirect.Desired(def)); err != nil {
				t.Fatal(err)
			}
			ns.Cmd(t, "nft", "add", "chain", "inet", "podidentity", "extra")
		}},
		{"guard chain with a drop policy", func(t *testing.T, ns *nstest.NS, _ *redirect.Kernel) {
			nftScript(t, ns, "table inet podidentity {\n chain imds-guard {\n  type filter hook output priority 0; policy drop;\n }\n}\n")
		}},
		{"dormant table (chains present but not run)", func(t *testing.T, ns *nstest.NS, k *redirect.Kernel) {
			if _, err := k.Apply(redirect.Desired(def)); err != nil {
				t.Fatal(err)
			}
			ns.Cmd(t, "nft", "add", "table", "inet", "podidentity", "{", "flags", "dormant", ";", "}")
		}},
		{"redirect chain at another priority", func(t *testing.T, ns *nstest.NS, _ *redirect.Kernel) {
			nftScript(t, ns, "table inet podidentity {\n chain imds-redirect {\n  type nat hook output priority 100; policy accept;\n }\n}\n")
		}},
	}
	want := redirect.Desired(def)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ns := nstest.New(t, nstest.UniqueSuffix(t), "conv")
			k := kernelIn(t, ns)
			tc.setup(t, ns, k)

			var drift *redirect.DriftError
			if err := k.Verify(want); !errors.As(err, &drift) {
				t.Fatalf("Verify before Apply: got %v, want a DriftError", err)
			}
			outcome, err := k.Apply(want)
			if err != nil {
				t.Fatal(err)
			}
			if outcome != redirect.Installed {
				t.Errorf("Apply outcome = %q, want %q", outcome, redirect.Installed)
			}
			if err := k.Verify(want); err != nil {
				t.Errorf("Verify after Apply: %v", err)
			}
			checkGolden(t, goldenNftTable, ns.Cmd(t, "nft", "list", "table", "inet", redirect.TableName))
		})
	}
}

// TestReapplyChangesNothing: a second run finds the table in place and sends nothing, so even the rule handles
// stay as they were.
func TestReapplyChangesNothing(t *testing.T) {
	nstest.Require(t)
	ns := nstest.New(t, nstest.UniqueSuffix(t), "again")
	k := kernelIn(t, ns)
	want := redirect.Desired(redirect.DefaultConfig())
	if outcome, err := k.Apply(want); err != nil || outcome != redirect.Installed {
		t.Fatalf("first Apply = %q, %v; want %q", outcome, err, redirect.Installed)
	}
	before := ns.Cmd(t, "nft", "--handle", "list", "ruleset")
	if outcome, err := k.Apply(want); err != nil || outcome != redirect.Unchanged {
		t.Fatalf("second Apply = %q, %v; want %q", outcome, err, redirect.Unchanged)
	}
	if after := ns.Cmd(t, "nft", "--handle", "list", "ruleset"); after != before {
		t.Errorf("the second Apply changed the ruleset:\n--- before\n%s\n--- after\n%s", before, after)
	}
}

func TestVerifyDetectsDrift(t *testing.T) {
	nstest.Require(t)
	want := redirect.Desired(redirect.DefaultConfig())
	cases := []struct {
		name    string
		edit    []string // nft arguments applied after a clean install; nil: no install at all
		missing bool
		mention string // a line fragment the drift report must name
	}{
		{name: "not installed", missing: true},
		{name: "redirect chain flushed", edit: []string{"flush", "chain", "inet", "podidentity", "imds-redirect"},
			mention: "missing:    meta nfproto ipv4 ip daddr 169.254.169.254 meta l4proto tcp th dport 80 dnat ip to 127.0.0.1:15079"},
		{name: "table made dormant", edit: []string{"add", "table", "inet", "podidentity", "{", "flags", "dormant", ";", "}"},
			mention: "unexpected: flags dormant;"},
		{name: "rule added to the guard", edit: []string{"add", "rule", "inet", "podidentity", "imds-guard", "accept"},
			mention: "unexpected: accept"},
		{name: "rule inserted before the exemption", edit: []string{"insert", "rule", "inet", "podidentity",
			"imds-redirect", "meta", "skuid", "1000", "accept"}, mention: "unexpected: meta skuid 1000 accept"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ns := nstest.New(t, nstest.UniqueSuffix(t), "drift")
			k := kernelIn(t, ns)
			if tc.edit != nil {
				if _, err := k.Apply(want); err != nil {
					t.Fatal(err)
				}
				if err := k.Verify(want); err != nil {
					t.Fatalf("Verify right after Apply: %v", err)
				}
				ns.Cmd(t, append([]string{"nft"}, tc.edit...)...)
			}
			err := k.Verify(want)
			var drift *redirect.DriftError
			if !errors.As(err, &drift) {
				t.Fatalf("Verify = %v, want a DriftError", err)
			}
			if drift.Missing != tc.missing {
				t.Errorf("Missing = %v, want %v", drift.Missing, tc.missing)
			}
			if !strings.Contains(err.Error(), tc.mention) {
				t.Errorf("drift report does not mention %q:\n%v", tc.mention, err)
			}
		})
	}
}

func TestCleanupRemovesOnlyOurs(t *testing.T) {
	nstest.Require(t)
	ns := nstest.New(t, nstest.UniqueSuffix(t), "clean")
	k := kernelIn(t, ns)
	// Foreign tables, one of them with our table's name in another family: neither is ours.
	nftScript(t, ns, "table ip foreign {\n chain out {\n  type filter hook output priority 0; policy accept;\n  ip daddr 10.9.9.9 drop\n }\n}\n"+
		"table ip podidentity {\n chain c {\n }\n}\n")
	foreignOnly := ns.Cmd(t, "nft", "list", "ruleset")
	if _, err := k.Apply(redirect.Desired(redirect.DefaultConfig())); err != nil {
		t.Fatal(err)
	}
	removed, err := k.Cleanup()
	if err != nil || !removed {
		t.Fatalf("Cleanup = %v, %v; want true, nil", removed, err)
	}
	if got := ns.Cmd(t, "nft", "list", "ruleset"); got != foreignOnly {
		t.Errorf("after Cleanup the ruleset is not what was there before the install:\n--- want\n%s\n--- got\n%s", foreignOnly, got)
	}
	if removed, err := k.Cleanup(); err != nil || removed {
		t.Errorf("second Cleanup = %v, %v; want false, nil", removed, err)
	}
}

func BenchmarkInstall(b *testing.B) {
	nstest.Require(b)
	ns := nstest.New(b, nstest.UniqueSuffix(b), "bench")
	k := kernelIn(b, ns)
	want := redirect.Desired(redirect.DefaultConfig())
	for b.Loop() {
		b.StopTimer()
		if _, err := k.Cleanup(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if outcome, err := k.Apply(want); err != nil || outcome != redirect.Installed {
			b.Fatal(outcome, err)
		}
	}
}

// BenchmarkInstallFreshNamespace is what a new pod sees: the first nftables use in a namespace the CNI just
// made, so the kernel also sets up conntrack and NAT for it. Creating the namespace is not timed.
func BenchmarkInstallFreshNamespace(b *testing.B) {
	nstest.Require(b)
	want := redirect.Desired(redirect.DefaultConfig())
	suffix := nstest.UniqueSuffix(b)
	i := 0
	for b.Loop() {
		b.StopTimer()
		i++
		ns := nstest.New(b, suffix, fmt.Sprint(i))
		b.StartTimer()
		k, err := redirect.NewKernel(ns.FD())
		if err != nil {
			b.Fatal(err)
		}
		if outcome, err := k.Apply(want); err != nil || outcome != redirect.Installed {
			b.Fatal(outcome, err)
		}
		_ = k.Close()
	}
}

func BenchmarkReapplyUnchanged(b *testing.B) {
	nstest.Require(b)
	ns := nstest.New(b, nstest.UniqueSuffix(b), "bench")
	k := kernelIn(b, ns)
	want := redirect.Desired(redirect.DefaultConfig())
	if _, err := k.Apply(want); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if outcome, err := k.Apply(want); err != nil || outcome != redirect.Unchanged {
			b.Fatal(outcome, err)
		}
	}
}

func BenchmarkVerify(b *testing.B) {
	nstest.Require(b)
	ns := nstest.New(b, nstest.UniqueSuffix(b), "bench")
	k := kernelIn(b, ns)
	want := redirect.Desired(redirect.DefaultConfig())
	if _, err := k.Apply(want); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if err := k.Verify(want); err != nil {
			b.Fatal(err)
		}
	}
}
