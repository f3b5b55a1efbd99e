package fakecloud

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podidentity/podidentity/test/emulators/imds"
	"github.com/podidentity/podidentity/test/toolbox/pki"
	"github.com/podidentity/podidentity/test/toolbox/testenv"
)

// TestFederatedAppThroughTheAdminAPI: the local cluster's way to use workload identity federation. The fake
// cloud trusts the API server's CA (--issuer-ca-file); an app with a federated credential is registered through
// the admin API; a service account token of that API server is exchanged at the fake cloud's Azure AD; the
// admin API counts it; another service account's token is refused.
func TestFederatedAppThroughTheAdminAPI(t *testing.T) {
	issuer := testenv.StartIssuer(t)
	dir := t.TempDir()
	ca := filepath.Join(dir, "issuer-ca.crt")
	if err := os.WriteFile(ca, issuer.Config.CAData, 0o600); err != nil {
		t.Fatal(err)
	}
	serving := pki.SelfSigned(pki.Spec{CommonName: "fake cloud", IPs: []net.IP{net.ParseIP("127.0.0.1")}, Server: true, CA: true})
	if err := serving.WriteFiles(filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")); err != nil {
		t.Fatal(err)
	}
	addrs := freeAddrs(t, 4)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{IMDSAddr: addrs[0], AdminAddr: addrs[1], ARMAddr: addrs[2], AADAddr: addrs[3],
			CertFile: filepath.Join(dir, "tls.crt"), KeyFile: filepath.Join(dir, "tls.key"), ARMPublicURL: "https://" + addrs[2],
			TenantID: tenant, VMSSID: vmss, InstanceID: vmss + "/virtualMachines/0", IssuerCAFile: ca})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	waitUp(t, "http://"+addrs[1]+"/healthz")

	const client = "fed00000-0000-4000-8000-000000000001"
	body := `{"tenantID":"` + tenant + `","clientID":"` + client + `","objectID":"oid","federated":[{"issuer":"` + issuer.URL + `","subject":"system:serviceaccount:apps:web"}]}`
	resp, err := http.Post("http://"+addrs[1]+"/aad/apps", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("POST /aad/apps: %d", resp.StatusCode)
	}
	if resp, _ := http.Post("http://"+addrs[1]+"/aad/apps", "application/json", strings.NewReader(`{"clientID":"x"}`)); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("an app without tenant: %d, want 400", resp.StatusCode)
	}

	tlsClient := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: serving.Pool()}}}
	exchange := func(sa string) int {
		form := url.Values{"grant_type": {"client_credentials"}, "client_id": {client}, "scope": {"https://vault.azure.net/.default"},
			"client_assertion_type": {imds.ClientAssertionTypeJWT}, "client_assertion": {issuer.Token(t, "apps", sa, imds.FederationAudience, 3600)}}
		resp, err := tlsClient.PostForm("https://"+addrs[3]+"/"+tenant+"/oauth2/v2.0/token", form)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if status := exchange("web"); status != http.StatusOK {
		t.Fatalf("exchange of apps/web's token: %d", status)
	}
	if status := exchange("intruder"); status != http.StatusBadRequest {
		t.Fatalf("exchange of apps/intruder's token: %d, want 400", status)
	}
	resp, err = http.Get("http://" + addrs[1] + "/aad/apps/" + client + "/counts")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var counts map[string]int
	if err := json.NewDecoder(resp.Body).Decode(&counts); err != nil || counts["exchanges"] != 1 || counts["tokens"] != 1 {
		t.Fatalf("counts %v (%v), want 1 exchange and 1 token", counts, err)
	}
}
