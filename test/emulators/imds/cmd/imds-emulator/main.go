// Command imds-emulator serves the IMDS emulator of package imds for end-to-end tests: the IMDS protocol on
// --listen and the admin API (attached identities, counters, faults) on --admin-listen.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/podidentity/podidentity/test/emulators/imds"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8169", "Address of the emulated IMDS.")
	admin := flag.String("admin-listen", "127.0.0.1:8170", "Address of the admin API (see test/emulators/imds/README.md).")
	tenant := flag.String("tenant-id", "", "Tenant ID of the emulated VM (default: a fixed GUID).")
	vm := flag.String("vm-resource-id", "", "ARM resource ID of the emulated VM.")
	lifetime := flag.Duration("token-lifetime", 24*time.Hour, "Lifetime of issued tokens.")
	rate := flag.Int("rate", 20, "Identity requests per second before 429 (negative: unlimited).")
	concurrent := flag.Int("concurrency", 5, "Concurrent identity requests before 429 (negative: unlimited).")
	attached := flag.String("attached", "", `Identities attached at start, JSON: [{"clientID":"...","resourceID":"..."}].`)
	flag.Parse()

	s := imds.New(imds.Options{TenantID: *tenant, VMResourceID: *vm, TokenLifetime: *lifetime, RatePerSecond: *rate, MaxConcurrent: *concurrent})
	if *attached != "" {
		var ids []imds.Identity
		if err := json.Unmarshal([]byte(*attached), &ids); err != nil {
			fmt.Fprintln(os.Stderr, "imds-emulator: --attached is not a JSON list of identities:", err)
			os.Exit(2)
		}
		s.SetAttached(ids)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	errc := make(chan error, 2)
	var servers []*http.Server
	for _, l := range []struct {
		addr string
		h    http.Handler
	}{{*listen, s}, {*admin, s.AdminHandler()}} {
		ln, err := net.Listen("tcp", l.addr)
		if err != nil {
			fmt.Fprintln(os.Stderr, "imds-emulator:", err)
			os.Exit(1)
		}
		srv := &http.Server{Handler: l.h, ReadHeaderTimeout: 10 * time.Second}
		servers = append(servers, srv)
		go func() { errc <- srv.Serve(ln) }()
		fmt.Printf("listening on %s\n", ln.Addr())
	}
	select {
	case <-ctx.Done():
	case err := <-errc:
		fmt.Fprintln(os.Stderr, "imds-emulator:", err)
	}
	for _, srv := range servers {
		_ = srv.Close()
	}
}
