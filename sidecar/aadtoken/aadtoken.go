// Package aadtoken asks Azure AD for a token through an azidentity credential and answers in the sidecar's
// terms. The backends that talk to Azure AD themselves (service principals, federated identities) share it.
package aadtoken

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"

	"github.com/podidentity/podidentity/sidecar/tokens"
)

// RetryAfter is what the app is told to wait when Azure AD could not be reached.
const RetryAfter = 5 * time.Second

// Get returns cred's token for resource, for the identity of clientID. The scope is resource + "/.default":
// IMDS-protocol clients ask for resources, not scopes. Azure AD's 4xx (wrong secret or assertion, unknown app,
// bad scope) is definite: the app gets 400 and refused(err) says why. Anything else (no answer, 5xx) is
// transient: the app gets 503 with Retry-After, and pending(err) says what is awaited.
func Get(ctx context.Context, cred azcore.TokenCredential, resource, clientID string, refused, pending func(error) string) (tokens.Token, error) {
	scope := resource
	if !strings.HasSuffix(scope, "/.default") {
		scope += "/.default"
	}
	at, err := cred.GetToken(ctx, policy.TokenRequestOptions{Scopes: []string{scope}})
	if err != nil {
		var afe *azidentity.AuthenticationFailedError
		if errors.As(err, &afe) && afe.RawResponse != nil && afe.RawResponse.StatusCode >= 400 && afe.RawResponse.StatusCode < 500 {
			return tokens.Token{}, &tokens.Error{Status: http.StatusBadRequest, Code: "invalid_request", Description: refused(err)}
		}
		return tokens.Token{}, &tokens.Error{Status: http.StatusServiceUnavailable, Code: "temporarily_unavailable", RetryAfter: RetryAfter,
			Description: pending(err)}
	}
	return tokens.Token{AccessToken: at.Token, ExpiresOn: at.ExpiresOn, Resource: resource, ClientID: clientID, TokenType: "Bearer"}, nil
}

// Authority is the Azure AD host of an identity: its own adEndpoint, else the sidecar's default (empty: the
// public cloud).
func Authority(adEndpoint, defaultHost string) string {
	if adEndpoint != "" {
		return adEndpoint
	}
	return defaultHost
}

// ClientOptions are a credential's client options for the authority host (the public cloud when empty) and,
// when not nil, the HTTP transport (tests). Few, short retries: the app's request is held open meanwhile, and
// the app retries on the sidecar's 503.
func ClientOptions(host string, transport policy.Transporter) azcore.ClientOptions {
	co := azcore.ClientOptions{Cloud: cloud.AzurePublic,
		Retry: policy.RetryOptions{MaxRetries: 2, RetryDelay: 250 * time.Millisecond, MaxRetryDelay: 2 * time.Second}}
	if host != "" {
		co.Cloud = cloud.Configuration{ActiveDirectoryAuthorityHost: host}
	}
	if transport != nil {
		co.Transport = transport
	}
	return co
}
