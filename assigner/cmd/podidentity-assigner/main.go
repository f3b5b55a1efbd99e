// Command podidentity-assigner attaches the user-assigned identities that pods are bound to onto their
// nodes' VMs and scale sets, and keeps AzureAssignedIdentity objects and pod annotations current.
package main

import (
	"os"

	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/podidentity/podidentity/assigner/app"
	"github.com/podidentity/podidentity/internal/cmdline"
)

func main() {
	opts, err := app.ParseFlags(os.Args[1:])
	if err != nil {
		os.Exit(cmdline.ParseExit(err))
	}
	os.Exit(cmdline.RunExit(os.Stderr, "podidentity-assigner", app.Run(ctrl.SetupSignalHandler(), opts)))
}
