// Package app wires the token sidecar together from its configuration: identities store, token cache in front
// of the node IMDS client and the service-principal provider, HTTP server, and health and metrics endpoints.
package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/podidentity/podidentity/api/identitytype"
	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/sidecar/federated"
	"github.com/podidentity/podidentity/sidecar/identities"
	"github.com/podidentity/podidentity/sidecar/loopguard"
	"github.com/podidentity/podidentity/sidecar/server"
	"github.com/podidentity/podidentity/sidecar/serviceprincipal"
	"github.com/podidentity/podidentity/sidecar/tokens"
	"github.com/podidentity/podidentity/sidecar/upstream"
)

// Config is the sidecar's configuration (flags and environment).
type Config struct {
	ListenAddress  string
	HealthAddress  string
	IdentitiesFile string
	SecretsDir     string
	// FederatedTokenFile is the projected service account token federated identities are exchanged with.
	FederatedTokenFile     string
	IMDSEndpoint           string
	MetadataHeaderRequired bool
	BlockInstanceMetadata  bool
	// ReloadInterval is how often the identities file is re-read.
	ReloadInterval time.Duration
	// AttachWait bounds how long a token request waits for IMDS (identity not yet attached, throttled,
	// restarting) before the app gets 503; RetryAfter is the Retry-After of that 503.
	AttachWait time.Duration
	RetryAfter time.Duration
	// AADAuthorityHost and AADDisableInstanceDiscovery configure service-principal and federated identities.
	AADAuthorityHost            string
	AADDisableInstanceDiscovery bool
	PodName, PodNamespace       string
	// RuntimeMetrics adds the Go runtime's and the process's series (about 40) to /metrics. Off by default: the
	// sidecar runs in every injected pod, so its series multiply by the pods a Prometheus scrapes.
	RuntimeMetrics bool

	// Tests set these: the Azure AD transport, the upstream retry backoff, the clock, and the token cache's
	// validity bounds.
	AADTransport   policy.Transporter
	InitialBackoff time.Duration
	Now            func() time.Time
	Cache          tokens.Options
}

// BindFlags registers the contract's flags on fs.
func (c *Config) BindFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.ListenAddress, "listen-address", fmt.Sprintf("127.0.0.1:%d", contract.SidecarPort), "Address of the IMDS token endpoint; keep it on loopback.")
	fs.StringVar(&c.HealthAddress, "health-address", fmt.Sprintf(":%d", contract.SidecarHealthPort), "Address of /healthz, /readyz and /metrics (never tokens).")
	fs.StringVar(&c.IdentitiesFile, "identities-file", contract.IdentitiesDir+"/"+contract.IdentitiesFile, "Downward-API file carrying the pod annotation "+contract.IdentitiesAnnotation+".")
	fs.StringVar(&c.SecretsDir, "secrets-dir", contract.SecretsDir, "Directory with one subdirectory per service-principal identity name.")
	fs.StringVar(&c.FederatedTokenFile, "federated-token-file", contract.FederatedTokenDir+"/"+contract.FederatedTokenFile, "Projected service account token (audience "+contract.FederatedAudience+") that federated identities are exchanged with at Azure AD; read on every exchange.")
	fs.StringVar(&c.IMDSEndpoint, "imds-endpoint", "http://"+contract.IMDSAddress, "The node's IMDS.")
	fs.BoolVar(&c.MetadataHeaderRequired, "metadata-header-required", true, "Refuse token requests without the header \"Metadata: true\", as IMDS does.")
	fs.BoolVar(&c.BlockInstanceMetadata, "block-instance-metadata", false, "Answer /metadata/instance with 403 instead of proxying it.")
	fs.DurationVar(&c.ReloadInterval, "reload-interval", time.Second, "How often the identities file is re-read.")
	fs.DurationVar(&c.AttachWait, "attach-wait", 15*time.Second, "How long a token request waits while IMDS says the identity is not attached yet (or throttles) before answering 503.")
	fs.DurationVar(&c.RetryAfter, "retry-after", 5*time.Second, "Retry-After of that 503 (at most 20s).")
	fs.StringVar(&c.AADAuthorityHost, "aad-authority-host", "", "Azure AD authority host for service principals and federated identities without adEndpoint (default: Azure public cloud).")
	fs.BoolVar(&c.AADDisableInstanceDiscovery, "aad-disable-instance-discovery", false, "Skip Azure AD instance discovery (Azure Stack).")
	fs.BoolVar(&c.RuntimeMetrics, "runtime-metrics", false, "Also export the Go runtime's and the process's metrics (about 40 series per pod) on /metrics.")
}

// PodFromEnv fills the pod's name and namespace from the downward-API environment.
func (c *Config) PodFromEnv(getenv func(string) string) {
	c.PodName = strings.TrimSpace(getenv("POD_NAME"))
	c.PodNamespace = strings.TrimSpace(getenv("POD_NAMESPACE"))
}

// Validate checks the configuration and says what to fix.
func (c *Config) Validate() error {
	if c.ListenAddress == "" || c.HealthAddress == "" {
		return errors.New("--listen-address and --health-address must be set")
	}
	host, _, err := net.SplitHostPort(c.ListenAddress)
	if err != nil {
		return fmt.Errorf("--listen-address %q: %w (use host:port, e.g. 127.0.0.1:%d)", c.ListenAddress, err, contract.SidecarPort)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("--listen-address %q is not a loopback address: tokens must only be served inside the pod (use 127.0.0.1:%d)", c.ListenAddress, contract.SidecarPort)
	}
	if c.IdentitiesFile == "" {
		return errors.New("--identities-file must be set")
	}
	if c.RetryAfter > upstream.MaxRetryAfter {
		return fmt.Errorf("--retry-after %s is above %s: SDKs stop retrying on long Retry-After values", c.RetryAfter, upstream.MaxRetryAfter)
	}
	if c.ReloadInterval <= 0 {
		c.ReloadInterval = time.Second
	}
	return nil
}

// App is a configured sidecar.
type App struct {
	cfg   Config
	log   logr.Logger
	Store *identities.Store
	// Upstream confirms that the sidecar's requests reach the node's IMDS rather than come back to it.
	Upstream *loopguard.Check
	Cache    *tokens.Cache
	Server   *server.Server
	Registry *prometheus.Registry
}

// New builds a sidecar from cfg.
func New(cfg Config, log logr.Logger) (*App, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	reg := prometheus.NewRegistry()
	if cfg.RuntimeMetrics {
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	metrics := server.NewMetrics(reg)

	// One nonce per process: the token server refuses requests carrying it, which only this process sends.
	loop := loopguard.New()
	imds, err := upstream.New(upstream.Options{Endpoint: cfg.IMDSEndpoint, MaxWait: cfg.AttachWait, RetryAfter: cfg.RetryAfter,
		InitialBackoff: cfg.InitialBackoff, Now: cfg.Now, Nonce: loop.Nonce()})
	if err != nil {
		return nil, err
	}
	check := loopguard.NewCheck(loopguard.CheckOptions{Probe: imds.Probe, Guard: loop, Upstream: cfg.IMDSEndpoint,
		Log: log.WithName("upstream")})
	sp := serviceprincipal.New(serviceprincipal.Options{SecretsDir: cfg.SecretsDir, AuthorityHost: cfg.AADAuthorityHost,
		DisableInstanceDiscovery: cfg.AADDisableInstanceDiscovery, Transport: cfg.AADTransport})
	fed := federated.New(federated.Options{TokenFile: cfg.FederatedTokenFile, AuthorityHost: cfg.AADAuthorityHost,
		DisableInstanceDiscovery: cfg.AADDisableInstanceDiscovery, Transport: cfg.AADTransport})
	fetch := tokens.FetcherFunc(func(ctx context.Context, id contract.Identity, resource string) (tokens.Token, error) {
		var tok tokens.Token
		var err error
		switch {
		case id.Federated():
			tok, err = fed.Token(ctx, id, resource)
		case id.Type == identitytype.UserAssignedMSI:
			tok, err = imds.Token(ctx, id.ClientID, resource)
		case id.Type == identitytype.ServicePrincipal, id.Type == identitytype.ServicePrincipalCertificate:
			tok, err = sp.Token(ctx, id, resource)
		default:
			err = &tokens.Error{Status: http.StatusBadRequest, Code: "invalid_request", Description: fmt.Sprintf("identity %s/%s has unsupported type %d", id.Namespace, id.Name, id.Type)}
		}
		result := "ok"
		if err != nil {
			result = "error"
		}
		metrics.UpstreamFetch.WithLabelValues(id.Namespace+"/"+id.Name, server.Backend(id), result).Inc()
		return tok, err
	})
	cacheOpts := cfg.Cache
	if cacheOpts.Now == nil {
		cacheOpts.Now = cfg.Now
	}
	cache := tokens.NewCache(fetch, cacheOpts)
	store := identities.NewStore(cfg.IdentitiesFile, log.WithName("identities"))
	store.OnChange = func(ids []contract.Identity) { metrics.BoundIdentities.Set(float64(len(ids))) }

	srv := server.New(server.Options{
		Pod: cfg.PodNamespace + "/" + cfg.PodName, MetadataHeaderRequired: cfg.MetadataHeaderRequired,
		BlockInstanceMetadata: cfg.BlockInstanceMetadata, Identities: store, Tokens: cache, Proxy: imds.Proxy(),
		Log: log.WithName("audit"), Metrics: metrics, Now: cfg.Now, Loop: loop, Upstream: check,
	})
	return &App{cfg: cfg, log: log, Store: store, Upstream: check, Cache: cache, Server: srv, Registry: reg}, nil
}

// Run listens on the configured addresses and serves until ctx ends.
func (a *App) Run(ctx context.Context) error {
	tl, err := net.Listen("tcp", a.cfg.ListenAddress)
	if err != nil {
		return fmt.Errorf("listening on --listen-address %s: %w (is another sidecar already running in this pod?)", a.cfg.ListenAddress, err)
	}
	hl, err := net.Listen("tcp", a.cfg.HealthAddress)
	if err != nil {
		_ = tl.Close()
		return fmt.Errorf("listening on --health-address %s: %w", a.cfg.HealthAddress, err)
	}
	return a.Serve(ctx, tl, hl)
}

// Serve serves on the given listeners until ctx ends, then shuts down gracefully.
func (a *App) Serve(ctx context.Context, tokenListener, healthListener net.Listener) error {
	if err := a.Store.Load(); err != nil {
		a.log.Error(err, "identities file not read yet; not ready until it is")
	}
	go a.Store.Watch(ctx, a.cfg.ReloadInterval)
	servers := []*http.Server{
		{Handler: a.Server.Handler(), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 120 * time.Second},
		{Handler: a.Server.HealthHandler(a.Registry), ReadHeaderTimeout: 10 * time.Second},
	}
	errc := make(chan error, 2)
	for i, l := range []net.Listener{tokenListener, healthListener} {
		go func() { errc <- servers[i].Serve(l) }()
	}
	a.log.Info("serving", "tokens", tokenListener.Addr().String(), "health", healthListener.Addr().String(),
		"imds", a.cfg.IMDSEndpoint, "metadataHeaderRequired", a.cfg.MetadataHeaderRequired, "blockInstanceMetadata", a.cfg.BlockInstanceMetadata)
	// Probe only now that the token server listens: a probe that the redirect sends back must reach it, to be
	// recognised as a loop rather than a refused connection.
	go a.Upstream.Run(ctx)
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, s := range servers {
		_ = s.Shutdown(shutdown)
	}
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
