package imds

import (
	"context"

	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"github.com/golang-jwt/jwt/v5"
)

// federationError is Azure AD's answer to a federated assertion it refuses: the HTTP status, the OAuth error,
// the AADSTS code and its description.
type federationError struct {
	status      int
	code        string
	aadsts      int
	description string
}

func refuse(status int, code string, aadsts int, format string, args ...any) *federationError {
	return &federationError{status: status, code: code, aadsts: aadsts, description: fmt.Sprintf("AADSTS%d: ", aadsts) + fmt.Sprintf(format, args...)}
}

// assertionClaims are the claims of a federated assertion read before its signature is checked: only to find
// the issuer whose keys check it, and to word refusals.
type assertionClaims struct {
	jwt.RegisteredClaims
}

func unverified(assertion string) (*assertionClaims, error) {
	var c assertionClaims
	if _, _, err := jwt.NewParser().ParseUnverified(assertion, &c); err != nil {
		return nil, err
	}
	return &c, nil
}

// isFederated tells a federated assertion (its issuer is one of the app's federated credentials' issuers) from
// a certificate assertion (issuer = the client ID).
func isFederated(assertion string, app App) bool {
	c, err := unverified(assertion)
	if err != nil {
		return app.Certificate == nil // malformed: refused by whichever path the app has
	}
	return c.Issuer != app.ClientID || app.Certificate == nil
}

// verifyFederated checks a federated client assertion as Azure AD does: an issuer the app trusts, a valid
// signature by a key of the issuer's JWKS (found through its OIDC discovery document), a time range that
// includes now, a subject and an audience of one federated credential with that issuer, and (with
// RefuseReplays) a jti not used before.
func (a *AAD) verifyFederated(ctx context.Context, assertion string, app App) *federationError {
	claims, err := unverified(assertion)
	if err != nil {
		return refuse(http.StatusBadRequest, "invalid_request", 50027, "JWT token is invalid or malformed: %v.", err)
	}
	var records []FederatedCredential
	for _, fc := range app.Federated {
		if fc.Issuer == claims.Issuer {
			records = append(records, fc)
		}
	}
	if len(records) == 0 {
		return refuse(http.StatusBadRequest, "invalid_client", 700211, "No matching federated identity record found for presented assertion issuer '%s'. Please check your federated identity credential Subject, Audience and Issuer against the presented assertion.", claims.Issuer)
	}
	a.mu.Lock()
	client, now, provider := a.discovery, a.now, a.providers[claims.Issuer]
	a.mu.Unlock()
	if client == nil {
		client = http.DefaultClient
	}
	if provider == nil {
		octx, cancel := context.WithTimeout(oidc.ClientContext(context.WithoutCancel(ctx), client), 10*time.Second)
		p, err := oidc.NewProvider(octx, claims.Issuer)
		cancel()
		if err != nil {
			return refuse(http.StatusBadRequest, "invalid_client", 50166, "Request to External OIDC endpoint failed: %v.", err)
		}
		// The key set fetches with the client the provider was made with, beyond this request's life.
		provider = p
		a.mu.Lock()
		a.providers[claims.Issuer] = p
		a.mu.Unlock()
	}
	verifier := provider.VerifierContext(oidc.ClientContext(context.WithoutCancel(ctx), client),
		&oidc.Config{SkipClientIDCheck: true, SkipExpiryCheck: true, SupportedSigningAlgs: []string{oidc.RS256, oidc.ES256, oidc.PS256}})
	if _, err := verifier.Verify(ctx, assertion); err != nil {
		return refuse(http.StatusUnauthorized, "invalid_client", 700027, "Client assertion failed signature validation: %v.", err)
	}
	t := now()
	exp, nbf := timeOf(claims.ExpiresAt), timeOf(claims.NotBefore)
	if exp.IsZero() || !t.Before(exp) || (!nbf.IsZero() && t.Add(5*time.Minute).Before(nbf)) {
		return refuse(http.StatusUnauthorized, "invalid_client", 700024, "Client assertion is not within its valid time range. Current time: %s, assertion valid from %s, expiry time of assertion %s.",
			t.UTC().Format(time.RFC3339), nbf.UTC().Format(time.RFC3339), exp.UTC().Format(time.RFC3339))
	}
	var audiences []string
	if claims.Audience != nil {
		audiences = claims.Audience
	}
	var sameSubject bool
	for _, fc := range records {
		if fc.Subject != claims.Subject {
			continue
		}
		sameSubject = true
		want := fc.Audiences
		if len(want) == 0 {
			want = []string{FederationAudience}
		}
		if slices.ContainsFunc(audiences, func(aud string) bool { return slices.Contains(want, aud) }) {
			return a.checkReplay(claims, t)
		}
	}
	if sameSubject {
		return refuse(http.StatusBadRequest, "invalid_client", 700212, "No matching federated identity record found for presented assertion audience '%s'. Please note that the matching is done using a case-sensitive comparison. Please check your federated identity credential Subject, Audience and Issuer against the presented assertion.", strings.Join(audiences, ","))
	}
	return refuse(http.StatusBadRequest, "invalid_request", 70021, "No matching federated identity record found for presented assertion. Assertion Issuer: '%s'. Assertion Subject: '%s'. Assertion Audience: '%s'.", claims.Issuer, claims.Subject, strings.Join(audiences, ","))
}

func (a *AAD) checkReplay(claims *assertionClaims, now time.Time) *federationError {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.refuseReplays {
		return nil
	}
	for jti, exp := range a.used {
		if !now.Before(exp) {
			delete(a.used, jti) // expired: refused for its time range anyway
		}
	}
	if claims.ID == "" {
		return refuse(http.StatusBadRequest, "invalid_client", 50027, "JWT token is invalid or malformed: the assertion has no jti, so its reuse cannot be detected.")
	}
	if _, ok := a.used[claims.ID]; ok {
		return refuse(http.StatusBadRequest, "invalid_client", 50027, "JWT token is invalid or malformed: the assertion with jti '%s' was already used (replayed).", claims.ID)
	}
	a.used[claims.ID] = timeOf(claims.ExpiresAt)
	return nil
}

func timeOf(d *jwt.NumericDate) time.Time {
	if d == nil {
		return time.Time{}
	}
	return d.Time
}
