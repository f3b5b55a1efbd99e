package fakecloud

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/podidentity/podidentity/test/emulators/imds"
)

// Admin is a client of the fake cloud's admin API (the routes of adminHandler and of the IMDS emulator's admin
// handler), for the end-to-end suite and the demo.
type Admin struct {
	// Base is the admin API's URL: "http://" + cluster.IMDSAdminAddress on the local cluster.
	Base string
	// Client sends the requests; nil means http.DefaultClient.
	Client *http.Client
}

// Do sends method to path with body as JSON (when not nil) and decodes a JSON answer into into (when not
// nil). An answer other than 2xx is an error that carries the emulator's message.
func (a Admin) Do(ctx context.Context, method, path string, body, into any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, a.Base+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	hc := a.Client
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("the fake cloud's admin API at %s (is the local cluster up?): %w", a.Base, err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("%s %s%s: reading the answer: %w", method, a.Base, path, err)
	}
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s %s%s: %s: %s", method, a.Base, path, resp.Status, strings.TrimSpace(string(out)))
	}
	if into == nil || len(out) == 0 {
		return nil
	}
	if err := json.Unmarshal(out, into); err != nil {
		return fmt.Errorf("%s %s%s: %w", method, a.Base, path, err)
	}
	return nil
}

// RegisterFederatedApp registers an application in the emulated Azure AD with one federated credential: Azure
// AD exchanges a token of issuer for subject (system:serviceaccount:<namespace>:<name>) for one of clientID.
func (a Admin) RegisterFederatedApp(ctx context.Context, tenantID, clientID, issuer, subject string) error {
	return a.Do(ctx, http.MethodPost, "/aad/apps", map[string]any{"tenantID": tenantID, "clientID": clientID, "objectID": clientID,
		"federated": []map[string]any{{"issuer": issuer, "subject": subject}}}, nil)
}

// AppCounts are what the emulated Azure AD did for one application.
type AppCounts struct {
	// Tokens it issued to the application; Exchanges the federated assertions it accepted for it.
	Tokens, Exchanges int
}

// Counts returns what the emulated Azure AD did for clientID.
func (a Admin) Counts(ctx context.Context, clientID string) (AppCounts, error) {
	var c AppCounts
	err := a.Do(ctx, http.MethodGet, "/aad/apps/"+clientID+"/counts", nil, &c)
	return c, err
}

// History returns every identity set ARM applied to the node's scale set, oldest first.
func (a Admin) History(ctx context.Context) ([]Change, error) {
	var h []Change
	err := a.Do(ctx, http.MethodGet, "/arm/node-scale-set/history", nil, &h)
	return h, err
}

// Attached returns the identities the node's IMDS serves (those attached to its scale set).
func (a Admin) Attached(ctx context.Context) ([]imds.Identity, error) {
	var ids []imds.Identity
	err := a.Do(ctx, http.MethodGet, "/attached", nil, &ids)
	return ids, err
}

// IMDSCounters returns the IMDS emulator's call counters.
func (a Admin) IMDSCounters(ctx context.Context) (imds.Counters, error) {
	var c imds.Counters
	err := a.Do(ctx, http.MethodGet, "/counters", nil, &c)
	return c, err
}
