package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func jwtWith(t *testing.T, claims map[string]any) string {
	t.Helper()
	b, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	enc := base64.RawURLEncoding
	return enc.EncodeToString([]byte(`{"alg":"RS256"}`)) + "." + enc.EncodeToString(b) + ".c2ln"
}

func TestConfigFromEnv(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		want    Config
		wantErr string
	}{
		{
			name: "defaults",
			want: Config{Mode: ModeOnce, Scope: "https://management.azure.com/.default", Interval: time.Second, AttemptTimeout: time.Minute,
				RawURL: DefaultRawURL, RawQuery: "api-version=2018-02-01&resource=https://management.azure.com"},
		},
		{
			name: "user-assigned identity, resource without .default, fast retries",
			env:  map[string]string{"MODE": "until-ok", "AZURE_CLIENT_ID": "c1", "TOKEN_RESOURCE": "https://vault.azure.net/", "INTERVAL": "250ms"},
			want: Config{Mode: ModeUntilOK, ClientID: "c1", Scope: "https://vault.azure.net/.default", Interval: 250 * time.Millisecond,
				AttemptTimeout: time.Minute, RawURL: DefaultRawURL, RawQuery: "api-version=2018-02-01&resource=https://vault.azure.net&client_id=c1"},
		},
		{
			name: "raw mode keeps the query as given",
			env:  map[string]string{"MODE": "raw-imds", "QUERY": "resource=x&client_id=y", "RAW_URL": "http://10.0.0.1/t"},
			want: Config{Mode: ModeRawIMDS, Scope: "https://management.azure.com/.default", Interval: time.Second, AttemptTimeout: time.Minute,
				RawURL: "http://10.0.0.1/t", RawQuery: "resource=x&client_id=y"},
		},
		{
			name: "every attempt with a fresh credential",
			env:  map[string]string{"MODE": "forever", "FRESH_CREDENTIAL": "true"},
			want: Config{Mode: ModeForever, Scope: "https://management.azure.com/.default", Interval: time.Second, AttemptTimeout: time.Minute,
				RawURL: DefaultRawURL, RawQuery: "api-version=2018-02-01&resource=https://management.azure.com", Fresh: true},
		},
		{name: "unknown mode", env: map[string]string{"MODE": "sometimes"}, wantErr: `MODE="sometimes"`},
		{name: "bad interval", env: map[string]string{"INTERVAL": "1"}, wantErr: `INTERVAL="1"`},
		{name: "negative timeout", env: map[string]string{"ATTEMPT_TIMEOUT": "-1s"}, wantErr: `ATTEMPT_TIMEOUT="-1s"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ConfigFromEnv(func(k string) string { return tt.env[k] })
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("config = %+v\nwant     %+v", got, tt.want)
			}
		})
	}
}

func TestClaims(t *testing.T) {
	header := base64.RawURLEncoding.EncodeToString([]byte(`{"typ":"JWT","alg":"RS256"}`))
	tests := []struct {
		name    string
		token   string
		want    string // the appid claim
		wantErr string
	}{
		{name: "JWT", token: jwtWith(t, map[string]any{"appid": "a1", "exp": 5}), want: "a1"},
		{name: "padded payload", token: header + "." + base64.URLEncoding.EncodeToString([]byte(`{"appid":"a2"}`)) + ".c2ln", want: "a2"},
		{name: "opaque token", token: "abc", wantErr: "not a JWT"},
		{name: "payload not base64", token: header + ".!!.c2ln", wantErr: "could not base64 decode claim"},
		{name: "payload not an object", token: header + "." + base64.RawURLEncoding.EncodeToString([]byte(`[1]`)) + ".c2ln", wantErr: "could not JSON decode claim"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Claims(tt.token)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got["appid"] != tt.want {
				t.Errorf("appid = %v, want %s", got["appid"], tt.want)
			}
		})
	}
}

// fakeClock advances one second per reading, so elapsed times are known without real waiting.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { c.t = c.t.Add(time.Second); return c.t }

func TestRunModes(t *testing.T) {
	good := Token{Value: jwtWith(t, map[string]any{"appid": "c1"}), ExpiresOn: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
	notFound := errors.New("ManagedIdentityCredential authentication failed.\nthe requested identity isn't assigned")
	tests := []struct {
		name  string
		mode  string
		seq   []error // nil is a token; the last entry repeats
		sleep int     // sleeps that complete before the context "ends" (forever mode)
		// want
		code     int
		attempts []bool // ok per printed line
	}{
		{name: "once ok", mode: ModeOnce, seq: []error{nil}, code: 0, attempts: []bool{true}},
		{name: "once failing", mode: ModeOnce, seq: []error{notFound}, code: 1, attempts: []bool{false}},
		{name: "until-ok retries then idles", mode: ModeUntilOK, seq: []error{notFound, notFound, nil}, sleep: 10, code: 0, attempts: []bool{false, false, true}},
		{name: "until-ok stopped while failing", mode: ModeUntilOK, seq: []error{notFound}, sleep: 1, code: 0, attempts: []bool{false, false}},
		{name: "forever keeps going after success", mode: ModeForever, seq: []error{nil, notFound, nil}, sleep: 3, code: 0, attempts: []bool{true, false, true, true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			calls, sleeps := 0, 0
			var out bytes.Buffer
			clock := &fakeClock{t: time.Unix(0, 0)}
			r := &Runner{
				Config: Config{Mode: tt.mode, Scope: "s/.default", Interval: time.Hour, AttemptTimeout: time.Hour},
				Token: func(ctx context.Context, scope string) (Token, error) {
					if scope != "s/.default" {
						t.Errorf("scope = %q", scope)
					}
					err := tt.seq[min(calls, len(tt.seq)-1)]
					calls++
					if err != nil {
						return Token{}, err
					}
					if calls == len(tt.seq) && tt.mode == ModeUntilOK {
						cancel() // the idle wait after success must end with the context
					}
					return good, nil
				},
				Out: &out,
				Now: clock.now,
				Sleep: func(ctx context.Context, d time.Duration) bool {
					if d != time.Hour {
						t.Errorf("slept %v, want the interval", d)
					}
					sleeps++
					if sleeps > tt.sleep {
						cancel()
						return false
					}
					return true
				},
			}
			if code := r.Run(ctx); code != tt.code {
				t.Errorf("exit code = %d, want %d", code, tt.code)
			}
			var got []bool
			sc := bufio.NewScanner(&out)
			for sc.Scan() {
				var l Line
				if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
					t.Fatalf("line %q is not JSON: %v", sc.Text(), err)
				}
				got = append(got, l.OK)
				if l.SDK != "go" || l.Attempt != len(got) || l.ElapsedMs != 1000 {
					t.Errorf("line %d = %s: want sdk go, attempt %d, elapsedMs 1000", len(got), sc.Text(), len(got))
				}
				if l.OK && (l.Claims["appid"] != "c1" || l.ExpiresOn != "2030-01-02T03:04:05Z" || l.Error != "") {
					t.Errorf("ok line %s: want appid c1 and expiresOn 2030-01-02T03:04:05Z", sc.Text())
				}
				if !l.OK && (l.Error == "" || strings.Contains(l.Error, "\n") || l.Claims != nil) {
					t.Errorf("failed line %s: want a one-line error and no claims", sc.Text())
				}
			}
			if len(got) != len(tt.attempts) {
				t.Fatalf("attempts = %v, want %v\n%s", got, tt.attempts, out.String())
			}
			for i := range got {
				if got[i] != tt.attempts[i] {
					t.Fatalf("attempts = %v, want %v\n%s", got, tt.attempts, out.String())
				}
			}
		})
	}
}

func TestRunRawIMDS(t *testing.T) {
	var gotHeader, gotQuery string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotHeader, gotQuery = r.Header.Get("Metadata"), r.URL.RawQuery
		if r.URL.Query().Get("client_id") == "bound" {
			_ = json.NewEncoder(w).Encode(map[string]string{"access_token": jwtWith(t, map[string]any{"appid": "bound"})})
			return
		}
		w.WriteHeader(http.StatusForbidden)
		_, _ = w.Write([]byte(`{"error":"invalid_request","error_description":"identity not bound"}` + "\n"))
	}))
	defer srv.Close()
	tests := []struct {
		name   string
		query  string
		status int
		ok     bool
		body   string
		appid  any
	}{
		{name: "refused", query: "resource=r&client_id=other", status: 403, body: `{"error":"invalid_request","error_description":"identity not bound"}`},
		{name: "token", query: "resource=r&client_id=bound", status: 200, ok: true, appid: "bound"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			clock := &fakeClock{}
			r := &Runner{Config: Config{Mode: ModeRawIMDS, RawURL: srv.URL + "/metadata/identity/oauth2/token", RawQuery: tt.query, AttemptTimeout: time.Minute},
				HTTP: srv.Client(), Out: &out, Now: clock.now}
			if code := r.Run(context.Background()); code != 0 {
				t.Errorf("exit code = %d, want 0 (the request got an answer)", code)
			}
			var l Line
			if err := json.Unmarshal(out.Bytes(), &l); err != nil {
				t.Fatalf("output %q: %v", out.String(), err)
			}
			if gotHeader != "true" || gotQuery != tt.query {
				t.Errorf("server saw Metadata=%q query=%q", gotHeader, gotQuery)
			}
			if l.Status != tt.status || l.OK != tt.ok || l.SDK != "raw" || (tt.body != "" && l.Body != tt.body) || l.Claims["appid"] != tt.appid {
				t.Errorf("line = %s", out.String())
			}
		})
	}
	t.Run("unreachable", func(t *testing.T) {
		var out bytes.Buffer
		r := &Runner{Config: Config{Mode: ModeRawIMDS, RawURL: "http://127.0.0.1:1/x", AttemptTimeout: time.Minute},
			HTTP: &http.Client{}, Out: &out, Now: (&fakeClock{}).now}
		if code := r.Run(context.Background()); code != 1 {
			t.Errorf("exit code = %d, want 1", code)
		}
		if !strings.Contains(out.String(), `"error":"Get`) {
			t.Errorf("line = %s, want the connection error", out.String())
		}
	})
}
