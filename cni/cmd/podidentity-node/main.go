// Command podidentity-node is the DaemonSet agent of CNI mode (see cni/README.md): it installs the
// podidentity-cni plugin on its node, repairs pods that started without their table, and exempts token
// sidecars' cgroups.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/podidentity/podidentity/cni/nodeagent"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	code := nodeagent.Main(ctx, os.Args[1:], os.Stderr)
	stop()
	os.Exit(code)
}
