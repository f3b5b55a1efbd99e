// Package privilege is the sidecar's start-up as root: it learns the sidecar's own cgroup v2 from the kernel,
// replaces the pod's IMDS redirect table with one that exempts that cgroup, and then drops every privilege for
// good (groups, gid, uid, capabilities; no_new_privs; not dumpable) and checks from /proc that nothing is left,
// before the sidecar serves anything.
//
// The pure parts (flags, the redirect configuration from the sidecar's own flags, reading /proc/<pid>/status)
// are here; start.go executes the steps.
package privilege

import (
	"errors"
	"flag"
	"fmt"
	"math"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"

	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/internal/redirect"
)

// Options are the sidecar's privilege flags.
type Options struct {
	// InstallExemption makes the sidecar, started as root, install the redirect exempting its own cgroup.
	InstallExemption bool
	// RunAsUID and RunAsGID are the ids a sidecar started as root switches to before serving.
	RunAsUID uint
	RunAsGID uint
}

// BindFlags registers the privilege flags on fs.
func (o *Options) BindFlags(fs *flag.FlagSet) {
	fs.BoolVar(&o.InstallExemption, "install-exemption", false, "At start, as root with CAP_NET_ADMIN: learn the sidecar's own cgroup v2 "+
		"from the kernel and replace the pod's IMDS redirect table with one exempting it (the webhook sets this in its default, cgroup, mode).")
	fs.UintVar(&o.RunAsUID, "run-as-uid", contract.SidecarUID, "uid a sidecar started as root switches to, for good, before it serves (never 0).")
	fs.UintVar(&o.RunAsGID, "run-as-gid", contract.SidecarUID, "gid a sidecar started as root switches to, for good, before it serves (never 0).")
}

// Validate says what to fix in the flags.
func (o Options) Validate() error {
	for _, id := range []struct {
		flag string
		v    uint
	}{{"--run-as-uid", o.RunAsUID}, {"--run-as-gid", o.RunAsGID}} {
		if id.v == 0 {
			return fmt.Errorf("%s=0: the sidecar must never serve as root; pass an unprivileged id (default %d)", id.flag, contract.SidecarUID)
		}
		// 2^32-1 is (uid_t)-1, which setuid and the kernel take as "no change".
		if id.v >= math.MaxUint32 {
			return fmt.Errorf("%s=%d is not a valid id; pass one below %d (default %d)", id.flag, id.v, uint32(math.MaxUint32), contract.SidecarUID)
		}
	}
	return nil
}

// RedirectConfig is the redirect the sidecar installs, derived from its own flags so that the rules send apps
// exactly where the sidecar listens and exempt its requests to exactly the IMDS it calls: the IMDS address and
// port from --imds-endpoint, the sidecar port from --listen-address. It has no exemption yet.
func RedirectConfig(imdsEndpoint, listenAddress string) (redirect.Config, error) {
	u, err := url.Parse(imdsEndpoint)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return redirect.Config{}, fmt.Errorf("--imds-endpoint %q is not an http URL such as http://%s", imdsEndpoint, contract.IMDSAddress)
	}
	addr, err := netip.ParseAddr(u.Hostname())
	if err != nil || !addr.Is4() {
		return redirect.Config{}, fmt.Errorf("--imds-endpoint %q: --install-exemption needs the IMDS as an IPv4 address, not %q: "+
			"the redirect matches addresses, not names (use http://%s)", imdsEndpoint, u.Hostname(), contract.IMDSAddress)
	}
	imdsPort := uint16(80)
	if u.Scheme == "https" {
		imdsPort = 443
	}
	if p := u.Port(); p != "" {
		n, err := strconv.ParseUint(p, 10, 16)
		if err != nil || n == 0 {
			return redirect.Config{}, fmt.Errorf("--imds-endpoint %q has port %q; give a port from 1 to 65535, or none for %d", imdsEndpoint, p, imdsPort)
		}
		imdsPort = uint16(n)
	}

	host, port, err := net.SplitHostPort(listenAddress)
	if err != nil {
		return redirect.Config{}, fmt.Errorf("--listen-address %q: %w (use 127.0.0.1:%d)", listenAddress, err, contract.SidecarPort)
	}
	// The redirect DNATs to 127.0.0.1: a sidecar listening anywhere else would never see the apps' requests.
	if host != "127.0.0.1" && host != "localhost" {
		return redirect.Config{}, fmt.Errorf("--listen-address %q: with --install-exemption the sidecar must listen on 127.0.0.1, "+
			"where the redirect sends the apps' IMDS requests (use 127.0.0.1:%d)", listenAddress, contract.SidecarPort)
	}
	sidecarPort, err := strconv.ParseUint(port, 10, 16)
	if err != nil || sidecarPort == 0 {
		return redirect.Config{}, fmt.Errorf("--listen-address %q: with --install-exemption the port must be fixed, from 1 to 65535 "+
			"(the redirect sends the apps there; use 127.0.0.1:%d)", listenAddress, contract.SidecarPort)
	}
	cfg := redirect.Config{IMDSAddress: addr, IMDSPort: imdsPort, SidecarPort: uint16(sidecarPort)}
	if err := cfg.Validate(); err != nil {
		// Validate speaks in the init container's flags; say which of the sidecar's is wrong.
		return redirect.Config{}, fmt.Errorf("--imds-endpoint %q with --listen-address %q: %w", imdsEndpoint, listenAddress, err)
	}
	return cfg, nil
}

// Status is what /proc/<pid>/status (or /proc/<pid>/task/<tid>/status) says about a thread's credentials.
type Status struct {
	// UID and GID are the real, effective, saved and filesystem ids.
	UID, GID [4]uint32
	Groups   []uint32
	// Capability sets, as bit masks.
	CapInh, CapPrm, CapEff, CapBnd, CapAmb uint64
	NoNewPrivs                             bool
}

// statusFields are the fields ParseStatus needs; a kernel without one of them (CapAmb: 4.3, NoNewPrivs: 4.10)
// is older than the 5.13 the cgroup exemption needs anyway.
var statusFields = []string{"Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs"}

// ParseStatus reads the credential fields of a /proc status file.
func ParseStatus(b []byte) (Status, error) {
	var s Status
	seen := map[string]bool{}
	for _, line := range strings.Split(string(b), "\n") {
		key, value, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		value = strings.TrimSpace(value)
		var err error
		switch key {
		case "Uid":
			s.UID, err = ids4(value)
		case "Gid":
			s.GID, err = ids4(value)
		case "Groups":
			for _, f := range strings.Fields(value) {
				var g uint64
				if g, err = strconv.ParseUint(f, 10, 32); err != nil {
					break
				}
				s.Groups = append(s.Groups, uint32(g))
			}
		case "CapInh":
			s.CapInh, err = strconv.ParseUint(value, 16, 64)
		case "CapPrm":
			s.CapPrm, err = strconv.ParseUint(value, 16, 64)
		case "CapEff":
			s.CapEff, err = strconv.ParseUint(value, 16, 64)
		case "CapBnd":
			s.CapBnd, err = strconv.ParseUint(value, 16, 64)
		case "CapAmb":
			s.CapAmb, err = strconv.ParseUint(value, 16, 64)
		case "NoNewPrivs":
			switch value {
			case "0", "1":
				s.NoNewPrivs = value == "1"
			default:
				err = errors.New("not 0 or 1")
			}
		default:
			continue
		}
		if err != nil {
			return Status{}, fmt.Errorf("/proc status field %s: %q: %w", key, value, err)
		}
		seen[key] = true
	}
	var missing []string
	for _, f := range statusFields {
		if !seen[f] {
			missing = append(missing, f)
		}
	}
	if len(missing) > 0 {
		return Status{}, fmt.Errorf("/proc status lacks %s: the kernel is too old for the sidecar (Linux 5.13 or newer is needed)",
			strings.Join(missing, ", "))
	}
	return s, nil
}

func ids4(v string) ([4]uint32, error) {
	var out [4]uint32
	f := strings.Fields(v)
	if len(f) != 4 {
		return out, fmt.Errorf("want 4 ids, got %d", len(f))
	}
	for i, s := range f {
		n, err := strconv.ParseUint(s, 10, 32)
		if err != nil {
			return out, err
		}
		out[i] = uint32(n)
	}
	return out, nil
}

// Capabilities the start-up uses (linux/capability.h).
const (
	capSetGID   = 6
	capSetUID   = 7
	capNetAdmin = 12
)

// MissingCapabilities names the capabilities a sidecar started as root lacks in its effective set for what it
// must do: SETGID and SETUID to switch ids, NET_ADMIN too to install the exemption. Checked before anything is
// changed, so that a failure leaves the pod's table as the init container wrote it.
func (s Status) MissingCapabilities(installExemption bool) []string {
	type capability struct {
		name string
		bit  uint
	}
	need := []capability{{"SETGID", capSetGID}, {"SETUID", capSetUID}}
	if installExemption {
		need = append([]capability{{"NET_ADMIN", capNetAdmin}}, need...)
	}
	var missing []string
	for _, c := range need {
		if s.CapEff&(1<<c.bit) == 0 {
			missing = append(missing, c.name)
		}
	}
	return missing
}

// Dropped checks that the thread has nothing left to give up: every uid is uid, every gid is gid, no
// supplementary group, no capability in the inheritable, permitted, effective or ambient set, and
// no_new_privs set. The error lists every leftover. (The bounding set is not checked: only CAP_SETPCAP could
// shrink it, and with no_new_privs and no permitted capability it can never be used.)
func (s Status) Dropped(uid, gid uint32) error {
	var left []string
	for i, name := range []string{"real", "effective", "saved", "filesystem"} {
		if s.UID[i] != uid {
			left = append(left, fmt.Sprintf("%s uid %d (want %d)", name, s.UID[i], uid))
		}
		if s.GID[i] != gid {
			left = append(left, fmt.Sprintf("%s gid %d (want %d)", name, s.GID[i], gid))
		}
	}
	if len(s.Groups) > 0 {
		left = append(left, fmt.Sprintf("supplementary groups %v (want none)", s.Groups))
	}
	for _, c := range []struct {
		name string
		set  uint64
	}{{"CapInh", s.CapInh}, {"CapPrm", s.CapPrm}, {"CapEff", s.CapEff}, {"CapAmb", s.CapAmb}} {
		if c.set != 0 {
			left = append(left, fmt.Sprintf("%s %016x (want 0)", c.name, c.set))
		}
	}
	if !s.NoNewPrivs {
		left = append(left, "NoNewPrivs 0 (want 1)")
	}
	if len(left) > 0 {
		return fmt.Errorf("privileges left after dropping them: %s", strings.Join(left, ", "))
	}
	return nil
}
