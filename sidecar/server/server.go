// Package server is the token sidecar's HTTP surface: the IMDS token endpoint for the pod's bound identities,
// the other IMDS paths (proxied, or /metadata/instance blocked), and the health and metrics endpoints.
package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/go-logr/logr"
	"github.com/gorilla/mux"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/podidentity/podidentity/api/identitytype"
	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/sidecar/identities"
	"github.com/podidentity/podidentity/sidecar/loopguard"
	"github.com/podidentity/podidentity/sidecar/tokens"
)

// TokenPath is the only path that serves tokens, matched exactly.
const TokenPath = "/metadata/identity/oauth2/token"

// Identities is the pod's bound identities.
type Identities interface {
	Identities() []contract.Identity
	Ready() bool
}

// Tokens returns tokens for bound identities (a *tokens.Cache).
type Tokens interface {
	Get(ctx context.Context, id contract.Identity, resource string, bypass bool) (tokens.Token, bool, error)
}

// Options configure a Server.
type Options struct {
	// Pod is namespace/name, for the audit log.
	Pod string
	// MetadataHeaderRequired refuses token requests without "Metadata: true" (as IMDS does).
	MetadataHeaderRequired bool
	// BlockInstanceMetadata answers /metadata/instance with 403 instead of proxying it.
	BlockInstanceMetadata bool
	Identities            Identities
	Tokens                Tokens
	// Proxy forwards other IMDS paths to the node's IMDS.
	Proxy   http.Handler
	Log     logr.Logger
	Metrics *Metrics
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Loop recognises the sidecar's own upstream requests sent back by the redirect (nil: no check).
	Loop *loopguard.Guard
	// Upstream says whether the node's IMDS has been confirmed reachable (nil: /readyz does not wait for it).
	Upstream Readiness
}

// Readiness is a condition of /readyz, with the reason when it is not met (a *loopguard.Check).
type Readiness interface {
	Ready() (bool, string)
}

// Server serves the IMDS protocol for one pod.
type Server struct {
	opts Options
}

// New returns a server.
func New(opts Options) *Server {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Metrics == nil {
		opts.Metrics = NewMetrics(prometheus.NewRegistry())
	}
	return &Server{opts: opts}
}

// Handler serves the IMDS endpoint. Every request first passes the path guard, so that a variant of the token
// path never reaches the router or the proxy. The token path itself is matched before the router: it is the
// path of almost every request, and the router's match and request copy cost more than the rest of the work.
func (s *Server) Handler() http.Handler {
	r := mux.NewRouter().SkipClean(true).UseEncodedPath()
	r.Path("/metadata/instance").HandlerFunc(s.instance)
	r.PathPrefix("/metadata/instance/").HandlerFunc(s.instance)
	r.PathPrefix("/metadata/").HandlerFunc(s.proxy)
	r.NotFoundHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "not_found", "no such IMDS path: the pod identity sidecar serves /metadata/...")
	})
	guarded := s.guard(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path == TokenPath { // exact: the guard has refused every other spelling of it
			s.token(w, req)
			return
		}
		r.ServeHTTP(w, req)
	}))
	if s.opts.Loop == nil {
		return guarded
	}
	// The sidecar's own request, sent back by the redirect, is answered before anything else: fetching or
	// proxying for it would send it back again.
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if s.opts.Loop.Own(req.Header) {
			s.loop(w, req)
			return
		}
		guarded.ServeHTTP(w, req)
	})
}

// loop answers the sidecar's own request that came back through the redirect: 508 Loop Detected, in IMDS's
// error format, saying the exemption is missing. The loop is recorded before the answer is written, so that
// the sender (loopguard.Check) sees it once it has the answer. The connection is closed after the answer:
// conntrack keeps an established connection on its DNAT'ed path even after the exemption is installed, so a
// kept-alive connection would carry the sidecar's next requests back to itself.
func (s *Server) loop(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Connection", "close")
	if s.opts.Loop.Record(s.opts.Now()) {
		s.opts.Log.Info("the sidecar's own IMDS request came back to it: the redirect's exemption for the sidecar is not installed",
			"pod", s.opts.Pod, "path", r.URL.Path, "loops", s.opts.Loop.Loops(), "loggedAtMostEvery", loopguard.DefaultLogInterval.String())
	}
	writeError(w, http.StatusLoopDetected, loopguard.Code, loopguard.Description)
}

// HealthHandler serves /healthz (alive), /readyz (the identities file has been read and the node's IMDS
// confirmed reachable) and /metrics.
func (s *Server) HealthHandler(g prometheus.Gatherer) http.Handler {
	r := mux.NewRouter()
	r.Path("/healthz").HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) })
	r.Path("/readyz").HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		var reasons []string
		if !s.opts.Identities.Ready() {
			reasons = append(reasons, "identities file not read yet")
		}
		if s.opts.Upstream != nil {
			if ok, why := s.opts.Upstream.Ready(); !ok {
				reasons = append(reasons, "upstream IMDS not confirmed: "+why)
			}
		}
		if len(reasons) > 0 {
			http.Error(w, strings.Join(reasons, "\n"), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok"))
	})
	r.Path("/metrics").Handler(promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	return r
}

// canonical reports whether the raw request path is exactly its decoded, cleaned form: no percent-encoding,
// no backslash, no empty or dot segment. IMDS paths never need any of these; the real IMDS treats some of them
// as the token path (CVE-2022-23551 in NMI), so a request using them is refused, never proxied.
func canonical(r *http.Request) bool {
	raw := r.RequestURI
	if i := strings.IndexByte(raw, '?'); i >= 0 {
		raw = raw[:i]
	}
	if !strings.HasPrefix(raw, "/") { // absolute-form request target: http://host/path
		if i := strings.Index(raw, "://"); i >= 0 {
			raw = raw[i+3:]
			if j := strings.IndexByte(raw, '/'); j >= 0 {
				raw = raw[j:]
			} else {
				raw = "/"
			}
		} else {
			return false
		}
	}
	if raw != r.URL.Path || strings.ContainsAny(raw, "%\\") || strings.Contains(raw, "//") {
		return false
	}
	for _, seg := range strings.Split(raw[1:], "/") {
		if seg == "." || seg == ".." {
			return false
		}
	}
	return true
}

func (s *Server) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		lower := strings.ToLower(r.URL.Path)
		identityPath := strings.HasPrefix(lower, "/metadata/identity") && r.URL.Path != TokenPath && r.URL.Path != "/metadata/identity/info"
		if !canonical(r) || identityPath {
			s.opts.Metrics.RefusedPaths.Inc()
			writeError(w, http.StatusBadRequest, "invalid_request", fmt.Sprintf(
				"path %q is not an IMDS path the pod identity sidecar serves: request tokens at exactly %s", r.RequestURI, TokenPath))
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (s *Server) instance(w http.ResponseWriter, r *http.Request) {
	if s.opts.BlockInstanceMetadata {
		s.opts.Metrics.Proxied.WithLabelValues("instance", "blocked").Inc()
		writeError(w, http.StatusForbidden, "forbidden", "instance metadata is blocked for pods by the pod identity sidecar (--block-instance-metadata)")
		return
	}
	s.opts.Metrics.Proxied.WithLabelValues("instance", "proxied").Inc()
	s.opts.Proxy.ServeHTTP(w, r)
}

func (s *Server) proxy(w http.ResponseWriter, r *http.Request) {
	root := "other"
	if r.URL.Path == "/metadata/identity/info" {
		root = "identity_info"
	}
	s.opts.Metrics.Proxied.WithLabelValues(root, "proxied").Inc()
	s.opts.Proxy.ServeHTTP(w, r)
}

// queryParams are the token request's known parameters; their names must be spelled exactly so.
var queryParams = map[string]bool{
	"resource": true, "api-version": true, "client_id": true, "object_id": true, "msi_res_id": true,
	"mi_res_id": true, "bypass_cache": true, "authority": true,
}

var (
	guidRE       = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)
	resourceIDRE = regexp.MustCompile(`(?i)^/subscriptions/[^/]+/resourcegroups/[^/]+/providers/microsoft\.managedidentity/userassignedidentities/[^/]+$`)
)

// tokenResponse is IMDS's token answer: every value a string.
type tokenResponse struct {
	AccessToken  string `json:"access_token"`
	RefreshToken string `json:"refresh_token"`
	ExpiresIn    string `json:"expires_in"`
	ExpiresOn    string `json:"expires_on"`
	ExtExpiresIn string `json:"ext_expires_in"`
	NotBefore    string `json:"not_before"`
	Resource     string `json:"resource"`
	TokenType    string `json:"token_type"`
	ClientID     string `json:"client_id"`
}

// request is a parsed, validated token request.
type request struct {
	resource string
	kind     identities.SelectorKind
	value    string
	bypass   bool
}

// parse validates a token request; a non-nil error is the 400 to answer.
func (s *Server) parse(r *http.Request) (request, *tokens.Error) {
	bad := func(format string, a ...any) (request, *tokens.Error) {
		return request{}, &tokens.Error{Status: http.StatusBadRequest, Code: "invalid_request", Description: fmt.Sprintf(format, a...)}
	}
	if s.opts.MetadataHeaderRequired && !strings.EqualFold(r.Header.Get("Metadata"), "true") {
		return bad("Required metadata header not specified")
	}
	if r.Header.Get("X-Forwarded-For") != "" {
		return bad("Request contains X-Forwarded-For header, which IMDS refuses")
	}
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return bad("query string is malformed: %v", err)
	}
	for k, v := range q {
		lk := strings.ToLower(k)
		if !queryParams[lk] {
			continue
		}
		if k != lk {
			return bad("query parameter %q must be spelled %q", k, lk)
		}
		if len(v) > 1 {
			return bad("query parameter %q is given %d times; give it once", k, len(v))
		}
	}
	req := request{resource: first(q, "resource"), bypass: strings.EqualFold(first(q, "bypass_cache"), "true")}
	if req.resource == "" {
		return bad("Required audience parameter not specified: add resource=<the resource URI, e.g. https://management.azure.com/>")
	}
	n := 0
	for _, sel := range []struct {
		name string
		kind identities.SelectorKind
	}{{"client_id", identities.ByClientID}, {"object_id", identities.ByObjectID}, {"msi_res_id", identities.ByResourceID}, {"mi_res_id", identities.ByResourceID}} {
		if _, ok := q[sel.name]; ok {
			n++
			req.kind, req.value = sel.kind, first(q, sel.name)
			if req.value == "" {
				return bad("query parameter %s is empty: give the identity's value or leave the parameter out", sel.name)
			}
		}
	}
	if n > 1 {
		return bad("give at most one of client_id, object_id, msi_res_id, mi_res_id")
	}
	switch req.kind {
	case identities.ByClientID, identities.ByObjectID:
		if !guidRE.MatchString(req.value) {
			return bad("%s %q is not a GUID", req.kind, req.value)
		}
	case identities.ByResourceID:
		if !resourceIDRE.MatchString(req.value) {
			return bad("resource ID %q is not a user-assigned identity's ID (/subscriptions/<sub>/resourceGroups/<rg>/providers/Microsoft.ManagedIdentity/userAssignedIdentities/<name>)", req.value)
		}
	}
	return req, nil
}

func first(q map[string][]string, k string) string {
	if v := q[k]; len(v) > 0 {
		return v[0]
	}
	return ""
}

func (s *Server) token(w http.ResponseWriter, r *http.Request) {
	start := s.opts.Now()
	if r.Method != http.MethodGet {
		s.refuse(w, start, &tokens.Error{Status: http.StatusMethodNotAllowed, Code: "invalid_request", Description: "token requests use GET"})
		return
	}
	req, perr := s.parse(r)
	if perr != nil {
		s.refuse(w, start, perr)
		return
	}
	var id contract.Identity
	var tok tokens.Token
	var hit bool
	var err error
	var refusal *identities.Refusal
	if req.kind == identities.ByObjectID {
		id, tok, hit, refusal, err = s.byObjectID(r.Context(), req)
	} else if id, refusal = identities.Select(s.opts.Identities.Identities(), req.kind, req.value); refusal == nil {
		tok, hit, err = s.opts.Tokens.Get(r.Context(), id, req.resource, req.bypass)
	}
	if refusal != nil {
		s.refuse(w, start, &tokens.Error{Status: http.StatusBadRequest, Code: "invalid_request", Description: refusal.Description})
		return
	}
	name, backend := id.Namespace+"/"+id.Name, Backend(id)
	if id.Name == "" {
		name, backend = "none", BackendNone // an object_id that could not be resolved
	}
	if err != nil {
		s.fail(w, start, name, backend, req, err)
		return
	}
	// A service principal with auxiliary tenants is answered as AAD Pod Identity's NMI answered it: a JSON list
	// of tokens, the primary tenant's first, then one per auxiliary tenant in the AzureIdentity's order.
	toks := []tokens.Token{tok}
	aux := auxiliaryTenants(id)
	if len(aux) > maxAuxiliaryTenants {
		s.fail(w, start, name, backend, req, &tokens.Error{Status: http.StatusBadRequest, Code: "invalid_request", Description: fmt.Sprintf(
			"AzureIdentity %s/%s lists %d auxiliaryTenantIDs; at most %d are allowed (as in AAD Pod Identity, whose token library refused more, and in ARM's x-ms-authorization-auxiliary header): remove some",
			id.Namespace, id.Name, len(aux), maxAuxiliaryTenants)})
		return
	}
	for _, tenant := range aux {
		auxID := id
		auxID.TenantID, auxID.AuxiliaryTenantIDs = tenant, nil
		t, auxHit, err := s.opts.Tokens.Get(r.Context(), auxID, req.resource, req.bypass)
		if err != nil {
			s.fail(w, start, name, backend, req, err)
			return
		}
		toks = append(toks, t)
		hit = hit && auxHit
	}
	now := s.opts.Now()
	answer := func(t tokens.Token) tokenResponse {
		expiresIn := strconv.FormatInt(t.ExpiresOn.Unix()-now.Unix(), 10)
		notBefore := t.NotBefore
		if notBefore.IsZero() {
			notBefore = now
		}
		return tokenResponse{
			AccessToken: t.AccessToken, ExpiresIn: expiresIn, ExtExpiresIn: expiresIn,
			ExpiresOn: strconv.FormatInt(t.ExpiresOn.Unix(), 10), NotBefore: strconv.FormatInt(notBefore.Unix(), 10),
			Resource: req.resource, TokenType: t.TokenType, ClientID: id.ClientID,
		}
	}
	body := make([]byte, 0, len(toks)*(320+len(tok.AccessToken)+len(req.resource)))
	if len(aux) == 0 {
		body = appendTokenAnswer(body, answer(tok))
	} else {
		list := make([]tokenResponse, len(toks))
		for i, t := range toks {
			list[i] = answer(t)
		}
		body = appendTokenAnswers(body, list)
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	_, _ = w.Write(body)
	result := "miss"
	if hit {
		result = "hit"
	}
	latency := s.opts.Now().Sub(start)
	s.opts.Metrics.TokenRequests.WithLabelValues(name, backend, result).Inc()
	s.opts.Metrics.TokenDuration.WithLabelValues(result).Observe(latency.Seconds())
	kv := []any{"pod", s.opts.Pod, "identity", name, "clientID", id.ClientID, "backend", backend, "resource", req.resource, "cache", result, "latency", latency.String()}
	if len(aux) > 0 {
		kv = append(kv, "auxiliaryTenants", len(aux))
	}
	s.opts.Log.Info("token issued", kv...)
}

// maxAuxiliaryTenants is how many auxiliary tenants a service principal may list: AAD Pod Identity's token
// library (go-autorest adal, NewMultiTenantOAuthConfig) refused more, as ARM's auxiliary-token header does.
const maxAuxiliaryTenants = 3

// auxiliaryTenants returns the auxiliary tenants whose tokens are served along with the primary tenant's: a
// client-secret service principal's (type 1) auxiliaryTenantIDs. NMI ignored them for certificates (type 2).
func auxiliaryTenants(id contract.Identity) []string {
	if id.Type != identitytype.ServicePrincipal {
		return nil
	}
	return id.AuxiliaryTenantIDs
}

// fail answers a token request whose token could not be had.
func (s *Server) fail(w http.ResponseWriter, start time.Time, name, backend string, req request, err error) {
	var te *tokens.Error
	if !errors.As(err, &te) {
		if errors.Is(err, context.Canceled) {
			return // the app went away
		}
		te = &tokens.Error{Status: http.StatusInternalServerError, Code: "internal_error", Description: err.Error()}
	}
	s.opts.Metrics.TokenRequests.WithLabelValues(name, backend, "error").Inc()
	s.opts.Metrics.TokenDuration.WithLabelValues("error").Observe(s.opts.Now().Sub(start).Seconds())
	s.opts.Log.Info("token not issued", "pod", s.opts.Pod, "identity", name, "backend", backend, "resource", req.resource, "status", te.Status, "reason", te.Description)
	writeTokenError(w, te)
}

// byObjectID serves an object_id selector. The annotation carries no object IDs, so the sidecar gets each
// bound identity's token for the resource (by client ID, through the cache, so these are not wasted) and
// serves the one whose "oid" claim is the requested object ID. A bound identity whose token cannot be had
// yet makes an unmatched request transient (the error, e.g. 503) rather than a definite 400.
func (s *Server) byObjectID(ctx context.Context, req request) (contract.Identity, tokens.Token, bool, *identities.Refusal, error) {
	ids := s.opts.Identities.Identities()
	if _, refusal := identities.Select(ids, identities.ByDefault, ""); refusal != nil {
		return contract.Identity{}, tokens.Token{}, false, refusal, nil
	}
	var firstErr error
	for _, id := range ids {
		tok, hit, err := s.opts.Tokens.Get(ctx, id, req.resource, false)
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		if oid := identities.ObjectID(tok.AccessToken); oid != "" && strings.EqualFold(oid, req.value) {
			return id, tok, hit, nil, nil
		}
	}
	if firstErr != nil {
		return contract.Identity{}, tokens.Token{}, false, nil, firstErr
	}
	_, refusal := identities.Select(ids, identities.ByObjectID, req.value)
	return contract.Identity{}, tokens.Token{}, false, refusal, nil
}

func (s *Server) refuse(w http.ResponseWriter, start time.Time, e *tokens.Error) {
	s.opts.Metrics.TokenRequests.WithLabelValues("none", BackendNone, "refused").Inc()
	s.opts.Metrics.TokenDuration.WithLabelValues("refused").Observe(s.opts.Now().Sub(start).Seconds())
	s.opts.Log.V(1).Info("token request refused", "pod", s.opts.Pod, "status", e.Status, "reason", e.Description)
	writeTokenError(w, e)
}

func writeTokenError(w http.ResponseWriter, e *tokens.Error) {
	if e.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int((e.RetryAfter+time.Second-1)/time.Second)))
	}
	writeError(w, e.Status, e.Code, e.Description)
}

func writeError(w http.ResponseWriter, status int, code, desc string) {
	body, _ := json.Marshal(map[string]string{"error": code, "error_description": desc})
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}
