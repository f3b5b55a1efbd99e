package app

import (
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/sidecar/loopguard"
	"github.com/podidentity/podidentity/test/emulators/imds"
	"github.com/podidentity/podidentity/test/toolbox/wait"
)

func getBody(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestUpstreamReadiness: /readyz waits, besides the identities file, for an answer from the node's IMDS that did
// not come back to the sidecar. The loop is what a pod sees before the redirect's exemption is installed: the
// sidecar's requests to the IMDS address reach its own token listener. Here --imds-endpoint is that listener.
func TestUpstreamReadiness(t *testing.T) {
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refusedURL := "http://" + closed.Addr().String()
	closed.Close()

	tests := []struct {
		name     string
		endpoint func(c *Config) string // nil: the emulated IMDS
		want     int
		wantBody string
	}{
		{name: "a real answer: ready", want: 200, wantBody: "ok"},
		{name: "requests loop back to the sidecar: not ready", endpoint: func(c *Config) string { return "http://" + c.ListenAddress },
			want: 503, wantBody: "upstream IMDS not confirmed: " + loopguard.Description},
		{name: "connection refused: not ready", endpoint: func(*Config) string { return refusedURL },
			want: 503, wantBody: "connection refused"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := start(t, setup{bound: []contract.Identity{web}, attached: []imds.Identity{webMI}, upstreamPending: true,
				cfg: func(c *Config) {
					if tt.endpoint != nil {
						c.IMDSEndpoint = tt.endpoint(c)
					}
					c.AttachWait = 10 * time.Second
				}})
			readyz := "http://" + h.health + "/readyz"
			if tt.want == 200 {
				wait.Until(t, 15*time.Second, 5*time.Millisecond, "ready", func() bool { code, _ := getBody(t, readyz); return code == 200 })
				return
			}
			// Let several probes fail (200 ms, 400 ms, 800 ms apart): the answer must stay, with its reason.
			wait.Until(t, 15*time.Second, 5*time.Millisecond, "the first probe", func() bool { _, why := h.app.Upstream.Ready(); return !strings.Contains(why, "first check") })
			time.Sleep(1500 * time.Millisecond)
			code, body := getBody(t, readyz)
			if code != tt.want || !strings.Contains(body, tt.wantBody) {
				t.Fatalf("/readyz %d %q, want %d with %q", code, body, tt.want, tt.wantBody)
			}
			if n := countLines(h.logs, "not ready: node IMDS not confirmed"); n != 1 {
				t.Fatalf("%d \"not ready\" log lines after several probes, want 1 (rate-limited)", n)
			}
			if h.emu.Counters().Other != 0 {
				t.Fatalf("the emulated IMDS saw %d requests; the sidecar was not pointed at it", h.emu.Counters().Other)
			}
		})
	}
}

// TestLoopedRequestsAreNotServed: while the exemption is missing, the app's token request makes the sidecar
// fetch from "IMDS", which is itself: the looped fetch gets 508 and the app a fast 503 saying why (not
// --attach-wait of retries), and a proxied path gets the 508 itself. Nothing is fetched twice.
func TestLoopedRequestsAreNotServed(t *testing.T) {
	h := start(t, setup{bound: []contract.Identity{web}, attached: []imds.Identity{webMI}, upstreamPending: true,
		cfg: func(c *Config) {
			c.IMDSEndpoint = "http://" + c.ListenAddress
			c.AttachWait = 10 * time.Second
		}})
	begin := time.Now()
	r := rawGet(t, h.addr, tokenTarget(""), md)
	if r.status != http.StatusServiceUnavailable || r.header.Get("Retry-After") == "" ||
		!strings.Contains(r.body["error_description"], "the redirect's exemption for the sidecar is not installed") {
		t.Fatalf("token while looping: %d %v %s, want 503 with Retry-After naming the missing exemption", r.status, r.header, r.raw)
	}
	if took := time.Since(begin); took > 5*time.Second {
		t.Fatalf("the looped token request took %s: a loop must fail fast, not retry for --attach-wait", took)
	}
	r = rawGet(t, h.addr, "/metadata/instance?api-version=2021-02-01", md)
	if r.status != http.StatusLoopDetected || r.body["error"] != loopguard.Code {
		t.Fatalf("proxied path while looping: %d %s, want 508 %s", r.status, r.raw, loopguard.Code)
	}
	// An app that sends the header with a value of its own is an ordinary client.
	r = rawGet(t, h.addr, tokenTarget(""), map[string]string{"Metadata": "true", loopguard.Header: "guess"})
	if r.status == http.StatusLoopDetected {
		t.Fatalf("a foreign nonce was taken for the sidecar's own: %s", r.raw)
	}
}

func countLines(b *logBuffer, substr string) int {
	n := 0
	for _, l := range b.all() {
		if strings.Contains(l, substr) {
			n++
		}
	}
	return n
}

// redirector forwards each new connection to the current target and keeps established ones where they were
// sent, as conntrack does with the pod's DNAT: installing the exemption changes where new connections go.
type redirector struct {
	l      net.Listener
	target atomic.Pointer[string]
}

func newRedirector(t *testing.T, target string) *redirector {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &redirector{l: l}
	r.target.Store(&target)
	t.Cleanup(func() { _ = l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				up, err := net.Dial("tcp", *r.target.Load())
				if err != nil {
					return
				}
				defer up.Close()
				done := make(chan struct{}, 2)
				go func() { _, _ = io.Copy(up, c); done <- struct{}{} }()
				go func() { _, _ = io.Copy(c, up); done <- struct{}{} }()
				<-done
			}()
		}
	}()
	return r
}

// TestReadyOnceTheExemptionArrives is CNI mode: the sidecar starts while its requests loop back to it, and a
// node agent installs the exemption later. New connections then reach IMDS; the sidecar must not keep using a
// connection that still leads back to itself.
func TestReadyOnceTheExemptionArrives(t *testing.T) {
	var redir *redirector
	h := start(t, setup{bound: []contract.Identity{web}, attached: []imds.Identity{webMI}, upstreamPending: true,
		cfg: func(c *Config) {
			redir = newRedirector(t, c.ListenAddress) // no exemption: IMDS is the sidecar itself
			c.IMDSEndpoint = "http://" + redir.l.Addr().String()
		}})
	readyz := "http://" + h.health + "/readyz"
	wait.Until(t, 15*time.Second, 5*time.Millisecond, "a looped probe", func() bool {
		_, body := getBody(t, readyz)
		return strings.Contains(body, "exemption for the sidecar is not installed")
	})
	if r := rawGet(t, h.addr, tokenTarget(""), md); r.status != http.StatusServiceUnavailable {
		t.Fatalf("token while looping: %d %s, want 503", r.status, r.raw)
	}
	emu := strings.TrimPrefix(h.imdsURL, "http://")
	redir.target.Store(&emu) // the node agent installs the exemption
	wait.Until(t, 15*time.Second, 5*time.Millisecond, "ready once the exemption is installed", func() bool { code, _ := getBody(t, readyz); return code == 200 })
	if r := rawGet(t, h.addr, tokenTarget(""), md); r.status != 200 || r.body["client_id"] != webMI.ClientID {
		t.Fatalf("token after the exemption: %d %s, want the bound identity's token", r.status, r.raw)
	}
}
