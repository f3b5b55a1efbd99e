package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/podidentity/podidentity/test/toolbox/jwttest"
)

// Modes of the client, chosen with the MODE environment variable.
const (
	// ModeOnce makes one attempt and exits 0 when it got a token, 1 otherwise.
	ModeOnce = "once"
	// ModeUntilOK retries every interval until a token comes, then idles so the pod stays Running and its log
	// stays readable.
	ModeUntilOK = "until-ok"
	// ModeForever makes one attempt per interval until stopped.
	ModeForever = "forever"
	// ModeRawIMDS sends one plain HTTP GET to the IMDS token endpoint, without any SDK, and prints the answer.
	ModeRawIMDS = "raw-imds"
)

// DefaultRawURL is the IMDS token endpoint the raw mode asks; the pod's redirect sends it to the sidecar.
const DefaultRawURL = "http://169.254.169.254/metadata/identity/oauth2/token"

// Config is the client's whole configuration, read from the environment.
type Config struct {
	Mode string
	// ClientID selects a user-assigned identity; empty asks for the default identity.
	ClientID string
	// Scope is the token scope (TOKEN_RESOURCE, with /.default appended when missing).
	Scope string
	// Interval separates attempts in the until-ok and forever modes.
	Interval time.Duration
	// AttemptTimeout bounds one attempt, SDK retries included.
	AttemptTimeout time.Duration
	// RawURL and RawQuery are what the raw-imds mode asks.
	RawURL, RawQuery string
	// Fresh makes every attempt use a new credential (FRESH_CREDENTIAL=true), so that each one asks IMDS
	// instead of the SDK's token cache: what a measurement of token availability over time needs.
	Fresh bool
}

// ConfigFromEnv reads the configuration; getenv is os.Getenv in the binary.
func ConfigFromEnv(getenv func(string) string) (Config, error) {
	c := Config{
		Mode:           getenv("MODE"),
		ClientID:       getenv("AZURE_CLIENT_ID"),
		Scope:          ScopeOf(getenv("TOKEN_RESOURCE")),
		Interval:       time.Second,
		AttemptTimeout: time.Minute,
		RawURL:         getenv("RAW_URL"),
		RawQuery:       getenv("QUERY"),
		Fresh:          getenv("FRESH_CREDENTIAL") == "true",
	}
	if c.Mode == "" {
		c.Mode = ModeOnce
	}
	switch c.Mode {
	case ModeOnce, ModeUntilOK, ModeForever, ModeRawIMDS:
	default:
		return c, fmt.Errorf("MODE=%q: use one of once, until-ok, forever, raw-imds", c.Mode)
	}
	for _, d := range []struct {
		env string
		dst *time.Duration
	}{{"INTERVAL", &c.Interval}, {"ATTEMPT_TIMEOUT", &c.AttemptTimeout}} {
		v := getenv(d.env)
		if v == "" {
			continue
		}
		parsed, err := time.ParseDuration(v)
		if err != nil || parsed <= 0 {
			return c, fmt.Errorf("%s=%q: give a positive Go duration such as 500ms or 2s", d.env, v)
		}
		*d.dst = parsed
	}
	if c.RawURL == "" {
		c.RawURL = DefaultRawURL
	}
	if c.RawQuery == "" {
		c.RawQuery = "api-version=2018-02-01&resource=" + strings.TrimSuffix(c.Scope, "/.default")
		if c.ClientID != "" {
			c.RawQuery += "&client_id=" + c.ClientID
		}
	}
	return c, nil
}

// ScopeOf turns a resource (https://vault.azure.net) or a scope into a scope; empty means Azure Resource
// Manager, what most workloads ask for.
func ScopeOf(resource string) string {
	switch {
	case resource == "":
		return "https://management.azure.com/.default"
	case strings.HasSuffix(resource, "/.default"):
		return resource
	default:
		return strings.TrimSuffix(resource, "/") + "/.default"
	}
}

// Token is what one successful attempt got.
type Token struct {
	Value     string
	ExpiresOn time.Time
}

// TokenFunc gets one token for a scope (the Azure SDK in the binary, a fake in tests).
type TokenFunc func(ctx context.Context, scope string) (Token, error)

// Line is one JSON line of output: one attempt.
type Line struct {
	OK        bool           `json:"ok"`
	SDK       string         `json:"sdk"`
	Claims    map[string]any `json:"claims,omitempty"`
	ExpiresOn string         `json:"expiresOn,omitempty"`
	Status    int            `json:"status,omitempty"`
	Body      string         `json:"body,omitempty"`
	Error     string         `json:"error,omitempty"`
	ElapsedMs int64          `json:"elapsedMs"`
	Attempt   int            `json:"attempt"`
	// Time is when the attempt ended (RFC 3339, UTC), so a reader can relate it to pod events.
	Time string `json:"time"`
}

// Claims decodes a JWT's payload without verifying it: the client reports what the token says, and the test
// that reads the line decides whether that is right.
func Claims(jwt string) (map[string]any, error) {
	var claims map[string]any
	if err := jwttest.DecodeInto(jwt, &claims); err != nil {
		return nil, err
	}
	return claims, nil
}

// Runner runs the client's loop. Its clock and sleep are fields so the loop is testable without waiting.
type Runner struct {
	Config Config
	Token  TokenFunc
	// HTTP is the client of the raw mode.
	HTTP *http.Client
	Out  io.Writer
	Now  func() time.Time
	// Sleep waits d or until ctx ends; it reports whether the full d passed.
	Sleep func(ctx context.Context, d time.Duration) bool
}

// Run runs the configured mode and returns the process exit code.
func (r *Runner) Run(ctx context.Context) int {
	enc := json.NewEncoder(r.Out)
	enc.SetEscapeHTML(false)
	if r.Config.Mode == ModeRawIMDS {
		line := r.raw(ctx)
		_ = enc.Encode(line)
		if line.Status == 0 {
			return 1
		}
		return 0
	}
	for attempt := 1; ; attempt++ {
		line := r.attempt(ctx, attempt)
		_ = enc.Encode(line)
		switch {
		case r.Config.Mode == ModeOnce:
			if line.OK {
				return 0
			}
			return 1
		case r.Config.Mode == ModeUntilOK && line.OK:
			<-ctx.Done() // keep the pod Running with its log
			return 0
		}
		if !r.Sleep(ctx, r.Config.Interval) {
			return 0 // stopped (SIGTERM): not a failure
		}
	}
}

func (r *Runner) attempt(ctx context.Context, n int) Line {
	start := r.Now()
	actx, cancel := context.WithTimeout(ctx, r.Config.AttemptTimeout)
	defer cancel()
	tok, err := r.Token(actx, r.Config.Scope)
	end := r.Now()
	line := Line{SDK: "go", Attempt: n, ElapsedMs: end.Sub(start).Milliseconds(), Time: end.UTC().Format(time.RFC3339Nano)}
	if err == nil {
		line.Claims, err = Claims(tok.Value)
	}
	if err != nil {
		line.Error = oneLine(err.Error())
		line.Claims = nil
		return line
	}
	line.OK = true
	line.ExpiresOn = tok.ExpiresOn.UTC().Format(time.RFC3339)
	return line
}

// raw asks the IMDS token endpoint directly, with Metadata: true, and reports status and body as they came.
func (r *Runner) raw(ctx context.Context) Line {
	start := r.Now()
	line := Line{SDK: "raw", Attempt: 1}
	finish := func() Line {
		end := r.Now()
		line.ElapsedMs, line.Time = end.Sub(start).Milliseconds(), end.UTC().Format(time.RFC3339Nano)
		return line
	}
	actx, cancel := context.WithTimeout(ctx, r.Config.AttemptTimeout)
	defer cancel()
	u := r.Config.RawURL
	if r.Config.RawQuery != "" {
		u += "?" + r.Config.RawQuery
	}
	req, err := http.NewRequestWithContext(actx, http.MethodGet, u, nil)
	if err != nil {
		line.Error = err.Error()
		return finish()
	}
	req.Header.Set("Metadata", "true")
	resp, err := r.HTTP.Do(req)
	if err != nil {
		line.Error = oneLine(err.Error())
		return finish()
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		line.Error = "reading the answer: " + err.Error()
	}
	line.Status, line.Body = resp.StatusCode, strings.TrimSpace(string(body))
	line.OK = resp.StatusCode == http.StatusOK
	if line.OK {
		var answer struct {
			AccessToken string `json:"access_token"`
		}
		if json.Unmarshal(body, &answer) == nil && answer.AccessToken != "" {
			line.Claims, _ = Claims(answer.AccessToken)
		}
	}
	return finish()
}

// oneLine keeps an SDK's multi-line error message on the one JSON line of its attempt.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// SleepContext waits d or until ctx ends.
func SleepContext(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
