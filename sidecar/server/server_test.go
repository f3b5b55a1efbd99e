package server

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/sidecar/loopguard"
	"github.com/podidentity/podidentity/sidecar/tokens"
)

type fixedIdentities []contract.Identity

func (f fixedIdentities) Identities() []contract.Identity { return f }
func (f fixedIdentities) Ready() bool                     { return true }

type noTokens struct{ calls int }

func (n *noTokens) Get(context.Context, contract.Identity, string, bool) (tokens.Token, bool, error) {
	n.calls++
	return tokens.Token{}, false, &tokens.Error{Status: 599, Code: "reached", Description: "reached the cache"}
}

// TestPathGuard: only the exact token path reaches the token handler; variants are refused before routing
// and never proxied.
func TestPathGuard(t *testing.T) {
	tok := &noTokens{}
	proxied := 0
	s := New(Options{Identities: fixedIdentities{{Name: "web", ClientID: "c"}}, Tokens: tok, Log: logr.Discard(),
		Proxy: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { proxied++ })})
	h := s.Handler()
	tests := []struct {
		requestURI string
		want       string // "token", "proxy", "refused", "notfound"
	}{
		{"/metadata/identity/oauth2/token?resource=r", "token"},
		{"http://169.254.169.254/metadata/identity/oauth2/token?resource=r", "token"},
		{"/metadata/identity/oauth2/token/?resource=r", "refused"},
		{`/metadata/identity\oauth2\token?resource=r`, "refused"},
		{"/metadata/identity%2Foauth2%2Ftoken?resource=r", "refused"},
		{"/metadata/identity/oauth2/./token?resource=r", "refused"},
		{"/metadata/IDENTITY/oauth2/token?resource=r", "refused"},
		{"/metadata/identity/oauth2/token2?resource=r", "refused"},
		{"/metadata/identity/info", "proxy"},
		{"/metadata/instance?api-version=1", "proxy"},
		{"/metadata/scheduledevents?api-version=1", "proxy"},
		{"/metadata/instance/../identity/oauth2/token?resource=r", "refused"},
		{"/other", "notfound"},
	}
	for _, tt := range tests {
		t.Run(tt.requestURI, func(t *testing.T) {
			req := httptest.NewRequest(http.MethodGet, tt.requestURI, nil) // RequestURI is the raw target
			req.Header.Set("Metadata", "true")
			beforeTok, beforeProxy := tok.calls, proxied
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			var got string
			switch {
			case tok.calls > beforeTok:
				got = "token"
			case proxied > beforeProxy:
				got = "proxy"
			case rec.Code == 400 && strings.Contains(rec.Body.String(), "is not an IMDS path"):
				got = "refused"
			case rec.Code == 404:
				got = "notfound"
			default:
				got = rec.Result().Status + " " + rec.Body.String()
			}
			if got != tt.want {
				t.Fatalf("%s: %s, want %s", tt.requestURI, got, tt.want)
			}
		})
	}
}

// TestLoopGuard: a request carrying the process's own nonce is the sidecar's own upstream request sent back by
// the redirect: it gets 508 at once, on any path, and never reaches the token cache or the proxy. Any other
// nonce, or none, is served as usual.
func TestLoopGuard(t *testing.T) {
	tok := &noTokens{}
	proxied := 0
	loop := loopguard.WithNonce("own-nonce")
	s := New(Options{Identities: fixedIdentities{{Name: "web", ClientID: "c"}}, Tokens: tok, Log: logr.Discard(), Loop: loop,
		Proxy: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { proxied++ })})
	h := s.Handler()
	tests := []struct {
		name       string
		requestURI string
		nonce      []string
		want       string // "loop", "token", "proxy", "refused"
	}{
		{"token path, own nonce", "/metadata/identity/oauth2/token?resource=r", []string{"own-nonce"}, "loop"},
		{"readiness probe path, own nonce", "/metadata/versions", []string{"own-nonce"}, "loop"},
		{"instance metadata, own nonce", "/metadata/instance?api-version=1", []string{"own-nonce"}, "loop"},
		{"non-canonical path, own nonce", "/metadata/identity%2Foauth2%2Ftoken", []string{"own-nonce"}, "loop"},
		{"own nonce after another value", "/metadata/versions", []string{"x", "own-nonce"}, "loop"},
		{"token path, another sidecar's nonce", "/metadata/identity/oauth2/token?resource=r", []string{"other-nonce"}, "token"},
		{"token path, no nonce", "/metadata/identity/oauth2/token?resource=r", nil, "token"},
		{"proxied path, another nonce", "/metadata/versions", []string{"own-nonce-not"}, "proxy"},
		{"proxied path, no nonce", "/metadata/instance?api-version=1", nil, "proxy"},
		{"non-canonical path, no nonce", "/metadata/identity%2Foauth2%2Ftoken", nil, "refused"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest(http.MethodGet, tt.requestURI, nil)
			req.Header.Set("Metadata", "true")
			for _, n := range tt.nonce {
				req.Header.Add(loopguard.Header, n)
			}
			beforeTok, beforeProxy, beforeLoops := tok.calls, proxied, loop.Loops()
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			var got string
			switch {
			case tok.calls > beforeTok:
				got = "token"
			case proxied > beforeProxy:
				got = "proxy"
			case rec.Code == http.StatusLoopDetected:
				got = "loop"
			case rec.Code == 400 && strings.Contains(rec.Body.String(), "is not an IMDS path"):
				got = "refused"
			default:
				got = rec.Result().Status + " " + rec.Body.String()
			}
			if got != tt.want {
				t.Fatalf("%s: %s, want %s", tt.requestURI, got, tt.want)
			}
			if looped := loop.Loops() > beforeLoops; looped != (tt.want == "loop") {
				t.Fatalf("loop recorded: %v, want %v", looped, tt.want == "loop")
			}
			if tt.want != "loop" {
				return
			}
			var body map[string]string
			if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil || body["error"] != loopguard.Code ||
				!strings.Contains(body["error_description"], "the redirect's exemption for the sidecar is not installed") {
				t.Fatalf("508 body %s (%v): want IMDS's error shape naming the missing exemption", rec.Body.String(), err)
			}
		})
	}
}

type readiness struct {
	ok  bool
	why string
}

func (r readiness) Ready() (bool, string) { return r.ok, r.why }

type identitiesReady bool

func (identitiesReady) Identities() []contract.Identity { return nil }
func (r identitiesReady) Ready() bool                   { return bool(r) }

func TestReadyz(t *testing.T) {
	tests := []struct {
		name       string
		identities bool
		upstream   Readiness
		want       int
		wantBody   []string
	}{
		{"both ready", true, readiness{ok: true}, 200, []string{"ok"}},
		{"no upstream condition (tests, old wiring)", true, nil, 200, []string{"ok"}},
		{"identities file not read", false, readiness{ok: true}, 503, []string{"identities file not read yet"}},
		{"upstream looping", true, readiness{why: "exemption not installed"}, 503, []string{"upstream IMDS not confirmed: exemption not installed"}},
		{"neither", false, readiness{why: "connection refused"}, 503, []string{"identities file not read yet", "upstream IMDS not confirmed: connection refused"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := New(Options{Identities: identitiesReady(tt.identities), Upstream: tt.upstream, Log: logr.Discard()})
			rec := httptest.NewRecorder()
			s.HealthHandler(prometheus.NewRegistry()).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
			if rec.Code != tt.want {
				t.Fatalf("status %d %q, want %d", rec.Code, rec.Body.String(), tt.want)
			}
			for _, w := range tt.wantBody {
				if !strings.Contains(rec.Body.String(), w) {
					t.Fatalf("body %q lacks %q", rec.Body.String(), w)
				}
			}
		})
	}
}
