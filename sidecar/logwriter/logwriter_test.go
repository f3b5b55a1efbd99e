package logwriter

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// recorder is an underlying writer that records each Write call separately.
type recorder struct {
	mu     sync.Mutex
	writes []string
	err    error
}

func (r *recorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		return 0, r.err
	}
	r.writes = append(r.writes, string(p))
	return len(p), nil
}

func (r *recorder) snapshot() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.writes...)
}

// never is an interval long enough that the timer cannot fire during a test: what reaches the underlying writer
// is then decided by the size bound, Flush and Close alone.
const never = time.Hour

func TestWriterBatches(t *testing.T) {
	for _, tc := range []struct {
		name  string
		limit int
		lines []string
		// then is what the test does after writing the lines, before comparing the underlying writes.
		then       func(*Writer) error
		wantWrites []string
	}{
		{
			name: "lines below the bound wait", limit: 100, lines: []string{"a\n", "b\n"},
			then: func(*Writer) error { return nil }, wantWrites: nil,
		},
		{
			name: "flush writes the waiting lines in one call, in order", limit: 100, lines: []string{"a\n", "b\n", "c\n"},
			then: (*Writer).Flush, wantWrites: []string{"a\nb\nc\n"},
		},
		{
			name: "reaching the bound writes at once", limit: 4, lines: []string{"ab\n", "cd\n", "e\n"},
			then: func(*Writer) error { return nil }, wantWrites: []string{"ab\ncd\n"},
		},
		{
			name: "a line larger than the bound is written whole", limit: 4, lines: []string{"abcdefgh\n"},
			then: func(*Writer) error { return nil }, wantWrites: []string{"abcdefgh\n"},
		},
		{
			name: "close writes what is left", limit: 100, lines: []string{"a\n"},
			then: (*Writer).Close, wantWrites: []string{"a\n"},
		},
		{
			name: "writes after close go straight through", limit: 100, lines: []string{"a\n"},
			then: func(w *Writer) error {
				if err := w.Close(); err != nil {
					return err
				}
				_, err := w.Write([]byte("late\n"))
				return err
			},
			wantWrites: []string{"a\n", "late\n"},
		},
		{
			name: "flush with nothing waiting writes nothing", limit: 100, lines: nil,
			then: (*Writer).Flush, wantWrites: nil,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := &recorder{}
			w := New(rec, never, tc.limit)
			for _, l := range tc.lines {
				if n, err := w.Write([]byte(l)); err != nil || n != len(l) {
					t.Fatalf("Write(%q) = %d, %v", l, n, err)
				}
			}
			if err := tc.then(w); err != nil {
				t.Fatal(err)
			}
			if got := rec.snapshot(); fmt.Sprint(got) != fmt.Sprint(tc.wantWrites) {
				t.Fatalf("underlying writes %q, want %q", got, tc.wantWrites)
			}
		})
	}
}

// The caller's buffer is reused by slog after Write returns: the writer must have copied it.
func TestWriterCopiesTheCallersBuffer(t *testing.T) {
	rec := &recorder{}
	w := New(rec, never, 100)
	p := []byte("first\n")
	_, _ = w.Write(p)
	copy(p, "XXXXX\n")
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if got := rec.snapshot(); len(got) != 1 || got[0] != "first\n" {
		t.Fatalf("underlying writes %q, want [\"first\\n\"]", got)
	}
}

// Without Flush or Close, a line still reaches the underlying writer once the interval has passed.
func TestWriterWritesAfterTheInterval(t *testing.T) {
	rec := &recorder{}
	w := New(rec, time.Millisecond, 1<<20)
	for round := range 3 { // the timer is re-armed after each batch
		line := fmt.Sprintf("line %d\n", round)
		_, _ = w.Write([]byte(line))
		deadline := time.Now().Add(10 * time.Second)
		for !strings.Contains(strings.Join(rec.snapshot(), ""), line) {
			if time.Now().After(deadline) {
				t.Fatalf("round %d: %q not written within 10 s; writes so far %q", round, line, rec.snapshot())
			}
			time.Sleep(time.Millisecond)
		}
	}
}

func TestWriterReportsTheUnderlyingError(t *testing.T) {
	broken := errors.New("stderr closed")
	rec := &recorder{err: broken}
	w := New(rec, never, 100)
	if _, err := w.Write([]byte("a\n")); err != nil {
		t.Fatalf("Write: %v, want no error (errors are reported by Flush)", err)
	}
	if err := w.Flush(); !errors.Is(err, broken) {
		t.Fatalf("Flush: %v, want %v", err, broken)
	}
	if err := w.Close(); !errors.Is(err, broken) {
		t.Fatalf("Close: %v, want %v", err, broken)
	}
}

// Concurrent writers, a small bound (so that many batches are written by writers) and a short interval (so that
// the timer writes some too): every line arrives exactly once, whole, and each writer's lines in its order.
func TestWriterConcurrentLinesArriveWholeOnceAndInOrder(t *testing.T) {
	const writers, lines = 8, 500
	var out bytes.Buffer
	var outMu sync.Mutex
	w := New(writerFunc(func(p []byte) (int, error) {
		outMu.Lock()
		defer outMu.Unlock()
		return out.Write(p)
	}), 100*time.Microsecond, 256)
	var wg sync.WaitGroup
	for g := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range lines {
				_, _ = fmt.Fprintf(w, "writer=%d line=%04d end\n", g, i)
			}
		}()
	}
	wg.Wait()
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	next := make([]int, writers)
	got := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(got) != writers*lines {
		t.Fatalf("%d lines written, want %d", len(got), writers*lines)
	}
	for _, l := range got {
		var g, i int
		if _, err := fmt.Sscanf(l, "writer=%d line=%d end", &g, &i); err != nil || g < 0 || g >= writers {
			t.Fatalf("torn or foreign line %q", l)
		}
		if i != next[g] {
			t.Fatalf("writer %d: line %d arrived when %d was expected", g, i, next[g])
		}
		next[g]++
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
