// Package upstream talks to the node's Instance Metadata Service: it fetches user-assigned managed identity
// tokens (selected by client_id, never with X-Forwarded-For), retrying with backoff while the identity is not
// yet attached to the node or IMDS is throttling or restarting, and it proxies the other IMDS paths.
package upstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/podidentity/podidentity/sidecar/loopguard"
	"github.com/podidentity/podidentity/sidecar/tokens"
)

// TokenPath is the IMDS managed-identity token path.
const TokenPath = "/metadata/identity/oauth2/token"

// APIVersion is the token API version the sidecar asks IMDS for.
const APIVersion = "2018-02-01"

// MaxRetryAfter bounds the Retry-After the sidecar answers with: Go azidentity gives up on a Retry-After above
// 25 s, so 20 s keeps every SDK retrying.
const MaxRetryAfter = 20 * time.Second

// Options configure the IMDS client. Zero values take the defaults noted.
type Options struct {
	// Endpoint is IMDS's base URL (default http://169.254.169.254).
	Endpoint string
	// HTTP is the client (default: a client with no proxy and a 10 s timeout per attempt).
	HTTP *http.Client
	// MaxWait bounds how long one token fetch keeps retrying (identity not yet attached, 429, 410, 5xx)
	// before the app gets 503 (default 15 s).
	MaxWait time.Duration
	// InitialBackoff and MaxBackoff shape the retry delays (defaults 250 ms and 4 s, doubling).
	InitialBackoff time.Duration
	MaxBackoff     time.Duration
	// RetryAfter is what a 503 tells the app to wait (default 5 s, at most MaxRetryAfter).
	RetryAfter time.Duration
	// Sleep waits between attempts (default: a timer honouring ctx); tests replace it.
	Sleep func(ctx context.Context, d time.Duration) error
	// Now is the clock used to turn expires_in into a time (default time.Now).
	Now func() time.Time
	// Nonce goes in the loopguard.Header of every request to IMDS (token fetches, proxied requests, probes), so
	// that the sidecar's own server recognises a request that the redirect sent back to it. Empty: no header.
	Nonce string
}

// Client is the node IMDS client.
type Client struct {
	base *url.URL
	opts Options
}

// New returns an IMDS client for the endpoint.
func New(opts Options) (*Client, error) {
	if opts.Endpoint == "" {
		opts.Endpoint = "http://169.254.169.254"
	}
	base, err := url.Parse(opts.Endpoint)
	if err != nil || base.Scheme == "" || base.Host == "" {
		return nil, fmt.Errorf("--imds-endpoint %q is not an absolute URL such as http://169.254.169.254", opts.Endpoint)
	}
	base.Path = strings.TrimSuffix(base.Path, "/")
	if opts.HTTP == nil {
		opts.HTTP = &http.Client{
			Timeout:   10 * time.Second,
			Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 4, IdleConnTimeout: 90 * time.Second},
		}
	}
	if opts.MaxWait <= 0 {
		opts.MaxWait = 15 * time.Second
	}
	if opts.InitialBackoff <= 0 {
		opts.InitialBackoff = 250 * time.Millisecond
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = 4 * time.Second
	}
	if opts.RetryAfter <= 0 {
		opts.RetryAfter = 5 * time.Second
	}
	opts.RetryAfter = min(opts.RetryAfter, MaxRetryAfter)
	if opts.Sleep == nil {
		opts.Sleep = sleep
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Client{base: base, opts: opts}, nil
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// attempt is the outcome of one request to IMDS.
type attempt struct {
	token      tokens.Token
	err        *tokens.Error // a final answer (non-retryable)
	retry      string        // why to retry, when non-empty
	retryAfter time.Duration // IMDS's own Retry-After
}

// Token fetches a token for the user-assigned identity with this client ID. It retries while IMDS answers
// "Identity not found" (the assigner has not attached the identity yet), 429, 410 or 5xx, for at most
// MaxWait; then it returns a *tokens.Error with status 503 and a Retry-After. Other IMDS errors are returned as
// a *tokens.Error carrying IMDS's status and body.
func (c *Client) Token(ctx context.Context, clientID, resource string) (tokens.Token, error) {
	deadline := time.Now().Add(c.opts.MaxWait)
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	backoff := c.opts.InitialBackoff
	var last string
	for {
		a := c.once(ctx, clientID, resource)
		if a.retry == "" {
			if a.err != nil {
				return tokens.Token{}, a.err
			}
			return a.token, nil
		}
		if ctx.Err() == nil || last == "" {
			last = a.retry // an attempt cut short by the deadline says less than the one before it
		}
		wait := max(backoff, a.retryAfter)
		backoff = min(backoff*2, c.opts.MaxBackoff)
		if time.Until(deadline) < wait || c.opts.Sleep(ctx, wait) != nil {
			return tokens.Token{}, &tokens.Error{
				Status: http.StatusServiceUnavailable, Code: "temporarily_unavailable", RetryAfter: c.opts.RetryAfter,
				Description: fmt.Sprintf("no token for client ID %s yet after %s: %s; retry after %d s",
					clientID, c.opts.MaxWait, last, int(c.opts.RetryAfter/time.Second)),
			}
		}
	}
}

func (c *Client) once(ctx context.Context, clientID, resource string) attempt {
	q := url.Values{"api-version": {APIVersion}, "resource": {resource}, "client_id": {clientID}}
	u := *c.base
	u.Path += TokenPath
	u.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return attempt{err: &tokens.Error{Status: http.StatusInternalServerError, Code: "internal_error", Description: err.Error()}}
	}
	req.Header.Set("Metadata", "true")
	c.tag(req.Header)
	resp, err := c.opts.HTTP.Do(req)
	if err != nil {
		return attempt{retry: "IMDS unreachable (" + err.Error() + ")"}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return attempt{retry: "reading IMDS's answer failed (" + err.Error() + ")"}
	}
	if resp.StatusCode == http.StatusOK {
		tok, err := c.parse(body, clientID, resource)
		if err != nil {
			return attempt{err: &tokens.Error{Status: http.StatusBadGateway, Code: "invalid_upstream_response", Description: err.Error()}}
		}
		return attempt{token: tok}
	}
	var e struct {
		Error       string `json:"error"`
		Description string `json:"error_description"`
	}
	_ = json.Unmarshal(body, &e)
	retryAfter := parseRetryAfter(resp.Header.Get("Retry-After"))
	switch {
	case resp.StatusCode == http.StatusLoopDetected && e.Error == loopguard.Code:
		// The request came back to the sidecar: every retry would too, until the exemption is installed. The
		// app gets a transient error at once, and the sidecar is not ready meanwhile (loopguard.Check).
		return attempt{err: &tokens.Error{Status: http.StatusServiceUnavailable, Code: "temporarily_unavailable",
			RetryAfter: c.opts.RetryAfter, Description: "no token: " + e.Description}}
	case (resp.StatusCode == http.StatusBadRequest || resp.StatusCode == http.StatusNotFound) &&
		strings.Contains(strings.ToLower(e.Description), "identity not found"):
		return attempt{retry: "IMDS says \"Identity not found\": the identity is not attached to this node yet (the assigner attaches it)"}
	case resp.StatusCode == http.StatusTooManyRequests:
		return attempt{retry: "IMDS is throttling (429)", retryAfter: retryAfter}
	case resp.StatusCode == http.StatusGone:
		return attempt{retry: "IMDS is restarting (410)", retryAfter: retryAfter}
	case resp.StatusCode >= 500:
		return attempt{retry: fmt.Sprintf("IMDS answered %d", resp.StatusCode), retryAfter: retryAfter}
	}
	if e.Error == "" {
		e.Error, e.Description = "upstream_error", strings.TrimSpace(string(body))
	}
	return attempt{err: &tokens.Error{Status: resp.StatusCode, Code: e.Error, Description: e.Description}}
}

// parse reads IMDS's token answer; values are strings, though numbers are tolerated.
func (c *Client) parse(body []byte, clientID, resource string) (tokens.Token, error) {
	var r struct {
		AccessToken string          `json:"access_token"`
		ExpiresOn   json.RawMessage `json:"expires_on"`
		ExpiresIn   json.RawMessage `json:"expires_in"`
		NotBefore   json.RawMessage `json:"not_before"`
		TokenType   string          `json:"token_type"`
		ClientID    string          `json:"client_id"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return tokens.Token{}, fmt.Errorf("IMDS answered 200 with a body that is not a token: %w", err)
	}
	if r.AccessToken == "" {
		return tokens.Token{}, errors.New("IMDS answered 200 without an access_token")
	}
	now := c.opts.Now()
	t := tokens.Token{AccessToken: r.AccessToken, Resource: resource, ClientID: clientID, TokenType: r.TokenType}
	if on, ok := number(r.ExpiresOn); ok {
		t.ExpiresOn = time.Unix(on, 0)
	} else if in, ok := number(r.ExpiresIn); ok {
		t.ExpiresOn = now.Add(time.Duration(in) * time.Second)
	} else {
		return tokens.Token{}, errors.New("IMDS answered a token without expires_on or expires_in")
	}
	if nb, ok := number(r.NotBefore); ok {
		t.NotBefore = time.Unix(nb, 0)
	}
	if r.ClientID != "" {
		t.ClientID = r.ClientID
	}
	if t.TokenType == "" {
		t.TokenType = "Bearer"
	}
	return t, nil
}

func number(raw json.RawMessage) (int64, bool) {
	s := strings.Trim(strings.TrimSpace(string(raw)), `"`)
	if s == "" {
		return 0, false
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		f, ferr := strconv.ParseFloat(s, 64)
		if ferr != nil {
			return 0, false
		}
		n = int64(f)
	}
	return n, true
}

func parseRetryAfter(v string) time.Duration {
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(v); err == nil && s > 0 {
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		return time.Until(t)
	}
	return 0
}

// tag marks a request to IMDS as this sidecar's own (see Options.Nonce).
func (c *Client) tag(h http.Header) {
	if c.opts.Nonce != "" {
		h[loopguard.Header] = []string{c.opts.Nonce}
	}
}

// ProbePath is what Probe asks IMDS for: a path every IMDS answers, that needs no identity.
const ProbePath = "/metadata/versions"

// Probe sends GET /metadata/versions with "Metadata: true" and the nonce, as loopguard.Check's probe: nil
// for any HTTP answer (the answer's status does not matter, only where it came from), an error when none came.
func (c *Client) Probe(ctx context.Context) error {
	u := *c.base
	u.Path += ProbePath
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return err
	}
	req.Header.Set("Metadata", "true")
	c.tag(req.Header)
	resp, err := c.opts.HTTP.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	return resp.Body.Close()
}

// Proxy forwards a request unchanged to the node's IMDS. It is built with Rewrite, which (unlike Director)
// adds no X-Forwarded-For: IMDS refuses requests carrying it. Incoming X-Forwarded-* headers are dropped. The
// nonce header replaces whatever the app sent under that name.
func (c *Client) Proxy() http.Handler {
	target := *c.base
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(&target)
			pr.Out.Host = target.Host
			delete(pr.Out.Header, loopguard.Header)
			c.tag(pr.Out.Header)
		},
		Transport: c.opts.HTTP.Transport,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			w.Header().Set("Content-Type", "application/json; charset=utf-8")
			w.WriteHeader(http.StatusBadGateway)
			_ = json.NewEncoder(w).Encode(map[string]string{"error": "bad_gateway",
				"error_description": "the node's IMDS did not answer: " + err.Error()})
		},
	}
}
