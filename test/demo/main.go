// Command demo is `make demo`: it starts the local cluster with its emulated Azure, installs the chart and
// shows a pod of the real Azure SDK for Go getting a managed-identity token (package scenario).
//
//	go run ./test/demo [--keep] [--mode=cni] [--backend=federated]  everything on this machine (root); tears down unless --keep
//	go run ./test/demo --down            stop a cluster kept by --keep
//	go run ./test/demo --kubeconfig ~/.kube/config --app-image ... --identity-resource-id ... --identity-client-id ...
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/podidentity/podidentity/test/cluster"
	"github.com/podidentity/podidentity/test/demo/scenario"
)

func main() {
	var opts scenario.Options
	var down bool
	// Its own flag set: controller-runtime registers --kubeconfig on the global one.
	flag := flag.NewFlagSet("demo", flag.ExitOnError)
	flag.BoolVar(&opts.Keep, "keep", false, "leave the cluster running (stop it later with --down)")
	flag.StringVar(&opts.Mode, "mode", "init", "the chart's redirect.mode on the local cluster: init, or cni (the node's CNI plugin; the demo namespace enforces Pod Security restricted)")
	flag.StringVar(&opts.Backend, "backend", "node", "how the sidecar gets the identity's tokens: node (the assigner attaches it to the node's scale set) or federated (workload identity federation: the pod's service account token exchanged at Azure AD, nothing attached)")
	flag.BoolVar(&down, "down", false, "stop the local cluster left running by --keep, and exit")
	flag.StringVar(&opts.Kubeconfig, "kubeconfig", os.Getenv("KUBECONFIG"), "run against your cluster instead of a local one (default $KUBECONFIG; the emulated Azure, image import and chart install are skipped)")
	flag.StringVar(&opts.AppImage, "app-image", "", "your cluster: a pullable image of test/apps/goclient")
	flag.StringVar(&opts.IdentityResourceID, "identity-resource-id", "", "your cluster: ARM id of the user-assigned identity to bind")
	flag.StringVar(&opts.IdentityClientID, "identity-client-id", "", "your cluster: its client id")
	flag.StringVar(&opts.TenantID, "tenant-id", "", "your cluster, --backend=federated: the identity's Azure AD tenant")
	flag.DurationVar(&opts.Timeout, "timeout", 3*time.Minute, "how long to wait for the token")
	flag.StringVar(&opts.Cluster.StateDir, "state-dir", "", "local cluster's state directory (default bin/cluster)")
	_ = flag.Parse(os.Args[1:])
	ctrllog.SetLogger(logr.Discard()) // the demo prints its own steps
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	if down {
		err = cluster.Down(ctx, opts.Cluster)
	} else {
		err = scenario.Run(ctx, opts)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}
