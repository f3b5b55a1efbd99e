package imds

import (
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"github.com/golang-jwt/jwt/v5"
)

// ClientAssertionTypeJWT is the client_assertion_type of a JWT client assertion (RFC 7523).
const ClientAssertionTypeJWT = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

// FederationAudience is the audience Azure AD's federated identity credentials expect by default.
const FederationAudience = "api://AzureADTokenExchange"

// FederatedCredential is a federated identity credential of an app or managed identity: Azure AD accepts, as
// the app's client assertion, a token of Issuer for Subject (for Kubernetes:
// system:serviceaccount:<namespace>:<name>) whose audience is one of Audiences (default FederationAudience).
type FederatedCredential struct {
	Name      string
	Issuer    string
	Subject   string
	Audiences []string
}

// App is a service principal registered in the emulated Azure AD: it authenticates with Secret, or with a
// client assertion signed by the key of Certificate.
type App struct {
	TenantID string
	// OtherTenants are further tenants the application is provisioned in (a multi-tenant application with a
	// service principal there): it gets tokens from them too, their tid in the claims.
	OtherTenants []string
	ClientID     string
	ObjectID     string
	Secret       string
	Certificate  *x509.Certificate
	// Federated are the app's federated identity credentials (workload identity federation).
	Federated []FederatedCredential
}

// AAD emulates the Azure AD v2 endpoints that azidentity's client-secret and client-certificate credentials
// use: the OpenID configuration document and the client-credentials token grant. Serve it over TLS (azidentity
// requires https) and point azidentity at it with cloud.Configuration.ActiveDirectoryAuthorityHost and
// DisableInstanceDiscovery.
type AAD struct {
	mu       sync.Mutex
	apps     map[string]App // by client ID
	tokens   map[string]int // by client ID
	lifetime time.Duration

	// Federation: the client that fetches issuers' discovery documents and keys, the clock, the issuers'
	// providers (discovery read once per issuer; keys refetched when an unknown key ID shows up), and, with
	// refuseReplays, the assertion IDs already used.
	discovery     *http.Client
	now           func() time.Time
	providers     map[string]*oidc.Provider
	refuseReplays bool
	used          map[string]time.Time // jti -> its expiry
	exchanges     map[string]int       // by client ID: federated assertions accepted
}

// NewAAD returns an emulated Azure AD issuing tokens of the given lifetime (default 1 h, as Azure AD).
func NewAAD(lifetime time.Duration, apps ...App) *AAD {
	if lifetime == 0 {
		lifetime = time.Hour
	}
	a := &AAD{apps: map[string]App{}, tokens: map[string]int{}, lifetime: lifetime, now: time.Now,
		providers: map[string]*oidc.Provider{}, used: map[string]time.Time{}, exchanges: map[string]int{}}
	for _, app := range apps {
		a.apps[app.ClientID] = app
	}
	return a
}

// Federation configures how federated client assertions are verified: client fetches each issuer's OIDC
// discovery document (<issuer>/.well-known/openid-configuration) and its JWKS (for a Kubernetes API server:
// /openid/v1/jwks), so it must trust the issuer's TLS certificate (and, for an API server that does not allow
// anonymous discovery, authenticate). now is the clock for expiry checks (nil: time.Now). Without a client,
// http.DefaultClient is used.
func (a *AAD) Federation(client *http.Client, now func() time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.discovery = client
	if now == nil {
		now = time.Now
	}
	a.now = now
	a.providers = map[string]*oidc.Provider{}
}

// RefuseReplays makes the emulator accept each federated assertion (by its jti) once. This is stricter than
// Azure AD, which accepts a federated assertion again and again until it expires (the Azure SDKs' workload
// identity credentials rely on that, re-reading the same token file): it lets a test show what a client that
// depended on one-time assertions would see, and that an assertion without a jti is refused then.
func (a *AAD) RefuseReplays(on bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.refuseReplays = on
}

// AddApp registers (or replaces) an app while the emulator serves.
func (a *AAD) AddApp(app App) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.apps[app.ClientID] = app
}

// Exchanges returns how many federated assertions were accepted for the client ID.
func (a *AAD) Exchanges(clientID string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.exchanges[clientID]
}

// Tokens returns how many tokens were issued to the client ID.
func (a *AAD) Tokens(clientID string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.tokens[clientID]
}

// ServeHTTP answers /{tenant}/v2.0/.well-known/openid-configuration and /{tenant}/oauth2/v2.0/token.
func (a *AAD) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	switch {
	case len(parts) == 4 && parts[1] == "v2.0" && parts[2] == ".well-known" && parts[3] == "openid-configuration":
		base := "https://" + r.Host + "/" + parts[0]
		writeJSON(w, http.StatusOK, map[string]any{
			"token_endpoint":                        base + "/oauth2/v2.0/token",
			"authorization_endpoint":                base + "/oauth2/v2.0/authorize",
			"issuer":                                "https://" + r.Host + "/" + parts[0] + "/v2.0",
			"jwks_uri":                              base + "/discovery/v2.0/keys",
			"response_types_supported":              []string{"code", "id_token", "token"},
			"token_endpoint_auth_methods_supported": []string{"client_secret_post", "private_key_jwt"},
		})
	case len(parts) == 4 && parts[1] == "oauth2" && parts[2] == "v2.0" && parts[3] == "token" && r.Method == http.MethodPost:
		a.token(w, r, parts[0])
	default:
		writeError(w, http.StatusNotFound, "not_found", "no such endpoint in the Azure AD emulator")
	}
}

func (a *AAD) token(w http.ResponseWriter, r *http.Request, tenant string) {
	if err := r.ParseForm(); err != nil {
		writeError(w, http.StatusBadRequest, "invalid_request", err.Error())
		return
	}
	f := r.PostForm
	if f.Get("grant_type") != "client_credentials" {
		writeError(w, http.StatusBadRequest, "unsupported_grant_type", "AADSTS70003: only client_credentials is emulated")
		return
	}
	a.mu.Lock()
	app, ok := a.apps[f.Get("client_id")]
	a.mu.Unlock()
	if !ok || !(strings.EqualFold(app.TenantID, tenant) || slices.ContainsFunc(app.OtherTenants, func(t string) bool { return strings.EqualFold(t, tenant) })) {
		writeError(w, http.StatusBadRequest, "unauthorized_client", fmt.Sprintf("AADSTS700016: Application with identifier '%s' was not found in the directory '%s'.", f.Get("client_id"), tenant))
		return
	}
	switch {
	case f.Get("client_secret") != "":
		if app.Secret == "" || f.Get("client_secret") != app.Secret {
			writeError(w, http.StatusUnauthorized, "invalid_client", "AADSTS7000215: Invalid client secret provided.")
			return
		}
	case f.Get("client_assertion") != "" && len(app.Federated) > 0 && isFederated(f.Get("client_assertion"), app):
		if f.Get("client_assertion_type") != ClientAssertionTypeJWT {
			writeError(w, http.StatusBadRequest, "invalid_request", "AADSTS50027: client_assertion_type must be "+ClientAssertionTypeJWT+".")
			return
		}
		if ferr := a.verifyFederated(r.Context(), f.Get("client_assertion"), app); ferr != nil {
			writeJSON(w, ferr.status, map[string]any{"error": ferr.code, "error_description": ferr.description, "error_codes": []int{ferr.aadsts}})
			return
		}
		a.mu.Lock()
		a.exchanges[app.ClientID]++
		a.mu.Unlock()
	case f.Get("client_assertion") != "":
		if err := verifyAssertion(f.Get("client_assertion"), app); err != nil {
			writeError(w, http.StatusUnauthorized, "invalid_client", "AADSTS700027: Client assertion failed signature validation: "+err.Error())
			return
		}
	default:
		writeError(w, http.StatusUnauthorized, "invalid_client", "AADSTS7000216: 'client_assertion', 'client_secret' or 'request' is required for the 'client_credentials' grant type.")
		return
	}
	scope := f.Get("scope")
	resource := strings.TrimSuffix(strings.Fields(scope + " ")[0], "/.default")
	a.mu.Lock()
	a.tokens[app.ClientID]++
	n := a.tokens[app.ClientID]
	a.mu.Unlock()
	now := time.Now()
	enc := base64.RawURLEncoding
	claims, _ := json.Marshal(map[string]any{"aud": resource, "appid": app.ClientID, "oid": app.ObjectID, "tid": tenant,
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(a.lifetime).Unix(), "uti": fmt.Sprintf("aad-%d", n)})
	secs := strconv.Itoa(int(a.lifetime / time.Second))
	writeJSON(w, http.StatusOK, map[string]any{
		"token_type": "Bearer", "expires_in": secs, "ext_expires_in": secs,
		"access_token": enc.EncodeToString([]byte(`{"typ":"JWT","alg":"RS256"}`)) + "." + enc.EncodeToString(claims) + ".c2ln",
	})
}

func verifyAssertion(assertion string, app App) error {
	if app.Certificate == nil {
		return fmt.Errorf("no certificate registered for %s", app.ClientID)
	}
	pub, ok := app.Certificate.PublicKey.(*rsa.PublicKey)
	if !ok {
		return fmt.Errorf("registered certificate is not RSA")
	}
	tok, err := jwt.Parse(assertion, func(*jwt.Token) (any, error) { return pub, nil },
		jwt.WithValidMethods([]string{"PS256", "RS256"}), jwt.WithIssuer(app.ClientID), jwt.WithSubject(app.ClientID))
	if err != nil {
		return err
	}
	if !tok.Valid {
		return fmt.Errorf("invalid assertion")
	}
	return nil
}
