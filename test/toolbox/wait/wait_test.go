package wait

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"
)

// recorder is a testing.TB whose Fatalf records the message and ends the goroutine, as the real one does.
type recorder struct {
	testing.TB
	msg string
}

func (r *recorder) Helper() {}

func (r *recorder) Fatalf(format string, args ...any) {
	r.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// run calls f with a recorder on its own goroutine and returns the failure message ("" when f passed).
func run(f func(testing.TB)) string {
	r := &recorder{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		f(r)
	}()
	<-done
	return r.msg
}

func TestForReturnsOnceCheckHolds(t *testing.T) {
	calls := 0
	msg := run(func(tb testing.TB) {
		For(tb, time.Minute, time.Millisecond, "the third call", func() error {
			calls++
			if calls < 3 {
				return fmt.Errorf("call %d", calls)
			}
			return nil
		})
	})
	if msg != "" || calls != 3 {
		t.Fatalf("failed with %q after %d calls, want success on the third", msg, calls)
	}
}

func TestForFailsWithWhatAndTheLastError(t *testing.T) {
	calls := 0
	msg := run(func(tb testing.TB) {
		For(tb, 20*time.Millisecond, time.Millisecond, "the cache to sync", func() error {
			calls++
			return fmt.Errorf("call %d", calls)
		})
	})
	want := fmt.Sprintf("the cache to sync: still not true after 20ms: call %d", calls)
	if calls < 2 || msg != want {
		t.Fatalf("message %q after %d calls, want %q", msg, calls, want)
	}
}

func TestUntil(t *testing.T) {
	if msg := run(func(tb testing.TB) { Until(tb, time.Minute, time.Millisecond, "true", func() bool { return true }) }); msg != "" {
		t.Errorf("a true condition failed: %q", msg)
	}
	msg := run(func(tb testing.TB) {
		Until(tb, 5*time.Millisecond, time.Millisecond, "the file", func() bool { return false })
	})
	if msg != "the file: still not true after 5ms" {
		t.Errorf("message %q", msg)
	}
}

func TestCheckRunsOnceMoreAfterTheDeadline(t *testing.T) {
	start := time.Now()
	var last time.Time
	msg := run(func(tb testing.TB) {
		For(tb, 10*time.Millisecond, 15*time.Millisecond, "x", func() error {
			last = time.Now()
			return errors.New("no")
		})
	})
	if !strings.HasPrefix(msg, "x: ") || last.Sub(start) < 10*time.Millisecond {
		t.Fatalf("message %q, last check %v after the start: want a failure and a check after the deadline", msg, last.Sub(start))
	}
}

func TestTLSHandshake(t *testing.T) {
	srv := httptest.NewTLSServer(http.NotFoundHandler())
	addr := srv.Listener.Addr().String()
	if err := TLSHandshake(addr)(); err != nil {
		t.Errorf("a serving TLS server: %v", err)
	}
	srv.Close()
	if err := TLSHandshake(addr)(); err == nil {
		t.Error("a closed server completed a handshake")
	}
	plain := httptest.NewServer(http.NotFoundHandler())
	defer plain.Close()
	if err := TLSHandshake(plain.Listener.Addr().String())(); err == nil {
		t.Error("a plain HTTP server completed a TLS handshake")
	}
}
