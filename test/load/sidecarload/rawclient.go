package sidecarload

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"
)

// rawClient sends token requests over one keep-alive HTTP/1.1 connection and reads each response on the calling
// goroutine. It understands exactly what the sidecar answers (a status line, headers, a Content-Length body)
// and nothing more: it is a load generator, not an HTTP client. A connection that fails is dropped and redialled
// on the next request.
type rawClient struct {
	addr string
	conn net.Conn
	r    *bufio.Reader
}

// rawRequest is the token request as bytes: the default identity, with the Metadata header.
var rawRequest = []byte("GET " + tokenTarget + " HTTP/1.1\r\nHost: 169.254.169.254\r\nMetadata: true\r\nUser-Agent: sidecarload\r\n\r\n")

// get sends one request and reads the whole response; an error is a failed request.
func (c *rawClient) get() error {
	if c.conn == nil {
		if err := c.dial(); err != nil {
			return err
		}
	}
	status, keepAlive, err := c.roundTrip()
	if err != nil || !keepAlive {
		_ = c.conn.Close()
		c.conn = nil
	}
	if err != nil {
		return err
	}
	if status != 200 {
		return fmt.Errorf("status %d", status)
	}
	return nil
}

// dial opens the connection.
func (c *rawClient) dial() error {
	conn, err := net.DialTimeout("tcp", c.addr, 5*time.Second)
	if err != nil {
		return err
	}
	c.conn, c.r = conn, bufio.NewReaderSize(conn, 8<<10)
	return nil
}

func (c *rawClient) roundTrip() (status int, keepAlive bool, err error) {
	if _, err := c.conn.Write(rawRequest); err != nil {
		return 0, false, err
	}
	return readResponse(c.r)
}

// readResponse reads one HTTP/1.1 response with a Content-Length body and discards the body.
func readResponse(r *bufio.Reader) (status int, keepAlive bool, err error) {
	line, err := r.ReadSlice('\n')
	if err != nil {
		return 0, false, err
	}
	// "HTTP/1.1 200 OK\r\n"
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.1 ")) {
		return 0, false, fmt.Errorf("malformed status line %q", line)
	}
	status, err = strconv.Atoi(string(line[9:12]))
	if err != nil {
		return 0, false, fmt.Errorf("malformed status line %q", line)
	}
	length, keepAlive := -1, true
	for {
		line, err := r.ReadSlice('\n')
		if err != nil {
			return status, false, err
		}
		line = bytes.TrimRight(line, "\r\n")
		if len(line) == 0 {
			break
		}
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			return status, false, fmt.Errorf("malformed header line %q", line)
		}
		value = bytes.TrimSpace(value)
		switch {
		case bytes.EqualFold(name, []byte("Content-Length")):
			if length, err = strconv.Atoi(string(value)); err != nil || length < 0 {
				return status, false, fmt.Errorf("malformed Content-Length %q", value)
			}
		case bytes.EqualFold(name, []byte("Connection")) && bytes.EqualFold(value, []byte("close")):
			keepAlive = false
		case bytes.EqualFold(name, []byte("Transfer-Encoding")):
			return status, false, errors.New("chunked responses are not supported by the raw client: the sidecar sends Content-Length")
		}
	}
	if length < 0 {
		return status, false, errors.New("response without Content-Length")
	}
	if _, err := r.Discard(length); err != nil {
		return status, false, fmt.Errorf("reading the body: %w", err)
	}
	return status, keepAlive, nil
}

// Close closes the connection, if any.
func (c *rawClient) Close() error {
	if c.conn == nil {
		return nil
	}
	err := c.conn.Close()
	c.conn = nil
	return err
}
