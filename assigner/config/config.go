// Package config decides how the assigner authenticates to Azure and which cloud it talks to, from AKS's
// azure.json, the environment, and flags; and builds the azidentity credential for it.
package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
)

// AzureJSON is the part of AKS's /etc/kubernetes/azure.json the assigner reads.
type AzureJSON struct {
	Cloud                                 string `json:"cloud"`
	TenantID                              string `json:"tenantId"`
	SubscriptionID                        string `json:"subscriptionId"`
	ResourceGroup                         string `json:"resourceGroup"`
	VMType                                string `json:"vmType"`
	AADClientID                           string `json:"aadClientId"`
	AADClientSecret                       string `json:"aadClientSecret"`
	AADClientCertPath                     string `json:"aadClientCertPath"`
	AADClientCertPassword                 string `json:"aadClientCertPassword"`
	UseManagedIdentityExtension           bool   `json:"useManagedIdentityExtension"`
	UserAssignedIdentityID                string `json:"userAssignedIdentityID"`
	AADFederatedTokenFile                 string `json:"aadFederatedTokenFile"`
	UseFederatedWorkloadIdentityExtension bool   `json:"useFederatedWorkloadIdentityExtension"`
	ResourceManagerEndpoint               string `json:"resourceManagerEndpoint"`
}

// LoadAzureJSON reads an azure.json file.
func LoadAzureJSON(path string) (AzureJSON, error) {
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrPermission):
		return AzureJSON{}, fmt.Errorf("reading %s as uid %d: %w; AKS's /etc/kubernetes/azure.json is readable by root only: "+
			"the chart stages a copy for the assigner with its init container stage-azure-json (assigner.credentials.azureJSON=hostPath), "+
			"check it ran; by hand, stage it with `podidentity-assigner --azure-config %s --stage-azure-config <file>` as root, or run as root",
			path, os.Getuid(), err, path)
	case err != nil:
		return AzureJSON{}, fmt.Errorf("reading %s (mount AKS's /etc/kubernetes/azure.json, or configure through AZURE_* environment variables and leave --azure-config empty): %w", path, err)
	}
	return ParseAzureJSON(b)
}

// StageAzureJSON copies the azure.json at src (on AKS readable by root only) to dst, readable by the owner and
// the group (0440): run as root in an init container whose volume the pod's fsGroup owns, it hands the file to
// the assigner's non-root uid through that group, so the assigner itself never runs as root. src must parse as
// azure.json; dst is written whole or not at all.
func StageAzureJSON(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("staging azure.json: reading %s as uid %d: %w (mount the node's /etc/kubernetes/azure.json there and run this as root)", src, os.Getuid(), err)
	}
	if _, err := ParseAzureJSON(b); err != nil {
		return fmt.Errorf("staging azure.json: %s: %w", src, err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(dst), ".azure-json-*")
	if err != nil {
		return fmt.Errorf("staging azure.json: %w (mount a writable volume at %s)", err, filepath.Dir(dst))
	}
	defer os.Remove(tmp.Name()) // gone after the rename; left only on failure
	if _, err := tmp.Write(b); err != nil {
		_ = tmp.Close()
		return fmt.Errorf("staging azure.json: writing %s: %w", tmp.Name(), err)
	}
	if err := tmp.Chmod(0o440); err != nil {
		_ = tmp.Close()
		return fmt.Errorf("staging azure.json: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("staging azure.json: %w", err)
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return fmt.Errorf("staging azure.json: %w", err)
	}
	return nil
}

// ParseAzureJSON parses azure.json content.
func ParseAzureJSON(b []byte) (AzureJSON, error) {
	var c AzureJSON
	if err := json.Unmarshal(b, &c); err != nil {
		return AzureJSON{}, fmt.Errorf("azure.json is not valid JSON: %w", err)
	}
	return c, nil
}

// Method is how the assigner authenticates.
type Method string

const (
	ManagedIdentity   Method = "managed-identity"
	WorkloadIdentity  Method = "workload-identity"
	ClientSecret      Method = "client-secret"
	ClientCertificate Method = "client-certificate"
)

// Auth is the resolved authentication setting.
type Auth struct {
	Method   Method
	TenantID string
	// ClientID of the managed identity (empty: the system-assigned one), application or federated identity.
	ClientID string
	Secret   string
	// CertPath and CertPassword: a PEM or PKCS#12 file with the certificate and its key.
	CertPath, CertPassword string
	// TokenFile is the projected service account token (workload identity).
	TokenFile string
}

// ResolveAuth picks the authentication method. Precedence: workload identity from the environment (the
// webhook of Azure Workload Identity sets AZURE_FEDERATED_TOKEN_FILE, AZURE_CLIENT_ID, AZURE_TENANT_ID),
// then azure.json (managed identity extension, federated token, certificate, secret), then AZURE_CLIENT_SECRET
// / AZURE_CLIENT_CERTIFICATE_PATH from the environment, then the node's managed identity.
func ResolveAuth(cfg AzureJSON, getenv func(string) string) (Auth, error) {
	tenant := firstNonEmpty(getenv("AZURE_TENANT_ID"), cfg.TenantID)
	if tf := getenv("AZURE_FEDERATED_TOKEN_FILE"); tf != "" {
		a := Auth{Method: WorkloadIdentity, TenantID: tenant, ClientID: firstNonEmpty(getenv("AZURE_CLIENT_ID"), cfg.AADClientID), TokenFile: tf}
		return a, a.validate()
	}
	switch {
	case cfg.UseFederatedWorkloadIdentityExtension || cfg.AADFederatedTokenFile != "":
		a := Auth{Method: WorkloadIdentity, TenantID: tenant, ClientID: cfg.AADClientID, TokenFile: firstNonEmpty(cfg.AADFederatedTokenFile, "/var/run/secrets/azure/tokens/azure-identity-token")}
		return a, a.validate()
	case cfg.UseManagedIdentityExtension:
		return Auth{Method: ManagedIdentity, ClientID: cfg.UserAssignedIdentityID}, nil
	case cfg.AADClientCertPath != "":
		a := Auth{Method: ClientCertificate, TenantID: tenant, ClientID: cfg.AADClientID, CertPath: cfg.AADClientCertPath, CertPassword: cfg.AADClientCertPassword}
		return a, a.validate()
	case cfg.AADClientSecret != "" && !strings.EqualFold(cfg.AADClientSecret, "msi"):
		a := Auth{Method: ClientSecret, TenantID: tenant, ClientID: cfg.AADClientID, Secret: cfg.AADClientSecret}
		return a, a.validate()
	}
	if s := getenv("AZURE_CLIENT_SECRET"); s != "" {
		a := Auth{Method: ClientSecret, TenantID: tenant, ClientID: firstNonEmpty(getenv("AZURE_CLIENT_ID"), cfg.AADClientID), Secret: s}
		return a, a.validate()
	}
	if p := getenv("AZURE_CLIENT_CERTIFICATE_PATH"); p != "" {
		a := Auth{Method: ClientCertificate, TenantID: tenant, ClientID: firstNonEmpty(getenv("AZURE_CLIENT_ID"), cfg.AADClientID), CertPath: p, CertPassword: getenv("AZURE_CLIENT_CERTIFICATE_PASSWORD")}
		return a, a.validate()
	}
	return Auth{Method: ManagedIdentity, ClientID: firstNonEmpty(getenv("AZURE_CLIENT_ID"), cfg.UserAssignedIdentityID)}, nil
}

func (a Auth) validate() error {
	var missing []string
	if a.TenantID == "" {
		missing = append(missing, "tenant id (azure.json tenantId or AZURE_TENANT_ID)")
	}
	if a.ClientID == "" {
		missing = append(missing, "client id (azure.json aadClientId or AZURE_CLIENT_ID)")
	}
	if len(missing) > 0 {
		return fmt.Errorf("%s authentication needs %s", a.Method, strings.Join(missing, " and "))
	}
	return nil
}

// Credential builds the azidentity credential for a.
func (a Auth) Credential(opts azcore.ClientOptions) (azcore.TokenCredential, error) {
	switch a.Method {
	case ManagedIdentity:
		o := &azidentity.ManagedIdentityCredentialOptions{ClientOptions: opts}
		if a.ClientID != "" {
			o.ID = azidentity.ClientID(a.ClientID)
		}
		return azidentity.NewManagedIdentityCredential(o)
	case WorkloadIdentity:
		return azidentity.NewWorkloadIdentityCredential(&azidentity.WorkloadIdentityCredentialOptions{
			ClientOptions: opts, ClientID: a.ClientID, TenantID: a.TenantID, TokenFilePath: a.TokenFile,
			DisableInstanceDiscovery: customAuthority(opts.Cloud)})
	case ClientSecret:
		return azidentity.NewClientSecretCredential(a.TenantID, a.ClientID, a.Secret, &azidentity.ClientSecretCredentialOptions{
			ClientOptions: opts, DisableInstanceDiscovery: customAuthority(opts.Cloud)})
	case ClientCertificate:
		b, err := os.ReadFile(a.CertPath)
		if err != nil {
			return nil, fmt.Errorf("reading the client certificate: %w", err)
		}
		var pw []byte
		if a.CertPassword != "" {
			pw = []byte(a.CertPassword)
		}
		certs, key, err := azidentity.ParseCertificates(b, pw)
		if err != nil {
			return nil, fmt.Errorf("parsing the client certificate %s (PEM or PKCS#12 with its private key): %w", a.CertPath, err)
		}
		return azidentity.NewClientCertificateCredential(a.TenantID, a.ClientID, certs, key, &azidentity.ClientCertificateCredentialOptions{
			ClientOptions: opts, DisableInstanceDiscovery: customAuthority(opts.Cloud)})
	}
	return nil, fmt.Errorf("unknown authentication method %q", a.Method)
}

// customAuthority tells whether c's Azure AD is not one of the public or sovereign clouds'. For such an
// authority MSAL asks login.microsoftonline.com to validate it (instance discovery), which a private or
// disconnected cloud (Azure Stack Hub) cannot pass: every token request would fail. The authority was
// configured explicitly (--aad-authority), so it is trusted as given.
func customAuthority(c cloud.Configuration) bool {
	host := strings.TrimRight(strings.ToLower(c.ActiveDirectoryAuthorityHost), "/")
	if host == "" {
		return false
	}
	for _, known := range []cloud.Configuration{cloud.AzurePublic, cloud.AzureChina, cloud.AzureGovernment} {
		if host == strings.TrimRight(strings.ToLower(known.ActiveDirectoryAuthorityHost), "/") {
			return false
		}
	}
	return true
}

// Cloud returns the cloud configuration: a custom one when armEndpoint is set (authority and audience then
// default to the public cloud's unless given), else the named cloud (AKS's names: AzurePublicCloud,
// AzureChinaCloud, AzureUSGovernmentCloud; empty means public).
func Cloud(name, armEndpoint, armAudience, authorityHost string) (cloud.Configuration, error) {
	if armEndpoint != "" {
		c := cloud.Configuration{ActiveDirectoryAuthorityHost: firstNonEmpty(authorityHost, cloud.AzurePublic.ActiveDirectoryAuthorityHost),
			Services: map[cloud.ServiceName]cloud.ServiceConfiguration{
				cloud.ResourceManager: {Endpoint: armEndpoint, Audience: firstNonEmpty(armAudience, armEndpoint)},
			}}
		return c, nil
	}
	var c cloud.Configuration
	switch strings.ToLower(strings.ReplaceAll(name, " ", "")) {
	case "", "azurepubliccloud", "azurecloud", "public":
		c = cloud.AzurePublic
	case "azurechinacloud", "china":
		c = cloud.AzureChina
	case "azureusgovernmentcloud", "azureusgovernment", "usgovernment":
		c = cloud.AzureGovernment
	default:
		return cloud.Configuration{}, fmt.Errorf("unknown cloud %q: use AzurePublicCloud, AzureChinaCloud or AzureUSGovernmentCloud, or give --arm-endpoint (and --arm-audience, --aad-authority) for a custom cloud", name)
	}
	if authorityHost != "" {
		c.ActiveDirectoryAuthorityHost = authorityHost
	}
	return c, nil
}

// ResourceManagerScope is the token scope for ARM in cloud c, spelled exactly as the ARM SDK spells it
// (audience + "/.default", a double slash for the public cloud's "https://management.core.windows.net/"):
// the readiness check then fetches, and azidentity caches, the very token the ARM client uses, instead of
// a second one for a differently spelled scope.
func ResourceManagerScope(c cloud.Configuration) string {
	return c.Services[cloud.ResourceManager].Audience + "/.default"
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}
