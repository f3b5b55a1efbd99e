package jwttest

import (
	"encoding/base64"
	"testing"
)

func TestDecode(t *testing.T) {
	payload := base64.RawURLEncoding.EncodeToString([]byte(`{"appid":"abc","exp":1700000000}`))
	if got := Claims(t, "h."+payload+".s"); got["appid"] != "abc" || got["exp"] != float64(1700000000) {
		t.Errorf("Claims = %v", got)
	}
	var c struct {
		AppID string `json:"appid"`
	}
	if err := DecodeInto("h."+payload+"==.s", &c); err != nil || c.AppID != "abc" {
		t.Errorf("DecodeInto with padding: %v, %+v", err, c)
	}
	for _, bad := range []string{"", "a.b", "h.!!!.s", "h." + base64.RawURLEncoding.EncodeToString([]byte("[1]")) + ".s"} {
		var m map[string]any
		if err := DecodeInto(bad, &m); err == nil {
			t.Errorf("DecodeInto(%q) = nil error, want one", bad)
		}
	}
}
