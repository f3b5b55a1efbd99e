// Package jwttest reads the claims of the tokens the emulated Azure AD and IMDS issue, for tests that check who
// a token is for. It verifies nothing (the emulators' own tests check signatures) and decodes with
// github.com/golang-jwt/jwt's unverified parser, as the product does (sidecar/identities.ObjectID).
package jwttest

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/golang-jwt/jwt/v5"
)

// DecodeInto unmarshals the claims of the JWT token into v.
func DecodeInto(token string, v any) error {
	claims := jwt.MapClaims{}
	if _, _, err := jwt.NewParser(jwt.WithPaddingAllowed(), jwt.WithJSONNumber()).ParseUnverified(token, claims); err != nil {
		return fmt.Errorf("not a JWT: %w", err)
	}
	b, err := json.Marshal(claims)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("JWT claims: %w", err)
	}
	return nil
}

// Claims returns the claims of the JWT token, failing the test when it is not one.
func Claims(t testing.TB, token string) map[string]any {
	t.Helper()
	var c map[string]any
	if err := DecodeInto(token, &c); err != nil {
		t.Fatalf("token %q: %v", token, err)
	}
	return c
}
