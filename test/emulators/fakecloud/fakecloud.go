// Package fakecloud serves one consistent emulated Azure for the local cluster: the node's IMDS (test/emulators/imds)
// on 169.254.169.254:80, the ARM emulator (test/emulators/arm) and the Azure AD emulator over HTTPS on an address pods
// reach, and a DNS server that answers Azure AD's public host name with that address. ARM and IMDS share
// state: an identity becomes available from IMDS only once a PATCH on the node's scale set attached it.
package fakecloud

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/podidentity/podidentity/test/emulators/arm"
	"github.com/podidentity/podidentity/test/emulators/imds"
)

// Config says where each emulator listens and what the emulated subscription holds.
type Config struct {
	// IMDSAddr serves the node's IMDS (169.254.169.254:80); AdminAddr its admin API (loopback only).
	IMDSAddr, AdminAddr string
	// ARMAddr and AADAddr serve ARM and Azure AD over HTTPS with CertFile/KeyFile.
	ARMAddr, AADAddr  string
	CertFile, KeyFile string
	// DNSAddr (UDP) answers DNSNames with DNSAnswer and every other name with NXDOMAIN; empty: no DNS.
	DNSAddr   string
	DNSNames  []string
	DNSAnswer net.IP
	// ARMPublicURL is how clients reach ARMAddr (operation URLs are rewritten to it).
	ARMPublicURL string
	// TenantID of the emulated tenant; VMSSID the node's scale set; InstanceID the node's instance (IMDS
	// compute.resourceId).
	TenantID, VMSSID, InstanceID string
	// Apps are the service principals the emulated Azure AD knows (the assigner's). More, federated ones
	// included, are added through the admin API (POST /aad/apps).
	Apps []imds.App
	// IssuerCAFile is the PEM CA bundle the emulated Azure AD trusts when it fetches a service account issuer's
	// discovery document and keys for federated assertions (the local cluster's API server CA); empty: the
	// system's roots.
	IssuerCAFile string
	// Log receives one line per identity change and per listener.
	Log io.Writer
}

// Run serves until ctx ends. It returns once a listener fails, or nil after ctx ends.
func Run(ctx context.Context, cfg Config) error {
	if cfg.Log == nil {
		cfg.Log = io.Discard
	}
	cert, err := tls.LoadX509KeyPair(cfg.CertFile, cfg.KeyFile)
	if err != nil {
		return fmt.Errorf("loading the fake cloud's serving certificate: %w", err)
	}
	metadata := imds.New(imds.Options{TenantID: cfg.TenantID, VMResourceID: cfg.InstanceID})
	hist := &history{}
	attach := attachTo(metadata, cfg.VMSSID, cfg.Log)
	az := NewAzure(AzureOptions{TenantID: cfg.TenantID, Apps: cfg.Apps, ARM: arm.Options{OnChange: func(id string, users []string) {
		if strings.EqualFold(id, cfg.VMSSID) {
			hist.add(users)
		}
		attach(id, users)
	}}})
	defer az.Close()
	armServer, aad := az.ARM, az.AAD
	armServer.AddVMSS(cfg.VMSSID, false)
	armProxy, err := newARMProxy(armServer, cfg.ARMPublicURL)
	if err != nil {
		return err
	}
	if cfg.IssuerCAFile != "" {
		pem, err := os.ReadFile(cfg.IssuerCAFile)
		if err != nil {
			return fmt.Errorf("reading --issuer-ca-file: %w", err)
		}
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return fmt.Errorf("--issuer-ca-file %s holds no PEM certificate", cfg.IssuerCAFile)
		}
		aad.Federation(&http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil,
			TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}}}, nil)
	}

	tlsCfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	servers := []struct {
		name, addr string
		handler    http.Handler
		tls        bool
	}{
		{"imds", cfg.IMDSAddr, metadata, false},
		{"imds-admin", cfg.AdminAddr, adminHandler(metadata.AdminHandler(), armServer, cfg.VMSSID, hist, aad), false},
		{"arm", cfg.ARMAddr, armProxy, true},
		{"aad", cfg.AADAddr, aad, true},
	}
	errs := make(chan error, len(servers))
	var running []*http.Server
	defer func() {
		for _, r := range running {
			r.Close()
		}
	}()
	for _, s := range servers {
		ln, err := net.Listen("tcp", s.addr)
		if err != nil {
			return fmt.Errorf("%s: listening on %s: %w", s.name, s.addr, err)
		}
		if s.tls {
			ln = tls.NewListener(ln, tlsCfg)
		}
		srv := &http.Server{Handler: s.handler, ReadHeaderTimeout: 10 * time.Second}
		running = append(running, srv)
		fmt.Fprintf(cfg.Log, "%s listening on %s\n", s.name, s.addr)
		go func(name string) {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errs <- fmt.Errorf("%s: %w", name, err)
			}
		}(s.name)
	}
	if cfg.DNSAddr != "" {
		pc, err := net.ListenPacket("udp", cfg.DNSAddr)
		if err != nil {
			return fmt.Errorf("dns: listening on %s: %w", cfg.DNSAddr, err)
		}
		fmt.Fprintf(cfg.Log, "dns listening on %s (answers %s)\n", cfg.DNSAddr, strings.Join(cfg.DNSNames, ", "))
		defer pc.Close()
		go serveDNS(pc, cfg.DNSNames, cfg.DNSAnswer)
	}
	fmt.Fprintln(cfg.Log, "ready")
	select {
	case <-ctx.Done():
		return nil
	case err := <-errs:
		return err
	}
}

// attachTo keeps the IMDS emulator's attached identities equal to the user-assigned identities of the node's
// scale set, as Azure does.
func attachTo(metadata *imds.Server, vmssID string, log io.Writer) func(string, []string) {
	return func(resourceID string, userIDs []string) {
		if !strings.EqualFold(resourceID, vmssID) {
			return
		}
		ids := make([]imds.Identity, 0, len(userIDs))
		for _, id := range userIDs {
			ids = append(ids, imds.Identity{ClientID: arm.ClientIDOf(id), ObjectID: arm.PrincipalIDOf(id), ResourceID: id})
		}
		metadata.SetAttached(ids)
		fmt.Fprintf(log, "%s identities now %v\n", resourceID, userIDs)
	}
}

// newARMProxy serves the ARM emulator (which listens on loopback with its own test certificate) on the
// address pods reach, rewriting the long-running operation URLs it hands out to that address.
func newARMProxy(s *arm.Server, publicURL string) (http.Handler, error) {
	target, err := url.Parse(s.URL())
	if err != nil {
		return nil, err
	}
	p := httputil.NewSingleHostReverseProxy(target)
	p.Transport = s.HTTPClient().Transport
	p.ModifyResponse = func(r *http.Response) error {
		for _, h := range []string{"Azure-AsyncOperation", "Location"} {
			if v := r.Header.Get(h); v != "" {
				r.Header.Set(h, strings.Replace(v, s.URL(), publicURL, 1))
			}
		}
		return nil
	}
	return p, nil
}

// history records every identity set ARM applied to the node's scale set, in order.
type history struct {
	mu      sync.Mutex
	changes []Change
}

// Change is one identity set ARM applied to the node's scale set.
type Change struct {
	Time       time.Time `json:"time"`
	Identities []string  `json:"identities"`
}

func (h *history) add(users []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.changes = append(h.changes, Change{Time: time.Now(), Identities: append([]string{}, users...)})
}

func (h *history) list() []Change {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]Change{}, h.changes...)
}

// adminHandler is the IMDS emulator's admin API plus the node scale set's identities in ARM:
//
//	GET /arm/node-scale-set/history      every identity set ARM applied, oldest first ([]Change)
//	PUT /arm/node-scale-set/identities   replace its user-assigned identities out of band (a JSON list of
//	                                     resource ids), as another controller (AAD Pod Identity's MIC) left them
//	PUT /arm/denied-identities           {"id": <resource id>, "code": <ARM error code>}: ARM refuses that identity
//	                                     (LinkedAuthorizationFailed: no Managed Identity Operator role;
//	                                     FailedIdentityOperation: deleted in Azure); an empty code allows it again
//	POST /aad/apps                       register an app in the emulated Azure AD: {"tenantID", "clientID",
//	                                     "objectID", "federated": [{"issuer", "subject", "audiences"}]}
//	GET /aad/apps/{clientID}/counts      {"tokens": n, "exchanges": m}: tokens issued to it, federated assertions accepted
func adminHandler(imdsAdmin http.Handler, s *arm.Server, vmssID string, h *history, aad *imds.AAD) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/", imdsAdmin)
	mux.HandleFunc("POST /aad/apps", func(w http.ResponseWriter, r *http.Request) {
		var app struct {
			TenantID, ClientID, ObjectID string
			Federated                    []struct {
				Issuer, Subject string
				Audiences       []string
			}
		}
		dec := json.NewDecoder(r.Body)
		dec.DisallowUnknownFields()
		if err := dec.Decode(&app); err != nil || app.TenantID == "" || app.ClientID == "" {
			http.Error(w, `want {"tenantID", "clientID", "objectID", "federated": [{"issuer", "subject", "audiences"}]} with tenantID and clientID`, http.StatusBadRequest)
			return
		}
		a := imds.App{TenantID: app.TenantID, ClientID: app.ClientID, ObjectID: app.ObjectID}
		for _, f := range app.Federated {
			if f.Issuer == "" || f.Subject == "" {
				http.Error(w, "every federated credential needs issuer and subject", http.StatusBadRequest)
				return
			}
			a.Federated = append(a.Federated, imds.FederatedCredential{Issuer: f.Issuer, Subject: f.Subject, Audiences: f.Audiences})
		}
		aad.AddApp(a)
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /aad/apps/{clientID}/counts", func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("clientID")
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]int{"tokens": aad.Tokens(id), "exchanges": aad.Exchanges(id)})
	})
	mux.HandleFunc("GET /arm/node-scale-set/history", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(h.list())
	})
	mux.HandleFunc("PUT /arm/node-scale-set/identities", func(w http.ResponseWriter, r *http.Request) {
		var ids []string
		if err := json.NewDecoder(r.Body).Decode(&ids); err != nil {
			http.Error(w, "want a JSON list of identity resource ids: "+err.Error(), http.StatusBadRequest)
			return
		}
		s.SetUserIdentities(vmssID, ids...)
		_, now := s.Identities(vmssID)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(now)
	})
	mux.HandleFunc("PUT /arm/denied-identities", func(w http.ResponseWriter, r *http.Request) {
		var d struct{ ID, Code string }
		if err := json.NewDecoder(r.Body).Decode(&d); err != nil || d.ID == "" {
			http.Error(w, `want {"id": <identity resource id>, "code": <ARM error code, empty to allow>}`, http.StatusBadRequest)
			return
		}
		switch d.Code {
		case "", arm.CodeLinkedAuthorizationFailed, arm.CodeFailedIdentityOperation:
		default:
			http.Error(w, "code must be empty, "+arm.CodeLinkedAuthorizationFailed+" or "+arm.CodeFailedIdentityOperation, http.StatusBadRequest)
			return
		}
		s.DenyIdentity(d.ID, d.Code)
		w.WriteHeader(http.StatusNoContent)
	})
	return mux
}
