package fakecloud

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/podidentity/podidentity/test/emulators/arm"
	"github.com/podidentity/podidentity/test/emulators/imds"
	"github.com/podidentity/podidentity/test/toolbox/pki"
)

const (
	vmss     = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/pool"
	otherSS  = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/other"
	identity = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/web"
	tenant   = "tenant-1"
)

// TestIMDSServesWhatARMAttached runs the fake cloud on loopback and checks the shared state: IMDS refuses
// an identity until a PATCH through the ARM endpoint attached it to the node's scale set, then issues its
// token; the operation URL ARM hands out points at the public address; Azure AD checks the secret.
func TestIMDSServesWhatARMAttached(t *testing.T) {
	dir := t.TempDir()
	serving := pki.SelfSigned(pki.Spec{CommonName: "fake cloud", IPs: []net.IP{net.ParseIP("127.0.0.1")}, Server: true, CA: true})
	if err := serving.WriteFiles(filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")); err != nil {
		t.Fatal(err)
	}
	pool := serving.Pool()
	addrs := freeAddrs(t, 4)
	armURL := "https://" + addrs[2]
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{IMDSAddr: addrs[0], AdminAddr: addrs[1], ARMAddr: addrs[2], AADAddr: addrs[3],
			CertFile: filepath.Join(dir, "tls.crt"), KeyFile: filepath.Join(dir, "tls.key"), ARMPublicURL: armURL,
			TenantID: tenant, VMSSID: vmss, InstanceID: vmss + "/virtualMachines/0",
			Apps: []imds.App{{TenantID: tenant, ClientID: "assigner", Secret: "s3cret"}}})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	tlsClient := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	waitUp(t, "http://"+addrs[1]+"/healthz")

	tokenURL := fmt.Sprintf("http://%s%s?api-version=2018-02-01&resource=https://management.azure.com/&client_id=%s", addrs[0], imds.TokenPath, arm.ClientIDOf(identity))
	if status, body := get(t, http.DefaultClient, tokenURL, map[string]string{"Metadata": "true"}); status != http.StatusBadRequest || !strings.Contains(body, "Identity not found") {
		t.Fatalf("before ARM attached it: %d %s, want 400 Identity not found", status, body)
	}

	// A PATCH on another scale set is not the node's: it must not change what the node's IMDS serves.
	if status, _ := patchIdentity(t, tlsClient, armURL+otherSS); status != http.StatusNotFound {
		t.Errorf("PATCH of an unknown scale set: %d, want 404", status)
	}
	status, async := patchIdentity(t, tlsClient, armURL+vmss)
	if status != http.StatusOK {
		t.Fatalf("PATCH of the node's scale set: %d", status)
	}
	if !strings.HasPrefix(async, armURL+"/") {
		t.Errorf("Azure-AsyncOperation %q does not point at the public ARM URL %s", async, armURL)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, body := get(t, tlsClient, async, nil)
		if strings.Contains(body, "Succeeded") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("operation never succeeded: %s", body)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for {
		status, body := get(t, http.DefaultClient, tokenURL, map[string]string{"Metadata": "true"})
		if status == http.StatusOK {
			if !strings.Contains(body, "access_token") {
				t.Errorf("token answer without access_token: %s", body)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after ARM attached it: %d %s", status, body)
		}
		time.Sleep(20 * time.Millisecond)
	}

	for _, tc := range []struct {
		secret string
		want   int
	}{{"s3cret", http.StatusOK}, {"wrong", http.StatusUnauthorized}} {
		form := url.Values{"grant_type": {"client_credentials"}, "client_id": {"assigner"}, "client_secret": {tc.secret}, "scope": {"https://management.azure.com/.default"}}
		resp, err := tlsClient.PostForm("https://"+addrs[3]+"/"+tenant+"/oauth2/v2.0/token", form)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("Azure AD token with secret %q: %d, want %d", tc.secret, resp.StatusCode, tc.want)
		}
	}
}

func TestDNSAnswer(t *testing.T) {
	known := map[string]bool{"login.microsoftonline.com.": true}
	answer := net.ParseIP("172.31.254.1")
	for _, tc := range []struct {
		name      string
		qname     string
		qtype     dnsmessage.Type
		response  bool
		wantRCode dnsmessage.RCode
		wantA     string
		wantNoMsg bool
	}{
		{name: "known A", qname: "login.microsoftonline.com.", qtype: dnsmessage.TypeA, wantA: "172.31.254.1"},
		{name: "case-insensitive", qname: "LOGIN.microsoftonline.COM.", qtype: dnsmessage.TypeA, wantA: "172.31.254.1"},
		{name: "known AAAA: no record", qname: "login.microsoftonline.com.", qtype: dnsmessage.TypeAAAA},
		{name: "unknown name", qname: "example.com.", qtype: dnsmessage.TypeA, wantRCode: dnsmessage.RCodeNameError},
		{name: "a response is not answered", qname: "login.microsoftonline.com.", qtype: dnsmessage.TypeA, response: true, wantNoMsg: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 7, RecursionDesired: true, Response: tc.response})
			_ = b.StartQuestions()
			_ = b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(tc.qname), Type: tc.qtype, Class: dnsmessage.ClassINET})
			q, err := b.Finish()
			if err != nil {
				t.Fatal(err)
			}
			out, ok := dnsAnswer(q, known, answer)
			if tc.wantNoMsg {
				if ok {
					t.Fatal("answered a response")
				}
				return
			}
			if !ok {
				t.Fatal("no answer")
			}
			var m dnsmessage.Message
			if err := m.Unpack(out); err != nil {
				t.Fatal(err)
			}
			if m.Header.ID != 7 || !m.Header.Response || m.Header.RCode != tc.wantRCode {
				t.Errorf("header %+v, want id 7, response, rcode %v", m.Header, tc.wantRCode)
			}
			var got []string
			for _, a := range m.Answers {
				if r, ok := a.Body.(*dnsmessage.AResource); ok {
					got = append(got, net.IP(r.A[:]).String())
				}
			}
			if want := tc.wantA; (want == "" && len(got) != 0) || (want != "" && (len(got) != 1 || got[0] != want)) {
				t.Errorf("answers %v, want %q", got, want)
			}
		})
	}
}

func patchIdentity(t *testing.T, c *http.Client, resourceURL string) (int, string) {
	t.Helper()
	body := fmt.Sprintf(`{"identity":{"type":"UserAssigned","userAssignedIdentities":{%q:{}}}}`, identity)
	req, _ := http.NewRequest(http.MethodPatch, resourceURL+"?api-version=2024-11-01", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, resp.Header.Get("Azure-AsyncOperation")
}

func get(t *testing.T, c *http.Client, u string, header map[string]string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, u, nil)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func waitUp(t *testing.T, u string) {
	t.Helper()
	for i := 0; i < 200; i++ {
		if resp, err := http.Get(u); err == nil {
			resp.Body.Close()
			return
		}
		time.Sleep(25 * time.Millisecond)
	}
	t.Fatalf("%s never answered", u)
}

// freeAddrs returns n loopback addresses with free ports.
func freeAddrs(t *testing.T, n int) []string {
	t.Helper()
	var out []string
	for i := 0; i < n; i++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, ln.Addr().String())
		ln.Close()
	}
	return out
}
