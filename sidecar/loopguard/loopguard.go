// Package loopguard keeps the sidecar from serving its own upstream requests, and tells when the node's IMDS
// is really reachable.
//
// The pod's redirect sends every TCP connection to the IMDS address to the sidecar, except the sidecar's own
// (the exemption). Until the exemption is installed (by the sidecar itself with --install-exemption, or later
// by a node agent), the sidecar's requests to IMDS come back to its own token server. Each sidecar process
// therefore tags its upstream requests with a random nonce: a request that arrives carrying it is the sidecar's
// own and is answered with 508 Loop Detected at once, never fetched for or proxied again. The Check probes the
// upstream until an answer arrives that did not come back this way; until then the sidecar is not ready.
package loopguard

import (
	"crypto/rand"
	"net/http"
	"sync/atomic"
	"time"
)

// Header carries the nonce on every request the sidecar sends to IMDS. It is in canonical form, so the map
// lookup in Own needs no canonicalisation.
const Header = "X-Podidentity-Sidecar"

// Code is the IMDS-style error code of the 508 answer to a looped request.
const Code = "loop_detected"

// Description is the 508 answer's error_description and the readiness reason while requests loop. It names the
// cause and where to look.
const Description = "the pod identity sidecar's own request to the node's IMDS came back to it through the pod's " +
	"IMDS redirect: the redirect's exemption for the sidecar is not installed. With --install-exemption the sidecar " +
	"installs it at start (see its start-up log); without it, the init container (uid exemption) or the node agent " +
	"must install it. In the pod's network namespace, `nft list table inet podidentity` must show, first in chain " +
	"imds-redirect, a rule accepting the sidecar's cgroup (socket cgroupv2) or uid (meta skuid)"

// Guard recognises the sidecar's own requests. It is safe for concurrent use.
type Guard struct {
	nonce string
	loops atomic.Uint64
	// lastLog is when a looped request was last logged (Unix nanoseconds), for Record's rate limit.
	lastLog     atomic.Int64
	logInterval time.Duration
}

// DefaultLogInterval is how often, at most, a looped request is worth a log line.
const DefaultLogInterval = 30 * time.Second

// New returns a guard with a fresh random nonce: unknown to every other process, so that only this process's
// own requests match it.
func New() *Guard {
	return WithNonce(rand.Text())
}

// WithNonce returns a guard for a given nonce (tests).
func WithNonce(nonce string) *Guard {
	return &Guard{nonce: nonce, logInterval: DefaultLogInterval}
}

// Nonce is the value the upstream client sends in Header.
func (g *Guard) Nonce() string { return g.nonce }

// Own reports whether a request carries this process's nonce. It runs for every request, the token hot path
// included: one map lookup and a string compare.
func (g *Guard) Own(h http.Header) bool {
	for _, v := range h[Header] {
		if v == g.nonce {
			return true
		}
	}
	return false
}

// Record counts a looped request. It must be called before the request is answered, so that the sender,
// once it has the answer, sees the count. log is true when the caller should log it: at most once per
// interval, so that a probe loop or a busy app does not flood the log.
func (g *Guard) Record(now time.Time) (log bool) {
	g.loops.Add(1)
	last := g.lastLog.Load()
	if last != 0 && now.UnixNano()-last < int64(g.logInterval) {
		return false
	}
	return g.lastLog.CompareAndSwap(last, now.UnixNano())
}

// Loops is the number of looped requests seen so far.
func (g *Guard) Loops() uint64 { return g.loops.Load() }
