// Package periodic runs a pass at once, then every Interval, and early after Kick (at most every MinGap):
// the schedule of the assigner's audits, which read every pod from the cache and so must not run per event.
package periodic

import (
	"context"
	"time"
)

// Loop is one schedule. Create it with New; Kick is safe for concurrent use.
type Loop struct {
	interval, minGap time.Duration
	kick             chan struct{}
}

// New returns a loop with the given interval and minimum gap between a pass and a kicked one.
func New(interval, minGap time.Duration) *Loop {
	return &Loop{interval: interval, minGap: minGap, kick: make(chan struct{}, 1)}
}

// Kick asks for an early pass; it never blocks, and kicks while one is pending are merged.
func (l *Loop) Kick() {
	select {
	case l.kick <- struct{}{}:
	default:
	}
}

// Run calls pass at once, then every interval and after kicks (no sooner than minGap after the previous
// pass began), until ctx ends.
func (l *Loop) Run(ctx context.Context, pass func(context.Context)) {
	t := time.NewTicker(l.interval)
	defer t.Stop()
	for {
		last := time.Now()
		pass(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-l.kick:
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Until(last.Add(l.minGap))):
			}
		}
	}
}
