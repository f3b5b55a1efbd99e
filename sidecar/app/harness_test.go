package app

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"

	"github.com/podidentity/podidentity/api/identitytype"
	"github.com/podidentity/podidentity/internal/contract"
	"github.com/podidentity/podidentity/sidecar/internal/kubeletfile"
	"github.com/podidentity/podidentity/test/emulators/imds"
	"github.com/podidentity/podidentity/test/toolbox/wait"
)

const rid = "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/"

// The node has three identities attached: two bound to the pod (web, jobs) and one that is not (other). A
// sidecar that let a request through for "other" would get a real token from IMDS.
var (
	webMI   = imds.Identity{ClientID: "aaaaaaaa-1111-4111-8111-000000000001", ObjectID: "0b000000-0000-0000-0000-000000000001", ResourceID: rid + "web"}
	jobsMI  = imds.Identity{ClientID: "aaaaaaaa-1111-4111-8111-000000000002", ObjectID: "0b000000-0000-0000-0000-000000000002", ResourceID: rid + "jobs"}
	otherMI = imds.Identity{ClientID: "cccccccc-1111-4111-8111-000000000003", ObjectID: "0b000000-0000-0000-0000-000000000003", ResourceID: rid + "other"}

	web  = contract.Identity{Namespace: "apps", Name: "web", Type: identitytype.UserAssignedMSI, ClientID: webMI.ClientID, ResourceID: webMI.ResourceID, Binding: "apps/web", Weight: 5}
	jobs = contract.Identity{Namespace: "apps", Name: "jobs", Type: identitytype.UserAssignedMSI, ClientID: jobsMI.ClientID, ResourceID: jobsMI.ResourceID, Binding: "apps/jobs"}
)

// kubeletDir is the identities file as the kubelet projects it.
type kubeletDir struct{ *kubeletfile.Dir }

func (k kubeletDir) path() string { return k.Path() }

func (k kubeletDir) write(t testing.TB, ids []contract.Identity) {
	t.Helper()
	k.Write(t, []byte(contract.EncodeIdentities(ids)))
}

// logBuffer collects log lines.
type logBuffer struct {
	mu    sync.Mutex
	lines []string
}

func (b *logBuffer) logger() logr.Logger {
	return funcr.NewJSON(func(obj string) {
		b.mu.Lock()
		b.lines = append(b.lines, obj)
		b.mu.Unlock()
	}, funcr.Options{Verbosity: 1})
}

func (b *logBuffer) all() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.lines...)
}

type harness struct {
	emu     *imds.Server
	app     *App
	addr    string // the sidecar's token listener
	health  string
	files   kubeletDir
	logs    *logBuffer
	imdsURL string
}

type setup struct {
	bound    []contract.Identity
	attached []imds.Identity
	emu      imds.Options
	// cfg changes the configuration; ListenAddress is already the token listener's address.
	cfg func(*Config)
	// upstreamPending: do not wait for the sidecar to confirm its upstream (tests of that readiness).
	upstreamPending bool
}

func start(t *testing.T, s setup) *harness {
	t.Helper()
	logs := &logBuffer{}
	h := startTB(t, s, logs.logger())
	h.logs = logs
	return h
}

// startTB runs an emulated IMDS and a sidecar wired to it on loopback listeners, until the test ends.
func startTB(t testing.TB, s setup, log logr.Logger) *harness {
	t.Helper()
	if s.emu.RatePerSecond == 0 {
		s.emu.RatePerSecond = -1 // tests that exercise throttling set it
	}
	emu := imds.New(s.emu)
	emu.SetAttached(s.attached)
	emuSrv := httptest.NewServer(emu)
	t.Cleanup(emuSrv.Close)

	files := kubeletDir{kubeletfile.New(t.TempDir(), "identities")}
	if s.bound != nil {
		files.write(t, s.bound)
	}
	tl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		ListenAddress: tl.Addr().String(), HealthAddress: hl.Addr().String(), IdentitiesFile: files.path(),
		SecretsDir: t.TempDir(), IMDSEndpoint: emuSrv.URL, MetadataHeaderRequired: true,
		ReloadInterval: 10 * time.Millisecond, AttachWait: 5 * time.Second, RetryAfter: 2 * time.Second,
		InitialBackoff: 5 * time.Millisecond, PodName: "web-0", PodNamespace: "apps",
	}
	if s.cfg != nil {
		s.cfg(&cfg)
	}
	a, err := New(cfg, log)
	if err != nil {
		_ = tl.Close()
		_ = hl.Close()
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Serve(ctx, tl, hl) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	if s.bound != nil {
		wait.Until(t, 10*time.Second, time.Millisecond, "the sidecar reads its identities file", a.Store.Ready)
	}
	// The readiness probe is a request to IMDS's other paths: let it land before a test counts those.
	if !s.upstreamPending {
		wait.For(t, 10*time.Second, time.Millisecond, "the sidecar confirms its upstream", func() error {
			if ok, why := a.Upstream.Ready(); !ok {
				return errors.New(why)
			}
			return nil
		})
	}
	return &harness{emu: emu, app: a, addr: tl.Addr().String(), health: hl.Addr().String(), files: files, imdsURL: emuSrv.URL}
}

// response is an HTTP answer with its body decoded as IMDS JSON (when it is).
type response struct {
	status int
	header http.Header
	body   map[string]string
	raw    string
}

// rawGet sends target exactly as given (no client-side cleaning or escaping) over a fresh connection.
func rawGet(t *testing.T, addr, target string, header map[string]string) response {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var b strings.Builder
	fmt.Fprintf(&b, "GET %s HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n", target)
	for k, v := range header {
		fmt.Fprintf(&b, "%s: %s\r\n", k, v)
	}
	b.WriteString("\r\n")
	if _, err := io.WriteString(conn, b.String()); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("GET %s: %v", target, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	r := response{status: resp.StatusCode, header: resp.Header, raw: string(raw)}
	_ = json.Unmarshal(raw, &r.body)
	return r
}

var md = map[string]string{"Metadata": "true"}

func tokenTarget(query string) string {
	return "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F" + query
}
