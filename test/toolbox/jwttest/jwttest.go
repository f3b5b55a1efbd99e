// Package jwttest reads the claims of the tokens the emulated Azure AD and IMDS issue, for tests that check who
// a token is for. It verifies nothing: the emulators' own tests check signatures.
package jwttest

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

// DecodeInto unmarshals the payload of the JWT token into v.
func DecodeInto(token string, v any) error {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return fmt.Errorf("not a JWT: %d dot-separated parts, want 3", len(parts))
	}
	raw, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return fmt.Errorf("JWT payload is not base64url: %w", err)
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return fmt.Errorf("JWT payload is not a JSON object: %w", err)
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
