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
)

func main() {
	var cfg app.Config
	cfg.BindFlags(flag.CommandLine)
	verbosity := flag.Int("v", 0, "Log verbosity (1 also logs refused token requests).")
	flag.Parse()
	cfg.PodFromEnv(os.Getenv)

	log := logr.FromSlogHandler(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.Level(-*verbosity)}))
	log.Info("starting podidentity-sidecar", "version", version.Version, "pod", cfg.PodNamespace+"/"+cfg.PodName)
	a, err := app.New(cfg, log)
	if err != nil {
		fmt.Fprintln(os.Stderr, "podidentity-sidecar:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := a.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "podidentity-sidecar:", err)
		os.Exit(1)
	}
}
