// Package app assembles the webhook: a controller-runtime manager whose cache serves the handler's reads,
// whose webhook server serves TLS from a certificate directory it reloads on rotation, and whose metrics
// endpoint exposes the handler's metrics.
package app

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/discovery"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/webhook"
	cradmission "sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/webhook/admission"
	"github.com/podidentity/podidentity/webhook/config"
	"github.com/podidentity/podidentity/webhook/inject"
)

// Webhook is the manager with the webhook registered, and the switch that drains it at shutdown.
type Webhook struct {
	manager.Manager
	Drain *Drain
}

// Run serves until ctx is done, then keeps serving for shutdownDelay with every connection closed after its
// answer (see Drain) before it stops.
func (w *Webhook) Run(ctx context.Context, shutdownDelay time.Duration) error {
	return RunDraining(ctx, w.Start, w.Drain, shutdownDelay)
}

// New builds the manager with the webhook registered. Start it with Run (or the manager's Start, without the
// drain). tlsOpts go to the webhook server's TLS configuration (the self-managed certificates serve from memory
// through one).
func New(cfg *config.Config, rc *rest.Config, host string, log logr.Logger, tlsOpts ...func(*tls.Config)) (*Webhook, error) {
	if cfg.Mode == config.ModeAuto {
		dc, err := discovery.NewDiscoveryClientForConfig(rc)
		if err != nil {
			return nil, fmt.Errorf("discovery client for --mode=auto: %w", err)
		}
		v, err := dc.ServerVersion()
		if err != nil {
			return nil, fmt.Errorf("reading the API server version for --mode=auto: %w; pass --mode=native or --mode=classic", err)
		}
		native, err := config.NativeSidecars(cfg.Mode, v)
		if err != nil {
			return nil, err
		}
		cfg.Inject.Native = native
		log.Info("injection mode chosen from the API server version", "version", v.GitVersion, "native", native)
	} else {
		native, err := config.NativeSidecars(cfg.Mode, nil)
		if err != nil {
			return nil, err
		}
		cfg.Inject.Native = native
	}

	scheme := k8sruntime.NewScheme()
	if err := errors.Join(clientgoscheme.AddToScheme(scheme), aadv1.AddToScheme(scheme)); err != nil {
		return nil, err
	}
	mgr, err := manager.New(rc, manager.Options{
		Scheme:                 scheme,
		Logger:                 log,
		Metrics:                metricsserver.Options{BindAddress: cfg.MetricsAddress},
		HealthProbeBindAddress: cfg.HealthAddress,
		WebhookServer: webhook.NewServer(webhook.Options{
			Host: host, Port: cfg.Port, CertDir: cfg.CertDir, CertName: cfg.CertName, KeyName: cfg.KeyName,
			TLSOpts: tlsOpts,
		}),
	})
	if err != nil {
		return nil, fmt.Errorf("creating the manager: %w", err)
	}
	// Start the informers with the manager, so the first admission does not wait for a list.
	for _, obj := range []client.Object{&corev1.Namespace{}, &aadv1.AzureIdentityBinding{}, &aadv1.AzureIdentity{}, &aadv1.AzurePodIdentityException{}} {
		if _, err := mgr.GetCache().GetInformer(context.Background(), obj); err != nil {
			return nil, fmt.Errorf("informer for %T: %w", obj, err)
		}
	}
	m, err := admission.NewMetrics(metrics.Registry)
	if err != nil {
		return nil, fmt.Errorf("registering metrics: %w", err)
	}
	h := &admission.Handler{
		Reader:           mgr.GetCache(),
		Live:             mgr.GetAPIReader(),
		Synced:           mgr.GetCache().WaitForCacheSync,
		Settings:         cfg.Inject,
		Injector:         inject.NewInjector(cfg.Inject),
		InjectionLabel:   cfg.InjectionLabel,
		AssignerUsername: cfg.AssignerUsername,
		Metrics:          m,
		Events:           mgr.GetEventRecorder("podidentity-webhook"),
		Log:              log.WithName("admission"),
	}
	drain := &Drain{}
	mgr.GetWebhookServer().Register(cfg.WebhookPath, drain.Wrap(&cradmission.Webhook{Handler: h}))

	if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
		return nil, err
	}
	if err := mgr.AddReadyzCheck("webhook", mgr.GetWebhookServer().StartedChecker()); err != nil {
		return nil, err
	}
	if err := mgr.AddReadyzCheck("shutdown", drain.ReadyCheck); err != nil {
		return nil, err
	}
	if err := mgr.AddReadyzCheck("cache", func(req *http.Request) error {
		ctx, cancel := context.WithTimeout(req.Context(), time.Second)
		defer cancel()
		if !mgr.GetCache().WaitForCacheSync(ctx) {
			return errors.New("informer caches not synced yet")
		}
		return nil
	}); err != nil {
		return nil, err
	}
	return &Webhook{Manager: mgr, Drain: drain}, nil
}
