// Command podidentity-sidecar serves the IMDS token protocol inside one pod, for the pod's bound identities only.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/podidentity/podidentity/internal/cmdline"
	"github.com/podidentity/podidentity/sidecar/app"
)

func main() {
	opts, err := app.ParseFlags(os.Args[1:])
	if err != nil {
		os.Exit(cmdline.ParseExit(err))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cmdline.RunExit(os.Stderr, "podidentity-sidecar", app.Run(ctx, opts))
	stop()
	os.Exit(code)
}
