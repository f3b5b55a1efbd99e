package app

import (
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"

	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/sidecar/tokens"
	"github.com/podidentity/podidentity/test/emulators/imds"
	"github.com/podidentity/podidentity/test/toolbox/wait"
)

func TestReloadOnIdentitiesFileChange(t *testing.T) {
	h := start(t, setup{bound: []contract.Identity{web}, attached: []imds.Identity{webMI, jobsMI}})
	jobsQuery := "&client_id=" + jobsMI.ClientID
	if r := rawGet(t, h.addr, tokenTarget(jobsQuery), md); r.status != 400 {
		t.Fatalf("jobs before binding: %d %s, want 400", r.status, r.raw)
	}
	h.files.write(t, []contract.Identity{web, jobs}) // the kubelet swaps ..data
	wait.Until(t, 15*time.Second, 5*time.Millisecond, "jobs to become bound", func() bool { return rawGet(t, h.addr, tokenTarget(jobsQuery), md).status == 200 })

	h.files.write(t, []contract.Identity{jobs}) // web unbound: its cached token must not be served any more
	wait.Until(t, 15*time.Second, 5*time.Millisecond, "web to become unbound", func() bool {
		return rawGet(t, h.addr, tokenTarget("&client_id="+webMI.ClientID), md).status == 400
	})
	if r := rawGet(t, h.addr, tokenTarget(""), md); r.status != 200 || r.body["client_id"] != jobsMI.ClientID {
		t.Fatalf("default identity after reload: %d %s, want jobs", r.status, r.raw)
	}
}

func TestNotReadyUntilIdentitiesFileRead(t *testing.T) {
	h := start(t, setup{attached: []imds.Identity{webMI}}) // no file yet
	get := func(path string) int {
		resp, err := http.Get("http://" + h.health + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if get("/healthz") != 200 || get("/readyz") != 503 {
		t.Fatalf("before the file: healthz %d readyz %d, want 200 and 503", get("/healthz"), get("/readyz"))
	}
	if r := rawGet(t, h.addr, tokenTarget(""), md); r.status != 400 || !strings.Contains(r.body["error_description"], "no identity is bound") {
		t.Fatalf("token before the file: %d %s", r.status, r.raw)
	}
	h.files.write(t, []contract.Identity{web})
	wait.Until(t, 15*time.Second, 5*time.Millisecond, "ready", func() bool { return get("/readyz") == 200 })
}

func TestWaitsForAttachmentThenSucceeds(t *testing.T) {
	h := start(t, setup{bound: []contract.Identity{web}}) // not attached to the node yet
	done := make(chan response, 1)
	go func() { done <- rawGet(t, h.addr, tokenTarget("&client_id="+webMI.ClientID), md) }()
	wait.Until(t, 15*time.Second, 5*time.Millisecond, "IMDS to say Identity not found", func() bool { return h.emu.Counters().ByStatus[400] >= 2 })
	h.emu.Attach(webMI) // the assigner attaches the identity
	r := <-done
	if r.status != 200 || r.body["client_id"] != webMI.ClientID {
		t.Fatalf("%d %s, want a token once attached", r.status, r.raw)
	}
}

func TestNotAttachedAnswers503WithRetryAfter(t *testing.T) {
	h := start(t, setup{bound: []contract.Identity{web}, cfg: func(c *Config) { c.AttachWait = 500 * time.Millisecond; c.RetryAfter = 3 * time.Second }})
	r := rawGet(t, h.addr, tokenTarget(""), md)
	if r.status != 503 || r.header.Get("Retry-After") != "3" || r.body["error"] != "temporarily_unavailable" ||
		!strings.Contains(r.body["error_description"], "not attached to this node yet") {
		t.Fatalf("%d Retry-After=%q %s; want 503, Retry-After 3 and the reason", r.status, r.header.Get("Retry-After"), r.raw)
	}
	// Once attached, the next request succeeds: failures are not cached.
	h.emu.Attach(webMI)
	if r := rawGet(t, h.addr, tokenTarget(""), md); r.status != 200 {
		t.Fatalf("after attachment: %d %s", r.status, r.raw)
	}
}

func TestThrottledIMDSIsRetried(t *testing.T) {
	h := start(t, setup{bound: []contract.Identity{web}, attached: []imds.Identity{webMI}})
	h.emu.InjectFaults(imds.Fault{Status: 429, Count: 2}, imds.Fault{Status: 410, Count: 1}, imds.Fault{Status: 500, Count: 1})
	if r := rawGet(t, h.addr, tokenTarget(""), md); r.status != 200 {
		t.Fatalf("%d %s, want a token after IMDS recovers", r.status, r.raw)
	}
	if c := h.emu.Counters(); c.TokenRequests != 5 {
		t.Fatalf("IMDS saw %d token requests, want 5 (4 faults, then success)", c.TokenRequests)
	}
}

func TestConcurrentColdRequestsMakeOneUpstreamCall(t *testing.T) {
	// IMDS limits: 5 concurrent, 20/s. Without collapsing, 100 requests would be throttled.
	h := start(t, setup{bound: []contract.Identity{web}, attached: []imds.Identity{webMI},
		emu: imds.Options{Latency: 200 * time.Millisecond, RatePerSecond: 20, MaxConcurrent: 5}})
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 100}}
	var wg sync.WaitGroup
	statuses := make([]int, 100)
	tokensSeen := make([]string, 100)
	for i := range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest(http.MethodGet, "http://"+h.addr+tokenTarget(""), nil)
			req.Header.Set("Metadata", "true")
			resp, err := client.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			statuses[i], tokensSeen[i] = resp.StatusCode, string(b)
		}()
	}
	wg.Wait()
	for i, s := range statuses {
		if s != 200 || !strings.Contains(tokensSeen[i], webMI.ClientID) {
			t.Fatalf("request %d: %d %s", i, s, tokensSeen[i])
		}
	}
	if c := h.emu.Counters(); c.TokenRequests != 1 || c.Throttled != 0 {
		t.Fatalf("IMDS saw %d token requests (%d throttled), want exactly 1", c.TokenRequests, c.Throttled)
	}
}

// TestRefreshAheadOfExpiry drives the sidecar's and the emulator's shared clock through a token's lifetime.
func TestRefreshAheadOfExpiry(t *testing.T) {
	clock := &testClock{now: time.Now()}
	h := start(t, setup{bound: []contract.Identity{web}, attached: []imds.Identity{webMI},
		emu: imds.Options{Now: clock.Now, TokenLifetime: 24 * time.Hour}, cfg: func(c *Config) { c.Now = clock.Now }})
	first := rawGet(t, h.addr, tokenTarget(""), md)
	if first.status != 200 || first.body["expires_in"] != "86400" {
		t.Fatalf("first: %d %s", first.status, first.raw)
	}
	clock.Add(12 * time.Hour)
	r := rawGet(t, h.addr, tokenTarget(""), md)
	if r.body["access_token"] != first.body["access_token"] || r.body["expires_in"] != "43200" || h.emu.Counters().Tokens != 1 {
		t.Fatalf("half-way: a new token or a call to IMDS (%d calls); want the cached token with expires_in 43200: %s", h.emu.Counters().Tokens, r.raw)
	}
	clock.Add(11*time.Hour + 50*time.Minute) // 10 min left: inside the refresh window, still servable
	r = rawGet(t, h.addr, tokenTarget(""), md)
	if r.body["access_token"] != first.body["access_token"] {
		t.Fatalf("in the refresh window the cached token is still served, got another: %s", r.raw)
	}
	wait.Until(t, 15*time.Second, 5*time.Millisecond, "the background refresh", func() bool { return h.emu.Counters().Tokens == 2 })
	wait.Until(t, 15*time.Second, 5*time.Millisecond, "the refreshed token to be served", func() bool {
		r = rawGet(t, h.addr, tokenTarget(""), md)
		return r.body["access_token"] != first.body["access_token"]
	})
	if r.body["expires_in"] != "86400" || h.emu.Counters().Tokens != 2 {
		t.Fatalf("after refresh: %s (%d IMDS calls), want a full-lifetime token and 2 calls", r.raw, h.emu.Counters().Tokens)
	}
}

func TestNeverServesTokenExpiringWithinFiveMinutes(t *testing.T) {
	clock := &testClock{now: time.Now()}
	h := start(t, setup{bound: []contract.Identity{web}, attached: []imds.Identity{webMI},
		emu: imds.Options{Now: clock.Now, TokenLifetime: time.Hour}, cfg: func(c *Config) { c.Now = clock.Now; c.Cache = tokens.Options{RetryInterval: time.Hour} }})
	first := rawGet(t, h.addr, tokenTarget(""), md)
	// Background refresh is disabled by the long retry interval; 4 minutes before expiry the cached token
	// must not be served, so the request fetches.
	clock.Add(56 * time.Minute)
	r := rawGet(t, h.addr, tokenTarget(""), md)
	if r.status != 200 || r.body["access_token"] == first.body["access_token"] || r.body["expires_in"] != "3600" {
		t.Fatalf("4 minutes before expiry: %s, want a fresh token", r.raw)
	}
}

type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *testClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *testClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func TestOtherIMDSPaths(t *testing.T) {
	for _, block := range []bool{false, true} {
		h := start(t, setup{bound: []contract.Identity{web}, attached: []imds.Identity{webMI},
			emu: imds.Options{TenantID: "tenant-1"}, cfg: func(c *Config) { c.BlockInstanceMetadata = block }})
		tests := []struct {
			path    string
			status  int
			contain string
			proxied bool
		}{
			{"/metadata/instance?api-version=2021-02-01", map[bool]int{false: 200, true: 403}[block], map[bool]string{false: "virtualMachines/node-0", true: "blocked"}[block], !block},
			{"/metadata/instance/compute?api-version=2021-02-01", map[bool]int{false: 200, true: 403}[block], "", !block},
			{"/metadata/identity/info?api-version=2018-02-01", 200, `"tenantId":"tenant-1"`, true},
			{"/metadata/versions", 200, "apiVersions", true},
			{"/metadata/Instance?api-version=2021-02-01", 404, "not_found", true}, // IMDS's own 404
			{"/Metadata/instance?api-version=2021-02-01", 404, "no such IMDS path", false},
			{"/metadata/instance%2Fcompute?api-version=2021-02-01", 400, "is not an IMDS path", false},
			{"/", 404, "no such IMDS path", false},
		}
		for _, tt := range tests {
			before := h.emu.Counters().Other
			r := rawGet(t, h.addr, tt.path, md)
			proxied := h.emu.Counters().Other > before
			if r.status != tt.status || !strings.Contains(r.raw, tt.contain) || proxied != tt.proxied {
				t.Errorf("block=%v %s: %d proxied=%v %s; want %d proxied=%v containing %q", block, tt.path, r.status, proxied, r.raw, tt.status, tt.proxied, tt.contain)
			}
		}
		if c := h.emu.Counters(); c.ForwardedFor != 0 {
			t.Fatalf("IMDS received %d requests with X-Forwarded-For", c.ForwardedFor)
		}
	}
}

// TestBareProbeAnsweredImmediately: DefaultAzureCredential's probe (no query, no Metadata header) is answered
// by the sidecar itself, without waiting for IMDS, even when the identity is not attached yet.
func TestBareProbeAnsweredImmediately(t *testing.T) {
	h := start(t, setup{bound: []contract.Identity{web}, emu: imds.Options{Latency: time.Hour}})
	for _, target := range []string{"/metadata/identity/oauth2/token", "/metadata/identity/oauth2/token?"} {
		r := rawGet(t, h.addr, target, nil)
		if r.status != 400 || r.body["error_description"] != "Required metadata header not specified" {
			t.Fatalf("probe %s: %d %s", target, r.status, r.raw)
		}
	}
	if c := h.emu.Counters(); c.TokenRequests != 0 {
		t.Fatalf("the probe reached IMDS (%d requests)", c.TokenRequests)
	}
}

func TestMetadataHeaderOptional(t *testing.T) {
	h := start(t, setup{bound: []contract.Identity{web}, attached: []imds.Identity{webMI}, cfg: func(c *Config) { c.MetadataHeaderRequired = false }})
	if r := rawGet(t, h.addr, tokenTarget(""), nil); r.status != 200 {
		t.Fatalf("without header, not required: %d %s", r.status, r.raw)
	}
	if r := rawGet(t, h.addr, "/metadata/identity/oauth2/token", nil); r.status != 400 || !strings.Contains(r.body["error_description"], "audience") {
		t.Fatalf("bare probe, header not required: %d %s", r.status, r.raw)
	}
}

func TestAuditLogAndMetrics(t *testing.T) {
	h := start(t, setup{bound: []contract.Identity{web}, attached: []imds.Identity{webMI}})
	first := rawGet(t, h.addr, tokenTarget(""), md)
	_ = rawGet(t, h.addr, tokenTarget(""), md)
	_ = rawGet(t, h.addr, tokenTarget("&client_id="+otherMI.ClientID), md)
	var issued []string
	for _, l := range h.logs.all() {
		if strings.Contains(l, first.body["access_token"]) {
			t.Fatalf("a log line carries the token: %s", l)
		}
		if strings.Contains(l, `"token issued"`) {
			issued = append(issued, l)
		}
	}
	if len(issued) != 2 || !strings.Contains(issued[0], `"cache":"miss"`) || !strings.Contains(issued[1], `"cache":"hit"`) {
		t.Fatalf("audit lines %v, want a miss then a hit", issued)
	}
	for _, field := range []string{`"pod":"apps/web-0"`, `"identity":"apps/web"`, `"backend":"node"`, `"resource":"https://management.azure.com/"`, `"latency":`} {
		if !strings.Contains(issued[0], field) {
			t.Fatalf("audit line %s lacks %s", issued[0], field)
		}
	}
	resp, err := http.Get("http://" + h.health + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, m := range []string{
		`podidentity_sidecar_token_requests_total{backend="node",identity="apps/web",result="hit"} 1`,
		`podidentity_sidecar_token_requests_total{backend="node",identity="apps/web",result="miss"} 1`,
		`podidentity_sidecar_token_requests_total{backend="none",identity="none",result="refused"} 1`,
		`podidentity_sidecar_upstream_fetches_total{backend="node",identity="apps/web",result="ok"} 1`,
		`podidentity_sidecar_bound_identities 1`,
	} {
		if !strings.Contains(string(b), m) {
			t.Errorf("metrics lack %s", m)
		}
	}
	if strings.Contains(string(b), "management.azure.com") {
		t.Error("a metric label carries a resource")
	}
}

func TestConfigValidation(t *testing.T) {
	tests := []struct {
		name string
		mut  func(*Config)
		want string
	}{
		{"non-loopback listener", func(c *Config) { c.ListenAddress = "0.0.0.0:15079" }, "not a loopback address"},
		{"retry-after too long", func(c *Config) { c.RetryAfter = time.Minute }, "SDKs stop retrying"},
		{"bad endpoint", func(c *Config) { c.IMDSEndpoint = "169.254.169.254" }, "not an absolute URL"},
		{"no identities file", func(c *Config) { c.IdentitiesFile = "" }, "--identities-file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Config{ListenAddress: "127.0.0.1:15079", HealthAddress: ":15080", IdentitiesFile: "/x", IMDSEndpoint: "http://169.254.169.254", RetryAfter: time.Second}
			tt.mut(&c)
			_, err := New(c, logr.Discard())
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New: %v, want %q", err, tt.want)
			}
		})
	}
}

// TestObjectIDResolution: object IDs are resolved from the bound identities' tokens (the "oid" claim).
func TestObjectIDResolution(t *testing.T) {
	h := start(t, setup{bound: []contract.Identity{web, jobs}, attached: []imds.Identity{webMI, otherMI}, // jobs not attached yet
		cfg: func(c *Config) { c.AttachWait = 300 * time.Millisecond }})
	tests := []struct {
		name   string
		oid    string
		status int
		want   string // token client ID or error substring
	}{
		{"first bound identity, found without touching the others", webMI.ObjectID, 200, webMI.ClientID},
		{"bound but not attached: transient", jobsMI.ObjectID, 503, "not attached to this node yet"},
		{"unbound, while a bound identity cannot be checked yet: transient", otherMI.ObjectID, 503, "not attached to this node yet"},
	}
	for _, tt := range tests {
		r := rawGet(t, h.addr, tokenTarget("&object_id="+tt.oid), md)
		if r.status != tt.status || (tt.status == 200 && r.body["client_id"] != tt.want) || (tt.status != 200 && !strings.Contains(r.body["error_description"], tt.want)) {
			t.Fatalf("%s: %d %s; want %d %q", tt.name, r.status, r.raw, tt.status, tt.want)
		}
	}
	h.emu.Attach(jobsMI)
	if r := rawGet(t, h.addr, tokenTarget("&object_id="+jobsMI.ObjectID), md); r.status != 200 || r.body["client_id"] != jobsMI.ClientID {
		t.Fatalf("after attachment: %d %s", r.status, r.raw)
	}
	if r := rawGet(t, h.addr, tokenTarget("&object_id="+otherMI.ObjectID), md); r.status != 400 || !strings.Contains(r.body["error_description"], "is not an identity bound") {
		t.Fatalf("unbound object id once all bound ones are checked: %d %s", r.status, r.raw)
	}
	if n := h.emu.Counters().TokensByClientID[otherMI.ClientID]; n != 0 {
		t.Fatalf("IMDS issued %d tokens for the unbound identity", n)
	}
}
