package app

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"os"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/podidentity/podidentity/internal/version"
	"github.com/podidentity/podidentity/webhook/certs"
	"github.com/podidentity/podidentity/webhook/config"
)

// Options are the command line (ParseFlags); Run runs them.
type Options struct {
	Config *config.Config
	// Certs are the self-managed serving certificates' settings (--self-signed-certs...).
	Certs certs.Options
	Zap   zap.Options
}

// ParseFlags parses args (without the program name). A wrong flag, and -h, print the usage to stderr.
func ParseFlags(args []string) (Options, error) {
	fs := flag.NewFlagSet(os.Args[0], flag.ContinueOnError)
	var o Options
	o.Config = config.Bind(fs)
	o.Certs.BindFlags(fs)
	o.Zap.BindFlags(fs)
	// controller-runtime registers --kubeconfig on flag.CommandLine, where ctrl.GetConfig reads it back.
	flag.CommandLine.VisitAll(func(f *flag.Flag) { fs.Var(f.Value, f.Name, f.Usage) })
	if err := fs.Parse(args); err != nil {
		return Options{}, err
	}
	return o, nil
}

// Run serves the webhook until ctx ends, then drains it for --shutdown-delay (see Webhook.Run).
func Run(ctx context.Context, o Options) error {
	log := zap.New(zap.UseFlagOptions(&o.Zap)).WithName("podidentity-webhook")
	ctrl.SetLogger(log)
	cfg := o.Config
	if err := cfg.Complete(); err != nil {
		return err
	}
	var tlsOpts []func(*tls.Config)
	var src *certs.Source
	if o.Certs.Enabled {
		o.Certs.CertDir = cfg.CertDir
		if err := o.Certs.Validate(); err != nil {
			return err
		}
		src = certs.New(log)
		tlsOpts = append(tlsOpts, src.TLSOption)
	}
	log.Info("starting", "version", version.Version, "selfSignedCerts", o.Certs.Enabled)

	rc, err := ctrl.GetConfig()
	if err != nil {
		return fmt.Errorf("no Kubernetes API credentials (in-cluster service account or KUBECONFIG): %w", err)
	}
	mgr, err := New(cfg, rc, "", log, tlsOpts...)
	if err != nil {
		return err
	}
	if src != nil {
		if err := src.AddToManager(mgr, o.Certs); err != nil {
			return err
		}
	}
	return mgr.Run(ctx, cfg.ShutdownDelay)
}
