package sidecarload

import (
	"bufio"
	"strings"
	"testing"
)

func TestReadResponse(t *testing.T) {
	for _, tc := range []struct {
		name          string
		response      string
		wantStatus    int
		wantKeepAlive bool
		wantErr       string // a substring of the error; empty: no error
		wantLeft      string // what is left unread: the next response
	}{
		{name: "ok, keep-alive", response: "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\n{\"a\"}NEXT",
			wantStatus: 200, wantKeepAlive: true, wantLeft: "NEXT"},
		{name: "header names in any case", response: "HTTP/1.1 200 OK\r\ncontent-length:2\r\n\r\nokNEXT",
			wantStatus: 200, wantKeepAlive: true, wantLeft: "NEXT"},
		{name: "error status with a body", response: "HTTP/1.1 400 Bad Request\r\nContent-Length: 3\r\n\r\nbad",
			wantStatus: 400, wantKeepAlive: true},
		{name: "connection close", response: "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
			wantStatus: 200, wantKeepAlive: false},
		{name: "no content length", response: "HTTP/1.1 200 OK\r\n\r\nbody", wantErr: "without Content-Length"},
		{name: "chunked", response: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", wantErr: "chunked"},
		{name: "not HTTP/1.1", response: "HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", wantErr: "malformed status line"},
		{name: "status not a number", response: "HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n", wantErr: "malformed status line"},
		{name: "header without colon", response: "HTTP/1.1 200 OK\r\nContent-Length 0\r\n\r\n", wantErr: "malformed header line"},
		{name: "negative length", response: "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", wantErr: "malformed Content-Length"},
		{name: "body cut short", response: "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", wantErr: "reading the body"},
		{name: "headers cut short", response: "HTTP/1.1 200 OK\r\nContent-Len", wantErr: "EOF"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := bufio.NewReader(strings.NewReader(tc.response))
			status, keepAlive, err := readResponse(r)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if status != tc.wantStatus || keepAlive != tc.wantKeepAlive {
				t.Fatalf("status %d keep-alive %v, want %d %v", status, keepAlive, tc.wantStatus, tc.wantKeepAlive)
			}
			if left, _ := r.Peek(r.Buffered()); string(left) != tc.wantLeft {
				t.Fatalf("left unread %q, want %q", left, tc.wantLeft)
			}
		})
	}
}
