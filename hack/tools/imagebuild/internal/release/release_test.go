package release

import (
	"bytes"
	"context"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/podidentity/podidentity/hack/tools/imagebuild/internal/cabundle"
	"github.com/podidentity/podidentity/hack/tools/imagebuild/internal/cosign"
)

func TestParseImageSpec(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want ImageSpec
		ok   bool
	}{
		{"podidentity-webhook:65532", ImageSpec{Name: "podidentity-webhook", UID: 65532, Binaries: []string{"podidentity-webhook"}}, true},
		{"podidentity-node:0:podidentity-cni", ImageSpec{Name: "podidentity-node", UID: 0, Binaries: []string{"podidentity-node", "podidentity-cni"}}, true},
		{"a:1:b,c", ImageSpec{Name: "a", UID: 1, Binaries: []string{"a", "b", "c"}}, true},
		{"podidentity-webhook", ImageSpec{}, false},
		{":1", ImageSpec{}, false},
		{"a:x", ImageSpec{}, false},
		{"a:-1", ImageSpec{}, false},
		{"a:1:", ImageSpec{}, false},
		{"a:1:bin/b", ImageSpec{}, false},
		{"a:1:b:c", ImageSpec{}, false},
	} {
		got, err := ParseImageSpec(tc.in)
		if (err == nil) != tc.ok || strings.Join(got.Binaries, ",") != strings.Join(tc.want.Binaries, ",") || got.Name != tc.want.Name || got.UID != tc.want.UID {
			t.Errorf("ParseImageSpec(%q) = %+v, %v; want %+v, ok %v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func TestAppVersion(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		ok       bool
	}{
		{"apiVersion: v2\nname: podidentity\nversion: 0.1.0\nappVersion: \"0.1.0\"\n", "0.1.0", true},
		{"appVersion: 1.2.3-rc.1\n", "1.2.3-rc.1", true},
		{"version: 0.1.0\n", "", false},
		{"appVersion: \"1.0+build\"\n", "", false}, // '+' is not allowed in a tag
		{"appVersion: [\n", "", false},
	} {
		got, err := AppVersion([]byte(tc.in))
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("AppVersion(%q) = %q, %v; want %q, ok %v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

// The test's own module builds two tiny programs for both architectures, once per test binary.
var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

func binaries(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "imagebuild-release-test-")
		if buildErr != nil {
			return
		}
		src := filepath.Join(binDir, "src")
		if buildErr = os.MkdirAll(src, 0o755); buildErr != nil {
			return
		}
		os.WriteFile(filepath.Join(src, "go.mod"), []byte("module example.com/hello\n\ngo 1.26\n"), 0o644)
		os.WriteFile(filepath.Join(src, "main.go"), []byte("package main\n\nfunc main() { println(\"hello\") }\n"), 0o644)
		for _, arch := range []string{"amd64", "arm64"} {
			for _, b := range []string{"hello", "helper"} {
				cmd := exec.Command("go", "build", "-trimpath", "-o", BinaryPath(binDir, arch, b), ".")
				cmd.Dir = src
				cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch, "GOFLAGS=", "GOWORK=off")
				if out, err := cmd.CombinedOutput(); err != nil {
					buildErr = &buildError{err, out}
					return
				}
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

type buildError struct {
	err error
	out []byte
}

func (e *buildError) Error() string { return e.err.Error() + ": " + string(e.out) }

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

var images = []ImageSpec{{Name: "hello", UID: 65532, Binaries: []string{"hello", "helper"}}}

func push(t *testing.T, reg string, key []byte) {
	t.Helper()
	signer, err := cosign.LoadSigner(key, nil)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	pushed, err := Push(context.Background(), PushOptions{
		Registry: reg, Tag: "0.1.0", BinDir: binaries(t), Archs: []string{"amd64", "arm64"}, Images: images, Signer: signer, Log: &out,
		CABundle: cabundle.PEM(), CAVersion: "v0.0.0-test",
	})
	if err != nil {
		t.Fatalf("push: %v", err)
	}
	if len(pushed) != 1 || len(pushed[0].Platforms) != 2 || !strings.Contains(out.String(), "pushed "+reg+"/hello:0.1.0") {
		t.Fatalf("pushed %+v, log %s", pushed, out.String())
	}
}

func verify(t *testing.T, reg string, pub []byte) error {
	t.Helper()
	verifier, err := cosign.LoadVerifier(pub)
	if err != nil {
		t.Fatal(err)
	}
	return Verify(context.Background(), VerifyOptions{Registry: reg, Tag: "0.1.0", Archs: []string{"amd64", "arm64"}, Images: images, Verifier: verifier})
}

func TestPushVerify(t *testing.T) {
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	reg := strings.TrimPrefix(srv.URL, "http://") + "/podidentity"
	priv, pub, _ := cosign.GenerateKeyPair(nil)
	otherPriv, otherPub, _ := cosign.GenerateKeyPair(nil)
	push(t, reg, priv)

	if err := verify(t, reg, pub); err != nil {
		t.Fatalf("verify what was pushed: %v", err)
	}
	if err := verify(t, reg, otherPub); err == nil || !strings.Contains(err.Error(), "not made by this key") {
		t.Errorf("verify with another key: %v", err)
	}

	// Re-signed by another key: refused.
	repo, _ := name.NewRepository(reg + "/hello")
	idx, err := remote.Index(repo.Tag("0.1.0"))
	if err != nil {
		t.Fatal(err)
	}
	idxDigest, _ := idx.Digest()
	otherSigner, _ := cosign.LoadSigner(otherPriv, nil)
	forged, _ := cosign.SignatureImage(otherSigner, repo.Digest(idxDigest.String()))
	if err := remote.Write(cosign.Tag(repo, idxDigest, cosign.SignatureSuffix), forged); err != nil {
		t.Fatal(err)
	}
	if err := verify(t, reg, pub); err == nil || !strings.Contains(err.Error(), idxDigest.String()) {
		t.Errorf("verify with the index's signature replaced: %v", err)
	}

	// Pushed again: valid again (a push re-signs what it pushed).
	push(t, reg, priv)
	if err := verify(t, reg, pub); err != nil {
		t.Fatalf("verify after pushing again: %v", err)
	}

	// An SBOM replaced by one about another image: refused.
	m, _ := idx.IndexManifest()
	arm := m.Manifests[1].Digest
	amd := m.Manifests[0].Digest
	amdSBOM, err := remote.Image(cosign.Tag(repo, amd, cosign.SBOMSuffix))
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(cosign.Tag(repo, arm, cosign.SBOMSuffix), amdSBOM); err != nil {
		t.Fatal(err)
	}
	if err := verify(t, reg, pub); err == nil || !strings.Contains(err.Error(), "linux/arm64: SBOM") {
		t.Errorf("verify with arm64's SBOM replaced by amd64's: %v", err)
	}
}

func TestVerifyRefusesASingleArchitecture(t *testing.T) {
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	reg := strings.TrimPrefix(srv.URL, "http://") + "/podidentity"
	priv, pub, _ := cosign.GenerateKeyPair(nil)
	push(t, reg, priv)

	// The same tag, now an index of amd64 only, signed by the right key.
	repo, _ := name.NewRepository(reg + "/hello")
	idx, _ := remote.Index(repo.Tag("0.1.0"))
	m, _ := idx.IndexManifest()
	amd, _ := idx.Image(m.Manifests[0].Digest)
	single := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex),
		mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: m.Manifests[0].Platform}})
	if err := remote.WriteIndex(repo.Tag("0.1.0"), single); err != nil {
		t.Fatal(err)
	}
	d, _ := single.Digest()
	signer, _ := cosign.LoadSigner(priv, nil)
	sig, _ := cosign.SignatureImage(signer, repo.Digest(d.String()))
	if err := remote.Write(cosign.Tag(repo, d, cosign.SignatureSuffix), sig); err != nil {
		t.Fatal(err)
	}
	if err := verify(t, reg, pub); err == nil || !strings.Contains(err.Error(), "holds [linux/amd64], want [linux/amd64 linux/arm64]") {
		t.Errorf("verify an amd64-only index: %v", err)
	}
}

func TestPushRefusesABinaryOfAnotherArchitecture(t *testing.T) {
	dir := t.TempDir()
	src := binaries(t)
	for _, arch := range []string{"amd64", "arm64"} {
		os.MkdirAll(filepath.Join(dir, "linux_"+arch), 0o755)
		for _, b := range []string{"hello", "helper"} {
			data, _ := os.ReadFile(BinaryPath(src, "amd64", b)) // amd64 everywhere
			os.WriteFile(BinaryPath(dir, arch, b), data, 0o755)
		}
	}
	priv, _, _ := cosign.GenerateKeyPair(nil)
	signer, _ := cosign.LoadSigner(priv, nil)
	_, err := Push(context.Background(), PushOptions{Registry: "127.0.0.1:1/x", Tag: "0.1.0", BinDir: dir, Archs: []string{"amd64", "arm64"}, Images: images, Signer: signer, CABundle: cabundle.PEM(), CAVersion: "v0.0.0-test"})
	if err == nil || !strings.Contains(err.Error(), "GOARCH=amd64, not arm64") {
		t.Errorf("push with an amd64 binary as arm64: %v", err)
	}
}

func TestSignAndVerifyAnArtifact(t *testing.T) {
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	ref := host + "/podidentity/charts/podidentity:0.1.0"
	// Any artifact: here a one-layer image standing for a helm chart.
	chart, err := cosign.SBOMImage([]byte("chart"), "application/vnd.cncf.helm.chart.content.v1.tar+gzip")
	if err != nil {
		t.Fatal(err)
	}
	tag, _ := name.NewTag(ref)
	if err := remote.Write(tag, chart); err != nil {
		t.Fatal(err)
	}
	priv, pub, _ := cosign.GenerateKeyPair(nil)
	_, otherPub, _ := cosign.GenerateKeyPair(nil)
	signer, _ := cosign.LoadSigner(priv, nil)
	verifier, _ := cosign.LoadVerifier(pub)
	otherVerifier, _ := cosign.LoadVerifier(otherPub)
	ctx := context.Background()
	if _, err := VerifyArtifact(ctx, ref, verifier); err == nil || !strings.Contains(err.Error(), "no signature") {
		t.Errorf("an unsigned artifact: %v", err)
	}
	d, err := SignArtifact(ctx, ref, signer)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := chart.Digest()
	if d.DigestStr() != want.String() {
		t.Errorf("signed %s, want %s", d.DigestStr(), want)
	}
	if _, err := VerifyArtifact(ctx, ref, verifier); err != nil {
		t.Errorf("a signed artifact: %v", err)
	}
	if _, err := VerifyArtifact(ctx, ref, otherVerifier); err == nil {
		t.Error("verified with another key")
	}
	if _, err := SignArtifact(ctx, host+"/podidentity/charts/missing:0.1.0", signer); err == nil {
		t.Error("signed an artifact that does not exist")
	}
}
