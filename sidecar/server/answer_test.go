package server

import (
	"encoding/json"
	"testing"
)

// tokenAnswerCases are answers whose strings exercise every escaping rule of encoding/json.
var tokenAnswerCases = []tokenResponse{
	{},
	{AccessToken: "eyJhbGciOiJSUzI1NiJ9.eyJvaWQiOiJ4In0.c2ln", ExpiresIn: "86399", ExtExpiresIn: "86399", ExpiresOn: "1800086399",
		NotBefore: "1800000000", Resource: "https://management.azure.com/", TokenType: "Bearer", ClientID: "aaaaaaaa-1111-4111-8111-000000000001"},
	{Resource: `quote " backslash \ slash /`},
	{Resource: "controls \x00\x01\b\f\n\r\t\x1f\x7f end"},
	{Resource: "html <script>&amp;</script>"},
	{Resource: "unicode é ü 中文 😀, separators \u2028 \u2029"},
	{Resource: "invalid utf-8 \xff \xc3\x28 \xed\xa0\x80 end"},
	{Resource: "\xe2\x80"}, // a truncated three-byte sequence at the end
}

func TestAppendTokenAnswerIsWhatJSONMarshalGives(t *testing.T) {
	for _, a := range tokenAnswerCases {
		want, err := json.Marshal(a)
		if err != nil {
			t.Fatal(err)
		}
		if got := appendTokenAnswer(nil, a); string(got) != string(want) {
			t.Errorf("appendTokenAnswer(%+q)\n got %s\nwant %s", a, got, want)
		}
	}
}

// TestAppendTokenAnswersIsWhatJSONMarshalGives: the list answer (a service principal with auxiliary tenants)
// is json.Marshal of the list, for one, two and all cases.
func TestAppendTokenAnswersIsWhatJSONMarshalGives(t *testing.T) {
	for _, as := range [][]tokenResponse{tokenAnswerCases[:1], tokenAnswerCases[1:3], tokenAnswerCases} {
		want, err := json.Marshal(as)
		if err != nil {
			t.Fatal(err)
		}
		if got := appendTokenAnswers([]byte("prefix"), as); string(got) != "prefix"+string(want) {
			t.Errorf("appendTokenAnswers of %d answers\n got %s\nwant prefix%s", len(as), got, want)
		}
	}
}

func FuzzAppendTokenAnswer(f *testing.F) {
	for _, a := range tokenAnswerCases {
		f.Add(a.AccessToken, a.Resource, a.ClientID)
	}
	f.Fuzz(func(t *testing.T, accessToken, resource, clientID string) {
		a := tokenResponse{AccessToken: accessToken, Resource: resource, ClientID: clientID, TokenType: "Bearer", ExpiresIn: "1"}
		want, _ := json.Marshal(a)
		if got := appendTokenAnswer(nil, a); string(got) != string(want) {
			t.Fatalf("appendTokenAnswer(%+q)\n got %s\nwant %s", a, got, want)
		}
	})
}
