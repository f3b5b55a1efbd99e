package app_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/podidentity/podidentity/webhook/app"
)

// TestDrainClosesConnectionsAfterEachAnswer: before Begin, keep-alive connections are reused; after it, every
// answer still comes (the replica keeps serving) but says "Connection: close" and the client dials again.
func TestDrainClosesConnectionsAfterEachAnswer(t *testing.T) {
	d := &app.Drain{}
	srv := httptest.NewUnstartedServer(d.Wrap(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok")
	})))
	dials := 0
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			dials++
		}
	}
	srv.Start()
	defer srv.Close()
	client := srv.Client()

	get := func() *http.Response {
		t.Helper()
		resp, err := client.Get(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if string(body) != "ok" {
			t.Fatalf("body %q, want ok", body)
		}
		return resp
	}
	for i := 0; i < 3; i++ {
		if resp := get(); resp.Close {
			t.Fatalf("answer %d before draining closes the connection", i)
		}
	}
	if dials != 1 {
		t.Fatalf("%d connections before draining, want 1 reused", dials)
	}
	if err := d.ReadyCheck(nil); err != nil {
		t.Fatalf("ready check before draining: %v", err)
	}

	d.Begin()
	for i := 0; i < 3; i++ {
		if resp := get(); !resp.Close {
			t.Fatalf("answer %d while draining does not close the connection", i)
		}
	}
	// The first answer while draining ends the open connection; each later one comes on a new connection.
	if dials != 3 {
		t.Fatalf("%d connections after 3 answers while draining, want 3 (the open one, then one per answer)", dials)
	}
	if err := d.ReadyCheck(nil); err == nil {
		t.Fatal("ready check passes while draining; want it to fail so nothing new is routed here")
	}
}

// TestRunDraining: the server keeps running for the delay after the signal, draining, and then stops.
func TestRunDraining(t *testing.T) {
	tests := []struct {
		name      string
		startErr  error // returned by start on its own, before any signal
		wantDrain bool
	}{
		{name: "signal drains then stops", wantDrain: true},
		{name: "start failing returns its error at once", startErr: errors.New("port in use")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := &app.Drain{}
			ctx, signal := context.WithCancel(context.Background())
			stoppedWhileDraining := make(chan bool, 1)
			start := func(runCtx context.Context) error {
				if tt.startErr != nil {
					return tt.startErr
				}
				signal() // the SIGTERM arrives while serving
				<-runCtx.Done()
				stoppedWhileDraining <- d.Draining()
				return nil
			}
			err := app.RunDraining(ctx, start, d, 50*time.Millisecond)
			if !errors.Is(err, tt.startErr) {
				t.Fatalf("RunDraining = %v, want %v", err, tt.startErr)
			}
			if tt.wantDrain {
				if !<-stoppedWhileDraining {
					t.Fatal("the manager was stopped without draining first")
				}
			} else if d.Draining() {
				t.Fatal("draining although the manager stopped on its own")
			}
		})
	}
}
