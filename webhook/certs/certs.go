// Package certs gives the webhook its serving certificate when cert-manager is not installed: it generates a CA
// and a serving certificate for <service>.<namespace>.svc, keeps them in a Secret of the webhook's namespace,
// writes the CA into the MutatingWebhookConfiguration's caBundle, and renews the serving certificate before it
// expires. The generation, the Secret and the caBundle are Open Policy Agent's cert-controller (the rotator
// Gatekeeper runs); this package adds the flags, checks them, and serves the certificate from the Secret
// straight into the webhook server's TLS configuration, so a rotation takes effect as soon as the Secret
// changes (no wait for the kubelet to refresh a mounted volume, no file on disk).
//
// Every replica runs the rotator: the Secret is updated with optimistic concurrency, so when two replicas
// race the loser re-reads the winner's certificate instead of writing its own.
package certs

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/open-policy-agent/cert-controller/pkg/rotator"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/manager"
)

// Options configure the self-managed certificates. Zero durations take the defaults of BindFlags.
type Options struct {
	// Enabled turns the rotator on (--self-signed-certs); off, the webhook reads cert-manager's files.
	Enabled bool
	// SecretName and Namespace locate the Secret holding ca.crt, ca.key, tls.crt and tls.key. The Secret
	// must exist (the chart creates it empty).
	SecretName, Namespace string
	// WebhookConfigurationName is the MutatingWebhookConfiguration whose caBundle is kept current.
	WebhookConfigurationName string
	// ServiceName is the webhook's Service; the certificate is for ServiceName.Namespace.svc (and
	// .svc.cluster.local) plus ExtraDNSNames.
	ServiceName   string
	ExtraDNSNames []string
	// CAValidity and CertValidity are the lifetimes of the CA and of the serving certificate; a certificate
	// is renewed RenewBefore its expiry, checked every CheckInterval (and whenever the Secret changes).
	CAValidity, CertValidity, RenewBefore, CheckInterval time.Duration
	// CertDir receives a copy of the current tls.crt and tls.key (the webhook's --cert-dir; a writable
	// emptyDir in the pod). The server does not read them (it serves from memory), but the rotator waits for
	// them before it reports the webhook configuration patched, and they help debugging.
	CertDir string
}

// BindFlags registers the options' flags on fs. The namespace defaults to $POD_NAMESPACE.
func (o *Options) BindFlags(fs *flag.FlagSet) {
	fs.BoolVar(&o.Enabled, "self-signed-certs", false, "generate and rotate the serving certificate and CA in-process, keep them in --cert-secret-name and patch the webhook configuration's caBundle (for clusters without cert-manager)")
	fs.StringVar(&o.SecretName, "cert-secret-name", "podidentity-webhook-cert", "with --self-signed-certs: Secret (in --cert-secret-namespace) that keeps the CA and serving certificate; it must exist")
	fs.StringVar(&o.Namespace, "cert-secret-namespace", os.Getenv("POD_NAMESPACE"), "with --self-signed-certs: namespace of the Secret and of the Service (default $POD_NAMESPACE)")
	fs.StringVar(&o.WebhookConfigurationName, "webhook-configuration-name", "podidentity-webhook", "with --self-signed-certs: MutatingWebhookConfiguration whose caBundle is kept current")
	fs.StringVar(&o.ServiceName, "service-name", "podidentity-webhook", "with --self-signed-certs: the webhook's Service; the certificate names <service>.<namespace>.svc")
	fs.DurationVar(&o.CAValidity, "ca-validity", 10*365*24*time.Hour, "with --self-signed-certs: lifetime of the generated CA")
	fs.DurationVar(&o.CertValidity, "cert-validity", 365*24*time.Hour, "with --self-signed-certs: lifetime of the serving certificate")
	fs.DurationVar(&o.RenewBefore, "cert-renew-before", 30*24*time.Hour, "with --self-signed-certs: renew a certificate this long before it expires")
	fs.DurationVar(&o.CheckInterval, "cert-check-interval", time.Hour, "with --self-signed-certs: how often expiry is checked")
}

// Validate checks the options; each error names the flag to fix.
func (o Options) Validate() error {
	if !o.Enabled {
		return nil
	}
	var errs []error
	for flagName, v := range map[string]string{"--cert-secret-name": o.SecretName, "--cert-secret-namespace (or $POD_NAMESPACE)": o.Namespace,
		"--webhook-configuration-name": o.WebhookConfigurationName, "--service-name": o.ServiceName} {
		if v == "" {
			errs = append(errs, fmt.Errorf("--self-signed-certs needs %s", flagName))
		}
	}
	if o.CertValidity <= 0 || o.CAValidity <= 0 || o.CheckInterval <= 0 {
		errs = append(errs, errors.New("--ca-validity, --cert-validity and --cert-check-interval must be positive durations"))
	}
	if o.RenewBefore <= 0 || o.RenewBefore >= o.CertValidity {
		errs = append(errs, fmt.Errorf("--cert-renew-before=%s must be positive and shorter than --cert-validity=%s", o.RenewBefore, o.CertValidity))
	}
	if o.CAValidity < o.CertValidity {
		errs = append(errs, fmt.Errorf("--ca-validity=%s must be at least --cert-validity=%s (the CA signs the certificate)", o.CAValidity, o.CertValidity))
	}
	if o.CertDir == "" {
		errs = append(errs, errors.New("--self-signed-certs needs a writable --cert-dir"))
	}
	return errors.Join(errs...)
}

// DNSName is the name the API server calls the webhook by.
func (o Options) DNSName() string { return o.ServiceName + "." + o.Namespace + ".svc" }

// Source serves the current serving certificate from the Secret. Its TLSOption goes into the webhook server's
// options (webhook.Options.TLSOpts); the server then never reads certificate files.
type Source struct {
	current atomic.Pointer[tls.Certificate]
	log     logr.Logger
	certDir string
}

// TLSOption makes cfg serve the Source's certificate; until the first one is loaded handshakes fail with an
// error saying so (and the readiness check keeps the pod out of the Service).
func (s *Source) TLSOption(cfg *tls.Config) {
	cfg.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
		if c := s.current.Load(); c != nil {
			return c, nil
		}
		return nil, errors.New("the serving certificate is not generated yet (self-signed mode): wait for the rotator")
	}
}

// Ready is a readiness check that passes once a certificate is loaded.
func (s *Source) Ready(*http.Request) error {
	if s.current.Load() == nil {
		return errors.New("serving certificate not loaded yet")
	}
	return nil
}

// load takes tls.crt and tls.key from a Secret; a Secret without a valid pair leaves the current one in use.
func (s *Source) load(sec *corev1.Secret) {
	crt, key := sec.Data["tls.crt"], sec.Data["tls.key"]
	if len(crt) == 0 || len(key) == 0 {
		return
	}
	pair, err := tls.X509KeyPair(crt, key)
	if err != nil {
		s.log.Error(err, "the certificate Secret holds no valid key pair; keeping the current one", "secret", sec.Namespace+"/"+sec.Name)
		return
	}
	if old := s.current.Swap(&pair); old != nil && equalChains(old, &pair) {
		return
	}
	s.log.Info("serving certificate loaded", "secret", sec.Namespace+"/"+sec.Name, "notAfter", pair.Leaf.NotAfter)
	if s.certDir == "" {
		return
	}
	for name, b := range map[string][]byte{"tls.crt": crt, "tls.key": key} {
		if err := writeAtomically(filepath.Join(s.certDir, name), b); err != nil {
			s.log.Error(err, "writing the certificate copy; give the webhook a writable --cert-dir (an emptyDir)", "dir", s.certDir)
		}
	}
}

// writeAtomically replaces path in one rename, so a reader never sees half a file.
func writeAtomically(path string, b []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

func equalChains(a, b *tls.Certificate) bool {
	if len(a.Certificate) != len(b.Certificate) {
		return false
	}
	for i := range a.Certificate {
		if string(a.Certificate[i]) != string(b.Certificate[i]) {
			return false
		}
	}
	return true
}

// New returns the Source the webhook server serves from. Call it before building the webhook server, then
// AddToManager once the manager exists.
func New(log logr.Logger) *Source {
	return &Source{log: log.WithName("certs")}
}

// AddToManager runs cert-controller's rotator for o in mgr, keeps s loaded from the Secret, and adds the
// readiness check "serving-cert". The caller must have checked o.Validate.
func (s *Source) AddToManager(mgr manager.Manager, o Options) error {
	if err := o.Validate(); err != nil {
		return err
	}
	s.certDir = o.CertDir
	key := types.NamespacedName{Namespace: o.Namespace, Name: o.SecretName}
	cr := &rotator.CertRotator{
		SecretKey:              key,
		CAName:                 o.ServiceName + "-ca",
		CAOrganization:         "podidentity",
		DNSName:                o.DNSName(),
		ExtraDNSNames:          append([]string{o.DNSName() + ".cluster.local"}, o.ExtraDNSNames...),
		IsReady:                make(chan struct{}),
		Webhooks:               []rotator.WebhookInfo{{Name: o.WebhookConfigurationName, Type: rotator.Mutating}},
		FieldOwner:             "podidentity-webhook",
		RequireLeaderElection:  false,
		CaCertDuration:         o.CAValidity,
		ServerCertDuration:     o.CertValidity,
		RotationCheckFrequency: o.CheckInterval,
		LookaheadInterval:      o.RenewBefore,
		// The rotator waits for CertDir/tls.crt before it reports ready; the Source writes that copy.
		CertDir: o.CertDir,
	}
	if err := rotator.AddRotator(mgr, cr); err != nil {
		return fmt.Errorf("starting the certificate rotator for Secret %s: %w", key, err)
	}
	cs, err := kubernetes.NewForConfig(mgr.GetConfig())
	if err != nil {
		return fmt.Errorf("client for the certificate Secret: %w", err)
	}
	if err := mgr.Add(manager.RunnableFunc(func(ctx context.Context) error { return s.watch(ctx, cs, key) })); err != nil {
		return err
	}
	return mgr.AddReadyzCheck("serving-cert", s.Ready)
}

// watch keeps s current from the one Secret (a field-selected informer: no other Secret is cached).
func (s *Source) watch(ctx context.Context, cs kubernetes.Interface, key types.NamespacedName) error {
	lw := cache.NewListWatchFromClient(cs.CoreV1().RESTClient(), "secrets", key.Namespace, fields.OneTermEqualSelector("metadata.name", key.Name))
	inf := cache.NewSharedInformer(lw, &corev1.Secret{}, 10*time.Minute)
	onSecret := func(obj any) {
		if sec, ok := obj.(*corev1.Secret); ok {
			s.load(sec)
		}
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    onSecret,
		UpdateFunc: func(_, obj any) { onSecret(obj) },
	}); err != nil {
		return err
	}
	inf.Run(ctx.Done())
	return nil
}
