// Command podidentity-init installs, in the pod's own network namespace, the nftables rules that send the pod's
// IMDS traffic to its token sidecar. It runs as the pod's first init container and fails closed: when the rules
// cannot be installed it exits non-zero and the pod does not start. See init/README.md.
package main

import (
	"context"
	"os"

	"github.com/podidentity/podidentity/init/app"
	"github.com/podidentity/podidentity/internal/cmdline"
)

func main() {
	opts, err := app.ParseFlags(os.Args[1:])
	if err != nil {
		os.Exit(cmdline.ParseExit(err))
	}
	os.Exit(cmdline.RunExit(os.Stderr, "podidentity-init", app.Run(context.Background(), opts)))
}
