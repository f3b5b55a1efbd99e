// Package floor is the baseline the sidecar's latency and CPU are compared with: a server that answers every
// request on the token port with one fixed token answer, doing no work of its own. Measured with the same load
// harness on the same machine, it shows what any Go server pays there for the connection, the scheduler and
// loopback TCP, so that the sidecar's own share can be told apart from the machine's.
package floor

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"
)

// Modes of Serve.
const (
	// NetHTTP serves with net/http, as the sidecar does.
	NetHTTP = "net/http"
	// Loop serves with a minimal keep-alive loop: http.ReadRequest and one write per answer, no background
	// read, no per-request goroutine or context; the least a Go HTTP/1.1 server can do per request.
	Loop = "loop"
)

// Answer is the fixed token answer, the size of a typical one.
const Answer = `{"access_token":"eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJodHRwczovL21hbmFnZW1lbnQuYXp1cmUuY29tLyJ9.c2lnbmF0dXJl",` +
	`"refresh_token":"","expires_in":"86399","expires_on":"1800086399","ext_expires_in":"86399","not_before":"1800000000",` +
	`"resource":"https://management.azure.com/","token_type":"Bearer","client_id":"aaaaaaaa-1111-4111-8111-000000000001"}`

// Serve answers every request on l with Answer, in the given mode, until l is closed.
func Serve(l net.Listener, mode string) error {
	switch mode {
	case NetHTTP:
		body := []byte(Answer)
		srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 120 * time.Second,
			Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Type", "application/json; charset=utf-8")
				w.Header().Set("Content-Length", strconv.Itoa(len(body)))
				_, _ = w.Write(body)
			})}
		return srv.Serve(l)
	case Loop:
		for {
			c, err := l.Accept()
			if err != nil {
				return err
			}
			go serveLoop(c)
		}
	default:
		return fmt.Errorf("mode %q: use %q or %q", mode, NetHTTP, Loop)
	}
}

var loopResponse = []byte("HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: " +
	strconv.Itoa(len(Answer)) + "\r\n\r\n" + Answer)

func serveLoop(c net.Conn) {
	defer c.Close()
	r := bufio.NewReader(c)
	for {
		req, err := http.ReadRequest(r)
		if err != nil {
			return
		}
		if _, err := io.Copy(io.Discard, req.Body); err != nil && !errors.Is(err, io.EOF) {
			return
		}
		if _, err := c.Write(loopResponse); err != nil {
			return
		}
	}
}
