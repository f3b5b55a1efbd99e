// Package arm is an Azure Resource Manager emulator for tests: an HTTPS server that the real Azure SDK
// (armcompute) talks to through a custom cloud configuration. It holds VMs and scale sets with identities and
// etags, applies identity PATCHes with ARM's merge semantics through both long-running-operation shapes
// (scale sets: Azure-AsyncOperation; VMs: body polling), and injects the faults the assigner must survive.
// It models ARM's own behaviour where the assigner depends on it: a resource stays Updating (and refuses
// PATCHes with 409) while another client's long operation runs on it (StartOperation); a deleted
// user-assigned identity makes every PATCH that would leave it on the resource fail (DeleteIdentity); writes
// are throttled per subscription with a token bucket, Retry-After and the x-ms-ratelimit-remaining headers
// (Options.SubscriptionWrites); a missing role on the resource is refused with AuthorizationFailed
// (DenyWrites). It reports every applied identity change through OnChange, so an IMDS emulator can serve
// exactly the identities each VM has: one consistent fake cloud.
package arm

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
)

// Error codes ARM answers with, as the assigner sees them.
const (
	CodeLinkedAuthorizationFailed = "LinkedAuthorizationFailed"
	CodeFailedIdentityOperation   = "FailedIdentityOperation"
	CodeConflict                  = "Conflict"
	CodeTooManyRequests           = "TooManyRequests"
	CodeInternal                  = "InternalServerError"
	CodePreconditionFailed        = "PreconditionFailed"
	// CodeAuthorizationFailed: the caller may not write the resource (no Virtual Machine Contributor).
	CodeAuthorizationFailed = "AuthorizationFailed"
	// CodeSubscriptionRequestsThrottled: ARM's per-subscription request limit was reached.
	CodeSubscriptionRequestsThrottled = "SubscriptionRequestsThrottled"
)

// Messages ARM answers with, as the real service words them.
const (
	// conflictMessage is Compute's answer to a write while another operation runs on the resource (409).
	conflictMessage = "The request failed due to conflict with a concurrent request. To resolve it, please refer to https://aka.ms/activitylog to get more details on the conflicting requests."
	// callerObjectID is the object id the emulator reports for the caller in authorization errors.
	callerObjectID = "00000000-0000-0000-0000-00000000a551"
)

// Bucket is a token bucket: Size requests at once, refilled at Refill per second (ARM's per-subscription
// write limit is 200 refilled at 10/s, reads 250 at 25/s), one per subscription: those listed in
// Subscriptions, or every subscription when the list is empty.
type Bucket struct {
	Size          int
	Refill        float64
	Subscriptions []string
}

// Fault is an injected failure of one request.
type Fault struct {
	// Method limits the fault to GET or PATCH; empty means either.
	Method string
	// Status and Code of the error answer; RetryAfter is sent as Retry-After (and retry-after-ms).
	Status     int
	Code       string
	Message    string
	RetryAfter time.Duration
	// Hang holds the request until the client gives up (a timeout). With Apply, a PATCH is applied first:
	// the change happens but the client never learns it did.
	Hang  bool
	Apply bool
	// Async makes a PATCH be accepted and its long-running operation fail (status Failed) without applying.
	Async bool
}

// Options configure a Server.
type Options struct {
	// Latency is how long each PATCH's long-running operation takes (per-resource values: SetLatency).
	Latency time.Duration
	// PollAfter is the retry-after the emulator asks pollers to wait between polls (default 20ms).
	PollAfter time.Duration
	// OnChange is called (outside the emulator's lock, in order per resource) after each applied identity
	// change with the resource id and its user-assigned identity ids.
	OnChange func(resourceID string, userAssignedIDs []string)
	// Authorize, when set, is asked about every request before anything else; an error is answered 401
	// InvalidAuthenticationToken with the error's text, as ARM answers a token it does not accept. Tests use
	// it to check that the bearer token the SDK sends is the one their emulated Azure AD issued. Nil accepts
	// any request (the static Credential's token included).
	Authorize func(*http.Request) error
	// SubscriptionWrites, when its Size is set, limits PATCHes per subscription as ARM does: a write beyond
	// the bucket is answered 429 SubscriptionRequestsThrottled with Retry-After (whole seconds until a token
	// is back) and x-ms-ratelimit-remaining-subscription-writes; every write answer carries the remaining
	// count.
	SubscriptionWrites Bucket
}

// Counters count requests by kind.
type Counters struct {
	Reads, Writes, AppliedWrites, Polls, Faults int
	// Refused counts PATCHes answered with an error (throttled, conflict, precondition, refused identity,
	// injected fault...); Throttled those refused by the subscription's write limit.
	Refused, Throttled int
}

// Write is one PATCH as the emulator answered it.
type Write struct {
	IfMatch string
	Status  int
	Code    string // error code; empty when accepted
}

type resource struct {
	id, kind       string
	etag           int
	systemAssigned bool
	users          map[string]string // case-folded id -> spelling
	busy           *operation
	latency        time.Duration
	writes         int
	// inFlight counts PATCHes from arrival until their answer (rejected) or their operation's end
	// (accepted); maxInFlight is its high-water mark: above 1 means two writers overlapped.
	inFlight, maxInFlight int
	// failed is set when the last operation failed; ARM then shows provisioningState Failed.
	failed bool
	log    []Write
}

type operation struct {
	id      string
	status  string // InProgress, Succeeded, Failed
	err     *apiError
	foreign bool // started by StartOperation (someone else's), not by a PATCH
}

type bucketState struct {
	tokens float64
	at     time.Time
}

type apiError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Server is a running emulator.
type Server struct {
	srv  *httptest.Server
	opts Options

	mu        sync.Mutex
	resources map[string]*resource
	ops       map[string]*operation
	faults    map[string][]Fault // by case-folded resource id; "" for any resource
	faultFunc func(method, resourceID string) *Fault
	denied    map[string]string // case-folded identity id -> error code
	deniedRG  map[string]bool   // case-folded scopes the caller may not write
	buckets   map[string]*bucketState
	counters  Counters
	opSeq     int
	notify    chan func()
	closed    chan struct{}
}

// New starts an emulator; it stops when the test ends.
func New(tb interface{ Cleanup(func()) }, opts Options) *Server {
	s := NewServer(opts)
	tb.Cleanup(s.Close)
	return s
}

// NewServer starts an emulator; Close stops it.
func NewServer(opts Options) *Server {
	if opts.PollAfter <= 0 {
		opts.PollAfter = 20 * time.Millisecond
	}
	s := &Server{opts: opts, resources: map[string]*resource{}, ops: map[string]*operation{},
		faults: map[string][]Fault{}, denied: map[string]string{}, deniedRG: map[string]bool{}, buckets: map[string]*bucketState{}, notify: make(chan func(), 4096), closed: make(chan struct{})}
	s.srv = httptest.NewTLSServer(http.HandlerFunc(s.serve))
	go s.runNotifications()
	return s
}

func (s *Server) runNotifications() {
	for {
		select {
		case f := <-s.notify:
			f()
		case <-s.closed:
			return
		}
	}
}

// Close stops the server.
func (s *Server) Close() {
	select {
	case <-s.closed:
		return
	default:
	}
	close(s.closed)
	s.srv.CloseClientConnections()
	s.srv.Close()
}

// URL is the server's base URL (the ARM endpoint).
func (s *Server) URL() string { return s.srv.URL }

// Certificate is the server's TLS certificate (for clients that trust several servers, or a child
// process's SSL_CERT_FILE).
func (s *Server) Certificate() *x509.Certificate { return s.srv.Certificate() }

// HTTPClient trusts the server's certificate; use it as the SDK's transport.
func (s *Server) HTTPClient() *http.Client { return s.srv.Client() }

// Cloud is the cloud configuration that points the SDK's ARM clients at the emulator.
func (s *Server) Cloud() cloud.Configuration {
	return cloud.Configuration{
		ActiveDirectoryAuthorityHost: s.srv.URL + "/",
		Services: map[cloud.ServiceName]cloud.ServiceConfiguration{
			cloud.ResourceManager: {Endpoint: s.srv.URL, Audience: "https://management.emulator.test"},
		},
	}
}

// Credential is a static token credential accepted by the emulator.
type Credential struct{}

// GetToken returns a fixed token.
func (Credential) GetToken(context.Context, policy.TokenRequestOptions) (azcore.AccessToken, error) {
	return azcore.AccessToken{Token: "emulator-token", ExpiresOn: time.Now().Add(time.Hour)}, nil
}

// AddVMSS adds a scale set (id: /subscriptions/.../virtualMachineScaleSets/<name>).
func (s *Server) AddVMSS(id string, systemAssigned bool, userIDs ...string) {
	s.add(id, "Microsoft.Compute/virtualMachineScaleSets", systemAssigned, userIDs)
}

// AddVM adds a VM (id: /subscriptions/.../virtualMachines/<name>).
func (s *Server) AddVM(id string, systemAssigned bool, userIDs ...string) {
	s.add(id, "Microsoft.Compute/virtualMachines", systemAssigned, userIDs)
}

func (s *Server) add(id, kind string, system bool, users []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := &resource{id: id, kind: kind, etag: 1, systemAssigned: system, users: map[string]string{}, latency: -1}
	for _, u := range users {
		r.users[strings.ToLower(u)] = u
	}
	s.resources[strings.ToLower(id)] = r
	s.changedLocked(r)
}

// SetUserIdentities replaces a resource's user-assigned identities out of band (drift, e.g. a node image
// upgrade that lost them).
func (s *Server) SetUserIdentities(id string, userIDs ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.resources[strings.ToLower(id)]
	r.users = map[string]string{}
	for _, u := range userIDs {
		r.users[strings.ToLower(u)] = u
	}
	r.etag++
	s.changedLocked(r)
}

// Identities returns whether the resource has a system-assigned identity and its user-assigned ids (sorted,
// spelled as attached).
func (s *Server) Identities(id string) (systemAssigned bool, userIDs []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.resources[strings.ToLower(id)]
	if r == nil {
		return false, nil
	}
	return r.systemAssigned, sortedValues(r.users)
}

// SetLatency sets how long PATCH operations on one resource take.
func (s *Server) SetLatency(id string, d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.resources[strings.ToLower(id)].latency = d
}

// InjectFault queues a one-shot fault for the next matching request to the resource (id "" for any).
func (s *Server) InjectFault(id string, f Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := strings.ToLower(id)
	s.faults[k] = append(s.faults[k], f)
}

// SetFaultFunc installs a function asked before every request (after queued faults); nil removes it.
func (s *Server) SetFaultFunc(f func(method, resourceID string) *Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faultFunc = f
}

// DenyIdentity makes ARM refuse the identity with code. CodeLinkedAuthorizationFailed: the caller lacks
// Managed Identity Operator on it, so every PATCH that adds it fails with 403 (a PATCH that does not name
// it is not affected). CodeFailedIdentityOperation: it was deleted in Azure (DeleteIdentity): every PATCH
// that would leave it on the resource fails with 400, whether the PATCH adds it or it was already attached
// and the PATCH changes something else; only a PATCH that detaches it (null, or a type without
// UserAssigned) goes through. An empty code allows it again (the role granted, the identity re-created).
func (s *Server) DenyIdentity(identityID, code string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if code == "" {
		delete(s.denied, strings.ToLower(identityID))
		return
	}
	s.denied[strings.ToLower(identityID)] = code
}

// DeleteIdentity deletes the user-assigned identity in Azure, as far as ARM's checks go: DenyIdentity with
// CodeFailedIdentityOperation. Resources keep showing it attached (ARM does not detach a deleted identity).
func (s *Server) DeleteIdentity(identityID string) {
	s.DenyIdentity(identityID, CodeFailedIdentityOperation)
}

// DenyWrites makes every PATCH of a resource under scope (a resource group or resource id, any casing) fail
// with 403 AuthorizationFailed, as when the caller has no Virtual Machine Contributor there; deny false
// grants it again.
func (s *Server) DenyWrites(scope string, deny bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := strings.TrimRight(strings.ToLower(scope), "/")
	if deny {
		s.deniedRG[k] = true
	} else {
		delete(s.deniedRG, k)
	}
}

// StartOperation starts another client's long-running operation on the resource (an AKS upgrade, a
// scale-out, a node image update): for d the resource reads provisioningState Updating and every PATCH is
// refused with 409 Conflict, as Compute refuses a write that conflicts with a running operation. When it
// ends the resource is Succeeded with a new etag, its identities unchanged.
func (s *Server) StartOperation(id string, d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.resources[strings.ToLower(id)]
	s.opSeq++
	op := &operation{id: strconv.Itoa(s.opSeq), status: "InProgress", foreign: true}
	s.ops[op.id] = op
	r.busy = op
	time.AfterFunc(d, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if r.busy == op {
			r.busy = nil
		}
		op.status = "Succeeded"
		r.etag++
	})
}

// WriteLog returns the PATCHes the resource received, in order, with their If-Match header and answer.
func (s *Server) WriteLog(id string) []Write {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r := s.resources[strings.ToLower(id)]; r != nil {
		return append([]Write(nil), r.log...)
	}
	return nil
}

// Counts returns the request counters.
func (s *Server) Counts() Counters {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.counters
}

// WritesTo returns the number of PATCH requests the resource received.
func (s *Server) WritesTo(id string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r := s.resources[strings.ToLower(id)]; r != nil {
		return r.writes
	}
	return 0
}

// MaxConcurrentWrites is the largest number of PATCHes that were in flight on the resource at once (from a
// PATCH's arrival until its answer if ARM rejected it, or until its operation ended if ARM accepted it);
// with id "" the largest over all resources. One writer that waits for its operations never exceeds 1.
func (s *Server) MaxConcurrentWrites(id string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if id != "" {
		if r := s.resources[strings.ToLower(id)]; r != nil {
			return r.maxInFlight
		}
		return 0
	}
	n := 0
	for _, r := range s.resources {
		n = max(n, r.maxInFlight)
	}
	return n
}

// Busy reports whether a PATCH operation on the resource is still running.
func (s *Server) Busy(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.resources[strings.ToLower(id)]
	return r != nil && r.busy != nil
}

func (s *Server) changedLocked(r *resource) {
	if s.opts.OnChange == nil {
		return
	}
	id, users := r.id, sortedValues(r.users)
	select {
	case s.notify <- func() { s.opts.OnChange(id, users) }:
	case <-s.closed:
	}
}

func sortedValues(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	sort.Strings(out)
	return out
}

func (s *Server) serve(w http.ResponseWriter, req *http.Request) {
	if s.opts.Authorize != nil {
		if err := s.opts.Authorize(req); err != nil {
			writeError(w, http.StatusUnauthorized, apiError{"InvalidAuthenticationToken", "The access token is invalid: " + err.Error()}, 0)
			return
		}
	}
	path := strings.TrimRight(req.URL.Path, "/")
	if strings.Contains(strings.ToLower(path), "/operations/") && req.Method == http.MethodGet {
		s.serveOperation(w, path[strings.LastIndex(path, "/")+1:])
		return
	}
	s.mu.Lock()
	r := s.resources[strings.ToLower(path)]
	if r == nil {
		s.mu.Unlock()
		writeError(w, http.StatusNotFound, apiError{"ResourceNotFound", fmt.Sprintf("The Resource '%s' was not found.", path)}, 0)
		return
	}
	if req.Method == http.MethodGet {
		s.counters.Reads++
	} else {
		s.counters.Writes++
		r.writes++
	}
	// A PATCH is in flight until answered, or, when it started an operation, until the operation ends.
	started := false
	if req.Method == http.MethodPatch {
		r.inFlight++
		r.maxInFlight = max(r.maxInFlight, r.inFlight)
		sw := &statusWriter{ResponseWriter: w}
		w = sw
		defer func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			if !started {
				r.inFlight--
			}
			r.log = append(r.log, Write{IfMatch: req.Header.Get("If-Match"), Status: sw.status, Code: sw.Header().Get("x-ms-error-code")})
			if sw.status >= 400 {
				s.counters.Refused++
			}
		}()
		// ARM's gateway counts the write against the subscription before the resource provider sees it.
		remaining, wait := s.takeWriteTokenLocked(subscriptionOf(r.id))
		if remaining >= 0 {
			w.Header().Set("x-ms-ratelimit-remaining-subscription-writes", strconv.Itoa(remaining))
		}
		if wait > 0 {
			s.counters.Throttled++
			s.mu.Unlock()
			secs := int64((wait + time.Second - 1) / time.Second)
			w.Header().Set("Retry-After", strconv.FormatInt(secs, 10))
			w.Header().Set("x-ms-failure-cause", "gateway")
			writeError(w, http.StatusTooManyRequests, apiError{CodeSubscriptionRequestsThrottled, fmt.Sprintf(
				"Number of 'write' requests for subscription '%s' actor '%s' exceeded. Please try again after '%d' seconds.", subscriptionOf(r.id), callerObjectID, secs)}, 0)
			return
		}
		if scope := s.deniedScopeLocked(r.id); scope != "" {
			s.mu.Unlock()
			writeError(w, http.StatusForbidden, apiError{CodeAuthorizationFailed, fmt.Sprintf(
				"The client '%s' with object id '%s' does not have authorization to perform action '%s/write' over scope '%s' or the scope is invalid. If access was recently granted, please refresh your credentials.",
				callerObjectID, callerObjectID, r.kind, r.id)}, 0)
			return
		}
	}
	f := s.takeFaultLocked(req.Method, r)
	s.mu.Unlock()

	if f != nil && !f.Async && !(f.Hang && f.Apply) {
		if f.Hang {
			s.hang(req.Context())
			return
		}
		writeError(w, f.Status, apiError{f.Code, f.Message}, f.RetryAfter)
		return
	}
	switch req.Method {
	case http.MethodGet:
		s.mu.Lock()
		body, etag, busy := s.renderLocked(r)
		s.mu.Unlock()
		w.Header().Set("ETag", etag)
		if busy {
			setRetryAfter(w, s.opts.PollAfter)
		}
		writeJSON(w, http.StatusOK, body)
	case http.MethodPatch:
		started = s.patch(w, req, r, f)
	default:
		writeError(w, http.StatusMethodNotAllowed, apiError{"MethodNotAllowed", req.Method + " is not emulated"}, 0)
	}
}

// statusWriter remembers the status of an answer.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func subscriptionOf(id string) string {
	parts := strings.Split(strings.Trim(id, "/"), "/")
	if len(parts) > 1 && strings.EqualFold(parts[0], "subscriptions") {
		return parts[1]
	}
	return ""
}

// takeWriteTokenLocked takes a token from the subscription's write bucket: it returns the tokens left (-1
// without a limit) and, when none was left, how long until one is.
func (s *Server) takeWriteTokenLocked(sub string) (int, time.Duration) {
	lim := s.opts.SubscriptionWrites
	if lim.Size <= 0 || (len(lim.Subscriptions) > 0 && !containsFold(lim.Subscriptions, sub)) {
		return -1, 0
	}
	now := time.Now()
	b := s.buckets[strings.ToLower(sub)]
	if b == nil {
		b = &bucketState{tokens: float64(lim.Size), at: now}
		s.buckets[strings.ToLower(sub)] = b
	}
	b.tokens = min(float64(lim.Size), b.tokens+now.Sub(b.at).Seconds()*lim.Refill)
	b.at = now
	if b.tokens < 1 {
		if lim.Refill <= 0 {
			return 0, time.Hour
		}
		return 0, time.Duration((1 - b.tokens) / lim.Refill * float64(time.Second))
	}
	b.tokens--
	return int(b.tokens), 0
}

func containsFold(list []string, s string) bool {
	for _, v := range list {
		if strings.EqualFold(v, s) {
			return true
		}
	}
	return false
}

// deniedScopeLocked returns the denied scope (DenyWrites) that contains the resource, or "".
func (s *Server) deniedScopeLocked(id string) string {
	k := strings.ToLower(id)
	for scope := range s.deniedRG {
		if k == scope || strings.HasPrefix(k, scope+"/") {
			return scope
		}
	}
	return ""
}

func (s *Server) hang(ctx context.Context) {
	select {
	case <-ctx.Done():
	case <-s.closed:
	case <-time.After(5 * time.Minute):
	}
}

func (s *Server) takeFaultLocked(method string, r *resource) *Fault {
	for _, k := range []string{strings.ToLower(r.id), ""} {
		q := s.faults[k]
		for i, f := range q {
			if f.Method == "" || strings.EqualFold(f.Method, method) {
				s.faults[k] = append(q[:i:i], q[i+1:]...)
				s.counters.Faults++
				return &f
			}
		}
	}
	if s.faultFunc != nil {
		if f := s.faultFunc(method, r.id); f != nil {
			s.counters.Faults++
			return f
		}
	}
	return nil
}

type identityPatch struct {
	Type                   *string                     `json:"type"`
	UserAssignedIdentities map[string]*json.RawMessage `json:"userAssignedIdentities"`
}

// patch applies an identity PATCH; it reports whether an operation was started (which then owns the
// PATCH's in-flight count).
func (s *Server) patch(w http.ResponseWriter, req *http.Request, r *resource, f *Fault) bool {
	var body struct {
		Identity *identityPatch `json:"identity"`
	}
	if err := json.NewDecoder(req.Body).Decode(&body); err != nil {
		writeError(w, http.StatusBadRequest, apiError{"InvalidRequestContent", err.Error()}, 0)
		return false
	}
	s.mu.Lock()
	// ARM checks the caller's right to assign each identity the body names (linked access check) before the
	// resource provider looks at the request.
	if aerr := s.linkedAuthorizationLocked(r, body.Identity); aerr != nil {
		s.mu.Unlock()
		writeError(w, http.StatusForbidden, *aerr, 0)
		return false
	}
	if r.busy != nil {
		s.mu.Unlock()
		writeError(w, http.StatusConflict, apiError{CodeConflict, conflictMessage}, 0)
		return false
	}
	if m := req.Header.Get("If-Match"); m != "" && m != "*" && m != etagOf(r) {
		s.mu.Unlock()
		writeError(w, http.StatusPreconditionFailed, apiError{CodePreconditionFailed, fmt.Sprintf("The etag %s does not match the current etag %s of %s.", m, etagOf(r), r.id)}, 0)
		return false
	}
	system, users, aerr, status := s.applyIdentityLocked(r, body.Identity)
	if aerr != nil {
		s.mu.Unlock()
		writeError(w, status, *aerr, 0)
		return false
	}
	s.opSeq++
	op := &operation{id: strconv.Itoa(s.opSeq), status: "InProgress"}
	s.ops[op.id] = op
	r.busy = op
	latency := r.latency
	if latency < 0 {
		latency = s.opts.Latency
	}
	finish := func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if r.busy == op {
			r.busy = nil
		}
		r.inFlight--
		if f != nil && f.Async {
			op.status, op.err, r.failed = "Failed", &apiError{f.Code, f.Message}, true
			return
		}
		r.failed = false
		r.systemAssigned, r.users = system, users
		r.etag++
		op.status = "Succeeded"
		s.counters.AppliedWrites++
		s.changedLocked(r)
	}
	s.mu.Unlock()
	if latency == 0 {
		finish()
	} else {
		time.AfterFunc(latency, finish)
	}
	if f != nil && f.Hang {
		s.hang(req.Context())
		return true
	}
	s.mu.Lock()
	resp, etag, _ := s.renderLocked(r)
	s.mu.Unlock()
	// ARM answers an accepted PATCH with the resource still updating, whatever the operation's speed.
	resp["properties"] = map[string]any{"provisioningState": "Updating"}
	w.Header().Set("ETag", etag)
	if strings.HasSuffix(r.kind, "virtualMachineScaleSets") {
		w.Header().Set("Azure-AsyncOperation", fmt.Sprintf("%s/subscriptions/x/providers/Microsoft.Compute/locations/emulated/operations/%s?api-version=2024-11-01", s.srv.URL, op.id))
	}
	setRetryAfter(w, s.opts.PollAfter)
	writeJSON(w, http.StatusOK, resp)
	return true
}

// applyIdentityLocked computes the resource's identities after the patch, with ARM's rules: the user map is
// merged (null removes), type None drops everything, a type without UserAssigned drops every user identity,
// and a type with UserAssigned but no user identity left is invalid.
func (s *Server) applyIdentityLocked(r *resource, p *identityPatch) (bool, map[string]string, *apiError, int) {
	users := map[string]string{}
	for k, v := range r.users {
		users[k] = v
	}
	if p == nil {
		return r.systemAssigned, users, nil, 0
	}
	if p.Type == nil {
		return false, nil, &apiError{"InvalidParameter", "identity.type is required when identity is given"}, http.StatusBadRequest
	}
	t := strings.ToLower(strings.ReplaceAll(*p.Type, " ", ""))
	var system, user bool
	switch t {
	case "none":
	case "systemassigned":
		system = true
	case "userassigned":
		user = true
	case "systemassigned,userassigned":
		system, user = true, true
	default:
		return false, nil, &apiError{"InvalidParameter", fmt.Sprintf("identity.type %q is not valid", *p.Type)}, http.StatusBadRequest
	}
	if !user && len(p.UserAssignedIdentities) > 0 {
		return false, nil, &apiError{"InvalidParameter", fmt.Sprintf("identity.userAssignedIdentities given with identity.type %q", *p.Type)}, http.StatusBadRequest
	}
	for id, v := range p.UserAssignedIdentities {
		k := strings.ToLower(id)
		if v == nil || string(*v) == "null" {
			delete(users, k)
			continue
		}
		users[k] = id
	}
	if user {
		// The identity resource provider validates every user-assigned identity the resource would carry,
		// not only those the body names: a deleted identity left attached fails every change of the
		// resource until it is detached (AAD Pod Identity issues #339 and #515; the fix Azure documents is
		// to remove the identity from the VM or scale set). ARM names the first one it finds.
		var gone []string
		for k, spelled := range users {
			if s.denied[k] == CodeFailedIdentityOperation {
				gone = append(gone, spelled)
			}
		}
		if len(gone) > 0 {
			sort.Strings(gone)
			return false, nil, &apiError{CodeFailedIdentityOperation, fmt.Sprintf("Identity operation for resource '%s' failed with error 'Failed to perform resource identity operation. Status: 'BadRequest'. Response: '{\"error\":{\"code\":\"BadRequest\",\"message\":\"Resource '%s' was not found.\"}}'.'.", r.id, gone[0])}, http.StatusBadRequest
		}
	}
	if !user {
		users = map[string]string{}
	} else if len(users) == 0 {
		return false, nil, &apiError{"InvalidParameter", "identity.type includes UserAssigned but no user-assigned identity would remain"}, http.StatusBadRequest
	}
	return system, users, nil, 0
}

// linkedAuthorizationLocked refuses a body that attaches identities the caller may not assign (DenyIdentity
// with CodeLinkedAuthorizationFailed), naming them all as ARM does.
func (s *Server) linkedAuthorizationLocked(r *resource, p *identityPatch) *apiError {
	if p == nil {
		return nil
	}
	var denied []string
	for id, v := range p.UserAssignedIdentities {
		k := strings.ToLower(id)
		if v == nil || string(*v) == "null" {
			continue
		}
		if _, present := r.users[k]; !present && s.denied[k] == CodeLinkedAuthorizationFailed {
			denied = append(denied, id)
		}
	}
	if len(denied) == 0 {
		return nil
	}
	sort.Strings(denied)
	return &apiError{CodeLinkedAuthorizationFailed, fmt.Sprintf("The client 'assigner' with object id '%s' has permission to perform action '%s/write' on scope '%s'; however, it does not have permission to perform action 'Microsoft.ManagedIdentity/userAssignedIdentities/assign/action' on the linked scope(s) '%s' or the linked scope(s) are invalid.", callerObjectID, r.kind, r.id, strings.Join(denied, ","))}
}

func etagOf(r *resource) string { return fmt.Sprintf("\"%d\"", r.etag) }

func (s *Server) renderLocked(r *resource) (map[string]any, string, bool) {
	typ := "None"
	switch {
	case r.systemAssigned && len(r.users) > 0:
		typ = "SystemAssigned, UserAssigned"
	case r.systemAssigned:
		typ = "SystemAssigned"
	case len(r.users) > 0:
		typ = "UserAssigned"
	}
	identity := map[string]any{"type": typ}
	if r.systemAssigned {
		identity["principalId"] = guid("principal", r.id)
		identity["tenantId"] = guid("tenant", "emulated")
	}
	if len(r.users) > 0 {
		u := map[string]any{}
		for _, id := range r.users {
			u[id] = map[string]string{"principalId": PrincipalIDOf(id), "clientId": ClientIDOf(id)}
		}
		identity["userAssignedIdentities"] = u
	}
	state := "Succeeded"
	if r.busy != nil {
		state = "Updating"
	} else if r.failed {
		state = "Failed"
	}
	name := r.id[strings.LastIndex(r.id, "/")+1:]
	return map[string]any{
		"id": r.id, "name": name, "type": r.kind, "location": "emulated", "etag": etagOf(r),
		"identity": identity, "properties": map[string]any{"provisioningState": state},
	}, etagOf(r), r.busy != nil
}

// ClientIDOf is the client id the emulator reports for a user-assigned identity (stable per id, case-folded),
// so an IMDS emulator can agree with it.
func ClientIDOf(identityID string) string { return guid("client", strings.ToLower(identityID)) }

// PrincipalIDOf is the principal (object) id the emulator reports for a user-assigned identity.
func PrincipalIDOf(identityID string) string { return guid("principal", strings.ToLower(identityID)) }

func guid(kind, s string) string {
	h := sha256.Sum256([]byte(kind + "/" + s))
	return fmt.Sprintf("%x-%x-%x-%x-%x", h[0:4], h[4:6], h[6:8], h[8:10], h[10:16])
}

func (s *Server) serveOperation(w http.ResponseWriter, id string) {
	s.mu.Lock()
	s.counters.Polls++
	op := s.ops[id]
	var body map[string]any
	if op != nil {
		body = map[string]any{"name": op.id, "status": op.status}
		if op.err != nil {
			body["error"] = op.err
		}
	}
	s.mu.Unlock()
	if op == nil {
		writeError(w, http.StatusNotFound, apiError{"OperationNotFound", "operation " + id + " not found"}, 0)
		return
	}
	if body["status"] == "InProgress" {
		setRetryAfter(w, s.opts.PollAfter)
	}
	writeJSON(w, http.StatusOK, body)
}

func setRetryAfter(w http.ResponseWriter, d time.Duration) {
	if d <= 0 {
		return
	}
	w.Header().Set("retry-after-ms", strconv.FormatInt(d.Milliseconds(), 10))
	w.Header().Set("Retry-After", strconv.FormatInt(int64((d+time.Second-1)/time.Second), 10))
}

func writeError(w http.ResponseWriter, status int, e apiError, retryAfter time.Duration) {
	if status == 0 {
		status = http.StatusInternalServerError
	}
	if e.Code == "" {
		e.Code = http.StatusText(status)
	}
	if e.Message == "" {
		e.Message = "injected fault"
	}
	w.Header().Set("x-ms-error-code", e.Code)
	setRetryAfter(w, retryAfter)
	writeJSON(w, status, map[string]any{"error": e})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
