// Command podidentity-assigner attaches the user-assigned identities that pods are bound to onto their
// nodes' VMs and scale sets, and keeps AzureAssignedIdentity objects and pod annotations current.
package main

import (
	"fmt"
	"os"

	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/podidentity/podidentity/assigner/app"
)

func main() {
	flags, err := app.ParseFlags(os.Args[1:])
	if err != nil {
		os.Exit(2)
	}
	if err := app.Run(ctrl.SetupSignalHandler(), flags); err != nil {
		fmt.Fprintln(os.Stderr, "podidentity-assigner:", err)
		os.Exit(1)
	}
}
