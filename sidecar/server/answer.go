package server

import (
	"unicode/utf8"
)

// appendTokenAnswer appends the JSON of a to b: the same bytes as json.Marshal(a), without reflection, since
// it runs for every token served (json.Marshal was about a sixth of the handler's CPU).
func appendTokenAnswer(b []byte, a tokenResponse) []byte {
	for i, f := range [...]struct{ name, value string }{
		{"access_token", a.AccessToken}, {"refresh_token", a.RefreshToken}, {"expires_in", a.ExpiresIn},
		{"expires_on", a.ExpiresOn}, {"ext_expires_in", a.ExtExpiresIn}, {"not_before", a.NotBefore},
		{"resource", a.Resource}, {"token_type", a.TokenType}, {"client_id", a.ClientID},
	} {
		if i == 0 {
			b = append(b, '{', '"')
		} else {
			b = append(b, ',', '"')
		}
		b = append(b, f.name...)
		b = append(b, '"', ':')
		b = appendJSONString(b, f.value)
	}
	return append(b, '}')
}

// appendTokenAnswers appends the JSON list of as to b: the same bytes as json.Marshal(as). It is the answer for a
// service principal with auxiliary tenants, as AAD Pod Identity's NMI gave it.
func appendTokenAnswers(b []byte, as []tokenResponse) []byte {
	b = append(b, '[')
	for i, a := range as {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendTokenAnswer(b, a)
	}
	return append(b, ']')
}

const hexDigits = "0123456789abcdef"

// plainASCII holds the ASCII bytes that encoding/json writes as they are.
var plainASCII = func() (t [utf8.RuneSelf]bool) {
	for c := range t {
		t[c] = c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&'
	}
	return t
}()

// appendJSONString appends s as a JSON string escaped exactly as encoding/json does by default: quote,
// backslash and control characters, the HTML characters <, > and &, U+2028 and U+2029, and invalid UTF-8 as
// U+FFFD.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if plainASCII[c] {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
