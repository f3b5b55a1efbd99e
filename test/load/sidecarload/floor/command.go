package floor

import (
	"flag"
	"fmt"
	"net"
	"net/http"
	"time"
)

// Command runs the floor as a process in place of the sidecar: it takes the sidecar's flags (args, without the
// program name), serves Answer on --listen-address and "ok" on --health-address, and ignores the rest. The mode
// comes from --mode or, because the harness passes only the sidecar's flags, SIDECARFLOOR_MODE.
func Command(args []string, getenv func(string) string) error {
	fs := flag.NewFlagSet("sidecarfloor", flag.ContinueOnError)
	mode := fs.String("mode", NetHTTP, "How to serve: \"net/http\" or \"loop\".")
	listen := fs.String("listen-address", "127.0.0.1:15079", "Token port.")
	health := fs.String("health-address", "127.0.0.1:15080", "Health port.")
	for _, ignored := range []string{"identities-file", "imds-endpoint", "secrets-dir"} {
		fs.String(ignored, "", "Ignored (a sidecar flag).")
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if m := getenv("SIDECARFLOOR_MODE"); m != "" {
		*mode = m
	}
	tl, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	errc := make(chan error, 2)
	go func() {
		ok := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) })
		srv := &http.Server{Addr: *health, Handler: ok, ReadHeaderTimeout: 10 * time.Second}
		errc <- fmt.Errorf("health: %w", srv.ListenAndServe())
	}()
	go func() { errc <- Serve(tl, *mode) }()
	return <-errc
}
