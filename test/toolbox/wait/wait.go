// Package wait polls a condition in tests until it holds, and fails the test when it does not hold in time. A
// test that waits for something asynchronous (a controller's reconcile, a file watch, a server coming up)
// calls For or Until with its timeout and polling interval, and the failure always names what was awaited.
package wait

import (
	"crypto/tls"
	"errors"
	"net"
	"testing"
	"time"
)

// For calls check every interval until it returns nil. When timeout passes first, it fails t with what and
// check's last error: "<what>: still not true after <timeout>: <last error>". Check runs at least once, and
// once more after the deadline when the deadline passed while For slept.
func For(t testing.TB, timeout, interval time.Duration, what string, check func() error) {
	t.Helper()
	if err := poll(timeout, interval, check); err != nil {
		t.Fatalf("%s: still not true after %v: %v", what, timeout, err)
	}
}

// Until is For for a condition that has no error to tell: it fails t with "<what>: still not true after
// <timeout>".
func Until(t testing.TB, timeout, interval time.Duration, what string, cond func() bool) {
	t.Helper()
	if poll(timeout, interval, func() error {
		if cond() {
			return nil
		}
		return errFalse
	}) != nil {
		t.Fatalf("%s: still not true after %v", what, timeout)
	}
}

var errFalse = errors.New("false")

// TLSHandshake is a check for For: a server at addr (host:port) completes a TLS handshake within a second. It
// tells whether the server serves yet, not whom: the certificate is not verified.
func TLSHandshake(addr string) func() error {
	return func() error {
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: time.Second}, "tcp", addr, &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // a readiness probe of a test's own server
		if err != nil {
			return err
		}
		return conn.Close()
	}
}

// poll returns nil as soon as check does, or check's last error once the deadline has passed.
func poll(timeout, interval time.Duration, check func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(interval)
	}
}
