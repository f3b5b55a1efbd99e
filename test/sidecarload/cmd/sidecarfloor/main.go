// Command sidecarfloor is the load harness's baseline (package floor): run it in place of the sidecar with
// `sidecarload --binary`. It takes the sidecar's flags, serves a fixed token answer on --listen-address and
// "ok" on --health-address, and ignores the rest.
package main

import (
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/podidentity/podidentity/test/sidecarload/floor"
)

func main() {
	mode := flag.String("mode", floor.NetHTTP, "How to serve: \"net/http\" or \"loop\".")
	if m := os.Getenv("SIDECARFLOOR_MODE"); m != "" { // the harness passes flags of its own only
		*mode = m
	}
	listen := flag.String("listen-address", "127.0.0.1:15079", "Token port.")
	health := flag.String("health-address", "127.0.0.1:15080", "Health port.")
	for _, ignored := range []string{"identities-file", "imds-endpoint", "secrets-dir"} {
		flag.String(ignored, "", "Ignored (a sidecar flag).")
	}
	flag.Parse()
	tl, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "sidecarfloor:", err)
		os.Exit(1)
	}
	go func() {
		ok := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) })
		srv := &http.Server{Addr: *health, Handler: ok, ReadHeaderTimeout: 10 * time.Second}
		fmt.Fprintln(os.Stderr, "sidecarfloor: health:", srv.ListenAndServe())
		os.Exit(1)
	}()
	if err := floor.Serve(tl, *mode); err != nil {
		fmt.Fprintln(os.Stderr, "sidecarfloor:", err)
		os.Exit(1)
	}
}
