// Package redirect builds, renders, installs, verifies and removes the nftables ruleset that sends a pod's IMDS
// traffic to its token sidecar (or, for a pod without a sidecar, fences IMDS off). The ruleset is plain data
// computed from a Config (Desired, Fence); the same renderer prints it for --dry-run and for comparing it with
// what the kernel holds, so "what we would install", "what we installed" and "what is there now" are compared
// as one text.
package redirect

import (
	"fmt"
	"net/netip"

	"github.com/podidentity/podidentity/internal/contract"
)

// Config says what to redirect where, and whose traffic is exempt.
type Config struct {
	// IMDSAddress and IMDSPort are the instance metadata endpoint apps call (IPv4 only: Azure's IMDS has no
	// IPv6 address).
	IMDSAddress netip.Addr
	IMDSPort    uint16
	// SidecarPort is the sidecar's port on 127.0.0.1 inside the pod.
	SidecarPort uint16
	// Exemption is whose traffic passes untouched to the real IMDS: the sidecar's. The zero value exempts
	// nobody, which is what the init container installs when the sidecar exempts its own cgroup once it runs.
	Exemption Exemption
}

// Exemption identifies the token sidecar's sockets to the rules. At most one of its fields is set.
type Exemption struct {
	// Cgroup exempts sockets created by processes of one cgroup v2: the sidecar container's. A process of
	// another container cannot create a socket in that cgroup (it would have to join it, and the container's
	// cgroup filesystem is read-only), whatever its uid or capabilities short of CAP_SYS_ADMIN.
	Cgroup Cgroup
	// UID exempts sockets owned by this uid. Any container that can become the uid (root with the runtime's
	// default CAP_SETUID, or an image whose USER it is) then bypasses the redirect: kept only for nodes whose
	// kernel cannot match cgroups (init/README.md, "The sidecar's exemption").
	UID uint32
}

// Cgroup is a cgroup v2 as `socket cgroupv2` matches it: the socket's cgroup's ancestor at Level (0 is the
// root) must have this ID (the cgroup directory's inode number on cgroup2fs).
type Cgroup struct {
	ID    uint64
	Level uint32
}

// IsZero reports whether the exemption exempts nobody.
func (e Exemption) IsZero() bool { return e.Cgroup.ID == 0 && e.UID == 0 }

func (e Exemption) String() string {
	switch {
	case e.Cgroup.ID != 0:
		return fmt.Sprintf("the sidecar's cgroup (id %d, level %d)", e.Cgroup.ID, e.Cgroup.Level)
	case e.UID != 0:
		return fmt.Sprintf("uid %d (the sidecar)", e.UID)
	}
	return "nobody"
}

// RootCgroupID is the id of the cgroup v2 root (its directory's inode number): the cgroup of every process that
// has no other.
const RootCgroupID = 1

// MaxCgroupLevel bounds the cgroup depth the rules handle (the kernel's own limit is 255).
const MaxCgroupLevel = 32

// DefaultConfig returns the values the webhook injects: no exemption in the table the init container writes;
// the sidecar adds its own cgroup's when it starts.
func DefaultConfig() Config {
	return Config{
		IMDSAddress: netip.MustParseAddr(contract.IMDSAddress),
		IMDSPort:    contract.IMDSPort,
		SidecarPort: contract.SidecarPort,
	}
}

// WithExemption returns c exempting e.
func (c Config) WithExemption(e Exemption) Config {
	c.Exemption = e
	return c
}

// Validate reports the first setting that cannot produce a working redirect, saying how to fix it.
func (c Config) Validate() error {
	switch {
	case !c.IMDSAddress.IsValid():
		return fmt.Errorf("the IMDS address is empty: pass --imds-address=%s", contract.IMDSAddress)
	case !c.IMDSAddress.Is4():
		return fmt.Errorf("the IMDS address %s is not IPv4: the redirect handles IPv4 only (Azure's IMDS is %s)",
			c.IMDSAddress, contract.IMDSAddress)
	case c.IMDSAddress.IsLoopback():
		return fmt.Errorf("the IMDS address %s is a loopback address: it would redirect the sidecar's own port; "+
			"pass the real IMDS address (%s)", c.IMDSAddress, contract.IMDSAddress)
	case c.IMDSPort == 0:
		return fmt.Errorf("the IMDS port is 0: pass --imds-port=%d", contract.IMDSPort)
	case c.SidecarPort == 0:
		return fmt.Errorf("the sidecar port is 0: pass --sidecar-port=%d", contract.SidecarPort)
	case c.Exemption.Cgroup.ID != 0 && c.Exemption.UID != 0:
		return fmt.Errorf("both a cgroup and a uid are exempt: exempt the sidecar one way only")
	case c.Exemption.Cgroup.ID == RootCgroupID:
		return fmt.Errorf("the exempt cgroup is the root cgroup (id %d): every process of the node would bypass the redirect", RootCgroupID)
	case c.Exemption.Cgroup.Level > MaxCgroupLevel:
		return fmt.Errorf("the exempt cgroup is at level %d, deeper than the %d the rules handle", c.Exemption.Cgroup.Level, MaxCgroupLevel)
	}
	return nil
}
