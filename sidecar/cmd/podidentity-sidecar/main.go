// Command podidentity-sidecar serves the IMDS token protocol inside one pod, for the pod's bound identities only.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/go-logr/logr"

	"github.com/podidentity/podidentity/internal/version"
	"github.com/podidentity/podidentity/sidecar/app"
	"github.com/podidentity/podidentity/sidecar/logwriter"
	"github.com/podidentity/podidentity/sidecar/privilege"
)

func main() {
	var cfg app.Config
	cfg.BindFlags(flag.CommandLine)
	var priv privilege.Options
	priv.BindFlags(flag.CommandLine)
	verbosity := flag.Int("v", 0, "Log verbosity (1 also logs refused token requests).")
	flag.Parse()
	cfg.PodFromEnv(os.Getenv)

	// The audit log has a line per token issued: batch the lines instead of a write syscall each.
	out := logwriter.New(os.Stderr, logwriter.DefaultInterval, logwriter.DefaultLimit)
	log := logr.FromSlogHandler(slog.NewJSONHandler(out, &slog.HandlerOptions{Level: slog.Level(-*verbosity)}))
	log.Info("starting podidentity-sidecar", "version", version.Version, "pod", cfg.PodNamespace+"/"+cfg.PodName)
	// Before anything else runs: the exemption (as root), then no privilege left for the rest of the process.
	if err := privilege.Start(priv, cfg.IMDSEndpoint, cfg.ListenAddress, log.WithName("privilege")); err != nil {
		_ = out.Close()
		fmt.Fprintln(os.Stderr, "podidentity-sidecar:", err)
		os.Exit(1)
	}
	a, err := app.New(cfg, log)
	if err != nil {
		_ = out.Close()
		fmt.Fprintln(os.Stderr, "podidentity-sidecar:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err = a.Run(ctx)
	_ = out.Close()
	if err != nil {
		fmt.Fprintln(os.Stderr, "podidentity-sidecar:", err)
		os.Exit(1)
	}
}
