// Package redirect builds, renders, installs, verifies and removes the nftables ruleset that sends a pod's IMDS
// traffic to its token sidecar. The ruleset is plain data computed from a Config (Desired); the same renderer
// prints it for --dry-run and for comparing it with what the kernel holds, so "what we would install", "what we
// installed" and "what is there now" are compared as one text.
package redirect

import (
	"fmt"
	"net/netip"

	"github.com/podidentity/podidentity/internal/defaults"
)

// Config says what to redirect where, and whose traffic is exempt.
type Config struct {
	// IMDSAddress and IMDSPort are the instance metadata endpoint apps call (IPv4 only: Azure's IMDS has no
	// IPv6 address).
	IMDSAddress netip.Addr
	IMDSPort    uint16
	// SidecarPort is the sidecar's port on 127.0.0.1 inside the pod.
	SidecarPort uint16
	// SidecarUID is the uid whose traffic passes untouched: the sidecar's, the only one that may reach the real
	// IMDS.
	SidecarUID uint32
}

// DefaultConfig returns the values the webhook injects.
func DefaultConfig() Config {
	return Config{
		IMDSAddress: netip.MustParseAddr(defaults.IMDSAddress),
		IMDSPort:    defaults.IMDSPort,
		SidecarPort: defaults.SidecarPort,
		SidecarUID:  defaults.SidecarUID,
	}
}

// Validate reports the first setting that cannot produce a working redirect, saying how to fix it.
func (c Config) Validate() error {
	switch {
	case !c.IMDSAddress.IsValid():
		return fmt.Errorf("the IMDS address is empty: pass --imds-address=%s", defaults.IMDSAddress)
	case !c.IMDSAddress.Is4():
		return fmt.Errorf("the IMDS address %s is not IPv4: the redirect handles IPv4 only (Azure's IMDS is %s)",
			c.IMDSAddress, defaults.IMDSAddress)
	case c.IMDSAddress.IsLoopback():
		return fmt.Errorf("the IMDS address %s is a loopback address: it would redirect the sidecar's own port; "+
			"pass the real IMDS address (%s)", c.IMDSAddress, defaults.IMDSAddress)
	case c.IMDSPort == 0:
		return fmt.Errorf("the IMDS port is 0: pass --imds-port=%d", defaults.IMDSPort)
	case c.SidecarPort == 0:
		return fmt.Errorf("the sidecar port is 0: pass --sidecar-port=%d", defaults.SidecarPort)
	case c.SidecarUID == 0:
		// Exempting root would exempt every container that runs as root, which is most of them.
		return fmt.Errorf("the sidecar uid is 0 (root): root's traffic would bypass the redirect; pass the "+
			"sidecar's own uid (--sidecar-uid=%d)", defaults.SidecarUID)
	}
	return nil
}
