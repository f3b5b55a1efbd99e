package certs

import (
	"crypto/tls"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"

	"github.com/podidentity/podidentity/test/toolbox/pki"
)

func validOptions() Options {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	var o Options
	o.BindFlags(fs)
	if err := fs.Parse([]string{"--self-signed-certs", "--cert-secret-namespace=ns"}); err != nil {
		panic(err)
	}
	o.CertDir = "/certs"
	return o
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(*Options)
		want   string // substring of the error; empty: valid
	}{
		{"flag defaults", func(*Options) {}, ""},
		{"disabled needs nothing", func(o *Options) { *o = Options{} }, ""},
		{"no namespace", func(o *Options) { o.Namespace = "" }, "--cert-secret-namespace"},
		{"no secret", func(o *Options) { o.SecretName = "" }, "--cert-secret-name"},
		{"no webhook configuration", func(o *Options) { o.WebhookConfigurationName = "" }, "--webhook-configuration-name"},
		{"renew before longer than validity", func(o *Options) { o.RenewBefore = o.CertValidity }, "--cert-renew-before"},
		{"CA shorter than certificate", func(o *Options) { o.CAValidity = time.Hour }, "--ca-validity"},
		{"zero check interval", func(o *Options) { o.CheckInterval = 0 }, "--cert-check-interval"},
		{"no cert dir", func(o *Options) { o.CertDir = "" }, "--cert-dir"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := validOptions()
			tc.change(&o)
			err := o.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("error %v, want one naming %s", err, tc.want)
			}
		})
	}
}

func TestDNSName(t *testing.T) {
	o := validOptions()
	if got, want := o.DNSName(), "podidentity-webhook.ns.svc"; got != want {
		t.Fatalf("DNSName() = %q, want %q", got, want)
	}
}

// TestSourceServesTheSecretsPair: before a pair is loaded handshakes fail and readiness fails; a valid pair
// is served and copied to the cert dir; an invalid Secret keeps the current pair.
func TestSourceServesTheSecretsPair(t *testing.T) {
	dir := t.TempDir()
	s := New(logr.Discard())
	s.certDir = dir
	cfg := &tls.Config{}
	s.TLSOption(cfg)
	if _, err := cfg.GetCertificate(nil); err == nil {
		t.Fatal("a certificate was served before any was loaded")
	}
	if s.Ready(nil) == nil {
		t.Fatal("ready before a certificate was loaded")
	}

	one := pki.SelfSigned(pki.Spec{CommonName: "one"})
	crt1, key1 := one.CertPEM(), one.KeyPEM()
	s.load(&corev1.Secret{Data: map[string][]byte{"tls.crt": crt1, "tls.key": key1}})
	got, err := cfg.GetCertificate(nil)
	if err != nil || got.Leaf.Subject.CommonName != "one" {
		t.Fatalf("served %v, %v; want the certificate \"one\"", got, err)
	}
	if s.Ready(nil) != nil {
		t.Fatal("not ready after a certificate was loaded")
	}
	if b, err := os.ReadFile(filepath.Join(dir, "tls.crt")); err != nil || string(b) != string(crt1) {
		t.Fatalf("cert dir copy: %v", err)
	}

	for name, data := range map[string]map[string][]byte{
		"empty":      nil,
		"garbage":    {"tls.crt": []byte("x"), "tls.key": []byte("y")},
		"key of two": {"tls.crt": crt1, "tls.key": pki.SelfSigned(pki.Spec{CommonName: "other"}).KeyPEM()},
	} {
		s.load(&corev1.Secret{Data: data})
		if got, _ := cfg.GetCertificate(nil); got.Leaf.Subject.CommonName != "one" {
			t.Fatalf("%s Secret replaced the served certificate", name)
		}
	}

	two := pki.SelfSigned(pki.Spec{CommonName: "two"})
	crt2, key2 := two.CertPEM(), two.KeyPEM()
	s.load(&corev1.Secret{Data: map[string][]byte{"tls.crt": crt2, "tls.key": key2}})
	if got, _ := cfg.GetCertificate(nil); got.Leaf.Subject.CommonName != "two" {
		t.Fatal("a rotated certificate was not served")
	}
}
