package loopguard

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
)

// Probe sends one request to the upstream IMDS carrying the guard's nonce. It returns nil for any HTTP answer
// and an error when no answer came (connection refused, reset, timeout).
type Probe func(ctx context.Context) error

// CheckOptions configure a Check. Zero durations take the defaults noted.
type CheckOptions struct {
	// Probe is the request (upstream.Client.Probe).
	Probe Probe
	// Guard is the token server's guard: a probe during which it recorded a loop came back to the sidecar.
	Guard *Guard
	// Upstream names the upstream in reasons and logs (the --imds-endpoint).
	Upstream string
	Log      logr.Logger
	// InitialBackoff and MaxBackoff space the probes while the upstream is not confirmed (defaults 200 ms and
	// 5 s, doubling): fast at start, and soon after a node agent installs the exemption, without a request
	// every 200 ms for as long as it does not.
	InitialBackoff time.Duration
	MaxBackoff     time.Duration
	// Timeout bounds one probe (default 5 s).
	Timeout time.Duration
	// LogInterval is the least time between two "not confirmed" log lines (default 30 s).
	LogInterval time.Duration
	// Now and Sleep are the clock and the wait between probes; tests replace them.
	Now   func() time.Time
	Sleep func(ctx context.Context, d time.Duration) error
}

// Check confirms once, for the life of the process, that the sidecar's requests reach the real IMDS: the
// first probe that gets an HTTP answer without coming back to the sidecar's own server confirms it. Until then
// Ready reports why not. It is safe for concurrent use.
type Check struct {
	opts      CheckOptions
	confirmed atomic.Bool
	reason    atomic.Pointer[string]
}

// NewCheck returns a check that has not probed yet.
func NewCheck(opts CheckOptions) *Check {
	if opts.InitialBackoff <= 0 {
		opts.InitialBackoff = 200 * time.Millisecond
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = 5 * time.Second
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 5 * time.Second
	}
	if opts.LogInterval <= 0 {
		opts.LogInterval = DefaultLogInterval
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Sleep == nil {
		opts.Sleep = sleep
	}
	c := &Check{opts: opts}
	initial := fmt.Sprintf("the sidecar has not reached the node's IMDS (%s) yet: first check under way", opts.Upstream)
	c.reason.Store(&initial)
	return c
}

// Ready reports whether the upstream has been confirmed and, when it has not, why.
func (c *Check) Ready() (bool, string) {
	if c.confirmed.Load() {
		return true, ""
	}
	return false, *c.reason.Load()
}

// Run probes until the upstream is confirmed or ctx ends.
func (c *Check) Run(ctx context.Context) {
	start := c.opts.Now()
	backoff := c.opts.InitialBackoff
	var lastLog time.Time
	for attempt := 1; ; attempt++ {
		reason := c.once(ctx)
		if reason == "" {
			c.confirmed.Store(true)
			c.opts.Log.Info("node IMDS reachable: the sidecar's requests reach it, not the sidecar itself",
				"imds", c.opts.Upstream, "attempts", attempt, "after", c.opts.Now().Sub(start).Round(time.Millisecond).String())
			return
		}
		if ctx.Err() != nil {
			return
		}
		c.reason.Store(&reason)
		if now := c.opts.Now(); lastLog.IsZero() || now.Sub(lastLog) >= c.opts.LogInterval {
			lastLog = now
			c.opts.Log.Info("not ready: node IMDS not confirmed", "imds", c.opts.Upstream, "reason", reason,
				"attempts", attempt, "nextLogIn", c.opts.LogInterval.String())
		}
		if c.opts.Sleep(ctx, backoff) != nil {
			return
		}
		backoff = min(backoff*2, c.opts.MaxBackoff)
	}
}

// once sends one probe; the empty reason means confirmed.
func (c *Check) once(ctx context.Context) string {
	ctx, cancel := context.WithTimeout(ctx, c.opts.Timeout)
	defer cancel()
	before := c.opts.Guard.Loops()
	err := c.opts.Probe(ctx)
	// The server records a looped request before answering it, so the count is up by the time the answer is.
	if c.opts.Guard.Loops() != before {
		return Description
	}
	if err != nil {
		return fmt.Sprintf("the node's IMDS (%s) did not answer the sidecar: %v; "+
			"check that the node's IMDS is reachable from pods and that --imds-endpoint is right", c.opts.Upstream, err)
	}
	return ""
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
