package app

import (
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"

	"github.com/podidentity/podidentity/assigner/config"
	"github.com/podidentity/podidentity/test/emulators/arm"
	"github.com/podidentity/podidentity/test/emulators/fakecloud"
	"github.com/podidentity/podidentity/test/emulators/imds"
	"github.com/podidentity/podidentity/test/toolbox/pki"
)

const (
	fakeTenant   = "72f988bf-0000-4000-8000-00000000aaaa"
	fakeAudience = "https://management.emulator.test/"
)

// fakeCloud is the emulated Azure AD and ARM (test/emulators/fakecloud) served inside the test, ARM accepting
// only bearer tokens that this Azure AD issued for ARM's audience and tenant and recording which application
// made each request, so tests see exactly who wrote what.
type fakeCloud struct{ *fakecloud.InTest }

func newFakeCloud(t *testing.T, armOpts arm.Options, apps ...imds.App) *fakeCloud {
	t.Helper()
	return &fakeCloud{fakecloud.Start(t, fakecloud.AzureOptions{TenantID: fakeTenant, Apps: apps, ARM: armOpts, ARMAudience: fakeAudience})}
}

// cloudConfig is what the assigner makes of --arm-endpoint, --arm-audience and --aad-authority.
func (fc *fakeCloud) cloudConfig(t *testing.T) cloud.Configuration {
	t.Helper()
	c, err := config.Cloud("", fc.ARM.URL(), fakeAudience, fc.AADURL()+"/")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// newCertificate makes a self-signed RSA certificate for a service principal and writes it with its key
// to a PEM file (what aadClientCertPath / AZURE_CLIENT_CERTIFICATE_PATH point at).
func newCertificate(t *testing.T, dir, name string) (*x509.Certificate, string) {
	t.Helper()
	pair := pki.SelfSigned(pki.Spec{CommonName: name, RSA: true})
	path := filepath.Join(dir, name+".pem")
	if err := os.WriteFile(path, append(pair.CertPEM(), pair.PKCS8KeyPEM()...), 0o600); err != nil {
		t.Fatal(err)
	}
	return pair.Cert, path
}
