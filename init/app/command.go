// Package app is podidentity-init's command line: flags (ParseFlags), modes (Run) and exit codes around package
// redirect.
package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"time"

	"github.com/go-logr/logr/funcr"

	"github.com/podidentity/podidentity/init/probe"
	"github.com/podidentity/podidentity/internal/cmdline"
	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/internal/redirect"
	"github.com/podidentity/podidentity/internal/version"
)

// Exit codes (internal/cmdline's).
const (
	ExitOK     = cmdline.ExitOK
	ExitFailed = cmdline.ExitFailed // the rules could not be installed, verified or removed: the pod must not start
	ExitUsage  = cmdline.ExitUsage  // bad flags
)

const programName = "podidentity-init"

// mode is what one run does.
type mode string

const (
	modeInstall mode = "install"
	modeDryRun  mode = "dry-run"
	modeVerify  mode = "verify"
	modeCleanup mode = "cleanup"
	// modeTraffic checks the redirect by sending traffic, without privileges (CNI mode's init container).
	modeTraffic mode = "verify-traffic"
)

// Options are the parsed command line (ParseFlags); Run runs them.
type Options struct {
	cfg  redirect.Config
	mode mode
	// fence installs the fence of a pod without a sidecar instead of the redirect.
	fence bool
	// sidecarExempts: the table exempts nobody, and the sidecar adds its own cgroup's exemption when it
	// starts (--exemption=cgroup); --verify then accepts that exemption.
	sidecarExempts bool
	// stdout gets the dry-run plan; stderr the logs.
	stdout, stderr io.Writer
}

// Exemption kinds of --exemption.
const (
	ExemptionCgroup = "cgroup"
	ExemptionUID    = "uid"
)

// ParseFlags parses args (without the program name) into Options whose output is the process's stdout and
// stderr. It prints what is wrong with them to stderr (for a wrong flag, the usage too); -h prints the usage.
func ParseFlags(args []string) (Options, error) {
	return parseFlags(args, os.Stdout, os.Stderr)
}

func parseFlags(args []string, stdout, stderr io.Writer) (Options, error) {
	opts, err := parse(args, stderr)
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(stderr, "%s: %v\n", programName, err)
		}
		return Options{}, err
	}
	opts.stdout, opts.stderr = stdout, stderr
	return opts, nil
}

// Run runs podidentity-init in the caller's network namespace, to completion (nothing it does waits on ctx).
// The dry-run plan goes to stdout; logs go to stderr. Its error says the pod must not start.
func Run(_ context.Context, opts Options) error {
	log := funcr.NewJSON(func(obj string) { fmt.Fprintln(opts.stderr, obj) }, funcr.Options{}).WithName(programName)

	if opts.mode == modeDryRun {
		fmt.Fprint(opts.stdout, plan(opts))
		return nil
	}
	if opts.mode == modeTraffic {
		// No nftables at all: an unprivileged container cannot read them; it checks where its traffic goes.
		started := time.Now()
		err := probe.Check(probe.Config{IMDS: netip.AddrPortFrom(opts.cfg.IMDSAddress, opts.cfg.IMDSPort), OtherPort: otherPort(opts.cfg.IMDSPort), SidecarPort: opts.cfg.SidecarPort})
		if err != nil {
			log.Error(err, "failed", "mode", opts.mode)
			return failed(opts.mode, err)
		}
		log.Info("done", "mode", opts.mode, "result", "redirect and guard in place", "elapsed", time.Since(started).String(), "version", version.Version)
		return nil
	}
	started := time.Now()
	result, err := execute(opts)
	if err != nil {
		log.Error(err, "failed", "mode", opts.mode)
		return failed(opts.mode, err)
	}
	log.Info("done", "mode", opts.mode, "result", result, "elapsed", time.Since(started).String(),
		"version", version.Version, "imds", netip.AddrPortFrom(opts.cfg.IMDSAddress, opts.cfg.IMDSPort).String(),
		"sidecarPort", opts.cfg.SidecarPort, "exempt", opts.cfg.Exemption.String(), "fence", opts.fence)
	return nil
}

// failed is Run's error: the mode that failed and why, and that the pod must not start.
func failed(m mode, err error) error {
	return fmt.Errorf("%s FAILED; the pod must not start without the IMDS redirect:\n%w", m, err)
}

// plan is the --dry-run output: a header naming the settings, then the ruleset exactly as it would be written.
func plan(opts Options) string {
	imds := netip.AddrPortFrom(opts.cfg.IMDSAddress, opts.cfg.IMDSPort)
	if opts.fence {
		return fmt.Sprintf("# %s plan: fence %s off (a pod without a token sidecar); nothing is changed by --dry-run\n",
			programName, opts.cfg.IMDSAddress) + redirect.Render(redirect.Fence(opts.cfg))
	}
	exempt := "exempt " + opts.cfg.Exemption.String()
	if opts.sidecarExempts {
		exempt = "exempt nobody until the sidecar adds its own cgroup"
	}
	return fmt.Sprintf("# %s plan: redirect %s to 127.0.0.1:%d, %s; nothing is changed by --dry-run\n",
		programName, imds, opts.cfg.SidecarPort, exempt) + redirect.Render(redirect.Desired(opts.cfg))
}

func parse(args []string, stderr io.Writer) (Options, error) {
	def := redirect.DefaultConfig()
	fs := flag.NewFlagSet(programName, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		sidecarPort = fs.Uint("sidecar-port", uint(def.SidecarPort), "the token sidecar's port on 127.0.0.1")
		exemption   = fs.String("exemption", ExemptionCgroup, "how the sidecar's own traffic passes: cgroup (the table exempts nobody; the sidecar exempts its own cgroup when it starts) or uid (exempt --sidecar-uid, weaker: any container able to become that uid bypasses the redirect)")
		sidecarUID  = fs.Uint("sidecar-uid", contract.SidecarUID, "with --exemption=uid: the sidecar's uid, whose traffic is not redirected")
		fence       = fs.Bool("fence", false, "install the fence of a pod without a token sidecar (nothing may reach the IMDS address) instead of the redirect")
		imdsAddress = fs.String("imds-address", def.IMDSAddress.String(), "the IMDS IPv4 address to redirect")
		imdsPort    = fs.Uint("imds-port", uint(def.IMDSPort), "the IMDS TCP port to redirect")
		dryRun      = fs.Bool("dry-run", false, "print the ruleset that would be installed and change nothing")
		verify      = fs.Bool("verify", false, "check that the live ruleset equals the desired one; exit 1 on drift")
		cleanup     = fs.Bool("cleanup", false, "remove the project's table (and nothing else)")
		traffic     = fs.Bool("verify-traffic", false, "without privileges: check that a connection to the IMDS address arrives at the sidecar's port and another port of it is refused (CNI mode, where a node plugin installs the rules); exit 1 otherwise")
	)
	if err := fs.Parse(args); err != nil {
		return Options{}, err
	}
	if fs.NArg() > 0 {
		return Options{}, fmt.Errorf("unexpected arguments %q: all settings are flags (see --help)", fs.Args())
	}
	opts := Options{mode: modeInstall}
	modes := 0
	for _, m := range []struct {
		set  bool
		mode mode
	}{{*dryRun, modeDryRun}, {*verify, modeVerify}, {*cleanup, modeCleanup}, {*traffic, modeTraffic}} {
		if m.set {
			opts.mode = m.mode
			modes++
		}
	}
	if modes > 1 {
		return Options{}, errors.New("--dry-run, --verify, --verify-traffic and --cleanup exclude each other: pass at most one")
	}
	for _, p := range []struct {
		name  string
		value uint
	}{{"sidecar-port", *sidecarPort}, {"imds-port", *imdsPort}} {
		if p.value > 65535 {
			return Options{}, fmt.Errorf("--%s=%d is not a port: use 1-65535", p.name, p.value)
		}
	}
	var ex redirect.Exemption
	switch *exemption {
	case ExemptionCgroup:
		opts.sidecarExempts = !*fence
	case ExemptionUID:
		if *sidecarUID == 0 || *sidecarUID > 1<<32-1 {
			// Exempting root would exempt every container that runs as root, which is most of them.
			return Options{}, fmt.Errorf("--sidecar-uid=%d: use the sidecar's own non-root uid (%d)", *sidecarUID, contract.SidecarUID)
		}
		ex.UID = uint32(*sidecarUID)
	default:
		return Options{}, fmt.Errorf("--exemption=%q: use cgroup or uid", *exemption)
	}
	opts.fence = *fence
	addr, err := netip.ParseAddr(*imdsAddress)
	if err != nil {
		return Options{}, fmt.Errorf("--imds-address=%q is not an IP address (the default is %s)", *imdsAddress,
			def.IMDSAddress)
	}
	opts.cfg = redirect.Config{
		IMDSAddress: addr,
		IMDSPort:    uint16(*imdsPort),
		SidecarPort: uint16(*sidecarPort),
		Exemption:   ex,
	}
	if err := opts.cfg.Validate(); err != nil {
		return Options{}, err
	}
	return opts, nil
}

// otherPort is a port of the IMDS address the guard must refuse: 443 (as IMDS has none), or 444 when the IMDS
// port is 443.
func otherPort(imdsPort uint16) uint16 {
	if imdsPort == 443 {
		return 444
	}
	return 443
}

// execute performs a mode against the kernel and returns a short word for the log.
func execute(opts Options) (string, error) {
	k, err := redirect.NewKernel(0)
	if err != nil {
		return "", err
	}
	defer func() { _ = k.Close() }()
	want := redirect.Desired(opts.cfg)
	if opts.fence {
		want = redirect.Fence(opts.cfg)
	}
	switch opts.mode {
	case modeInstall:
		outcome, err := k.Apply(want)
		return string(outcome), err
	case modeVerify:
		if opts.sidecarExempts {
			// The sidecar may have added its own cgroup's exemption since this table was written.
			live, _, err := k.Live()
			if err != nil {
				return "", err
			}
			if ex := redirect.ExemptionOf(live); ex.Cgroup.ID != 0 {
				want = redirect.Desired(opts.cfg.WithExemption(redirect.Exemption{Cgroup: ex.Cgroup}))
			}
		}
		return "verified", k.Verify(want)
	case modeCleanup:
		removed, err := k.Cleanup()
		if !removed {
			return "nothing to remove", err
		}
		return "removed", err
	}
	return "", fmt.Errorf("unknown mode %q", opts.mode)
}
