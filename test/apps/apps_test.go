package apps

import (
	"archive/tar"
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/vishvananda/netns"

	"github.com/podidentity/podidentity/test/emulators/imds"
)

// The images are built and then run the way a pod runs them: their filesystem extracted and used as the root
// (chroot), as the image's user, in a network namespace where 169.254.169.254:80 is the IMDS emulator. That
// proves the image is complete (entrypoint, ELF interpreter, shared libraries, node_modules) and that the real
// SDKs inside it get tokens from IMDS, report refusals, and recover when the identity arrives.

var (
	bound   = imds.Identity{ClientID: "11111111-0000-0000-0000-00000000000b", ObjectID: "0b0b0b0b-0000-0000-0000-000000000001", ResourceID: "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/bound"}
	unbound = "22222222-0000-0000-0000-00000000000u"
)

type appLine struct {
	OK        bool           `json:"ok"`
	SDK       string         `json:"sdk"`
	Claims    map[string]any `json:"claims"`
	ExpiresOn string         `json:"expiresOn"`
	Status    int            `json:"status"`
	Body      string         `json:"body"`
	Error     string         `json:"error"`
	ElapsedMs *int64         `json:"elapsedMs"`
	Attempt   int            `json:"attempt"`
}

func TestImages(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping in -short mode: builds the e2e app images (npm ci, ~100 MB tarball)")
	}
	if runtime.GOOS != "linux" || runtime.GOARCH != "amd64" {
		t.Skip("the e2e app images are linux/amd64")
	}
	tests := []struct {
		name       string
		build      func(context.Context, string) (string, error)
		repo       string
		entrypoint []string
		sdk        string
		files      []string
	}{
		{name: "go", build: BuildGoClientImage, repo: GoClientRepo, entrypoint: []string{GoClientPath}, sdk: "go",
			files: []string{GoClientPath, "/etc/passwd"}},
		{name: "js", build: BuildJSClientImage, repo: JSClientRepo, entrypoint: []string{NodePath, "/app/client.js"}, sdk: "js",
			files: []string{NodePath, "/app/client.js", "/app/node_modules/@azure/identity/package.json", "/app/node_modules/@azure/msal-node/package.json", "/etc/passwd"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			out := filepath.Join(t.TempDir(), "image.tar")
			ref, err := tt.build(ctx, out)
			if err != nil {
				t.Fatal(err)
			}
			if !regexp.MustCompile("^" + regexp.QuoteMeta(tt.repo) + ":[0-9a-f]{16}$").MatchString(ref) {
				t.Errorf("image reference %q: want %s:<16 hex digits of content hash> (never latest, so the kubelet never pulls)", ref, tt.repo)
			}
			if info, err := os.Stat(out); err == nil {
				t.Logf("%s: %d MiB", ref, info.Size()>>20)
			}
			img := loadImage(t, out, ref)
			cfg, err := img.ConfigFile()
			if err != nil {
				t.Fatal(err)
			}
			if cfg.OS != "linux" || cfg.Architecture != "amd64" || cfg.Config.User != fmt.Sprintf("%d:%d", AppUID, AppUID) ||
				strings.Join(cfg.Config.Entrypoint, " ") != strings.Join(tt.entrypoint, " ") {
				t.Errorf("config: os %s arch %s user %q entrypoint %q; want linux amd64 %d:%d %q", cfg.OS, cfg.Architecture,
					cfg.Config.User, cfg.Config.Entrypoint, AppUID, AppUID, tt.entrypoint)
			}
			rootfs := extract(t, img)
			for _, f := range tt.files {
				if info, err := os.Stat(filepath.Join(rootfs, f)); err != nil || !info.Mode().IsRegular() {
					t.Errorf("%s missing from the image: %v", f, err)
				}
			}
			interp, err := Interpreter(filepath.Join(rootfs, tt.entrypoint[0]))
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case tt.name == "go" && interp != "":
				t.Errorf("the Go client is dynamically linked (interpreter %s): build it with CGO_ENABLED=0", interp)
			case tt.name == "js" && interp == "":
				t.Error("node has no ELF interpreter: not the dynamically linked node this test expects")
			case interp != "":
				if info, err := os.Stat(filepath.Join(rootfs, interp)); err != nil || !info.Mode().IsRegular() {
					t.Errorf("ELF interpreter %s missing from the image (the container would fail with 'no such file or directory'): %v", interp, err)
				}
			}
			if tt.name == "js" {
				checkPinnedIdentityVersion(t, rootfs)
			}
			runScenarios(t, rootfs, tt.entrypoint, tt.sdk)
		})
	}
}

func loadImage(t *testing.T, path, ref string) v1.Image {
	t.Helper()
	opener := func() (io.ReadCloser, error) { return os.Open(path) }
	m, err := tarball.LoadManifest(opener)
	if err != nil {
		t.Fatalf("%s is not an image tarball: %v", path, err)
	}
	if len(m) != 1 || len(m[0].RepoTags) != 1 || m[0].RepoTags[0] != ref {
		t.Fatalf("manifest.json = %+v, want one image tagged %s (ctr import names the image from it)", m, ref)
	}
	img, err := tarball.Image(opener, nil)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// extract writes the image's filesystem to a directory readable by the image's user.
func extract(t *testing.T, img v1.Image) string {
	t.Helper()
	root := t.TempDir()
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return root
		}
		if err != nil {
			t.Fatal(err)
		}
		name := filepath.Clean("/" + h.Name)
		if strings.Contains(h.Name, "..") {
			t.Fatalf("image path %q escapes the root", h.Name)
		}
		p := filepath.Join(root, name)
		switch h.Typeflag {
		case tar.TypeDir:
			err = os.MkdirAll(p, os.FileMode(h.Mode)&os.ModePerm)
		case tar.TypeSymlink:
			err = os.Symlink(h.Linkname, p)
		case tar.TypeReg:
			var f *os.File
			if f, err = os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, os.FileMode(h.Mode)&os.ModePerm); err == nil {
				_, err = io.Copy(f, tr)
				err = errors.Join(err, f.Close())
			}
		default:
			t.Fatalf("unexpected entry type %c for %s", h.Typeflag, h.Name)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// checkPinnedIdentityVersion: the image carries the @azure/identity version package.json pins.
func checkPinnedIdentityVersion(t *testing.T, rootfs string) {
	t.Helper()
	var pkg struct {
		Version      string            `json:"version"`
		Dependencies map[string]string `json:"dependencies"`
	}
	read := func(p string) {
		b, err := os.ReadFile(p)
		if err == nil {
			err = json.Unmarshal(b, &pkg)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	read(filepath.Join(rootfs, "app", "package.json"))
	want := pkg.Dependencies["@azure/identity"]
	read(filepath.Join(rootfs, "app", "node_modules", "@azure", "identity", "package.json"))
	if pkg.Version != want || want == "" {
		t.Errorf("@azure/identity in the image is %q, package.json pins %q", pkg.Version, want)
	}
}

func runScenarios(t *testing.T, rootfs string, argv []string, sdk string) {
	if os.Geteuid() != 0 {
		t.Skip("skipping the run of the image: it needs root (network namespace with 169.254.169.254, chroot, setuid); run `sudo go test ./test/apps/`")
	}
	ns := newIMDSNamespace(t)
	run := func(t *testing.T, env ...string) ([]appLine, int, string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := ns.command(ctx, rootfs, argv, env)
		var stdout, stderr strings.Builder
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := ns.start(cmd); err != nil {
			t.Fatal(err)
		}
		err := cmd.Wait()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return parseLines(t, stdout.String(), stderr.String()), code, stderr.String()
	}

	t.Run("bound identity gets a token", func(t *testing.T) {
		ns.imds.SetAttached([]imds.Identity{bound})
		lines, code, stderr := run(t, "MODE=once", "AZURE_CLIENT_ID="+bound.ClientID)
		if code != 0 || len(lines) != 1 || !lines[0].OK || lines[0].SDK != sdk || lines[0].Attempt != 1 || lines[0].ElapsedMs == nil {
			t.Fatalf("exit %d, lines %+v, stderr %s: want exit 0 and one ok line from sdk %s", code, lines, stderr, sdk)
		}
		c := lines[0].Claims
		if c["appid"] != bound.ClientID || c["xms_mirid"] != bound.ResourceID || c["aud"] != "https://management.azure.com" {
			t.Errorf("claims = %v, want appid %s, xms_mirid %s, aud https://management.azure.com", c, bound.ClientID, bound.ResourceID)
		}
		if exp, err := time.Parse(time.RFC3339, lines[0].ExpiresOn); err != nil || time.Until(exp) < 23*time.Hour {
			t.Errorf("expiresOn = %q (%v), want about 24 h from now", lines[0].ExpiresOn, err)
		}
	})
	t.Run("default identity gets a token", func(t *testing.T) {
		ns.imds.SetAttached([]imds.Identity{bound})
		lines, code, stderr := run(t, "MODE=once", "TOKEN_RESOURCE=https://vault.azure.net")
		if code != 0 || len(lines) != 1 || !lines[0].OK || lines[0].Claims["appid"] != bound.ClientID || lines[0].Claims["aud"] != "https://vault.azure.net" {
			t.Fatalf("exit %d, lines %+v, stderr %s: want a vault token for the only attached identity", code, lines, stderr)
		}
	})
	t.Run("unassigned identity is reported", func(t *testing.T) {
		ns.imds.SetAttached([]imds.Identity{bound})
		lines, code, stderr := run(t, "MODE=once", "AZURE_CLIENT_ID="+unbound, "ATTEMPT_TIMEOUT=20s")
		if code != 1 || len(lines) != 1 || lines[0].OK || lines[0].Error == "" || lines[0].Claims != nil {
			t.Fatalf("exit %d, lines %+v, stderr %s: want exit 1 and one failed line with the SDK's error", code, lines, stderr)
		}
	})
	t.Run("raw request shows the refusal", func(t *testing.T) {
		ns.imds.SetAttached([]imds.Identity{bound})
		lines, code, stderr := run(t, "MODE=raw-imds", "QUERY=api-version=2018-02-01&resource=https://management.azure.com/&client_id="+unbound)
		if code != 0 || len(lines) != 1 || lines[0].OK || lines[0].Status != http.StatusBadRequest || !strings.Contains(lines[0].Body, "Identity not found") {
			t.Fatalf("exit %d, lines %+v, stderr %s: want status 400 with IMDS's 'Identity not found'", code, lines, stderr)
		}
	})
	t.Run("until-ok waits for the identity", func(t *testing.T) {
		ns.imds.SetAttached(nil)
		before := ns.imds.Counters().TokensByClientID[bound.ClientID]
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := ns.command(ctx, rootfs, argv, []string{"MODE=until-ok", "INTERVAL=200ms", "ATTEMPT_TIMEOUT=20s", "AZURE_CLIENT_ID=" + bound.ClientID})
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := ns.start(cmd); err != nil {
			t.Fatal(err)
		}
		var lines []appLine
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var l appLine
			if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
				t.Fatalf("output line %q is not JSON: %v", sc.Text(), err)
			}
			lines = append(lines, l)
			if l.OK {
				break
			}
			if len(lines) == 1 {
				ns.imds.Attach(bound) // the assigner's job in a cluster
			}
		}
		if len(lines) < 2 || lines[0].OK || !lines[len(lines)-1].OK || lines[len(lines)-1].Attempt != len(lines) {
			t.Fatalf("lines %+v, stderr %s: want failures, then an ok line once the identity is attached", lines, stderr.String())
		}
		// The client idles after its token: it must still be running, and stop cleanly on SIGTERM.
		time.Sleep(300 * time.Millisecond)
		if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatalf("the client exited after its token, want it to idle: %v", err)
		}
		if err := cmd.Wait(); err != nil {
			t.Errorf("exit after SIGTERM: %v (want 0); stderr %s", err, stderr.String())
		}
		if got := ns.imds.Counters().TokensByClientID[bound.ClientID] - before; got != 1 {
			t.Errorf("IMDS issued %d tokens for the identity, want 1", got)
		}
	})
}

func parseLines(t *testing.T, stdout, stderr string) []appLine {
	t.Helper()
	var lines []appLine
	for _, s := range strings.Split(strings.TrimSpace(stdout), "\n") {
		if s == "" {
			continue
		}
		var l appLine
		if err := json.Unmarshal([]byte(s), &l); err != nil {
			t.Fatalf("output line %q is not JSON: %v (stderr %s)", s, err, stderr)
		}
		lines = append(lines, l)
	}
	return lines
}

// imdsNamespace is a network namespace of the test's own where 169.254.169.254:80 (on its loopback) is the IMDS
// emulator: what a pod's app sees, without the redirect.
type imdsNamespace struct {
	name   string
	handle netns.NsHandle
	imds   *imds.Server
}

func newIMDSNamespace(t *testing.T) *imdsNamespace {
	t.Helper()
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	ns := &imdsNamespace{name: "pi-apps-" + hex.EncodeToString(b), imds: imds.New(imds.Options{RatePerSecond: -1, MaxConcurrent: -1})}
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s (needs iproute2)", strings.Join(args, " "), err, out)
		}
	}
	ip("netns", "add", ns.name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns.name).CombinedOutput(); err != nil {
			t.Errorf("removing network namespace %s: %v: %s", ns.name, err, out)
		}
	})
	ip("-n", ns.name, "link", "set", "lo", "up")
	ip("-n", ns.name, "addr", "add", "169.254.169.254/32", "dev", "lo")
	h, err := netns.GetFromName(ns.name)
	if err != nil {
		t.Fatal(err)
	}
	ns.handle = h
	t.Cleanup(func() { _ = h.Close() })
	var ln net.Listener
	if err := ns.do(func() (err error) { ln, err = net.Listen("tcp", "169.254.169.254:80"); return err }); err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: ns.imds, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ns
}

// do runs fn on a thread that entered the namespace; the thread is never reused (it stays locked and dies
// with its goroutine), so the namespace cannot leak into the rest of the test.
func (ns *imdsNamespace) do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := netns.Set(ns.handle); err != nil {
			errc <- fmt.Errorf("entering network namespace %s: %w", ns.name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// command runs argv of the image rooted at rootfs as the image's user, with only the given environment (no
// proxy settings of the machine leak in).
func (ns *imdsNamespace) command(ctx context.Context, rootfs string, argv, env []string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append([]string{"PATH=/usr/bin:/"}, env...)
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: rootfs, Credential: &syscall.Credential{Uid: AppUID, Gid: AppUID}}
	return cmd
}

// start starts cmd inside the namespace: a process is born in the namespace of the thread that forks it.
func (ns *imdsNamespace) start(cmd *exec.Cmd) error { return ns.do(cmd.Start) }
