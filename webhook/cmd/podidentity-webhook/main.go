// Command podidentity-webhook is the mutating admission webhook that injects the IMDS redirect init container
// and the token sidecar into pods of opted-in namespaces. See webhook/README.md for its flags.
package main

import (
	"os"

	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/podidentity/podidentity/internal/cmdline"
	"github.com/podidentity/podidentity/webhook/app"
)

func main() {
	opts, err := app.ParseFlags(os.Args[1:])
	if err != nil {
		os.Exit(cmdline.ParseExit(err))
	}
	os.Exit(cmdline.RunExit(os.Stderr, "podidentity-webhook", app.Run(ctrl.SetupSignalHandler(), opts)))
}
