package server

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/go-logr/logr"

	"github.com/podidentity/podidentity/internal/annotation"
	"github.com/podidentity/podidentity/sidecar/tokens"
)

type fixedIdentities []annotation.Identity

func (f fixedIdentities) Identities() []annotation.Identity { return f }
func (f fixedIdentities) Ready() bool                       { return true }

type noTokens struct{ calls int }

func (n *noTokens) Get(context.Context, annotation.Identity, string, bool) (tokens.Token, bool, error) {
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
