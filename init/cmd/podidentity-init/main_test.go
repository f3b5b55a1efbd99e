package main

import (
	"bytes"
	"debug/elf"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/internal/redirect"
	"github.com/podidentity/podidentity/test/toolbox/nstest"
)

// dialEnv makes the test binary a one-shot TCP client: it dials the address in the variable, prints "ok
// <what the server sent>" or "error <why>", and exits. The tests run it inside a namespace as a chosen uid,
// because a socket's owner uid is what the rules match.
const dialEnv = "PODIDENTITY_INIT_TEST_DIAL"

// binDir holds the podidentity-init binary built for these tests and a copy of the test binary, both readable
// and executable by the unprivileged uids the tests switch to. Empty when the tests skip.
var binDir string

func TestMain(m *testing.M) {
	if addr := os.Getenv(dialEnv); addr != "" {
		dialOnce(addr)
		return
	}
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	flag.Parse() // for testing.Short
	// Only the root-only namespace tests use the binaries; -short skips them, so skip the build too.
	if os.Geteuid() == 0 && !testing.Short() {
		dir, err := buildBinaries()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		binDir = dir
	}
	return m.Run()
}

func dialOnce(addr string) { fmt.Println(nstest.DialBanner(addr, 5*time.Second)) }

// buildBinaries builds podidentity-init as the image does (static, CGO_ENABLED=0) and copies the test binary
// next to it, in a directory every uid may enter.
func buildBinaries() (string, error) {
	dir, err := os.MkdirTemp("", "podidentity-init-test-")
	if err != nil {
		return "", err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return "", err
	}
	goTool, err := exec.LookPath("go") // go test puts its own toolchain first on PATH
	if err != nil {
		return "", err
	}
	build := exec.Command(goTool, "build", "-trimpath", "-o", filepath.Join(dir, "podidentity-init"), ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building podidentity-init: %w\n%s", err, out)
	}
	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	data, err := os.ReadFile(self)
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "dialer"), data, 0o755); err != nil {
		return "", err
	}
	return dir, nil
}

func requireNamespaces(t *testing.T) {
	t.Helper()
	nstest.Require(t)
	if binDir == "" {
		t.Fatal("binaries were not built")
	}
}

// credential runs a child as uid (and gid uid) with no supplementary groups; for a non-zero uid the kernel
// drops every capability, as it does for a container running as that user without added capabilities.
func credential(uid uint32) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid, Groups: []uint32{}}}
}

// runInit runs the built podidentity-init inside ns as uid and returns its exit code, stdout and stderr.
func runInit(t *testing.T, ns *nstest.NS, uid uint32, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(filepath.Join(binDir, "podidentity-init"), args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if uid != 0 {
		cmd.SysProcAttr = credential(uid)
	}
	if err := ns.Start(cmd); err != nil {
		t.Fatalf("starting podidentity-init: %v", err)
	}
	err := cmd.Wait()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0, stdout.String(), stderr.String()
	case errors.As(err, &exit):
		return exit.ExitCode(), stdout.String(), stderr.String()
	}
	t.Fatalf("running podidentity-init: %v", err)
	return 0, "", ""
}

// dialAs connects from ns as uid and returns "ok <banner>" or "error <reason>".
func dialAs(t *testing.T, ns *nstest.NS, uid uint32, addr string) string {
	t.Helper()
	var out bytes.Buffer
	cmd := exec.Command(filepath.Join(binDir, "dialer"))
	cmd.Env = append(os.Environ(), dialEnv+"="+addr)
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = credential(uid)
	if err := ns.Start(cmd); err != nil {
		t.Fatalf("starting the dialer: %v", err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("dialer as uid %d: %v: %s", uid, err, out.String())
	}
	return strings.TrimSpace(out.String())
}

const (
	appUID        = 1000
	nobodyUID     = 65534
	sidecarBanner = "sidecar"
)

// TestInitContainerInRealNamespaces is the init container's contract, end to end, with the static binary in a
// pod namespace whose default route leads to a node namespace that holds the IMDS address.
func TestInitContainerInRealNamespaces(t *testing.T) {
	requireNamespaces(t)
	link := nstest.NewLink(t, contract.IMDSAddress)
	imds := net.JoinHostPort(contract.IMDSAddress, fmt.Sprint(contract.IMDSPort))
	imdsOtherPort := net.JoinHostPort(contract.IMDSAddress, "443")
	nstest.Serve(t, link.Node, imds, "node:80")
	nstest.Serve(t, link.Node, imdsOtherPort, "node:443")
	nstest.Serve(t, link.Pod, fmt.Sprintf("127.0.0.1:%d", contract.SidecarPort), sidecarBanner)
	nft := func(args ...string) string { return link.Pod.Cmd(t, append([]string{"nft"}, args...)...) }

	// Without the rules every uid reaches the node: the redirect below is the rules' doing.
	if got := dialAs(t, link.Pod, appUID, imds); got != "ok node:80" {
		t.Fatalf("before podidentity-init, uid %d to %s: %q, want %q", appUID, imds, got, "ok node:80")
	}

	if code, _, stderr := runInit(t, link.Pod, 0); code != 0 {
		t.Fatalf("podidentity-init exit %d:\n%s", code, stderr)
	}

	t.Run("traffic", func(t *testing.T) {
		cases := []struct {
			name string
			uid  uint32
			addr string
			want string // exact, or a prefix when it ends in a space
		}{
			{"an app uid is redirected to the sidecar", appUID, imds, "ok " + sidecarBanner},
			{"root is redirected too", 0, imds, "ok " + sidecarBanner},
			// No uid is exempt: the sidecar exempts its own cgroup once it runs (init/redirect's exemption tests).
			{"the sidecar's uid is redirected too", contract.SidecarUID, imds, "ok " + sidecarBanner},
			{"the sidecar's uid is refused on other IMDS ports", contract.SidecarUID, imdsOtherPort, "error "},
			{"an app uid is refused on other IMDS ports", appUID, imdsOtherPort, "error "},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				got := dialAs(t, link.Pod, tc.uid, tc.addr)
				t.Logf("uid %d to %s: %s", tc.uid, tc.addr, got)
				if strings.HasSuffix(tc.want, " ") && strings.HasPrefix(got, tc.want) {
					// Refused, not silently dropped: the client learns at once instead of waiting out a timeout.
					if strings.Contains(got, "timeout") {
						t.Errorf("uid %d to %s timed out (%q); the guard should reject, not drop", tc.uid, tc.addr, got)
					}
					return
				}
				if got != tc.want {
					t.Errorf("uid %d to %s: %q, want %q", tc.uid, tc.addr, got, tc.want)
				}
			})
		}
	})

	t.Run("legacy uid exemption", func(t *testing.T) {
		legacy := nstest.NewLink(t, contract.IMDSAddress)
		nstest.Serve(t, legacy.Node, imds, "node:80")
		nstest.Serve(t, legacy.Node, imdsOtherPort, "node:443")
		nstest.Serve(t, legacy.Pod, fmt.Sprintf("127.0.0.1:%d", contract.SidecarPort), sidecarBanner)
		if code, _, stderr := runInit(t, legacy.Pod, 0, "--exemption=uid", fmt.Sprintf("--sidecar-uid=%d", contract.SidecarUID)); code != 0 {
			t.Fatalf("podidentity-init --exemption=uid: exit %d:\n%s", code, stderr)
		}
		for _, tc := range []struct {
			uid        uint32
			addr, want string
		}{
			{contract.SidecarUID, imds, "ok node:80"},
			{contract.SidecarUID, imdsOtherPort, "ok node:443"},
			{appUID, imds, "ok " + sidecarBanner},
		} {
			if got := dialAs(t, legacy.Pod, tc.uid, tc.addr); got != tc.want {
				t.Errorf("uid %d to %s: %q, want %q", tc.uid, tc.addr, got, tc.want)
			}
		}
	})

	t.Run("a second run leaves the ruleset byte-identical", func(t *testing.T) {
		before := nft("--handle", "list", "ruleset")
		if code, _, stderr := runInit(t, link.Pod, 0); code != 0 {
			t.Fatalf("second run exit %d:\n%s", code, stderr)
		}
		if after := nft("--handle", "list", "ruleset"); after != before {
			t.Errorf("ruleset changed:\n--- before\n%s\n--- after\n%s", before, after)
		}
	})

	t.Run("verify passes, then fails after a rule is deleted by hand", func(t *testing.T) {
		if code, _, stderr := runInit(t, link.Pod, 0, "--verify"); code != 0 {
			t.Fatalf("--verify on a fresh install: exit %d:\n%s", code, stderr)
		}
		listing := nft("--handle", "list", "chain", "inet", redirect.TableName, redirect.RedirectChain)
		m := regexp.MustCompile(`dnat ip to .*# handle (\d+)`).FindStringSubmatch(listing)
		if m == nil {
			t.Fatalf("no dnat rule with a handle in:\n%s", listing)
		}
		nft("delete", "rule", "inet", redirect.TableName, redirect.RedirectChain, "handle", m[1])
		code, _, stderr := runInit(t, link.Pod, 0, "--verify")
		if code != 1 {
			t.Errorf("--verify after deleting the dnat rule: exit %d, want 1", code)
		}
		for _, want := range []string{"verify FAILED", "missing:", "dnat ip to 127.0.0.1:15079"} {
			if !strings.Contains(stderr, want) {
				t.Errorf("--verify stderr does not say %q:\n%s", want, stderr)
			}
		}
		// A plain run repairs it.
		if code, _, stderr := runInit(t, link.Pod, 0); code != 0 {
			t.Fatalf("repairing run: exit %d:\n%s", code, stderr)
		}
		if code, _, stderr := runInit(t, link.Pod, 0, "--verify"); code != 0 {
			t.Errorf("--verify after the repair: exit %d:\n%s", code, stderr)
		}
	})

	t.Run("cleanup removes only ours", func(t *testing.T) {
		nft("add", "table", "ip", "foreign")
		nft("add", "chain", "ip", "foreign", "c")
		if code, _, stderr := runInit(t, link.Pod, 0, "--cleanup"); code != 0 {
			t.Fatalf("--cleanup exit %d:\n%s", code, stderr)
		}
		if got, want := nft("list", "ruleset"), "table ip foreign {\n\tchain c {\n\t}\n}\n"; got != want {
			t.Errorf("after --cleanup the ruleset is\n%s\nwant only the foreign table:\n%s", got, want)
		}
		if got := dialAs(t, link.Pod, appUID, imds); got != "ok node:80" {
			t.Errorf("after --cleanup uid %d to %s: %q, want the node again", appUID, imds, got)
		}
		if code, _, _ := runInit(t, link.Pod, 0, "--verify"); code != 1 {
			t.Errorf("--verify after --cleanup: exit %d, want 1", code)
		}
	})
}

// TestFailsClosedWithoutNetAdmin: without CAP_NET_ADMIN the binary exits 1 with the documented message in every
// mode and installs nothing, whether it runs as an ordinary uid or as root with the capability dropped (what a
// policy stripping the webhook's capabilities.add would leave).
func TestFailsClosedWithoutNetAdmin(t *testing.T) {
	requireNamespaces(t)
	bin := filepath.Join(binDir, "podidentity-init")
	cases := []struct {
		name string
		cmd  func(args ...string) *exec.Cmd
	}{
		{"as uid 65534", func(args ...string) *exec.Cmd {
			cmd := exec.Command(bin, args...)
			cmd.SysProcAttr = credential(nobodyUID)
			return cmd
		}},
		{"as root without NET_ADMIN", func(args ...string) *exec.Cmd {
			// setpriv (util-linux) removes the capability from the bounding and inheritable sets before exec,
			// so root's podidentity-init starts without it.
			return exec.Command("setpriv", append([]string{"--bounding-set=-net_admin", "--inh-caps=-net_admin", bin}, args...)...)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := exec.LookPath("setpriv"); err != nil && strings.Contains(tc.name, "root") {
				t.Skip("setpriv not found: install util-linux")
			}
			ns := nstest.New(t, nstest.UniqueSuffix(t), "nocap")
			for _, args := range [][]string{nil, {"--verify"}, {"--cleanup"}} {
				var stderr bytes.Buffer
				cmd := tc.cmd(args...)
				cmd.Stderr = &stderr
				if err := ns.Start(cmd); err != nil {
					t.Fatal(err)
				}
				err := cmd.Wait()
				var exit *exec.ExitError
				if !errors.As(err, &exit) || exit.ExitCode() != 1 {
					t.Errorf("%v: %v, want exit status 1", args, err)
				}
				for _, want := range []string{"FAILED; the pod must not start", redirect.ErrNoNetAdmin.Error()} {
					if !strings.Contains(stderr.String(), want) {
						t.Errorf("%v: stderr does not say %q:\n%s", args, want, stderr.String())
					}
				}
			}
			if got := ns.Cmd(t, "nft", "list", "ruleset"); got != "" {
				t.Errorf("a failed run left rules behind:\n%s", got)
			}
		})
	}
}

// TestBinaryIsStatic: the image is scratch/distroless, so the binary must not need a dynamic loader or libc.
func TestBinaryIsStatic(t *testing.T) {
	requireNamespaces(t)
	f, err := elf.Open(filepath.Join(binDir, "podidentity-init"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("podidentity-init has an ELF interpreter: it is dynamically linked (build with CGO_ENABLED=0)")
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("podidentity-init imports shared libraries %v", libs)
	}
}

// BenchmarkInitBinary is the whole init container as the kubelet runs it: process start, install into an empty
// namespace, exit.
func BenchmarkInitBinary(b *testing.B) {
	nstest.Require(b)
	if binDir == "" {
		b.Fatal("binaries were not built")
	}
	ns := nstest.New(b, nstest.UniqueSuffix(b), "bench")
	bin := filepath.Join(binDir, "podidentity-init")
	for b.Loop() {
		b.StopTimer()
		if out, err := exec.Command("ip", "netns", "exec", ns.Name, "nft", "flush", "ruleset").CombinedOutput(); err != nil {
			b.Fatalf("%v: %s", err, out)
		}
		b.StartTimer()
		cmd := exec.Command(bin)
		if err := ns.Start(cmd); err != nil {
			b.Fatal(err)
		}
		if err := cmd.Wait(); err != nil {
			b.Fatal(err)
		}
	}
}

// TestVerifyTraffic is CNI mode's init container: unprivileged (uid 65532, no capabilities), it passes only
// when the pod's traffic to the IMDS address arrives at the sidecar's port and another port is refused, and it
// fails, naming the missing piece, in a namespace without rules and in one with the fence of a pod that has no
// sidecar.
func TestVerifyTraffic(t *testing.T) {
	requireNamespaces(t)
	const unprivileged = 65532
	cases := []struct {
		name    string
		rules   []string // podidentity-init arguments that install the rules first; nil: none
		code    int
		message string
	}{
		{"redirect installed", []string{}, 0, ""},
		{"no rules", nil, 1, "the redirect is missing"},
		{"fence of a pod without a sidecar", []string{"--fence"}, 1, "the redirect is missing"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			link := nstest.NewLink(t, contract.IMDSAddress)
			// The node answers on both ports: without the rules, the probe really reaches it.
			nstest.Serve(t, link.Node, net.JoinHostPort(contract.IMDSAddress, fmt.Sprint(contract.IMDSPort)), "node:80")
			nstest.Serve(t, link.Node, net.JoinHostPort(contract.IMDSAddress, "443"), "node:443")
			if tc.rules != nil {
				if code, _, stderr := runInit(t, link.Pod, 0, tc.rules...); code != 0 {
					t.Fatalf("installing the rules: exit %d:\n%s", code, stderr)
				}
			}
			code, _, stderr := runInit(t, link.Pod, unprivileged, "--verify-traffic")
			if code != tc.code || !strings.Contains(stderr, tc.message) {
				t.Errorf("--verify-traffic as uid %d: exit %d, stderr:\n%s\nwant exit %d mentioning %q", unprivileged, code, stderr, tc.code, tc.message)
			}
		})
	}
	t.Run("guard missing", func(t *testing.T) {
		link := nstest.NewLink(t, contract.IMDSAddress)
		nstest.Serve(t, link.Node, net.JoinHostPort(contract.IMDSAddress, "443"), "node:443")
		if code, _, stderr := runInit(t, link.Pod, 0); code != 0 {
			t.Fatalf("installing the redirect: exit %d:\n%s", code, stderr)
		}
		link.Pod.Cmd(t, "nft", "flush", "chain", "inet", redirect.TableName, redirect.GuardChain)
		code, _, stderr := runInit(t, link.Pod, unprivileged, "--verify-traffic")
		if code != 1 || !strings.Contains(stderr, "the guard is missing") {
			t.Errorf("--verify-traffic without the guard: exit %d, stderr:\n%s", code, stderr)
		}
	})
}
