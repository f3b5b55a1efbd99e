// Package serviceprincipal obtains tokens for service-principal identities (AzureIdentity types 1 and 2)
// directly from Azure AD with azidentity, using the credential mounted into the sidecar container only:
// <secrets dir>/<identity name>/clientSecret (type 1), or .../certificate and .../password (type 2).
package serviceprincipal

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"

	"github.com/podidentity/podidentity/api/identitytype"
	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/sidecar/aadtoken"
	"github.com/podidentity/podidentity/sidecar/tokens"
)

// Secret file names inside <secrets dir>/<identity name>/, the keys of the identity's Secret.
const (
	ClientSecretFile = "clientSecret"
	CertificateFile  = "certificate"
	PasswordFile     = "password"
)

// Options configure the provider.
type Options struct {
	// SecretsDir holds one directory per identity name.
	SecretsDir string
	// AuthorityHost is the Azure AD host used when an identity sets no adEndpoint (default: Azure public cloud).
	AuthorityHost string
	// DisableInstanceDiscovery skips Azure AD's instance discovery (for Azure Stack and emulators).
	DisableInstanceDiscovery bool
	// Transport overrides the HTTP transport (tests).
	Transport policy.Transporter
}

// Provider caches one credential per identity and credential material; azidentity refreshes its own tokens,
// and the sidecar's token cache sits in front of it.
type Provider struct {
	opts  Options
	mu    sync.Mutex
	creds map[string]cached
}

type cached struct {
	material string // the secret files' content the credential was built from
	cred     azcore.TokenCredential
}

// New returns a provider.
func New(opts Options) *Provider {
	return &Provider{opts: opts, creds: map[string]cached{}}
}

// Token returns a token for the service principal and resource from its tenant (id.TenantID). The scope is
// resource + "/.default", as IMDS-protocol clients ask for resources, not scopes. The server asks for each
// auxiliary tenant's token with a copy of id whose TenantID is that tenant (see README.md).
func (p *Provider) Token(ctx context.Context, id contract.Identity, resource string) (tokens.Token, error) {
	cred, err := p.credential(id)
	if err != nil {
		return tokens.Token{}, err
	}
	return aadtoken.Get(ctx, cred, resource, id.ClientID, func(err error) string {
		return fmt.Sprintf("Azure AD refused a token for service principal %s/%s (client ID %s): %v", id.Namespace, id.Name, id.ClientID, err)
	}, func(err error) string {
		return fmt.Sprintf("no token from Azure AD for service principal %s/%s (client ID %s) yet: %v", id.Namespace, id.Name, id.ClientID, err)
	})
}

func (p *Provider) credential(id contract.Identity) (azcore.TokenCredential, error) {
	dir := filepath.Join(p.opts.SecretsDir, id.Name)
	read := func(name string) ([]byte, error) {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return nil, &tokens.Error{Status: http.StatusInternalServerError, Code: "configuration_error", Description: fmt.Sprintf(
				"service principal %s/%s: cannot read %s: %v (the webhook mounts Secret %q of the pod's namespace there; it must exist in the pod's namespace with key %q)",
				id.Namespace, id.Name, filepath.Join(dir, name), err, id.SecretName, name)}
		}
		return b, nil
	}
	var material []byte
	switch id.Type {
	case identitytype.ServicePrincipal:
		secret, err := read(ClientSecretFile)
		if err != nil {
			return nil, err
		}
		material = secret
	case identitytype.ServicePrincipalCertificate:
		cert, err := read(CertificateFile)
		if err != nil {
			return nil, err
		}
		pw, err := read(PasswordFile)
		if err != nil {
			pw = nil // a certificate without password is fine
		}
		material = append(append(cert, 0), pw...)
	default:
		return nil, fmt.Errorf("identity %s/%s has type %d, not a service principal", id.Namespace, id.Name, id.Type)
	}
	key := id.Namespace + "/" + id.Name + "|" + id.ClientID + "|" + id.TenantID + "|" + id.ADEndpoint
	p.mu.Lock()
	defer p.mu.Unlock()
	if c, ok := p.creds[key]; ok && c.material == string(material) {
		return c.cred, nil
	}
	cred, err := p.build(id, material)
	if err != nil {
		return nil, err
	}
	p.creds[key] = cached{material: string(material), cred: cred}
	return cred, nil
}

func (p *Provider) build(id contract.Identity, material []byte) (azcore.TokenCredential, error) {
	host := aadtoken.Authority(id.ADEndpoint, p.opts.AuthorityHost)
	co := aadtoken.ClientOptions(host, p.opts.Transport)
	// Auxiliary tenants are allowed as tenants of the credential; their tokens are asked for with a credential
	// of their own (id.TenantID set to the auxiliary tenant), so this only matters to azidentity's checks.
	aux := append([]string(nil), id.AuxiliaryTenantIDs...)
	switch id.Type {
	case identitytype.ServicePrincipal:
		secret := strings.TrimRight(string(material), "\r\n")
		return azidentity.NewClientSecretCredential(id.TenantID, id.ClientID, secret, &azidentity.ClientSecretCredentialOptions{
			ClientOptions: co, DisableInstanceDiscovery: p.opts.DisableInstanceDiscovery, AdditionallyAllowedTenants: aux})
	default:
		certData, pw, _ := strings.Cut(string(material), "\x00")
		certs, key, err := azidentity.ParseCertificates([]byte(certData), []byte(strings.TrimRight(pw, "\r\n")))
		if err != nil {
			return nil, &tokens.Error{Status: http.StatusInternalServerError, Code: "configuration_error", Description: fmt.Sprintf(
				"service principal %s/%s: the certificate in Secret %q does not parse (PEM or PKCS#12 with the key password in key %q): %v",
				id.Namespace, id.Name, id.SecretName, PasswordFile, err)}
		}
		return azidentity.NewClientCertificateCredential(id.TenantID, id.ClientID, certs, key, &azidentity.ClientCertificateCredentialOptions{
			ClientOptions: co, DisableInstanceDiscovery: p.opts.DisableInstanceDiscovery, AdditionallyAllowedTenants: aux})
	}
}
