// Command sidecarload measures the podidentity-sidecar binary under load (see package sidecarload) and prints
// the figures as markdown.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/podidentity/podidentity/test/load/sidecarload"
)

func main() {
	var o sidecarload.Options
	flag.StringVar(&o.Binary, "binary", "bin/podidentity-sidecar", "The sidecar binary to measure.")
	flag.IntVar(&o.Rate, "rate", 5000, "Requests per second.")
	flag.DurationVar(&o.Duration, "duration", 10*time.Second, "How long the rate is held.")
	flag.IntVar(&o.Connections, "connections", 50, "Keep-alive connections (one pacing worker each).")
	flag.DurationVar(&o.Idle, "idle", 3*time.Second, "Idle time before idle memory is read.")
	flag.StringVar(&o.Client, "client", sidecarload.ClientRaw, "Load generator client: \"raw\" (minimal HTTP/1.1, least CPU) or \"net/http\".")
	flag.StringVar(&o.MemoryCgroup, "memory-cgroup", "", "Run the sidecar in a new memory cgroup under this directory (root; e.g. /sys/fs/cgroup/memory/sidecarload on cgroup v1) and report what it is charged when idle.")
	flag.BoolVar(&o.Cold, "cold", false, "Evict the binary from the page cache first (the first sidecar of a node pays for reading it).")
	sidecarEnv := flag.String("sidecar-env", "", "Comma-separated NAME=value pairs added to the sidecar's environment (e.g. GOMAXPROCS=1).")
	flag.Parse()
	if *sidecarEnv != "" {
		o.SidecarEnv = strings.Split(*sidecarEnv, ",")
	}
	res, err := sidecarload.Run(context.Background(), o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "sidecarload:", err)
		os.Exit(1)
	}
	fmt.Print(res.Markdown())
}
