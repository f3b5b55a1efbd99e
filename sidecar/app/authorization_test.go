package app

import (
	"net/url"
	"strings"
	"testing"

	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/test/emulators/imds"
	"github.com/podidentity/podidentity/test/toolbox/jwttest"
)

// pathVariants are spellings of the token path that some server (the real IMDS, a cleaning router) could take
// for the token path. Each must be refused by the sidecar, and never reach IMDS.
var pathVariants = []string{
	"/metadata/identity/oauth2/token/",
	"//metadata/identity/oauth2/token",
	"/metadata//identity/oauth2/token",
	`/metadata/identity\oauth2\token`,
	`/metadata\identity\oauth2\token`,
	"/metadata/identity%5Coauth2%5Ctoken",
	"/metadata/identity%5coauth2%5ctoken",
	"/metadata/identity/oauth2%2Ftoken",
	"/metadata%2Fidentity%2Foauth2%2Ftoken",
	"/metadata/identity/oauth2/tok%65n",
	"/metadata/identity/oauth2/./token",
	"/metadata/identity/./oauth2/token",
	"/metadata/identity/oauth2/../oauth2/token",
	"/metadata/instance/../identity/oauth2/token",
	"/metadata/identity/oauth2/token/.",
	"/METADATA/IDENTITY/OAUTH2/TOKEN",
	"/metadata/Identity/OAuth2/Token",
	"/metadata/identity/oauth2/Token",
	"/metadata/identity/oauth2/token;x",
	"/metadata/identity/oauth2/tokens",
	"/metadata/identity/oauth2/token%00",
	"/metadata/identity/oauth2/token%20",
	"http://169.254.169.254/metadata/identity/oauth2/token/",
}

type value struct {
	name   string
	v      string
	bound  bool // names the pod's identity web
	malfmt bool // not even a well-formed value
}

// TestAuthorizationMatrix: selectors x bound / unbound / malformed x letter case x path variants x Metadata
// header. Expected answers follow from the rules, and no request ever yields a token of an identity that is
// not bound to the pod, although IMDS would issue one (the node has it attached).
func TestAuthorizationMatrix(t *testing.T) {
	h := start(t, setup{bound: []contract.Identity{web, jobs}, attached: []imds.Identity{webMI, jobsMI, otherMI}})
	values := map[string][]value{
		"client_id": {
			{"bound", webMI.ClientID, true, false},
			{"bound upper case", strings.ToUpper(webMI.ClientID), true, false},
			{"unbound, attached to node", otherMI.ClientID, false, false},
			{"unbound upper case", strings.ToUpper(otherMI.ClientID), false, false},
			{"malformed", "not-a-guid", false, true},
			{"malformed injection", webMI.ClientID + "&client_id=" + otherMI.ClientID, false, true},
		},
		"object_id": {
			{"bound", webMI.ObjectID, true, false},
			{"bound upper case", strings.ToUpper(webMI.ObjectID), true, false},
			{"unbound, attached to node", otherMI.ObjectID, false, false},
			{"malformed", "0b00", false, true},
		},
		"msi_res_id": {
			{"bound", webMI.ResourceID, true, false},
			{"bound lower case", strings.ToLower(webMI.ResourceID), true, false},
			{"bound upper case", strings.ToUpper(webMI.ResourceID), true, false},
			{"unbound, attached to node", otherMI.ResourceID, false, false},
			{"malformed", "/subscriptions/0000", false, true},
			{"malformed traversal", webMI.ResourceID + "/../other", false, true},
		},
	}
	values["mi_res_id"] = values["msi_res_id"]

	type want struct {
		status int
		desc   string // substring of error_description
	}
	refusedPath := want{400, "is not an IMDS path the pod identity sidecar serves"}
	expect := func(param, paramName string, v value, canonicalPath, header bool) want {
		switch {
		case !canonicalPath:
			return refusedPath
		case !header:
			return want{400, "Required metadata header not specified"}
		case paramName != param:
			return want{400, "must be spelled"}
		case v.malfmt && (param == "client_id" || param == "object_id"):
			return want{400, "is not a GUID"}
		case v.malfmt:
			return want{400, "is not a user-assigned identity's ID"}
		case !v.bound:
			return want{400, "is not an identity bound to this pod"}
		}
		return want{200, ""}
	}

	before := h.emu.Counters()
	requests, tokens := 0, 0
	paths := append([]string{"/metadata/identity/oauth2/token"}, pathVariants...)
	for param, vs := range values {
		for _, paramName := range []string{param, strings.ToUpper(param)} {
			for _, v := range vs {
				for i, path := range paths {
					for _, header := range []bool{true, false} {
						q := "?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F&" + paramName + "=" + url.QueryEscape(v.v)
						if v.name == "malformed injection" {
							q = "?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F&" + paramName + "=" + v.v
						}
						hdr := map[string]string{}
						if header {
							hdr["Metadata"] = "true"
						}
						r := rawGet(t, h.addr, path+q, hdr)
						requests++
						w := expect(param, paramName, v, i == 0, header)
						if v.name == "malformed injection" && i == 0 && header && paramName == param {
							w = want{400, "is given 2 times"}
						}
						if r.status == 200 {
							tokens++
							if got := jwttest.Claims(t, r.body["access_token"])["appid"]; got != webMI.ClientID || r.body["client_id"] != webMI.ClientID {
								t.Fatalf("%s=%s on %s: token for %v, want only web's", paramName, v.name, path, got)
							}
						}
						if r.status != w.status || (w.desc != "" && !strings.Contains(r.body["error_description"], w.desc)) ||
							(r.status != 200 && r.body["error"] == "") {
							t.Errorf("%s=%s (%s) path %q header=%v: %d %s; want %d %q", paramName, v.name, v.v, path, header, r.status, r.raw, w.status, w.desc)
						}
					}
				}
			}
		}
	}
	after := h.emu.Counters()
	if after.TokensByClientID[otherMI.ClientID] != 0 {
		t.Fatalf("IMDS issued %d tokens for the unbound identity", after.TokensByClientID[otherMI.ClientID])
	}
	if after.Other != before.Other {
		t.Fatalf("%d requests were proxied to IMDS's other paths; path variants must never be proxied", after.Other-before.Other)
	}
	if tokens == 0 {
		t.Fatal("no request got a token: the matrix did not exercise the bound case")
	}
	// One upstream fetch for web: every later bound request is a cache hit (object_id resolution included).
	if got := after.TokensByClientID[webMI.ClientID]; got != 1 {
		t.Fatalf("IMDS issued %d tokens for web, want 1 (cache)", got)
	}
	t.Logf("%d requests, %d tokens (all for the bound identity)", requests, tokens)
}

// TestSelectorCombinations covers requests that name several identities or none.
func TestSelectorCombinations(t *testing.T) {
	h := start(t, setup{bound: []contract.Identity{web, jobs}, attached: []imds.Identity{webMI, jobsMI, otherMI}})
	tests := []struct {
		name   string
		query  string
		status int
		want   string // client_id of the token, or a substring of the error
	}{
		{"no selector: first identity of the annotation (highest weight)", "", 200, webMI.ClientID},
		{"second bound identity by client_id", "&client_id=" + jobsMI.ClientID, 200, jobsMI.ClientID},
		{"second bound identity by mi_res_id", "&mi_res_id=" + url.QueryEscape(jobsMI.ResourceID), 200, jobsMI.ClientID},
		{"two selectors", "&client_id=" + webMI.ClientID + "&msi_res_id=" + url.QueryEscape(otherMI.ResourceID), 400, "at most one of"},
		{"both resource-id spellings", "&msi_res_id=" + url.QueryEscape(webMI.ResourceID) + "&mi_res_id=" + url.QueryEscape(webMI.ResourceID), 400, "at most one of"},
		{"duplicate client_id", "&client_id=" + webMI.ClientID + "&client_id=" + otherMI.ClientID, 400, "is given 2 times"},
		{"encoded parameter name", "&client%5Fid=" + otherMI.ClientID, 400, "is not an identity bound"},
		{"empty selector", "&client_id=", 400, "is empty"},
		{"duplicate resource", "&resource=https%3A%2F%2Fvault.azure.net", 400, "is given 2 times"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := rawGet(t, h.addr, tokenTarget(tt.query), md)
			if r.status != tt.status {
				t.Fatalf("%d %s, want %d", r.status, r.raw, tt.status)
			}
			if tt.status == 200 && (r.body["client_id"] != tt.want || jwttest.Claims(t, r.body["access_token"])["appid"] != tt.want) {
				t.Fatalf("token %s, want client %s", r.raw, tt.want)
			}
			if tt.status != 200 && (!strings.Contains(r.body["error_description"], tt.want) || r.body["error"] != "invalid_request") {
				t.Fatalf("body %s, want invalid_request with %q", r.raw, tt.want)
			}
		})
	}
	if n := h.emu.Counters().TokensByClientID[otherMI.ClientID]; n != 0 {
		t.Fatalf("IMDS issued %d tokens for the unbound identity", n)
	}
}
