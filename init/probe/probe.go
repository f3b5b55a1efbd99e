// Package probe checks from inside a pod, without any privilege, that the pod's IMDS redirect is in place: it
// sends traffic and looks where it lands. CNI mode's injected init container runs it, since an unprivileged
// container can neither read nor write nftables (netlink's nf_tables needs CAP_NET_ADMIN); what it can do is
// what the app will do: connect.
package probe

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"syscall"
	"time"
)

// Config says what to probe: the IMDS address and port the app calls, another port of that address, and the
// sidecar's loopback port the redirect must send the first to.
type Config struct {
	IMDS        netip.AddrPort
	OtherPort   uint16
	SidecarPort uint16
	// Timeout bounds each step (default 2 s).
	Timeout time.Duration
}

// Check verifies that a connection to cfg.IMDS arrives on 127.0.0.1:SidecarPort (the redirect) and that a
// connection to another port of the IMDS address is refused at once (the guard). It must run before the
// sidecar listens on its port (it takes the port itself). The error says what is missing and what to do.
func Check(cfg Config) error {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 2 * time.Second
	}
	l, err := net.Listen("tcp4", net.JoinHostPort("127.0.0.1", strconv.Itoa(int(cfg.SidecarPort))))
	if err != nil {
		return fmt.Errorf("listening on the sidecar's port 127.0.0.1:%d to receive the probe: %w (is something else of the pod using it?)", cfg.SidecarPort, err)
	}
	defer l.Close()
	if err := redirected(l, cfg); err != nil {
		return err
	}
	return guarded(cfg)
}

// redirected dials the IMDS address and waits for a nonce sent on that connection to come out of the sidecar
// port's listener.
func redirected(l net.Listener, cfg Config) error {
	nonce := make([]byte, 16)
	if _, err := rand.Read(nonce); err != nil {
		return err
	}
	got := make(chan []byte, 1)
	go func() {
		// One accepted connection is enough; anything else (nothing, or a stray connection) leaves got empty.
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(cfg.Timeout))
		buf := make([]byte, len(nonce))
		if _, err := io.ReadFull(c, buf); err == nil {
			got <- buf
		}
	}()
	c, err := net.DialTimeout("tcp4", cfg.IMDS.String(), cfg.Timeout)
	if err != nil {
		return fmt.Errorf("the redirect is missing: connecting to %s failed (%v) instead of reaching 127.0.0.1:%d; "+
			"the podidentity CNI plugin did not program this pod's network namespace: check that the "+
			"podidentity-node DaemonSet runs on this node and its logs", cfg.IMDS, err, cfg.SidecarPort)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(cfg.Timeout))
	if _, err := c.Write(nonce); err != nil {
		return fmt.Errorf("the redirect is missing: writing to %s: %w", cfg.IMDS, err)
	}
	select {
	case b := <-got:
		if bytes.Equal(b, nonce) {
			return nil
		}
	case <-time.After(cfg.Timeout):
	}
	return fmt.Errorf("the redirect is missing: a connection to %s did not arrive at 127.0.0.1:%d, so this pod would "+
		"reach the node's IMDS directly; the podidentity CNI plugin did not program this pod's network namespace: "+
		"check that the podidentity-node DaemonSet runs on this node and its logs", cfg.IMDS, cfg.SidecarPort)
}

// guarded expects a connection to another port of the IMDS address to be refused: rejected by the guard rule
// (EHOSTUNREACH, ICMP admin-prohibited) or reset.
func guarded(cfg Config) error {
	other := netip.AddrPortFrom(cfg.IMDS.Addr(), cfg.OtherPort)
	c, err := net.DialTimeout("tcp4", other.String(), cfg.Timeout)
	if err == nil {
		c.Close()
		return fmt.Errorf("the guard is missing: %s accepted a connection; only the token sidecar may reach the IMDS "+
			"address; check the podidentity CNI plugin and the podidentity-node DaemonSet on this node", other)
	}
	if errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ECONNREFUSED) {
		return nil
	}
	return fmt.Errorf("the guard is missing: connecting to %s failed with %v, not the immediate refusal the guard "+
		"rule gives (no route to host); check the podidentity CNI plugin on this node", other, err)
}
