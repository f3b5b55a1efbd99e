package privilege

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"unsafe"

	"github.com/go-logr/logr"
	"golang.org/x/sys/unix"

	"github.com/podidentity/podidentity/internal/redirect"
)

// needs is what the sidecar's container must allow when it starts as root; every privilege error names it.
const needs = "started as root, the sidecar needs the capabilities SETUID and SETGID to switch to --run-as-uid/--run-as-gid, " +
	"and NET_ADMIN for --install-exemption, and drops them all before it serves; the webhook injects exactly that " +
	"securityContext (runAsUser: 0, capabilities add NET_ADMIN, SETUID, SETGID): check that no policy or mutating webhook " +
	"changed the injected podidentity-sidecar container"

// ErrNoNetAdmin replaces redirect.ErrNoNetAdmin, whose advice is for the init container.
var ErrNoNetAdmin = errors.New("permission denied: the sidecar lacks CAP_NET_ADMIN in the pod's network namespace; " + needs)

// Start runs the sidecar's privileged start-up. It always makes the process non-dumpable first. When the process
// runs as root it installs the exemption (with o.InstallExemption), switches to o.RunAsUID/o.RunAsGID, clears
// every capability, sets no_new_privs, and checks every thread's /proc status; any failure is an error naming
// the cause and the fix, and the caller must exit. imdsEndpoint and listenAddress are the sidecar's flags of
// those names.
func Start(o Options, imdsEndpoint, listenAddress string, log logr.Logger) error {
	// Not dumpable: the files under /proc/<pid> become root's, so no other process of the pod, even of the same uid in a
	// shared process namespace, can ptrace the sidecar, read its memory or environment, or take its sockets
	// with pidfd_getfd. First, so that it holds while the sidecar is still root.
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return fmt.Errorf("prctl(PR_SET_DUMPABLE, 0): %w (the sidecar refuses to run dumpable; check the seccomp profile allows prctl)", err)
	}
	if err := o.Validate(); err != nil {
		return err
	}
	if euid := os.Geteuid(); euid != 0 {
		if o.InstallExemption {
			return fmt.Errorf("--install-exemption: the sidecar must start as root but runs as uid %d; %s", euid, needs)
		}
		return dropCapabilities(log)
	}
	// Every thread must lose its privileges, and only a binary without cgo can reach every thread with
	// prctl and capset; refuse before changing anything.
	if _, _, errno := syscall.AllThreadsSyscall(syscall.SYS_PRCTL, unix.PR_GET_DUMPABLE, 0, 0); errno == syscall.ENOTSUP {
		return errors.New("this podidentity-sidecar binary was built with cgo, so it cannot drop privileges on every thread; " +
			"build it with CGO_ENABLED=0 (as `make build` and `make images` do)")
	}
	self, err := ownStatus()
	if err != nil {
		return err
	}
	if missing := self.MissingCapabilities(o.InstallExemption); len(missing) > 0 {
		return fmt.Errorf("the sidecar runs as root without the capabilities %s; %s", strings.Join(missing, ", "), needs)
	}
	if o.InstallExemption {
		if err := installExemption(imdsEndpoint, listenAddress, log); err != nil {
			return err
		}
	}
	return drop(uint32(o.RunAsUID), uint32(o.RunAsGID), log)
}

// installExemption learns the sidecar's cgroup from the kernel and replaces the redirect table, atomically, with
// one exempting it.
func installExemption(imdsEndpoint, listenAddress string, log logr.Logger) error {
	cfg, err := RedirectConfig(imdsEndpoint, listenAddress)
	if err != nil {
		return err
	}
	k, err := redirect.NewKernel(0)
	if err != nil {
		return fmt.Errorf("installing the IMDS redirect's exemption: %w", sidecarAdvice(err))
	}
	defer k.Close() // before the drop: the socket is useless without CAP_NET_ADMIN anyway
	cg, err := k.LearnCgroup()
	if err != nil {
		return fmt.Errorf("installing the IMDS redirect's exemption: %w", sidecarAdvice(err))
	}
	outcome, err := k.Apply(redirect.Desired(cfg.WithExemption(redirect.Exemption{Cgroup: cg})))
	if err != nil {
		return fmt.Errorf("installing the IMDS redirect's exemption for cgroup id %d (level %d): %w", cg.ID, cg.Level, sidecarAdvice(err))
	}
	log.Info("IMDS redirect exemption installed: only the sidecar's cgroup reaches the node's IMDS",
		"cgroupID", cg.ID, "cgroupLevel", cg.Level, "table", "inet "+redirect.TableName, "outcome", string(outcome),
		"imds", fmt.Sprintf("%s:%d", cfg.IMDSAddress, cfg.IMDSPort), "sidecarPort", cfg.SidecarPort)
	return nil
}

// sidecarAdvice swaps the init container's advice on a missing CAP_NET_ADMIN for the sidecar's. (The
// capability is checked before; the kernel can still refuse, e.g. when the network namespace belongs to
// another user namespace.)
func sidecarAdvice(err error) error {
	if !errors.Is(err, redirect.ErrNoNetAdmin) {
		return err
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return fmt.Errorf("%w (netlink: %w)", ErrNoNetAdmin, errno)
	}
	return ErrNoNetAdmin
}

// drop switches to uid and gid for good and leaves the process nothing to regain privileges with.
func drop(uid, gid uint32, log logr.Logger) error {
	// Groups and gid first: changing them needs CAP_SETGID, which the uid change takes away. Go applies
	// these to every thread (Go 1.16+).
	if err := syscall.Setgroups([]int{}); err != nil {
		return fmt.Errorf("setgroups([]): %w (CAP_SETGID missing?); %s", err, needs)
	}
	if err := syscall.Setgid(int(gid)); err != nil {
		return fmt.Errorf("setgid(%d): %w (CAP_SETGID missing?); %s", gid, err, needs)
	}
	// As root, setuid sets the real, effective, saved and filesystem uids, and the kernel then clears the
	// permitted, effective and ambient capabilities (no SECBIT_KEEP_CAPS), so there is no way back.
	if err := syscall.Setuid(int(uid)); err != nil {
		return fmt.Errorf("setuid(%d): %w (CAP_SETUID missing?); %s", uid, err, needs)
	}
	// setuid leaves the inheritable set; clear every set explicitly.
	if err := clearCapabilities(); err != nil {
		return err
	}
	if _, _, errno := syscall.AllThreadsSyscall6(syscall.SYS_PRCTL, unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0, 0); errno != 0 {
		return fmt.Errorf("prctl(PR_SET_NO_NEW_PRIVS, 1) on every thread: %w (check the seccomp profile allows prctl)", errno)
	}
	// The uid change made the kernel reset dumpable to fs.suid_dumpable, which a node may set to 1 or 2.
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return fmt.Errorf("prctl(PR_SET_DUMPABLE, 0) after the uid change: %w", err)
	}
	if err := verify(uid, gid); err != nil {
		return err
	}
	log.Info("privileges dropped", "uid", uid, "gid", gid, "capabilities", "none", "noNewPrivs", true, "dumpable", false)
	return nil
}

// clearCapabilities empties the inheritable, permitted and effective sets of every thread (the ambient set
// follows); lowering them needs no privilege.
func clearCapabilities() error {
	hdr := &unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	data := &[2]unix.CapUserData{}
	_, _, errno := syscall.AllThreadsSyscall(syscall.SYS_CAPSET, uintptr(unsafe.Pointer(hdr)), uintptr(unsafe.Pointer(data)), 0)
	runtime.KeepAlive(hdr)
	runtime.KeepAlive(data)
	if errno == syscall.ENOTSUP {
		return errors.New("this podidentity-sidecar binary was built with cgo, so it cannot clear the capabilities of every thread; " +
			"build it with CGO_ENABLED=0 (as `make build` and `make images` do)")
	}
	if errno != 0 {
		return fmt.Errorf("capset (clearing every capability) on every thread: %w (check the seccomp profile allows capset)", errno)
	}
	return nil
}

// dropCapabilities is the start of a sidecar that is not root (the kubelet ran it as its uid): the ids are
// the runtime's to choose, but a capability the container was given is cleared, because the sidecar needs none.
func dropCapabilities(log logr.Logger) error {
	s, err := ownStatus()
	if err != nil {
		return err
	}
	if s.CapInh|s.CapPrm|s.CapEff|s.CapAmb == 0 {
		return nil
	}
	if err := clearCapabilities(); err != nil {
		return err
	}
	log.Info("capabilities cleared: the sidecar needs none", "uid", s.UID[1], "hadEffective", fmt.Sprintf("%016x", s.CapEff))
	return nil
}

func ownStatus() (Status, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return Status{}, fmt.Errorf("reading /proc/self/status: %w (the sidecar needs /proc mounted)", err)
	}
	return ParseStatus(b)
}

// verify checks every thread's credentials from /proc, and that the process is not dumpable.
func verify(uid, gid uint32) error {
	statuses, err := filepath.Glob("/proc/self/task/*/status")
	if err != nil || len(statuses) == 0 {
		return fmt.Errorf("checking the dropped privileges: no /proc/self/task/*/status (%w); the sidecar needs /proc mounted", err)
	}
	for _, path := range statuses {
		b, err := os.ReadFile(path)
		if errors.Is(err, os.ErrNotExist) {
			continue // the thread has exited
		}
		if err != nil {
			return fmt.Errorf("checking the dropped privileges: %w", err)
		}
		s, err := ParseStatus(b)
		if err != nil {
			return fmt.Errorf("checking the dropped privileges: %s: %w", path, err)
		}
		if err := s.Dropped(uid, gid); err != nil {
			return fmt.Errorf("thread %s: %w; the sidecar refuses to serve with them: check the container's securityContext "+
				"and the runtime's securebits (%s)", filepath.Base(filepath.Dir(path)), err, needs)
		}
	}
	if d, err := unix.PrctlRetInt(unix.PR_GET_DUMPABLE, 0, 0, 0, 0); err != nil || d != 0 {
		return fmt.Errorf("the sidecar is still dumpable (%d, %w) after prctl(PR_SET_DUMPABLE, 0); it refuses to serve so", d, err)
	}
	return nil
}
