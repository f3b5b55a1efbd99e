package redirect_test

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/internal/redirect"
	"github.com/podidentity/podidentity/test/toolbox/nstest"
)

// helperEnv makes the test binary a helper process for the exemption tests: "exempt-self" learns its own
// cgroup and installs the redirect exempting it, as the sidecar does at start; "dial <addr>" connects and
// prints "ok <banner>" or "error <why>". The tests start it inside a namespace, a cgroup and a uid of their
// choosing, because those are what the rules match.
const helperEnv = "PODIDENTITY_REDIRECT_TEST_HELPER"

// helperBinary is a copy of the test binary that every uid may execute (the go tool's build directory is
// root's own); set by TestMain when running as root.
var helperBinary string

func TestMain(m *testing.M) {
	switch arg := os.Getenv(helperEnv); {
	case arg == "exempt-self":
		exemptSelf()
	case strings.HasPrefix(arg, "dial "):
		dial(strings.TrimPrefix(arg, "dial "))
	case arg == "somark":
		fmt.Println(setMark())
	default:
		os.Exit(runTests(m))
	}
}

func runTests(m *testing.M) int {
	if os.Geteuid() == 0 {
		dir, err := os.MkdirTemp("", "podidentity-redirect-test-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		self, err := os.Executable()
		if err == nil {
			var data []byte
			if data, err = os.ReadFile(self); err == nil {
				helperBinary = filepath.Join(dir, "helper")
				err = errors.Join(os.Chmod(dir, 0o755), os.WriteFile(helperBinary, data, 0o755))
			}
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "copying the test binary for the helper processes:", err)
			return 1
		}
	}
	return m.Run()
}

func exemptSelf() {
	k, err := redirect.NewKernel(0)
	if err != nil {
		fmt.Printf("error %v\n", err)
		return
	}
	defer k.Close()
	cg, err := k.LearnCgroup()
	if err != nil {
		fmt.Printf("error %v\n", err)
		return
	}
	if _, err := k.Apply(redirect.Desired(redirect.DefaultConfig().WithExemption(redirect.Exemption{Cgroup: cg}))); err != nil {
		fmt.Printf("error %v\n", err)
		return
	}
	fmt.Printf("exempted %d %d\n", cg.ID, cg.Level)
}

func dial(addr string) { fmt.Println(nstest.DialBanner(addr, 3*time.Second)) }

// helper runs the test binary as a helper inside ns, in cgroup cg (nil: the test's own) as uid, with extra
// clone flags, and returns its one line of output.
func helper(t *testing.T, ns *nstest.NS, cg *nstest.Cgroup, uid uint32, cloneflags uintptr, arg string) string {
	t.Helper()
	cmd := exec.Command(helperBinary)
	cmd.Env = append(os.Environ(), helperEnv+"="+arg)
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: cloneflags}
	if uid != 0 {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uid, Gid: uid, Groups: []uint32{}}
	}
	if cg != nil {
		cg.Into(cmd)
	}
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := ns.Start(cmd); err != nil {
		t.Fatalf("starting helper %q: %v", arg, err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("helper %q: %v: %s", arg, err, out.String())
	}
	return strings.TrimSpace(out.String())
}

// TestSidecarExemptsItsOwnCgroup is the uid-free exemption, in real namespaces and cgroups: the init
// container's table exempts nobody; the sidecar, started in a cgroup of its own, learns that cgroup from the
// kernel and installs the redirect exempting it; then only processes of that cgroup reach the node's IMDS,
// whatever their uid, and every other process is redirected, also as root or as the sidecar's uid.
func TestSidecarExemptsItsOwnCgroup(t *testing.T) {
	nstest.Require(t)
	for _, variant := range []struct {
		name       string
		cloneflags uintptr
	}{
		{"host cgroup namespace", 0},
		// As containerd starts a container on cgroup v2: in a cgroup namespace whose root is its own cgroup,
		// where /proc/self/cgroup says "/" and newer kernels count levels from there.
		{"private cgroup namespace", syscall.CLONE_NEWCGROUP},
	} {
		t.Run(variant.name, func(t *testing.T) {
			imds := "169.254.169.254"
			link := nstest.NewLink(t, imds)
			nstest.Serve(t, link.Node, imds+":80", "node:80")
			nstest.Serve(t, link.Node, imds+":443", "node:443")
			nstest.Serve(t, link.Pod, fmt.Sprintf("127.0.0.1:%d", contract.SidecarPort), "sidecar")
			suffix := nstest.UniqueSuffix(t)
			sidecar := nstest.NewCgroup(t, suffix, "sidecar")
			app := nstest.NewCgroup(t, suffix, "app")

			k := kernelIn(t, link.Pod)
			if _, err := k.Apply(redirect.Desired(redirect.DefaultConfig())); err != nil {
				t.Fatal(err)
			}
			// Before the sidecar exempts itself, nobody reaches the node, the sidecar's cgroup included.
			if got := helper(t, link.Pod, sidecar, contract.SidecarUID, 0, "dial "+imds+":80"); got != "ok sidecar" {
				t.Fatalf("sidecar's cgroup before the exemption: %q, want it redirected", got)
			}

			got := helper(t, link.Pod, sidecar, 0, variant.cloneflags, "exempt-self")
			var id uint64
			var level uint32
			if _, err := fmt.Sscanf(got, "exempted %d %d", &id, &level); err != nil {
				t.Fatalf("exempt-self: %q", got)
			}
			if id != sidecar.ID {
				t.Errorf("learned cgroup id %d, want the sidecar cgroup's %d", id, sidecar.ID)
			}
			live, _, err := k.Live()
			if err != nil {
				t.Fatal(err)
			}
			if ex := redirect.ExemptionOf(live); ex.Cgroup.ID != sidecar.ID {
				t.Fatalf("the live table exempts %v, want cgroup %d:\n%s", ex, sidecar.ID, redirect.Render(live))
			}
			t.Logf("learned level %d (absolute level %d), live table:\n%s", level, sidecar.Level, redirect.Render(live))

			for _, c := range []struct {
				name string
				cg   *nstest.Cgroup
				uid  uint32
				addr string
				want string
			}{
				{"sidecar reaches the node", sidecar, contract.SidecarUID, imds + ":80", "ok node:80"},
				{"sidecar reaches other IMDS ports", sidecar, contract.SidecarUID, imds + ":443", "ok node:443"},
				{"app as root is redirected", app, 0, imds + ":80", "ok sidecar"},
				{"app as the sidecar's uid is redirected", app, contract.SidecarUID, imds + ":80", "ok sidecar"},
				{"app as the sidecar's uid is refused other ports", app, contract.SidecarUID, imds + ":443", "error"},
				{"a process outside any container cgroup is redirected", nil, 1000, imds + ":80", "ok sidecar"},
			} {
				if got := helper(t, link.Pod, c.cg, c.uid, 0, "dial "+c.addr); !strings.HasPrefix(got, c.want) {
					t.Errorf("%s: %q, want %q", c.name, got, c.want)
				}
			}
		})
	}
}

// TestLearnRefusesTheRootCgroup: a process whose sockets belong to the root cgroup (a node that does not put
// containers in cgroups of their own) must not exempt it: every process of the node would match.
func TestLearnRefusesTheRootCgroup(t *testing.T) {
	nstest.Require(t)
	if _, ok := nstest.Cgroup2Root(); !ok {
		t.Skip("no cgroup v2 hierarchy")
	}
	if b, err := os.ReadFile("/proc/self/cgroup"); err != nil || !strings.Contains(string(b), "0::/\n") {
		t.Skipf("the test process is not in the root cgroup v2 (%q)", b)
	}
	ns := nstest.New(t, nstest.UniqueSuffix(t), "root")
	got := helper(t, ns, nil, 0, 0, "exempt-self")
	if !strings.Contains(got, "root cgroup") {
		t.Errorf("exempt-self in the root cgroup: %q, want a refusal naming the root cgroup", got)
	}
	if out := ns.Cmd(t, "nft", "list", "ruleset"); strings.Contains(out, "cgroupv2") {
		t.Errorf("a cgroup exemption was installed:\n%s", out)
	}
}

// setMark tries to set a socket mark, as a mark-based exemption would need the sidecar to, and as anyone who
// wanted to pass for the sidecar would.
func setMark() string {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	if err != nil {
		return "error " + err.Error()
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, 0x539); err != nil {
		return "error " + err.Error()
	}
	return "ok"
}

// TestSocketMarkIsForgeable is the evidence behind not exempting the sidecar by a socket mark: on this kernel
// (Linux 5.17 and newer) SO_MARK needs only CAP_NET_RAW, which container runtimes grant every root container by
// default, so any root container could carry the sidecar's mark. Without NET_RAW (and NET_ADMIN) it is refused.
func TestSocketMarkIsForgeable(t *testing.T) {
	nstest.Require(t)
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skip("setpriv (util-linux) not found")
	}
	for _, tc := range []struct {
		name, caps string
		want       string
	}{
		{"root with only CAP_NET_RAW (a runtime default)", "-all,+net_raw", "ok"},
		{"root without NET_RAW and NET_ADMIN", "-all", "error operation not permitted"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(setpriv, "--bounding-set="+tc.caps, "--inh-caps="+tc.caps, "--", helperBinary)
			cmd.Env = append(os.Environ(), helperEnv+"=somark")
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			if got := strings.TrimSpace(string(out)); got != tc.want {
				t.Errorf("setsockopt(SO_MARK) with capabilities %s: %q, want %q (kernel %s)", tc.caps, got, tc.want, kernelRelease())
			}
		})
	}
}

func kernelRelease() string {
	b, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return strings.TrimSpace(string(b))
}
