package app

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"

	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/test/emulators/imds"
	"github.com/podidentity/podidentity/test/toolbox/jwttest"
)

// toSidecar sends every request to the sidecar's loopback listener, as the init container's redirect of
// 169.254.169.254:80 does inside a pod. It records what the SDK asked for.
type toSidecar struct {
	addr string
	seen []string
}

func (s *toSidecar) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Host != "169.254.169.254" {
		return nil, &azcoreErr{r.URL.Host}
	}
	s.seen = append(s.seen, r.URL.Path+"?"+r.URL.RawQuery)
	r = r.Clone(r.Context())
	r.URL.Host = s.addr
	return http.DefaultTransport.RoundTrip(r)
}

type azcoreErr struct{ host string }

func (e *azcoreErr) Error() string { return "test transport: unexpected host " + e.host }

func sdkOptions(addr string) (azcore.ClientOptions, *toSidecar) {
	tr := &toSidecar{addr: addr}
	return azcore.ClientOptions{Transport: &http.Client{Transport: tr}, Retry: policy.RetryOptions{MaxRetries: -1}}, tr
}

// TestAzureSDKManagedIdentityCredential uses the real azidentity ManagedIdentityCredential as the app.
func TestAzureSDKManagedIdentityCredential(t *testing.T) {
	for _, k := range []string{"IDENTITY_ENDPOINT", "MSI_ENDPOINT", "IMDS_ENDPOINT", "AZURE_POD_IDENTITY_AUTHORITY_HOST", "IDENTITY_HEADER", "MSI_SECRET"} {
		if _, ok := os.LookupEnv(k); ok {
			t.Setenv(k, "")
			os.Unsetenv(k)
		}
	}
	h := start(t, setup{bound: []contract.Identity{web, jobs}, attached: []imds.Identity{webMI, jobsMI, otherMI}})
	// MSAL caches tokens per process: a resource of its own keeps every run of this test (-count) honest.
	scope := []string{uniqueResource() + "/.default"}
	tests := []struct {
		name    string
		id      azidentity.ManagedIDKind
		want    string // client ID of the token
		wantErr string
	}{
		{name: "bound, by client ID", id: azidentity.ClientID(webMI.ClientID), want: webMI.ClientID},
		{name: "bound, by resource ID (msi_res_id)", id: azidentity.ResourceID(jobsMI.ResourceID), want: jobsMI.ClientID},
		{name: "no ID: the pod's default identity", want: webMI.ClientID},
		{name: "unbound, by client ID", id: azidentity.ClientID(otherMI.ClientID), wantErr: "the requested identity isn't assigned to this resource"},
		{name: "unbound, by resource ID", id: azidentity.ResourceID(otherMI.ResourceID), wantErr: "is not an identity bound to this pod"},
		{name: "bound, by object ID", id: azidentity.ObjectID(jobsMI.ObjectID), want: jobsMI.ClientID},
		{name: "unbound, by object ID", id: azidentity.ObjectID(otherMI.ObjectID), wantErr: "is not an identity bound to this pod"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			co, tr := sdkOptions(h.addr)
			cred, err := azidentity.NewManagedIdentityCredential(&azidentity.ManagedIdentityCredentialOptions{ID: tt.id, ClientOptions: co})
			if err != nil {
				t.Fatal(err)
			}
			tok, err := cred.GetToken(context.Background(), policy.TokenRequestOptions{Scopes: scope})
			if len(tr.seen) == 0 || !strings.HasPrefix(tr.seen[0], "/metadata/identity/oauth2/token?") {
				t.Fatalf("the SDK did not call the token endpoint: %v", tr.seen)
			}
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("GetToken error %v, want one containing %q", err, tt.wantErr)
				}
				if !strings.Contains(err.Error(), "400") {
					t.Fatalf("error %v does not carry the sidecar's 400", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("GetToken: %v", err)
			}
			if got := jwttest.Claims(t, tok.Token)["appid"]; got != tt.want {
				t.Fatalf("token for %v, want %s", got, tt.want)
			}
			if tok.ExpiresOn.IsZero() {
				t.Fatal("token has no expiry")
			}
		})
	}
	if n := h.emu.Counters().TokensByClientID[otherMI.ClientID]; n != 0 {
		t.Fatalf("IMDS issued %d tokens for the unbound identity", n)
	}
}

// TestAzureSDKDefaultAzureCredential: DefaultAzureCredential first probes IMDS with a bare request (no query,
// no Metadata header, 1 s timeout, no retry); the sidecar must answer it at once so that the chain uses
// managed identity.
func TestAzureSDKDefaultAzureCredential(t *testing.T) {
	for _, k := range []string{"AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_FEDERATED_TOKEN_FILE", "AZURE_USERNAME",
		"IDENTITY_ENDPOINT", "MSI_ENDPOINT", "IMDS_ENDPOINT", "AZURE_TOKEN_CREDENTIALS"} {
		if _, ok := os.LookupEnv(k); ok {
			t.Setenv(k, "")
			os.Unsetenv(k)
		}
	}
	h := start(t, setup{bound: []contract.Identity{web}, attached: []imds.Identity{webMI, otherMI}})
	co, tr := sdkOptions(h.addr)
	cred, err := azidentity.NewDefaultAzureCredential(&azidentity.DefaultAzureCredentialOptions{ClientOptions: co})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := cred.GetToken(context.Background(), policy.TokenRequestOptions{Scopes: []string{uniqueResource() + "/.default"}})
	if err != nil {
		t.Fatalf("GetToken: %v (requests: %v)", err, tr.seen)
	}
	if got := jwttest.Claims(t, tok.Token)["appid"]; got != webMI.ClientID {
		t.Fatalf("token for %v, want web", got)
	}
	if len(tr.seen) < 2 || tr.seen[0] != "/metadata/identity/oauth2/token?" {
		t.Fatalf("requests %v: want the bare probe first, then the token request", tr.seen)
	}
}

func uniqueResource() string {
	return fmt.Sprintf("https://app-%d.example.com", time.Now().UnixNano())
}
