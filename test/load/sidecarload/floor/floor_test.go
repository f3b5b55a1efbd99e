package floor

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
)

func TestServeAnswersEveryRequestWithTheTokenAnswer(t *testing.T) {
	for _, mode := range []string{NetHTTP, Loop} {
		t.Run(mode, func(t *testing.T) {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			go func() { _ = Serve(l, mode) }()
			defer l.Close()
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
			defer client.CloseIdleConnections()
			for _, path := range []string{"/metadata/identity/oauth2/token?resource=x", "/anything", "/metadata/identity/oauth2/token"} {
				resp, err := client.Get("http://" + l.Addr().String() + path)
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				var answer map[string]string
				if resp.StatusCode != 200 || json.Unmarshal(body, &answer) != nil || answer["access_token"] == "" || answer["token_type"] != "Bearer" {
					t.Fatalf("%s: %d %s", path, resp.StatusCode, body)
				}
			}
		})
	}
}

func TestServeRefusesAnUnknownMode(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := Serve(l, "epoll"); err == nil || !strings.Contains(err.Error(), `use "net/http" or "loop"`) {
		t.Fatalf("error %v, want one naming the modes", err)
	}
}
