// Package imds is an emulator of the Azure Instance Metadata Service (IMDS) for one VM, faithful at the wire:
// the Metadata header check, IMDS's error bodies, "Identity not found" until an identity is attached to the
// emulated VM, per-VM throttling (about 20 identity requests per second and 5 concurrent, answered 429), tokens
// with realistic lifetimes, /metadata/instance and /metadata/identity/info, and counters of every call.
//
// The attached identities are state that tests change with SetAttached, and that other processes change
// through the admin API (AdminHandler, served on a separate listener; see README.md).
package imds

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// TokenPath is the IMDS managed-identity token path.
const TokenPath = "/metadata/identity/oauth2/token"

// Identity is a user-assigned managed identity that can be attached to the emulated VM.
type Identity struct {
	ClientID   string `json:"clientID"`
	ObjectID   string `json:"objectID,omitempty"`
	ResourceID string `json:"resourceID"`
}

// Fault is an answer the emulator gives to the next identity requests instead of a token, to exercise a
// client's retries: Status 429, 410 or 5xx, Count times.
type Fault struct {
	Status     int `json:"status"`
	Count      int `json:"count"`
	RetryAfter int `json:"retryAfter,omitempty"`
}

// Counters are the calls the emulator has answered, by path and outcome.
type Counters struct {
	// TokenRequests counts every request to the token path; Tokens those answered with a token.
	TokenRequests int `json:"tokenRequests"`
	Tokens        int `json:"tokens"`
	// TokensByClientID counts tokens issued per identity.
	TokensByClientID map[string]int `json:"tokensByClientID"`
	// TokensByCaller counts tokens issued per identity and caller: the key is "<client ID> <caller IP>", the
	// caller being the source address of the request (in a cluster, the pod IP of whoever reached the node's
	// IMDS: the token sidecar of a pod, or a pod that got around it).
	TokensByCaller map[string]int `json:"tokensByCaller"`
	// ByStatus counts token-path answers per HTTP status.
	ByStatus map[int]int `json:"byStatus"`
	// Throttled counts 429 answers caused by the rate or concurrency limit (not by injected faults).
	Throttled int `json:"throttled"`
	// Other counts requests to every other path (instance metadata, identity info, ...).
	Other int `json:"other"`
	// ForwardedFor counts requests refused because they carried X-Forwarded-For.
	ForwardedFor int `json:"forwardedFor"`
}

// Options configure an emulated VM. Zero values take realistic defaults.
type Options struct {
	// TenantID answered by /metadata/identity/info and placed in tokens.
	TenantID string
	// VMResourceID is the emulated VM's ARM resource ID (compute.resourceId in instance metadata).
	VMResourceID string
	// TokenLifetime of issued tokens (default 24 h, as managed-identity tokens).
	TokenLifetime time.Duration
	// RatePerSecond and MaxConcurrent bound identity requests (defaults 20 and 5, as IMDS per VM). A negative
	// value disables the limit.
	RatePerSecond int
	MaxConcurrent int
	// Latency is added to every token answer (default none), to make concurrency observable.
	Latency time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Server is one emulated VM's IMDS.
type Server struct {
	opts Options

	mu       sync.Mutex
	attached []Identity
	faults   []Fault
	counters Counters
	serial   int
	// window and inWindow implement the rate limit: identity requests in the current one-second window.
	window   time.Time
	inWindow int
	inFlight int
}

// New returns an emulated IMDS with no identity attached.
func New(opts Options) *Server {
	if opts.TenantID == "" {
		opts.TenantID = "72f988bf-86f1-41af-91ab-2d7cd011db47"
	}
	if opts.VMResourceID == "" {
		opts.VMResourceID = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/node-0"
	}
	if opts.TokenLifetime == 0 {
		opts.TokenLifetime = 24 * time.Hour
	}
	if opts.RatePerSecond == 0 {
		opts.RatePerSecond = 20
	}
	if opts.MaxConcurrent == 0 {
		opts.MaxConcurrent = 5
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Server{opts: opts, counters: Counters{TokensByClientID: map[string]int{}, TokensByCaller: map[string]int{}, ByStatus: map[int]int{}}}
}

// SetAttached replaces the identities attached to the emulated VM.
func (s *Server) SetAttached(ids []Identity) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.attached = append([]Identity(nil), ids...)
}

// Attach adds one identity to the emulated VM (no-op when its client ID is already attached).
func (s *Server) Attach(id Identity) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, a := range s.attached {
		if strings.EqualFold(a.ClientID, id.ClientID) {
			return
		}
	}
	s.attached = append(s.attached, id)
}

// Detach removes the identity with this client ID.
func (s *Server) Detach(clientID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.attached[:0]
	for _, a := range s.attached {
		if !strings.EqualFold(a.ClientID, clientID) {
			out = append(out, a)
		}
	}
	s.attached = out
}

// Attached returns the identities attached to the emulated VM.
func (s *Server) Attached() []Identity {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Identity{}, s.attached...)
}

// InjectFaults queues answers to give to the next identity requests instead of tokens.
func (s *Server) InjectFaults(f ...Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = append(s.faults, f...)
}

// Counters returns a copy of the call counters.
func (s *Server) Counters() Counters {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.counters
	c.TokensByClientID = make(map[string]int, len(s.counters.TokensByClientID))
	for k, v := range s.counters.TokensByClientID {
		c.TokensByClientID[k] = v
	}
	c.TokensByCaller = make(map[string]int, len(s.counters.TokensByCaller))
	for k, v := range s.counters.TokensByCaller {
		c.TokensByCaller[k] = v
	}
	c.ByStatus = make(map[int]int, len(s.counters.ByStatus))
	for k, v := range s.counters.ByStatus {
		c.ByStatus[k] = v
	}
	return c
}

// ServeHTTP answers like IMDS.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == TokenPath {
		s.token(w, r)
		return
	}
	s.mu.Lock()
	s.counters.Other++
	s.mu.Unlock()
	if r.Header.Get("X-Forwarded-For") != "" {
		s.mu.Lock()
		s.counters.ForwardedFor++
		s.mu.Unlock()
		writeError(w, http.StatusBadRequest, "bad_request", "Request contains X-Forwarded-For header")
		return
	}
	if !strings.EqualFold(r.Header.Get("Metadata"), "true") {
		writeError(w, http.StatusBadRequest, "bad_request", "Required metadata header not specified")
		return
	}
	switch {
	case r.URL.Path == "/metadata/identity/info":
		writeJSON(w, http.StatusOK, map[string]string{"tenantId": s.opts.TenantID})
	case r.URL.Path == "/metadata/instance" || strings.HasPrefix(r.URL.Path, "/metadata/instance/"):
		if r.URL.Query().Get("api-version") == "" {
			writeError(w, http.StatusBadRequest, "bad_request", "Bad request. api-version was not specified in the request. For more information refer to aka.ms/azureimds")
			return
		}
		writeJSON(w, http.StatusOK, s.instance())
	case r.URL.Path == "/metadata/versions":
		writeJSON(w, http.StatusOK, map[string][]string{"apiVersions": {"2018-02-01", "2019-08-01", "2021-02-01", "2023-07-01"}})
	default:
		writeError(w, http.StatusNotFound, "not_found", "Resource not found")
	}
}

func (s *Server) instance() map[string]any {
	parts := strings.Split(s.opts.VMResourceID, "/")
	name, sub, rg := parts[len(parts)-1], "", ""
	for i := 0; i+1 < len(parts); i++ {
		switch strings.ToLower(parts[i]) {
		case "subscriptions":
			sub = parts[i+1]
		case "resourcegroups":
			rg = parts[i+1]
		}
	}
	return map[string]any{
		"compute": map[string]any{
			"azEnvironment": "AzurePublicCloud", "location": "westeurope", "name": name, "osType": "Linux",
			"resourceGroupName": rg, "resourceId": s.opts.VMResourceID, "subscriptionId": sub,
			"vmId": "5c08b38e-4d57-4c23-ac45-aca61037f084", "vmSize": "Standard_D2s_v5",
		},
		"network": map[string]any{"interface": []any{map[string]any{
			"ipv4":       map[string]any{"ipAddress": []any{map[string]string{"privateIpAddress": "10.224.0.4", "publicIpAddress": ""}}},
			"macAddress": "000D3A000000",
		}}},
	}
}

// admit applies the per-VM limits; it returns a release func, or false when the request is throttled.
func (s *Server) admit(now time.Time) (func(), bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.opts.MaxConcurrent > 0 && s.inFlight >= s.opts.MaxConcurrent {
		return nil, false
	}
	if s.opts.RatePerSecond > 0 {
		if now.Sub(s.window) >= time.Second {
			s.window, s.inWindow = now, 0
		}
		if s.inWindow >= s.opts.RatePerSecond {
			return nil, false
		}
		s.inWindow++
	}
	s.inFlight++
	return func() {
		s.mu.Lock()
		s.inFlight--
		s.mu.Unlock()
	}, true
}

func (s *Server) token(w http.ResponseWriter, r *http.Request) {
	status := s.tokenStatus(w, r)
	s.mu.Lock()
	s.counters.TokenRequests++
	s.counters.ByStatus[status]++
	s.mu.Unlock()
}

// tokenStatus answers a token request and returns the status it answered with.
func (s *Server) tokenStatus(w http.ResponseWriter, r *http.Request) int {
	if r.Header.Get("X-Forwarded-For") != "" {
		s.mu.Lock()
		s.counters.ForwardedFor++
		s.mu.Unlock()
		return writeError(w, http.StatusBadRequest, "invalid_request", "Request contains X-Forwarded-For header")
	}
	if !strings.EqualFold(r.Header.Get("Metadata"), "true") {
		return writeError(w, http.StatusBadRequest, "invalid_request", "Required metadata header not specified")
	}
	if r.Method != http.MethodGet {
		return writeError(w, http.StatusMethodNotAllowed, "invalid_request", "The requested method is not supported for this resource")
	}
	q := r.URL.Query()
	resource := q.Get("resource")
	if resource == "" {
		return writeError(w, http.StatusBadRequest, "invalid_request", "Required audience parameter not specified")
	}
	release, ok := s.admit(s.opts.Now())
	if !ok {
		s.mu.Lock()
		s.counters.Throttled++
		s.mu.Unlock()
		w.Header().Set("Retry-After", "1")
		return writeError(w, http.StatusTooManyRequests, "too_many_requests", "Too many requests. Please retry after some time")
	}
	defer release()
	if s.opts.Latency > 0 {
		time.Sleep(s.opts.Latency)
	}
	s.mu.Lock()
	if len(s.faults) > 0 {
		f := &s.faults[0]
		f.Count--
		status, retryAfter := f.Status, f.RetryAfter
		if f.Count <= 0 {
			s.faults = s.faults[1:]
		}
		s.mu.Unlock()
		if retryAfter > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(retryAfter))
		}
		return writeError(w, status, "injected_fault", http.StatusText(status))
	}
	id, status, code, desc := s.choose(q)
	if status != http.StatusOK {
		s.mu.Unlock()
		return writeError(w, status, code, desc)
	}
	s.serial++
	serial := s.serial
	s.counters.Tokens++
	s.counters.TokensByClientID[id.ClientID]++
	s.counters.TokensByCaller[id.ClientID+" "+callerIP(r)]++
	s.mu.Unlock()

	now := s.opts.Now()
	exp := now.Add(s.opts.TokenLifetime)
	life := strconv.FormatInt(int64(s.opts.TokenLifetime/time.Second), 10)
	writeJSON(w, http.StatusOK, map[string]string{
		"access_token":   s.jwt(id, resource, now, exp, serial),
		"refresh_token":  "",
		"expires_in":     life,
		"expires_on":     strconv.FormatInt(exp.Unix(), 10),
		"ext_expires_in": life,
		"not_before":     strconv.FormatInt(now.Unix(), 10),
		"resource":       resource,
		"token_type":     "Bearer",
		"client_id":      id.ClientID,
	})
	return http.StatusOK
}

// callerIP is the request's source address without the port.
func callerIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// choose finds the attached identity a request selects; called with s.mu held.
func (s *Server) choose(q map[string][]string) (Identity, int, string, string) {
	get := func(k string) string {
		if v := q[k]; len(v) > 0 {
			return v[0]
		}
		return ""
	}
	var match func(Identity) bool
	switch {
	case get("client_id") != "":
		v := get("client_id")
		match = func(i Identity) bool { return strings.EqualFold(i.ClientID, v) }
	case get("object_id") != "":
		v := get("object_id")
		match = func(i Identity) bool { return i.ObjectID != "" && strings.EqualFold(i.ObjectID, v) }
	case get("msi_res_id") != "" || get("mi_res_id") != "":
		v := get("msi_res_id") + get("mi_res_id")
		match = func(i Identity) bool { return strings.EqualFold(i.ResourceID, v) }
	default:
		switch len(s.attached) {
		case 0:
			return Identity{}, http.StatusBadRequest, "invalid_request", "Identity not found"
		case 1:
			return s.attached[0], http.StatusOK, "", ""
		default:
			return Identity{}, http.StatusBadRequest, "invalid_request", "Multiple user assigned identities exist, please specify the clientId / resourceId of the identity in the token request"
		}
	}
	for _, a := range s.attached {
		if match(a) {
			return a, http.StatusOK, "", ""
		}
	}
	return Identity{}, http.StatusBadRequest, "invalid_request", "Identity not found"
}

// jwt builds a token shaped like an Azure AD access token (unsigned: nothing verifies it).
func (s *Server) jwt(id Identity, resource string, now, exp time.Time, serial int) string {
	enc := base64.RawURLEncoding
	header, _ := json.Marshal(map[string]string{"typ": "JWT", "alg": "RS256", "kid": "imds-emulator"})
	claims, _ := json.Marshal(map[string]any{
		"aud": resource, "iss": "https://sts.windows.net/" + s.opts.TenantID + "/",
		"iat": now.Unix(), "nbf": now.Unix(), "exp": exp.Unix(),
		"appid": id.ClientID, "oid": id.ObjectID, "tid": s.opts.TenantID,
		"xms_mirid": id.ResourceID, "sub": id.ObjectID, "uti": fmt.Sprintf("emulator-%d", serial),
	})
	return enc.EncodeToString(header) + "." + enc.EncodeToString(claims) + "." + enc.EncodeToString([]byte(fmt.Sprintf("sig-%d", serial)))
}

func writeError(w http.ResponseWriter, status int, code, desc string) int {
	writeJSON(w, status, map[string]string{"error": code, "error_description": desc})
	return status
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
