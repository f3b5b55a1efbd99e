package app

import (
	"context"
	"errors"
	"net/http"
	"sync/atomic"
	"time"
)

// Drain lets a stopping replica keep answering admissions while it leaves the Service. The API server reuses
// its keep-alive connections to a webhook pod whatever the Service's endpoints say, so a replica that closes
// its port at SIGTERM breaks the admission being written on one of them ("EOF", "broken pipe") and that pod
// creation fails. While draining, every answer carries "Connection: close": each open connection ends cleanly
// after its current answer and the API server dials again, through the Service, to a replica that stays.
type Drain struct{ draining atomic.Bool }

// Begin switches to draining; it cannot be undone (the process is on its way out).
func (d *Drain) Begin() { d.draining.Store(true) }

// Draining reports whether Begin was called.
func (d *Drain) Draining() bool { return d.draining.Load() }

// Wrap returns h answering with "Connection: close" once draining.
func (d *Drain) Wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if d.Draining() {
			// net/http closes the connection after writing a response that carries this header.
			w.Header().Set("Connection", "close")
		}
		h.ServeHTTP(w, r)
	})
}

// ReadyCheck fails while draining, so that nothing new is routed to this replica.
func (d *Drain) ReadyCheck(*http.Request) error {
	if d.Draining() {
		return errors.New("shutting down: draining connections")
	}
	return nil
}

// RunDraining runs start (a manager's Start) until ctx is done, then drains for delay before stopping it: the
// replica keeps serving, closing each connection after its answer, while the Service and the API server move
// to the other replicas. It returns start's error.
func RunDraining(ctx context.Context, start func(context.Context) error, d *Drain, delay time.Duration) error {
	runCtx, stop := context.WithCancel(context.Background())
	defer stop()
	done := make(chan error, 1)
	go func() { done <- start(runCtx) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	d.Begin()
	timer := time.NewTimer(delay)
	defer timer.Stop()
	select {
	case err := <-done:
		return err
	case <-timer.C:
	}
	stop()
	return <-done
}
