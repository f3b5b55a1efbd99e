// Command podidentity-init installs, in the pod's own network namespace, the nftables rules that send the pod's
// IMDS traffic to its token sidecar. It runs as the pod's first init container and fails closed: when the rules
// cannot be installed it exits non-zero and the pod does not start. See init/README.md.
package main

import (
	"os"

	"github.com/podidentity/podidentity/init/app"
)

func main() {
	os.Exit(app.Run(os.Args[1:], os.Stdout, os.Stderr))
}
