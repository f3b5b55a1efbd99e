// Command registry runs the test registry (package registry: the CNCF distribution registry on loopback, TLS,
// htpasswd) until interrupted, to try the publishing path on one machine:
//
//	go run ./test/toolbox/registry/cmd/registry --out /tmp/registry &
//	export DOCKER_CONFIG=/tmp/registry SSL_CERT_FILE=/tmp/registry/ca.crt
//	make images-push REGISTRY=127.0.0.1:5000/podidentity
//
// It writes <out>/ca.crt (the certificate to trust) and <out>/config.json (a Docker config with its
// credentials, which imagebuild reads through DOCKER_CONFIG).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/podidentity/podidentity/test/toolbox/registry"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:5000", "listen address (loopback only)")
	dir := flag.String("dir", "", "keep the registry's content in this directory (default: in memory)")
	out := flag.String("out", "", "directory for ca.crt and config.json (required)")
	user := flag.String("user", "podidentity", "user name (the password: $REGISTRY_PASSWORD, or a random one)")
	cert := flag.String("cert", "", "serving certificate PEM (default: a self-signed one); with --key and --ca")
	key := flag.String("key", "", "the serving certificate's key PEM")
	ca := flag.String("ca", "", "the CA PEM that issued --cert (written to <out>/ca.crt)")
	flag.Parse()
	opts := registry.Options{Addr: *addr, Dir: *dir, User: *user, Password: os.Getenv("REGISTRY_PASSWORD")}
	if *cert != "" {
		var err error
		for f, dst := range map[string]*[]byte{*cert: &opts.CertPEM, *key: &opts.KeyPEM, *ca: &opts.CAPEM} {
			if *dst, err = os.ReadFile(f); err != nil {
				fmt.Fprintln(os.Stderr, "registry: --cert needs --key and --ca:", err)
				os.Exit(2)
			}
		}
	}
	if err := run(opts, *out); err != nil {
		fmt.Fprintln(os.Stderr, "registry:", err)
		os.Exit(1)
	}
}

func run(opts registry.Options, out string) error {
	if out == "" {
		return fmt.Errorf("--out is required")
	}
	r, err := registry.Start(opts)
	if err != nil {
		return err
	}
	defer r.Close()
	if err := os.MkdirAll(out, 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(out, "ca.crt"), r.CA, 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(out, "config.json"), r.DockerConfig(), 0o600); err != nil {
		return err
	}
	fmt.Printf("registry on https://%s (user %s; password in %s)\n", r.Host, r.User, filepath.Join(out, "config.json"))
	fmt.Printf("export DOCKER_CONFIG=%s SSL_CERT_FILE=%s\n", out, filepath.Join(out, "ca.crt"))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	return nil
}
