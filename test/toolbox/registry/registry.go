// Package registry runs the CNCF distribution registry (github.com/distribution/distribution/v3, the registry
// behind Docker Hub's and many others) in-process for tests and the local cluster: on loopback, over TLS with a
// certificate from test/toolbox/pki, with htpasswd (basic) authentication on, so every client has to log in as it
// would against a user's private registry.
//
// Nothing here is for the product; the images and chart the tests push to it are.
package registry

import (
	"context"
	cryptorand "crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/handlers"
	"golang.org/x/crypto/bcrypt"

	// The storage drivers and the access controller the configuration names register themselves.
	_ "github.com/distribution/distribution/v3/registry/auth/htpasswd"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/inmemory"

	"github.com/podidentity/podidentity/test/toolbox/pki"
)

// Options configure a registry. The zero value is a registry in memory on a free loopback port with user
// "podidentity" and a random password.
type Options struct {
	// Addr is the listen address (default 127.0.0.1:0, a free port). Only loopback addresses are accepted.
	Addr string
	// Dir keeps the registry's storage on disk (the filesystem driver); empty keeps it in memory.
	Dir string
	// User and Password are the only credentials the registry accepts (defaults: "podidentity", random).
	User, Password string
	// Hosts are extra names (DNS or IP) the serving certificate is valid for, beside 127.0.0.1 and localhost.
	Hosts []string
	// CertPEM and KeyPEM are a serving certificate to use instead of a self-signed one (the local cluster's,
	// issued by its CA); CAPEM is then the CA clients must trust.
	CertPEM, KeyPEM, CAPEM []byte
}

// Registry is a running registry.
type Registry struct {
	// Host is host:port, as image references and `helm ... oci://` name it.
	Host string
	// User and Password are the credentials it accepts.
	User, Password string
	// CA is the PEM certificate clients must trust (the serving certificate itself, self-signed).
	CA []byte
	// CAFile is CA written to a file in the registry's work directory (for SSL_CERT_FILE, helm --ca-file,
	// containerd's hosts.toml).
	CAFile string

	srv    *http.Server
	cancel context.CancelFunc
	done   chan error
	work   string
}

// Start starts a registry and returns once it accepts connections. Close stops it.
func Start(opts Options) (*Registry, error) {
	if opts.Addr == "" {
		opts.Addr = "127.0.0.1:0"
	}
	if opts.User == "" {
		opts.User = "podidentity"
	}
	if opts.Password == "" {
		opts.Password = randomPassword()
	}
	host, _, err := net.SplitHostPort(opts.Addr)
	if err != nil {
		return nil, fmt.Errorf("registry address %q: %w", opts.Addr, err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("registry address %q: only loopback addresses are allowed (traffic stays on this machine)", opts.Addr)
	}
	work, err := os.MkdirTemp("", "podidentity-registry-")
	if err != nil {
		return nil, err
	}
	r, err := start(opts, work)
	if err != nil {
		os.RemoveAll(work)
		return nil, err
	}
	return r, nil
}

func start(opts Options, work string) (*Registry, error) {
	spec := pki.Spec{CommonName: "podidentity test registry", Server: true, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"}}
	for _, h := range opts.Hosts {
		if ip := net.ParseIP(h); ip != nil {
			spec.IPs = append(spec.IPs, ip)
		} else {
			spec.DNSNames = append(spec.DNSNames, h)
		}
	}
	certPEM, keyPEM, caPEM := opts.CertPEM, opts.KeyPEM, opts.CAPEM
	if len(certPEM) == 0 {
		cert := pki.SelfSigned(spec)
		certPEM, keyPEM, caPEM = cert.CertPEM(), cert.KeyPEM(), cert.CertPEM()
	}
	caFile := filepath.Join(work, "ca.crt")
	if err := os.WriteFile(caFile, caPEM, 0o644); err != nil {
		return nil, err
	}
	hash, err := bcrypt.GenerateFromPassword([]byte(opts.Password), bcrypt.DefaultCost)
	if err != nil {
		return nil, err
	}
	htpasswd := filepath.Join(work, "htpasswd")
	if err := os.WriteFile(htpasswd, []byte(opts.User+":"+string(hash)+"\n"), 0o600); err != nil {
		return nil, err
	}

	cfg := config(opts.Dir, htpasswd)
	// distribution logs through logrus' standard logger (stderr); it has no way to hand it another one.
	ctx, cancel := context.WithCancel(context.Background())
	app, err := newApp(ctx, cfg)
	if err != nil {
		cancel()
		return nil, err
	}

	ln, err := net.Listen("tcp", opts.Addr)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("registry: %w (is another registry on %s? pass another address)", err, opts.Addr)
	}
	tlsCert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		cancel()
		ln.Close()
		return nil, err
	}
	srv := &http.Server{
		Handler:           app,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{tlsCert}, MinVersion: tls.VersionTLS12},
		ReadHeaderTimeout: 30 * time.Second,
	}
	r := &Registry{
		Host: ln.Addr().String(), User: opts.User, Password: opts.Password,
		CA: caPEM, CAFile: caFile,
		srv: srv, cancel: cancel, done: make(chan error, 1), work: work,
	}
	go func() { r.done <- srv.ServeTLS(ln, "", "") }()
	return r, nil
}

// config is the registry's configuration: storage on disk under dir (in memory when empty), htpasswd
// authentication, deletes allowed (tests overwrite tags), and no redis, notifications or proxying.
func config(dir, htpasswd string) *configuration.Configuration {
	cfg := &configuration.Configuration{}
	cfg.Storage = configuration.Storage{"inmemory": configuration.Parameters{}}
	if dir != "" {
		cfg.Storage = configuration.Storage{"filesystem": configuration.Parameters{"rootdirectory": dir}}
	}
	cfg.Storage["delete"] = configuration.Parameters{"enabled": true}
	cfg.Auth = configuration.Auth{"htpasswd": configuration.Parameters{"realm": "podidentity-test-registry", "path": htpasswd}}
	// Upload state is signed with this secret; the registry makes a random one when it is empty but then
	// logs a warning per start.
	cfg.HTTP.Secret = randomPassword()
	return cfg
}

// newApp builds the registry's handler; distribution panics on a configuration it refuses, which this turns
// into an error.
func newApp(ctx context.Context, cfg *configuration.Configuration) (app *handlers.App, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("registry configuration refused: %v", p)
		}
	}()
	return handlers.NewApp(ctx, cfg), nil
}

// Close stops the registry and removes its work directory (not Options.Dir).
func (r *Registry) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := r.srv.Shutdown(ctx)
	r.cancel()
	if serr := <-r.done; serr != nil && !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	if rerr := os.RemoveAll(r.work); rerr != nil && err == nil {
		err = rerr
	}
	return err
}

// DockerConfig returns a Docker config.json (as go-containerregistry, crane, cosign and containerd's CRI
// plugin read auths) holding the registry's credentials.
func (r *Registry) DockerConfig() []byte {
	return DockerConfigJSON(r.Host, r.User, r.Password)
}

// DockerConfigJSON is a config.json / .dockerconfigjson with basic credentials for one registry host: the
// content of a kubernetes.io/dockerconfigjson pull Secret too.
func DockerConfigJSON(host, user, password string) []byte {
	type entry struct {
		Username string `json:"username"`
		Password string `json:"password"`
		Auth     string `json:"auth"`
	}
	cfg := map[string]map[string]entry{"auths": {host: {
		Username: user, Password: password,
		Auth: base64.StdEncoding.EncodeToString([]byte(user + ":" + password)),
	}}}
	b, err := json.Marshal(cfg)
	if err != nil {
		panic(err) // a map of strings always marshals
	}
	return b
}

func randomPassword() string {
	b := make([]byte, 18)
	if _, err := io.ReadFull(randReader, b); err != nil {
		panic(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

var randReader = cryptorand.Reader
