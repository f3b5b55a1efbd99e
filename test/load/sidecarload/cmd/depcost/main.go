// Command depcost measures what one dependency of the sidecar costs its memory: it is the floor server
// (package floor) plus whatever the files selected by build tags link in, each the way the sidecar uses it
// (linked, and run only where the sidecar runs it before its first token). Build it once per tag and measure
// each build with sidecarload (BENCHMARKS.md, "Token sidecar", "Memory"); without tags it is the floor itself.
//
//	go build -tags depcost_prometheus -o /tmp/depcost-prometheus ./test/load/sidecarload/cmd/depcost
//	go run ./test/load/sidecarload/cmd/sidecarload --binary /tmp/depcost-prometheus --duration 1s --rate 100 --connections 1
//
// Tags: depcost_azidentity, depcost_prometheus, depcost_nftables, depcost_logr (they combine).
package main

import (
	"fmt"
	"os"

	"github.com/podidentity/podidentity/test/load/sidecarload/floor"
)

func main() {
	if err := floor.Command(os.Args[1:], os.Getenv); err != nil {
		fmt.Fprintln(os.Stderr, "depcost:", err)
		os.Exit(1)
	}
}
