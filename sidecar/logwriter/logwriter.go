// Package logwriter batches the sidecar's log lines into few write syscalls. The audit log has one line per
// token issued; written one by one, each line is a write syscall on the container's stderr pipe, which under
// load costs more CPU than answering the request. A Writer keeps the lines in memory for at most a short
// interval, or until a size bound, and then writes them all at once, in order.
//
// Nothing is dropped: a caller that finds the buffer full writes it out itself (back-pressure, as an unbuffered
// writer would), and Close writes what is left. Lines still buffered when the process is killed (SIGKILL, OOM)
// are lost; that is at most one interval of lines.
package logwriter

import (
	"io"
	"sync"
	"time"
)

// Defaults of New.
const (
	DefaultInterval = 50 * time.Millisecond
	DefaultLimit    = 64 << 10
)

// Writer is an io.Writer that batches writes to an underlying writer. It is safe for concurrent use; each Write
// is kept whole and in order (slog handlers write one whole line per call).
type Writer struct {
	out      io.Writer
	interval time.Duration
	limit    int

	// flushMu serializes writes to out, so that batches leave in the order they were filled.
	flushMu sync.Mutex

	mu     sync.Mutex
	buf    []byte
	spare  []byte
	timer  *time.Timer
	armed  bool
	closed bool
	err    error // the first error from out, reported by Flush and Close
}

// New returns a Writer to out that writes at most interval after a line arrives (DefaultInterval if zero),
// or as soon as limit bytes are waiting (DefaultLimit if zero).
func New(out io.Writer, interval time.Duration, limit int) *Writer {
	if interval <= 0 {
		interval = DefaultInterval
	}
	if limit <= 0 {
		limit = DefaultLimit
	}
	w := &Writer{out: out, interval: interval, limit: limit}
	w.timer = time.AfterFunc(time.Hour, func() { _ = w.flush(true) })
	w.timer.Stop()
	return w
}

// Write buffers p. It never fails: an error of the underlying writer is returned by Flush and Close.
func (w *Writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return w.writeThrough(p)
	}
	w.buf = append(w.buf, p...)
	full := len(w.buf) >= w.limit
	if !full && !w.armed {
		w.armed = true
		w.timer.Reset(w.interval)
	}
	w.mu.Unlock()
	if full {
		_ = w.flush(false)
	}
	return len(p), nil
}

// writeThrough writes p directly, after Close.
func (w *Writer) writeThrough(p []byte) (int, error) {
	w.flushMu.Lock()
	defer w.flushMu.Unlock()
	return w.out.Write(p)
}

// Flush writes everything buffered so far.
func (w *Writer) Flush() error {
	return w.flush(false)
}

// flush writes the buffered lines; fromTimer says the timer fired (and so is no longer armed).
func (w *Writer) flush(fromTimer bool) error {
	w.flushMu.Lock()
	defer w.flushMu.Unlock()
	w.mu.Lock()
	batch := w.buf
	w.buf = w.spare[:0]
	if fromTimer || len(batch) > 0 {
		// The batch being taken includes whatever armed the timer; a later line re-arms it.
		w.armed = false
		w.timer.Stop()
	}
	w.mu.Unlock()
	if len(batch) > 0 {
		if _, err := w.out.Write(batch); err != nil {
			w.mu.Lock()
			if w.err == nil {
				w.err = err
			}
			w.mu.Unlock()
		}
	}
	w.mu.Lock()
	// Keep one spare buffer for the next swap, unless a burst made it large: memory goes back to normal.
	if cap(batch) <= 2*w.limit {
		w.spare = batch[:0]
	} else {
		w.spare = nil
	}
	err := w.err
	w.mu.Unlock()
	return err
}

// Close writes what is buffered; later writes go straight to the underlying writer.
func (w *Writer) Close() error {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
	return w.flush(false)
}
