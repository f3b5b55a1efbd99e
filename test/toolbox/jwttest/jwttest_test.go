package jwttest

import (
	"encoding/base64"
	"testing"
)

func TestDecode(t *testing.T) {
	header := base64.RawURLEncoding.EncodeToString([]byte(`{"typ":"JWT","alg":"RS256"}`))
	payload := base64.RawURLEncoding.EncodeToString([]byte(`{"appid":"abc","exp":1700000000}`))
	if got := Claims(t, header+"."+payload+".c2ln"); got["appid"] != "abc" || got["exp"] != float64(1700000000) {
		t.Errorf("Claims = %v", got)
	}
	var c struct {
		AppID string `json:"appid"`
	}
	padded := base64.URLEncoding.EncodeToString([]byte(`{"appid":"abc","exp":1700000000}`)) // 43 characters and "="
	if err := DecodeInto(header+"."+padded+".c2ln", &c); err != nil || c.AppID != "abc" {
		t.Errorf("DecodeInto with padding: %v, %+v", err, c)
	}
	for _, bad := range []string{"", "a.b", header + ".!!!.s", header + "." + base64.RawURLEncoding.EncodeToString([]byte("[1]")) + ".c2ln",
		"h." + payload + ".c2ln"} {
		var m map[string]any
		if err := DecodeInto(bad, &m); err == nil {
			t.Errorf("DecodeInto(%q) = nil error, want one", bad)
		}
	}
}
