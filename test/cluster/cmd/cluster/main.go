// Command cluster starts or stops the local cluster (package cluster) by hand:
//
//	go run ./test/cluster/cmd/cluster up      start it (or reuse it) and leave it running
//	go run ./test/cluster/cmd/cluster down    stop it and undo its host changes
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/podidentity/podidentity/test/cluster"
)

func main() {
	var opts cluster.Options
	fs := flag.NewFlagSet("cluster", flag.ExitOnError)
	fs.StringVar(&opts.StateDir, "state-dir", "", "state directory (default bin/cluster)")
	_ = fs.Parse(os.Args[1:])
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch fs.Arg(0) {
	case "up":
		var c *cluster.Cluster
		if c, err = cluster.Start(ctx, opts); err == nil {
			c.Release()
			fmt.Printf("cluster running: export KUBECONFIG=%s\nIMDS admin API: http://%s/attached\n", c.KubeconfigPath(), cluster.IMDSAdminAddress)
		}
	case "down":
		err = cluster.Down(ctx, opts)
	default:
		err = fmt.Errorf("usage: cluster [--state-dir DIR] up|down")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "cluster:", err)
		os.Exit(1)
	}
}
