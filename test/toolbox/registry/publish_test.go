package registry

import (
	"archive/tar"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"sigs.k8s.io/yaml"

	"github.com/podidentity/podidentity/test/toolbox/testenv"
)

// The product's publishing path against a real registry with authentication: `imagebuild push` (what `make
// images-push` runs, here for the init container's image only, to keep the test short) and `imagebuild
// verify`, then the images pulled back as a node would; the chart pushed and read back with helm.

// chart is what the tests read of Chart.yaml.
type chart struct {
	Version    string `json:"version"`
	AppVersion string `json:"appVersion"`
}

func readChart(t *testing.T) chart {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "charts", "podidentity", "Chart.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var c chart
	if err := yaml.Unmarshal(data, &c); err != nil {
		t.Fatal(err)
	}
	return c
}

// goBuild runs go build in dir with extra environment.
func goBuild(t *testing.T, dir string, env []string, args ...string) {
	t.Helper()
	cmd := exec.Command("go", append([]string{"build", "-trimpath"}, args...)...)
	cmd.Dir = dir
	cmd.Env = append(append(os.Environ(), "CGO_ENABLED=0"), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %v: %v\n%s", args, err, out)
	}
}

// run runs a command with extra environment and returns its combined output and error.
func run(env []string, bin string, args ...string) (string, error) {
	var out bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

func mustRun(t *testing.T, env []string, bin string, args ...string) string {
	t.Helper()
	out, err := run(env, bin, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(bin), strings.Join(args, " "), err, out)
	}
	return out
}

func TestPublishVerifyPull(t *testing.T) {
	if testing.Short() {
		t.Skip("builds imagebuild and helm, and cross-compiles an image for two architectures; run without -short")
	}
	root := testenv.RepoRoot()
	r, err := Start(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	work := t.TempDir()

	imagebuild := imagebuildBin(t, work)
	archs := []string{"amd64", "arm64"}
	for _, arch := range archs {
		goBuild(t, root, []string{"GOOS=linux", "GOARCH=" + arch}, "-o", filepath.Join(work, "bin", "linux_"+arch)+"/", "./init/cmd/podidentity-init")
	}
	// As docs/install.md says: one login, with helm, into the Docker config that imagebuild reads.
	dockerConfig := filepath.Join(work, "docker")
	env := append(helmLogin(t, r, dockerConfig), "DOCKER_CONFIG="+dockerConfig, "SSL_CERT_FILE="+r.CAFile, "COSIGN_PASSWORD=test-password")
	registry := r.Host + "/podidentity"
	key := filepath.Join(work, "signing", "cosign.key")
	mustRun(t, env, imagebuild, "keygen", "--key", key)
	common := []string{"--registry", registry, "--chart", filepath.Join(root, "charts", "podidentity"), "--image", "podidentity-init:0"}

	out := mustRun(t, env, imagebuild, append([]string{"push", "--bin-dir", filepath.Join(work, "bin"), "--key", key}, common...)...)
	c := readChart(t)
	if !strings.Contains(out, "pushed "+registry+"/podidentity-init:"+c.AppVersion) {
		t.Errorf("push did not push the chart's appVersion %s:\n%s", c.AppVersion, out)
	}
	out = mustRun(t, env, imagebuild, append([]string{"verify", "--key", key + ".pub"}, common...)...)
	if !strings.Contains(out, "verified "+registry+"/podidentity-init:"+c.AppVersion) {
		t.Errorf("verify says:\n%s", out)
	}

	// Another key's public key does not verify them; nor does anyone without the registry's credentials.
	other := filepath.Join(work, "signing", "other.key")
	mustRun(t, env, imagebuild, "keygen", "--key", other)
	if out, err := run(env, imagebuild, append([]string{"verify", "--key", other + ".pub"}, common...)...); err == nil || !strings.Contains(out, "not made by this key") {
		t.Errorf("verify with another key: %v\n%s", err, out)
	}
	noAuth := []string{"DOCKER_CONFIG=" + t.TempDir(), "SSL_CERT_FILE=" + r.CAFile}
	if out, err := run(noAuth, imagebuild, append([]string{"verify", "--key", key + ".pub"}, common...)...); err == nil || !strings.Contains(out, "UNAUTHORIZED") {
		t.Errorf("verify without credentials: %v\n%s", err, out)
	}

	// Pulled back as a node would: the index holds both architectures, each the binary built for it and the
	// pinned CA bundle.
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(r.CA)
	transport := remote.WithTransport(&http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}})
	ref, err := name.ParseReference(registry + "/podidentity-init:" + c.AppVersion)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := remote.Index(ref, transport); err == nil {
		t.Error("an anonymous pull succeeded")
	}
	idx, err := remote.Index(ref, transport, remote.WithAuth(&authn.Basic{Username: r.User, Password: r.Password}))
	if err != nil {
		t.Fatal(err)
	}
	m, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Manifests) != len(archs) {
		t.Fatalf("index holds %d manifests, want %d", len(m.Manifests), len(archs))
	}
	for i, arch := range archs {
		d := m.Manifests[i]
		if d.Platform == nil || d.Platform.OS != "linux" || d.Platform.Architecture != arch {
			t.Errorf("manifest %d: platform %+v, want linux/%s", i, d.Platform, arch)
			continue
		}
		img, err := idx.Image(d.Digest)
		if err != nil {
			t.Fatal(err)
		}
		files := extract(t, mutate.Extract(img))
		want, err := os.ReadFile(filepath.Join(work, "bin", "linux_"+arch, "podidentity-init"))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(files["podidentity-init"], want) {
			t.Errorf("linux/%s: /podidentity-init is not the binary built for it", arch)
		}
		if n := bytes.Count(files["etc/ssl/certs/ca-certificates.crt"], []byte("BEGIN CERTIFICATE")); n < 100 {
			t.Errorf("linux/%s: the CA bundle holds %d certificates, want Mozilla's store", arch, n)
		}
	}
}

func extract(t *testing.T, rc io.ReadCloser) map[string][]byte {
	t.Helper()
	defer rc.Close()
	files := map[string][]byte{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			files[h.Name] = b
		}
	}
}

// imagebuildBin builds imagebuild (hack/tools) into dir.
func imagebuildBin(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "imagebuild")
	goBuild(t, filepath.Join(testenv.RepoRoot(), "hack", "tools"), nil, "-o", bin, "./imagebuild")
	return bin
}

// helmBin is bin/helm (`make packaging-tools` builds it from hack/tools/helm), built there when missing.
func helmBin(t *testing.T) string {
	t.Helper()
	root := testenv.RepoRoot()
	bin := filepath.Join(root, "bin", "helm")
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	t.Log("building helm from hack/tools/helm into bin/ (once; a few minutes cold)")
	goBuild(t, filepath.Join(root, "hack", "tools", "helm"), nil, "-ldflags", "-s -w", "-o", bin, "helm.sh/helm/v3/cmd/helm")
	return bin
}

func TestChartFromRegistry(t *testing.T) {
	if testing.Short() {
		t.Skip("needs helm built from Go modules; run without -short")
	}
	helm := helmBin(t)
	r, err := Start(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	work := t.TempDir()
	c := readChart(t)
	chartRef := "oci://" + r.Host + "/podidentity/charts/podidentity"
	env := helmLogin(t, r, filepath.Join(work, "helm"))
	mustRun(t, env, helm, "package", filepath.Join(testenv.RepoRoot(), "charts", "podidentity"), "--destination", work)
	out := mustRun(t, env, helm, "push", filepath.Join(work, "podidentity-"+c.Version+".tgz"), "oci://"+r.Host+"/podidentity/charts", "--ca-file", r.CAFile)
	if !strings.Contains(out, "Digest: sha256:") {
		t.Errorf("helm push says:\n%s", out)
	}

	out = mustRun(t, env, helm, "show", "chart", chartRef, "--version", c.Version, "--ca-file", r.CAFile)
	var shown chart
	if err := yaml.Unmarshal([]byte(out[strings.Index(out, "apiVersion:"):]), &shown); err != nil {
		t.Fatalf("helm show chart: %v\n%s", err, out)
	}
	if shown != c {
		t.Errorf("the registry's chart is %+v, the repository's %+v", shown, c)
	}
	registry := r.Host + "/podidentity"
	out = mustRun(t, env, helm, "template", "podidentity", chartRef, "--version", c.Version, "--ca-file", r.CAFile,
		"--namespace", "podidentity-system", "--kube-version", "v1.37.2", "--set", "image.registry="+registry,
		"--set", "imagePullSecrets[0].name=podidentity-pull", "--set", "injection.imagePullSecrets[0]=podidentity-pull")
	for _, want := range []string{
		"image: " + registry + "/podidentity-webhook:" + c.AppVersion,
		"image: " + registry + "/podidentity-assigner:" + c.AppVersion,
		"- name: podidentity-pull",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("helm template from %s: no %q", chartRef, want)
		}
	}

	// Signed as `make chart-push` does, with the same login (helm's config is a Docker config).
	imagebuild := imagebuildBin(t, work)
	signEnv := append(env, "DOCKER_CONFIG="+filepath.Join(work, "helm"), "SSL_CERT_FILE="+r.CAFile)
	key := filepath.Join(work, "cosign.key")
	mustRun(t, signEnv, imagebuild, "keygen", "--key", key)
	ociRef := strings.TrimPrefix(chartRef, "oci://") + ":" + c.Version
	if out, err := run(signEnv, imagebuild, "verify-signature", "--key", key+".pub", "--ref", ociRef); err == nil {
		t.Errorf("an unsigned chart verified:\n%s", out)
	}
	mustRun(t, signEnv, imagebuild, "sign", "--key", key, "--ref", ociRef)
	if out := mustRun(t, signEnv, imagebuild, "verify-signature", "--key", key+".pub", "--ref", ociRef); !strings.Contains(out, "verified "+ociRef) {
		t.Errorf("verify-signature says:\n%s", out)
	}
	// helm still reads the chart with its signature beside it.
	mustRun(t, env, helm, "show", "chart", chartRef, "--version", c.Version, "--ca-file", r.CAFile)

	// Another machine without the credentials: refused.
	if out, err := run(helmHome(filepath.Join(work, "other")), helm, "show", "chart", chartRef, "--version", c.Version, "--ca-file", r.CAFile); err == nil {
		t.Errorf("helm show chart without logging in succeeded:\n%s", out)
	}
}

// helmHome is the environment of a helm that keeps its files (and registry logins, in the Docker config.json
// format) in dir.
func helmHome(dir string) []string {
	return []string{"HELM_CACHE_HOME=" + dir, "HELM_CONFIG_HOME=" + dir, "HELM_DATA_HOME=" + dir, "HELM_REGISTRY_CONFIG=" + filepath.Join(dir, "config.json")}
}

// helmLogin runs `helm registry login` to r with its credentials, keeping them in dir/config.json, and returns
// helmHome(dir). A wrong password is refused first.
func helmLogin(t *testing.T, r *Registry, dir string) []string {
	t.Helper()
	helm := helmBin(t)
	env := helmHome(dir)
	for _, password := range []string{"wrong", r.Password} {
		login := exec.Command(helm, "registry", "login", r.Host, "--username", r.User, "--password-stdin", "--ca-file", r.CAFile)
		login.Env = append(os.Environ(), env...)
		login.Stdin = strings.NewReader(password)
		out, err := login.CombinedOutput()
		if password == "wrong" && err == nil {
			t.Fatalf("helm registry login with a wrong password succeeded:\n%s", out)
		}
		if password != "wrong" && err != nil {
			t.Fatalf("helm registry login: %v\n%s", err, out)
		}
	}
	return env
}
