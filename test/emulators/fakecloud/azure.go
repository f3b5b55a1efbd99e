package fakecloud

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/podidentity/podidentity/test/emulators/arm"
	"github.com/podidentity/podidentity/test/emulators/imds"
	"github.com/podidentity/podidentity/test/toolbox/jwttest"
)

// Azure is the emulated Azure AD (test/imds.AAD) and ARM (test/arm) of one tenant: the one setup of both, which
// Run serves for the local cluster and Start inside a test.
type Azure struct {
	AAD *imds.AAD
	ARM *arm.Server

	tenantID, audience string
	mu                 sync.Mutex
	calls              []Call
}

// AzureOptions configure NewAzure.
type AzureOptions struct {
	// TenantID is the emulated tenant.
	TenantID string
	// Apps are the service principals the emulated Azure AD knows.
	Apps []imds.App
	// ARM configures the ARM emulator; its Authorize is NewAzure's when ARMAudience is set.
	ARM arm.Options
	// ARMAudience, when set, makes ARM accept only bearer tokens this Azure AD issued for that audience in
	// TenantID, and record each request it accepts (Calls). Empty: ARM accepts any token.
	ARMAudience string
}

// Call is one request ARM accepted: method, resource path, the calling application's client id (the token's
// appid), and when it arrived.
type Call struct {
	Method, Path, AppID string
	At                  time.Time
}

// NewAzure starts the ARM emulator and makes the Azure AD emulator (an http.Handler the caller serves);
// Close stops ARM.
func NewAzure(opts AzureOptions) *Azure {
	a := &Azure{AAD: imds.NewAAD(time.Hour, opts.Apps...), tenantID: opts.TenantID, audience: opts.ARMAudience}
	if opts.ARMAudience != "" {
		opts.ARM.Authorize = a.authorize
	}
	a.ARM = arm.NewServer(opts.ARM)
	return a
}

// Close stops the ARM emulator.
func (a *Azure) Close() { a.ARM.Close() }

// authorize checks the bearer token a client sent ARM: issued by the emulated Azure AD (which counted a token
// for the application named in it), for ARM's audience, in the tenant.
func (a *Azure) authorize(r *http.Request) error {
	h := r.Header.Get("Authorization")
	tok, ok := strings.CutPrefix(h, "Bearer ")
	if !ok {
		return fmt.Errorf("no bearer token (Authorization %q)", h)
	}
	var claims struct {
		Aud   string `json:"aud"`
		AppID string `json:"appid"`
		Tid   string `json:"tid"`
		Exp   int64  `json:"exp"`
	}
	if err := jwttest.DecodeInto(tok, &claims); err != nil {
		return fmt.Errorf("claims: %w", err)
	}
	switch {
	case strings.TrimRight(claims.Aud, "/") != strings.TrimRight(a.audience, "/"):
		return fmt.Errorf("audience %q, want %q", claims.Aud, a.audience)
	case claims.Tid != a.tenantID:
		return fmt.Errorf("tenant %q, want %q", claims.Tid, a.tenantID)
	case time.Unix(claims.Exp, 0).Before(time.Now()):
		return fmt.Errorf("token expired")
	case a.AAD.Tokens(claims.AppID) == 0:
		return fmt.Errorf("application %q got no token from the emulated Azure AD", claims.AppID)
	}
	a.mu.Lock()
	a.calls = append(a.calls, Call{r.Method, r.URL.Path, claims.AppID, time.Now()})
	a.mu.Unlock()
	return nil
}

// Calls returns the requests ARM accepted so far (recorded only with AzureOptions.ARMAudience).
func (a *Azure) Calls() []Call {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]Call(nil), a.calls...)
}

// PatchesBy counts the accepted PATCHes per application.
func (a *Azure) PatchesBy() map[string]int {
	out := map[string]int{}
	for _, c := range a.Calls() {
		if c.Method == http.MethodPatch {
			out[c.AppID]++
		}
	}
	return out
}

// InTest is an Azure served inside a test: Azure AD over TLS on loopback beside ARM.
type InTest struct {
	*Azure
	aad *httptest.Server
}

// Start serves an Azure inside a test, both emulators over TLS on loopback; they stop when the test ends.
func Start(t testing.TB, opts AzureOptions) *InTest {
	t.Helper()
	a := NewAzure(opts)
	t.Cleanup(a.Close)
	s := &InTest{Azure: a, aad: httptest.NewTLSServer(a.AAD)}
	t.Cleanup(s.aad.Close)
	return s
}

// AADURL is the Azure AD emulator's base URL (an authority host: append "/" for the SDK's).
func (s *InTest) AADURL() string { return s.aad.URL }

// certificates are both emulators' serving certificates.
func (s *InTest) certificates() []*x509.Certificate {
	return []*x509.Certificate{s.aad.Certificate(), s.ARM.Certificate()}
}

// HTTPClient trusts both emulators' certificates, and nothing else.
func (s *InTest) HTTPClient() *http.Client {
	pool := x509.NewCertPool()
	for _, c := range s.certificates() {
		pool.AddCert(c)
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
}

// CAFile writes both emulators' certificates to a PEM file in a test directory, for a child process's
// SSL_CERT_FILE.
func (s *InTest) CAFile(t testing.TB) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "emulators-ca.pem")
	var b []byte
	for _, c := range s.certificates() {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
