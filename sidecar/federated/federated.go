// Package federated obtains tokens for federated identities (AzureIdentity annotated podidentity.io/backend:
// federated) by workload identity federation: azidentity's ClientAssertionCredential presents the pod's
// projected service account token, read from its file on every exchange (the kubelet rotates it), to Azure AD
// as the client assertion of the identity's client ID in the identity's tenant. Nothing is attached to a node.
package federated

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"

	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/sidecar/aadtoken"
	"github.com/podidentity/podidentity/sidecar/tokens"
)

// Options configure the provider.
type Options struct {
	// TokenFile is the projected service account token (the webhook mounts it into the sidecar only).
	TokenFile string
	// AuthorityHost is the Azure AD host used when an identity sets no adEndpoint (default: Azure public
	// cloud); sovereign clouds set theirs, e.g. https://login.microsoftonline.us/.
	AuthorityHost string
	// DisableInstanceDiscovery skips Azure AD's instance discovery (for Azure Stack and emulators).
	DisableInstanceDiscovery bool
	// Transport overrides the HTTP transport (tests).
	Transport policy.Transporter
}

// Provider holds one credential per federated identity (client ID, tenant, authority). azidentity caches the
// tokens it gets; the sidecar's token cache sits in front of it, as for the other backends.
type Provider struct {
	opts  Options
	mu    sync.Mutex
	creds map[string]azcore.TokenCredential
}

// New returns a provider.
func New(opts Options) *Provider {
	return &Provider{opts: opts, creds: map[string]azcore.TokenCredential{}}
}

// Token exchanges the service account token for id's token for resource (scope resource + "/.default").
func (p *Provider) Token(ctx context.Context, id contract.Identity, resource string) (tokens.Token, error) {
	// Read once up front: a missing file is a configuration error the app and the operator should see as one,
	// not as Azure AD's refusal.
	if _, err := p.assertion(id); err != nil {
		return tokens.Token{}, err
	}
	cred, err := p.credential(id)
	if err != nil {
		return tokens.Token{}, err
	}
	return aadtoken.Get(ctx, cred, resource, id.ClientID, func(err error) string {
		return fmt.Sprintf("Azure AD refused the service account token of this pod for federated identity %s/%s (client ID %s, tenant %s): %v "+
			"(the identity needs a federated credential for this cluster's issuer, subject system:serviceaccount:<pod namespace>:<pod service account> and audience api://AzureADTokenExchange)",
			id.Namespace, id.Name, id.ClientID, id.TenantID, err)
	}, func(err error) string {
		return fmt.Sprintf("no token from Azure AD for federated identity %s/%s (client ID %s) yet: %v", id.Namespace, id.Name, id.ClientID, err)
	})
}

// assertion reads the projected token: on every exchange, so a rotated token is used as soon as the kubelet
// writes it.
func (p *Provider) assertion(id contract.Identity) (string, error) {
	b, err := os.ReadFile(p.opts.TokenFile)
	if err == nil && len(strings.TrimSpace(string(b))) == 0 {
		err = errors.New("the file is empty")
	}
	if err != nil {
		return "", &tokens.Error{Status: http.StatusInternalServerError, Code: "configuration_error", Description: fmt.Sprintf(
			"federated identity %s/%s: cannot read the service account token %s: %v (the webhook projects it into the sidecar of pods bound to a federated identity when they are created; recreate the pod)",
			id.Namespace, id.Name, p.opts.TokenFile, err)}
	}
	return strings.TrimSpace(string(b)), nil
}

func (p *Provider) credential(id contract.Identity) (azcore.TokenCredential, error) {
	host := aadtoken.Authority(id.ADEndpoint, p.opts.AuthorityHost)
	key := id.Namespace + "/" + id.Name + "|" + id.ClientID + "|" + id.TenantID + "|" + host
	p.mu.Lock()
	defer p.mu.Unlock()
	if c, ok := p.creds[key]; ok {
		return c, nil
	}
	co := aadtoken.ClientOptions(host, p.opts.Transport)
	cred, err := azidentity.NewClientAssertionCredential(id.TenantID, id.ClientID, func(context.Context) (string, error) { return p.assertion(id) },
		&azidentity.ClientAssertionCredentialOptions{ClientOptions: co, DisableInstanceDiscovery: p.opts.DisableInstanceDiscovery})
	if err != nil {
		return nil, &tokens.Error{Status: http.StatusInternalServerError, Code: "configuration_error", Description: fmt.Sprintf(
			"federated identity %s/%s: %v (check spec.tenantID and spec.clientID of the AzureIdentity)", id.Namespace, id.Name, err)}
	}
	p.creds[key] = cred
	return cred, nil
}
