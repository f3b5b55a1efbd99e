package app

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

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"

	"github.com/podidentity/podidentity/assigner/config"
	"github.com/podidentity/podidentity/test/emulators/arm"
	"github.com/podidentity/podidentity/test/emulators/imds"
	"github.com/podidentity/podidentity/test/toolbox/jwttest"
	"github.com/podidentity/podidentity/test/toolbox/pki"
)

const (
	fakeTenant   = "72f988bf-0000-4000-8000-00000000aaaa"
	fakeAudience = "https://management.emulator.test/"
)

// fakeCloud is an emulated Azure AD (test/emulators/imds.AAD) and an ARM emulator (test/emulators/arm), both served over TLS on
// loopback. ARM accepts only bearer tokens that this Azure AD issued for ARM's audience and tenant, and
// records which application made each request, so tests see exactly who wrote what.
type fakeCloud struct {
	aad    *imds.AAD
	aadSrv *httptest.Server
	arm    *arm.Server

	mu      sync.Mutex
	callers []armCall
}

// armCall is one request ARM accepted: method, resource path, the calling application's client id, and
// when it arrived.
type armCall struct {
	method, path, appID string
	at                  time.Time
}

func newFakeCloud(t *testing.T, armOpts arm.Options, apps ...imds.App) *fakeCloud {
	t.Helper()
	fc := &fakeCloud{aad: imds.NewAAD(time.Hour, apps...)}
	fc.aadSrv = httptest.NewTLSServer(fc.aad)
	t.Cleanup(fc.aadSrv.Close)
	armOpts.Authorize = fc.authorize
	fc.arm = arm.New(t, armOpts)
	return fc
}

// authorize checks the bearer token the SDK sent: issued by the emulated Azure AD (which counted a token for
// the application named in it), for ARM's audience, in the tenant.
func (fc *fakeCloud) authorize(r *http.Request) error {
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
	case strings.TrimRight(claims.Aud, "/") != strings.TrimRight(fakeAudience, "/"):
		return fmt.Errorf("audience %q, want %q", claims.Aud, fakeAudience)
	case claims.Tid != fakeTenant:
		return fmt.Errorf("tenant %q, want %q", claims.Tid, fakeTenant)
	case time.Unix(claims.Exp, 0).Before(time.Now()):
		return fmt.Errorf("token expired")
	case fc.aad.Tokens(claims.AppID) == 0:
		return fmt.Errorf("application %q got no token from the emulated Azure AD", claims.AppID)
	}
	fc.mu.Lock()
	fc.callers = append(fc.callers, armCall{r.Method, r.URL.Path, claims.AppID, time.Now()})
	fc.mu.Unlock()
	return nil
}

// calls returns the requests ARM accepted so far.
func (fc *fakeCloud) calls() []armCall {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	return append([]armCall(nil), fc.callers...)
}

// patchesBy counts accepted PATCHes per application.
func (fc *fakeCloud) patchesBy() map[string]int {
	out := map[string]int{}
	for _, c := range fc.calls() {
		if c.method == http.MethodPatch {
			out[c.appID]++
		}
	}
	return out
}

// cloudConfig is what the assigner makes of --arm-endpoint, --arm-audience and --aad-authority.
func (fc *fakeCloud) cloudConfig(t *testing.T) cloud.Configuration {
	t.Helper()
	c, err := config.Cloud("", fc.arm.URL(), fakeAudience, fc.aadSrv.URL+"/")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// httpClient trusts both emulators' certificates (and nothing else).
func (fc *fakeCloud) httpClient() *http.Client {
	pool := x509.NewCertPool()
	pool.AddCert(fc.aadSrv.Certificate())
	pool.AddCert(fc.arm.Certificate())
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
}

// caFile writes both emulators' certificates to a PEM file, for a child process's SSL_CERT_FILE.
func (fc *fakeCloud) caFile(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "emulators-ca.pem")
	var b []byte
	for _, c := range []*x509.Certificate{fc.aadSrv.Certificate(), fc.arm.Certificate()} {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// newCertificate makes a self-signed RSA certificate for a service principal and writes it with its key
// to a PEM file (what aadClientCertPath / AZURE_CLIENT_CERTIFICATE_PATH point at).
func newCertificate(t *testing.T, dir, name string) (*x509.Certificate, string) {
	t.Helper()
	pair := pki.SelfSigned(pki.Spec{CommonName: name, RSA: true})
	path := filepath.Join(dir, name+".pem")
	if err := os.WriteFile(path, append(pair.CertPEM(), pair.PKCS8KeyPEM()...), 0o600); err != nil {
		t.Fatal(err)
	}
	return pair.Cert, path
}
