package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/podidentity/podidentity/api/identitytype"
	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/test/emulators/imds"
	"github.com/podidentity/podidentity/test/toolbox/wait"
)

// The audit log is batched (logwriter): after a SIGTERM the process has written exactly one whole JSON line per
// token issued, with every field, and none with the token itself.
func TestAuditLinesSurviveBatchingAndShutdown(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the sidecar as a process")
	}
	mi := imds.Identity{ClientID: "aaaaaaaa-1111-4111-8111-000000000001",
		ResourceID: "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/web"}
	emu := imds.New(imds.Options{RatePerSecond: -1})
	emu.SetAttached([]imds.Identity{mi})
	emuSrv := httptest.NewServer(emu)
	defer emuSrv.Close()

	bin := sidecarBinary(t)
	dir := readableDir(t) // started as root, the sidecar reads it as its unprivileged uid
	idFile := filepath.Join(dir, "identities")
	ids := []contract.Identity{{Namespace: "apps", Name: "web", Type: identitytype.UserAssignedMSI, ClientID: mi.ClientID, ResourceID: mi.ResourceID, Binding: "apps/web"}}
	if err := os.WriteFile(idFile, []byte(contract.EncodeIdentities(ids)), 0o644); err != nil {
		t.Fatal(err)
	}
	tokenAddr, healthAddr := freeAddr(t), freeAddr(t)
	cmd := exec.Command(bin, "--listen-address="+tokenAddr, "--health-address="+healthAddr,
		"--identities-file="+idFile, "--imds-endpoint="+emuSrv.URL, "--secrets-dir="+dir)
	cmd.Env = append(os.Environ(), "POD_NAME=web-0", "POD_NAMESPACE=apps")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill() }()
	waitReady(t, "http://"+healthAddr+"/readyz")

	// Concurrent clients, so that lines from different requests are batched together.
	const clients, perClient = 8, 100
	resources := []string{"https://management.azure.com/", "https://vault.azure.net", "https://storage.azure.com/"}
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	var tokenMu sync.Mutex
	tokens := map[string]bool{}
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perClient {
				resource := resources[(c+i)%len(resources)]
				tok, err := getToken(tokenAddr, resource)
				if err != nil {
					errs <- err
					return
				}
				tokenMu.Lock()
				tokens[tok] = true
				tokenMu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("sidecar exited with %v; stderr:\n%s", err, stderr.String())
	}

	issued := map[string]int{} // by cache result
	for _, line := range strings.Split(strings.TrimSuffix(stderr.String(), "\n"), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("a log line is not whole JSON (%v): %q", err, line)
		}
		for tok := range tokens {
			if strings.Contains(line, tok) {
				t.Fatalf("a log line carries a token: %s", line)
			}
		}
		if rec["msg"] != "token issued" {
			continue
		}
		for _, field := range []string{"pod", "identity", "clientID", "resource", "cache", "latency"} {
			if _, ok := rec[field]; !ok {
				t.Fatalf("audit line lacks %q: %s", field, line)
			}
		}
		if rec["pod"] != "apps/web-0" || rec["identity"] != "apps/web" || rec["clientID"] != mi.ClientID {
			t.Fatalf("audit line with wrong pod, identity or client ID: %s", line)
		}
		issued[fmt.Sprint(rec["cache"])]++
	}
	if total := issued["hit"] + issued["miss"]; total != clients*perClient || issued["miss"] < len(resources) {
		t.Fatalf("audit lines by cache result %v: want %d in all, at least %d misses (one per resource)", issued, clients*perClient, len(resources))
	}
}

func getToken(addr, resource string) (string, error) {
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/metadata/identity/oauth2/token?api-version=2018-02-01&resource="+resource, nil)
	req.Header.Set("Metadata", "true")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("token for %s: %d %s", resource, resp.StatusCode, body)
	}
	var answer struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.Unmarshal(body, &answer); err != nil || answer.AccessToken == "" {
		return "", fmt.Errorf("token for %s: answer %s (%w)", resource, body, err)
	}
	return answer.AccessToken, nil
}

func waitReady(t *testing.T, url string) {
	t.Helper()
	wait.For(t, 20*time.Second, 20*time.Millisecond, url+" is ready", func() error {
		resp, err := http.Get(url)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	})
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
