// Command podidentity-webhook is the mutating admission webhook that injects the IMDS redirect init container
// and the token sidecar into pods of opted-in namespaces. See webhook/README.md for its flags.
package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"os"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/podidentity/podidentity/internal/version"
	"github.com/podidentity/podidentity/webhook/app"
	"github.com/podidentity/podidentity/webhook/certs"
	"github.com/podidentity/podidentity/webhook/config"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "podidentity-webhook:", err)
		os.Exit(1)
	}
}

func run() error {
	fs := flag.CommandLine
	cfg := config.Bind(fs)
	var certOpts certs.Options
	certOpts.BindFlags(fs)
	zapOpts := zap.Options{}
	zapOpts.BindFlags(fs)
	flag.Parse()

	log := zap.New(zap.UseFlagOptions(&zapOpts)).WithName("podidentity-webhook")
	ctrl.SetLogger(log)
	if err := cfg.Complete(); err != nil {
		return err
	}
	var tlsOpts []func(*tls.Config)
	var src *certs.Source
	if certOpts.Enabled {
		certOpts.CertDir = cfg.CertDir
		if err := certOpts.Validate(); err != nil {
			return err
		}
		src = certs.New(log)
		tlsOpts = append(tlsOpts, src.TLSOption)
	}
	log.Info("starting", "version", version.Version, "selfSignedCerts", certOpts.Enabled)

	rc, err := ctrl.GetConfig()
	if err != nil {
		return fmt.Errorf("no Kubernetes API credentials (in-cluster service account or KUBECONFIG): %w", err)
	}
	mgr, err := app.New(cfg, rc, "", log, tlsOpts...)
	if err != nil {
		return err
	}
	if src != nil {
		if err := src.AddToManager(mgr, certOpts); err != nil {
			return err
		}
	}
	return mgr.Run(ctrl.SetupSignalHandler(), cfg.ShutdownDelay)
}
