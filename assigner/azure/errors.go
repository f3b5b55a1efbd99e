package azure

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"regexp"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
)

// FailureKind says what the controller should do after a failed ARM call.
type FailureKind int

const (
	// Transient: 5xx, timeouts, network errors. Retry with backoff.
	Transient FailureKind = iota
	// Throttled: 429. Wait RetryAfter before touching this resource again.
	Throttled
	// Conflict: 409 (another operation runs on the resource) or 412 (etag changed). Re-read and retry soon.
	Conflict
	// IdentityRejected: LinkedAuthorizationFailed or FailedIdentityOperation naming identities. Drop them,
	// apply the rest, report them.
	IdentityRejected
	// NotFound: the VM or scale set is gone.
	NotFound
	// Permanent: anything else (bad request, failed operation). Retry slowly; a human must act.
	Permanent
	// Stale: 412, the etag sent with If-Match is not the resource's any more. Re-read, then decide again.
	Stale
	// Unauthorized: 403 other than LinkedAuthorizationFailed, e.g. AuthorizationFailed: the caller may not
	// read or write the VM or scale set (no Virtual Machine Contributor on its resource group).
	Unauthorized
)

func (k FailureKind) String() string {
	return [...]string{"transient", "throttled", "conflict", "identity_rejected", "not_found", "permanent", "stale", "unauthorized"}[k]
}

// Failure is a classified ARM error.
type Failure struct {
	Kind       FailureKind
	StatusCode int
	Code       string
	RetryAfter time.Duration
	// Message is ARM's error message (error.message of the answer's body), when there was one.
	Message string
	// Identities named by the error (IdentityRejected), as spelled in the message.
	Identities []string
	Err        error
}

func (f *Failure) Error() string { return f.Kind.String() + ": " + f.Err.Error() }
func (f *Failure) Unwrap() error { return f.Err }

// Reason explains an IdentityRejected failure in words a user can act on.
func (f *Failure) Reason() string {
	switch f.Code {
	case CodeLinkedAuthorizationFailed:
		return "the assigner's identity lacks the Managed Identity Operator role on this identity (LinkedAuthorizationFailed); grant it on the identity or its resource group"
	case CodeFailedIdentityOperation:
		return "Azure could not use this identity (FailedIdentityOperation): it was probably deleted; recreate it or fix spec.resourceID"
	}
	return f.Err.Error()
}

// ARM error codes that name identities.
const (
	CodeLinkedAuthorizationFailed = "LinkedAuthorizationFailed"
	CodeFailedIdentityOperation   = "FailedIdentityOperation"
)

var identityIDPattern = regexp.MustCompile(`(?i)/subscriptions/[^/\s'",]+/resourcegroups/[^/\s'",]+/providers/microsoft\.managedidentity/userassignedidentities/[^/\s'",\\]+`)

// IdentitiesIn extracts user-assigned identity ids from an ARM error message.
func IdentitiesIn(msg string) []string {
	seen := map[string]bool{}
	var out []string
	for _, m := range identityIDPattern.FindAllString(msg, -1) {
		if k := strings.ToLower(m); !seen[k] {
			seen[k] = true
			out = append(out, m)
		}
	}
	return out
}

// Classify turns an error from ARM (or the SDK) into a Failure.
func Classify(err error) *Failure {
	if err == nil {
		return nil
	}
	var f *Failure
	if errors.As(err, &f) {
		return f
	}
	f = &Failure{Kind: Transient, Err: err}
	var re *azcore.ResponseError
	if !errors.As(err, &re) {
		return f // network error, timeout, cancelled context: try again
	}
	f.StatusCode, f.Code = re.StatusCode, re.ErrorCode
	if re.RawResponse != nil {
		f.RetryAfter = retryAfter(re.RawResponse.Header)
		f.Message = errorMessage(re.RawResponse)
	}
	switch {
	case re.ErrorCode == CodeLinkedAuthorizationFailed || re.ErrorCode == CodeFailedIdentityOperation:
		f.Identities = IdentitiesIn(err.Error())
		f.Kind = IdentityRejected
		if len(f.Identities) == 0 {
			f.Kind = Permanent
		}
	case re.StatusCode == http.StatusTooManyRequests:
		f.Kind = Throttled
	case re.StatusCode == http.StatusConflict:
		f.Kind = Conflict
	case re.StatusCode == http.StatusPreconditionFailed:
		f.Kind = Stale
	case re.StatusCode == http.StatusForbidden:
		f.Kind = Unauthorized
	case re.StatusCode == http.StatusNotFound:
		f.Kind = NotFound
	case re.StatusCode >= 500 || re.StatusCode == http.StatusRequestTimeout:
		f.Kind = Transient
	default:
		f.Kind = Permanent
	}
	return f
}

// errorMessage is error.message of an ARM error answer ("" when the body says nothing readable).
func errorMessage(resp *http.Response) string {
	body, err := runtime.Payload(resp)
	if err != nil {
		return ""
	}
	var e struct {
		Error struct {
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(body, &e) != nil {
		return ""
	}
	return e.Error.Message
}

// IsContextError reports whether err is only our own cancellation.
func IsContextError(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

func retryAfter(h http.Header) time.Duration {
	for _, k := range []string{"retry-after-ms", "x-ms-retry-after-ms"} {
		if v := h.Get(k); v != "" {
			if d, err := time.ParseDuration(v + "ms"); err == nil && d > 0 {
				return d
			}
		}
	}
	if v := h.Get("Retry-After"); v != "" {
		if d, err := time.ParseDuration(v + "s"); err == nil && d > 0 {
			return d
		}
		if t, err := http.ParseTime(v); err == nil {
			return time.Until(t)
		}
	}
	return 0
}
