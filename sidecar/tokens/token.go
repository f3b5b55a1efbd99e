// Package tokens caches access tokens per (identity, resource) for the token sidecar: concurrent identical
// requests collapse into one upstream call, tokens are refreshed ahead of expiry, and a cached token that
// expires within MinValidity is never served.
package tokens

import (
	"fmt"
	"time"
)

// Token is an access token as the sidecar serves it.
type Token struct {
	AccessToken string
	ExpiresOn   time.Time
	NotBefore   time.Time
	// Resource is the resource the token was requested for, ClientID the identity's client ID.
	Resource string
	ClientID string
	// TokenType is "Bearer" unless the source said otherwise.
	TokenType string
}

// Error is an answer to pass on to the app instead of a token: an IMDS-shaped error with its HTTP status and,
// for transient failures, how long the app should wait before retrying.
type Error struct {
	Status      int
	Code        string
	Description string
	RetryAfter  time.Duration
}

func (e *Error) Error() string {
	return fmt.Sprintf("%d %s: %s", e.Status, e.Code, e.Description)
}
