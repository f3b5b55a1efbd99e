// Command sidecarfloor is the load harness's baseline (package floor): run it in place of the sidecar with
// `sidecarload --binary`. It takes the sidecar's flags, serves a fixed token answer on --listen-address and
// "ok" on --health-address, and ignores the rest.
package main

import (
	"fmt"
	"os"

	"github.com/podidentity/podidentity/test/load/sidecarload/floor"
)

func main() {
	if err := floor.Command(os.Args[1:], os.Getenv); err != nil {
		fmt.Fprintln(os.Stderr, "sidecarfloor:", err)
		os.Exit(1)
	}
}
