// Command goclient is the end-to-end tests' Go workload: it gets a managed-identity token with the real Azure
// SDK for Go (azidentity.ManagedIdentityCredential, which asks IMDS at 169.254.169.254) and prints one JSON
// line per attempt. In a pod the IMDS redirect sends those requests to the podidentity sidecar.
//
// Environment: MODE (once | until-ok | forever | raw-imds, default once), AZURE_CLIENT_ID (a user-assigned
// identity; unset asks for the default identity), TOKEN_RESOURCE (default https://management.azure.com),
// INTERVAL (default 1s), ATTEMPT_TIMEOUT (default 1m), FRESH_CREDENTIAL (true: a new credential, so a request
// to IMDS, for every attempt), and for raw-imds RAW_URL and QUERY.
package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
)

func main() {
	cfg, err := ConfigFromEnv(os.Getenv)
	if err != nil {
		fmt.Fprintln(os.Stderr, "goclient:", err)
		os.Exit(2)
	}
	opts := &azidentity.ManagedIdentityCredentialOptions{}
	if cfg.ClientID != "" {
		opts.ID = azidentity.ClientID(cfg.ClientID)
	}
	cred, err := azidentity.NewManagedIdentityCredential(opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "goclient: creating the managed identity credential:", err)
		os.Exit(2)
	}
	credential := func() (*azidentity.ManagedIdentityCredential, error) {
		if !cfg.Fresh {
			return cred, nil
		}
		return azidentity.NewManagedIdentityCredential(opts)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	r := &Runner{
		Config: cfg,
		Token: func(ctx context.Context, scope string) (Token, error) {
			cred, err := credential()
			if err != nil {
				return Token{}, err
			}
			tok, err := cred.GetToken(ctx, policy.TokenRequestOptions{Scopes: []string{scope}})
			return Token{Value: tok.Token, ExpiresOn: tok.ExpiresOn}, err
		},
		HTTP:  &http.Client{},
		Out:   os.Stdout,
		Now:   time.Now,
		Sleep: SleepContext,
	}
	os.Exit(r.Run(ctx))
}
