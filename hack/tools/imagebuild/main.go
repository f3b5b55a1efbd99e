// Command imagebuild builds the product's images from static binaries without a Docker daemon (package
// image), and publishes them as a user consumes them.
//
//	imagebuild --binary B --tag T --out F [--uid N] [--arch A] [--extra-binary X]...
//	    one image as a tarball that `ctr images import` and `docker load` accept (the local cluster's path)
//	imagebuild push --registry R --chart charts/podidentity --bin-dir D --key K --image name:uid[:extra]...
//	    every image for every --arch as an OCI image index, tagged with the chart's appVersion, signed with
//	    K (cosign's format), with a signed CycloneDX SBOM per platform image
//	imagebuild verify --registry R --chart charts/podidentity --key K.pub --image name:uid[:extra]...
//	    checks all of that against the public key
//	imagebuild sign --key K --ref R / imagebuild verify-signature --key K.pub --ref R
//	    signs, or checks the signature of, any OCI artifact (the chart that `make chart-push` pushes)
//	imagebuild keygen --key K
//	    makes a signing key pair: K (private, PKCS#8 PEM, encrypted when COSIGN_PASSWORD is set) and K.pub
//	imagebuild public-key --key K
//	    writes K's public key to K.pub (a release job that gets only the private key from its secrets)
//	imagebuild ca-bundle
//	    prints the pinned CA bundle the images carry
//
// The CA bundle in every image is Mozilla's root store from golang.org/x/crypto/x509roots/fallback, at the
// version hack/tools/go.mod pins (package cabundle). Registry credentials come from the Docker config
// (~/.docker/config.json or $DOCKER_CONFIG), as `docker login`, `crane auth login` or `helm registry login`
// write it; a registry with a private CA is trusted through SSL_CERT_FILE.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/podidentity/podidentity/hack/tools/imagebuild/internal/cabundle"
	"github.com/podidentity/podidentity/hack/tools/imagebuild/internal/cosign"
	"github.com/podidentity/podidentity/hack/tools/imagebuild/internal/image"
	"github.com/podidentity/podidentity/hack/tools/imagebuild/internal/release"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	args := os.Args[1:]
	cmd := ""
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "":
		err = tarballCmd(args)
	case "push":
		err = pushCmd(ctx, args)
	case "verify":
		err = verifyCmd(ctx, args)
	case "keygen":
		err = keygenCmd(args)
	case "public-key":
		err = publicKeyCmd(args)
	case "sign":
		err = signCmd(ctx, args)
	case "verify-signature":
		err = verifySignatureCmd(ctx, args)
	case "ca-bundle":
		_, err = os.Stdout.Write(cabundle.PEM())
	default:
		err = fmt.Errorf("unknown command %q: want push, verify, sign, verify-signature, keygen, public-key, ca-bundle, or flags for a tarball (--help)", cmd)
	}
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "imagebuild:", err)
		os.Exit(1)
	}
}

// stringList collects a repeatable flag.
type stringList []string

func (e *stringList) String() string     { return fmt.Sprint([]string(*e)) }
func (e *stringList) Set(v string) error { *e = append(*e, strings.Fields(v)...); return nil }

func tarballCmd(args []string) error {
	fs := flag.NewFlagSet("imagebuild", flag.ContinueOnError)
	var (
		binary   = fs.String("binary", "", "static binary to put in the image, its entrypoint (required)")
		ref      = fs.String("tag", "", "image reference, e.g. ghcr.io/podidentity/podidentity-sidecar:0.1.0 (required)")
		out      = fs.String("out", "", "output tarball (required)")
		uid      = fs.Int("uid", 65532, "user the image runs as (0 for root)")
		caBundle = fs.String("ca-bundle", "pinned", "CA bundle file for /etc/ssl/certs/ca-certificates.crt; \"pinned\" for the pinned Mozilla bundle, empty for none")
		version  = fs.String("version", "dev", "value of the org.opencontainers.image.version label")
		arch     = fs.String("arch", runtime.GOARCH, "image architecture (the binary must match)")
		extra    stringList
	)
	fs.Var(&extra, "extra-binary", "another static binary to put at /<its name> (repeatable; e.g. the CNI plugin the node agent installs)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *binary == "" || *ref == "" || *out == "" {
		return errors.New("--binary, --tag and --out are required")
	}
	tag, err := name.NewTag(*ref)
	if err != nil {
		return fmt.Errorf("--tag %q: %w", *ref, err)
	}
	spec := image.Spec{UID: *uid, Arch: *arch, Version: *version}
	for _, p := range append([]string{*binary}, extra...) {
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		spec.Binaries = append(spec.Binaries, image.Binary{Name: path.Base(p), Data: data})
	}
	switch *caBundle {
	case "pinned":
		spec.CABundle = cabundle.PEM()
	case "":
	default:
		if spec.CABundle, err = os.ReadFile(*caBundle); err != nil {
			return fmt.Errorf("--ca-bundle: %w", err)
		}
	}
	img, err := image.Build(spec)
	if err != nil {
		return err
	}
	return tarball.WriteToFile(*out, tag, img)
}

// common are the flags push and verify share.
type common struct {
	registry, chart, tag string
	archs, images        stringList
}

func (c *common) register(fs *flag.FlagSet) {
	fs.StringVar(&c.registry, "registry", "", "where the images go: host[:port][/path], e.g. ghcr.io/you/podidentity; image NAME lands at <registry>/NAME (required)")
	fs.StringVar(&c.chart, "chart", "charts/podidentity", "the chart whose appVersion is the images' tag")
	fs.StringVar(&c.tag, "tag", "", "the images' tag (default: the chart's appVersion; the chart deploys that tag)")
	fs.Var(&c.archs, "arch", "architectures (repeatable or space-separated; default amd64 arm64)")
	fs.Var(&c.images, "image", "an image as name:uid[:extra-binary,...] (repeatable or space-separated; required)")
}

func (c *common) resolve() ([]release.ImageSpec, error) {
	if c.registry == "" || len(c.images) == 0 {
		return nil, errors.New("--registry and --image are required")
	}
	if len(c.archs) == 0 {
		c.archs = stringList{"amd64", "arm64"}
	}
	if c.tag == "" {
		data, err := os.ReadFile(filepath.Join(c.chart, "Chart.yaml"))
		if err != nil {
			return nil, fmt.Errorf("%w (pass --chart, the chart directory, or --tag)", err)
		}
		if c.tag, err = release.AppVersion(data); err != nil {
			return nil, err
		}
	}
	var specs []release.ImageSpec
	for _, s := range c.images {
		spec, err := release.ParseImageSpec(s)
		if err != nil {
			return nil, err
		}
		specs = append(specs, spec)
	}
	return specs, nil
}

func remoteOptions() []remote.Option {
	return []remote.Option{remote.WithAuthFromKeychain(authn.DefaultKeychain)}
}

func pushCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("imagebuild push", flag.ContinueOnError)
	var c common
	c.register(fs)
	binDir := fs.String("bin-dir", "bin/images", "directory with linux_<arch>/<binary> for every architecture")
	key := fs.String("key", "", "signing key (PEM; `imagebuild keygen` makes one; its password in COSIGN_PASSWORD) (required)")
	version := fs.String("version", "", "the images' org.opencontainers.image.version label (default: the tag)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	specs, err := c.resolve()
	if err != nil {
		return err
	}
	if *key == "" {
		return errors.New("--key is required (make a key pair with `imagebuild keygen --key FILE`)")
	}
	priv, err := os.ReadFile(*key)
	if err != nil {
		return err
	}
	signer, err := cosign.LoadSigner(priv, []byte(os.Getenv("COSIGN_PASSWORD")))
	if err != nil {
		return err
	}
	caVersion, err := cabundle.Version()
	if err != nil {
		return err
	}
	ca := cabundle.PEM()
	sum := sha256.Sum256(ca)
	fmt.Printf("CA bundle: %s@%s (sha256 %s)\n", cabundle.Module, caVersion, hex.EncodeToString(sum[:]))
	_, err = release.Push(ctx, release.PushOptions{
		Registry: c.registry, Tag: c.tag, BinDir: *binDir, Archs: c.archs, Images: specs, Version: *version,
		Signer: signer, CABundle: ca, CAVersion: caVersion, Remote: remoteOptions(), Log: os.Stdout,
	})
	return err
}

func verifyCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("imagebuild verify", flag.ContinueOnError)
	var c common
	c.register(fs)
	key := fs.String("key", "", "public key (PEM) the images must be signed with (required)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	specs, err := c.resolve()
	if err != nil {
		return err
	}
	if *key == "" {
		return errors.New("--key (the public key) is required")
	}
	pub, err := os.ReadFile(*key)
	if err != nil {
		return err
	}
	verifier, err := cosign.LoadVerifier(pub)
	if err != nil {
		return err
	}
	return release.Verify(ctx, release.VerifyOptions{
		Registry: c.registry, Tag: c.tag, Archs: c.archs, Images: specs, Verifier: verifier, Remote: remoteOptions(), Log: os.Stdout,
	})
}

func keygenCmd(args []string) error {
	fs := flag.NewFlagSet("imagebuild keygen", flag.ContinueOnError)
	key := fs.String("key", "", "private key file to write; the public key goes to <key>.pub (required)")
	force := fs.Bool("force", false, "overwrite an existing key")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *key == "" {
		return errors.New("--key is required")
	}
	if _, err := os.Stat(*key); err == nil && !*force {
		return fmt.Errorf("%s exists: keep it (images signed with it verify against %s.pub) or pass --force", *key, *key)
	}
	priv, pub, err := cosign.GenerateKeyPair([]byte(os.Getenv("COSIGN_PASSWORD")))
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(*key), 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(*key, priv, 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(*key+".pub", pub, 0o644); err != nil {
		return err
	}
	fmt.Printf("wrote %s (private: keep it secret) and %s.pub (public: publish it)\n", *key, *key)
	return nil
}

func publicKeyCmd(args []string) error {
	fs := flag.NewFlagSet("imagebuild public-key", flag.ContinueOnError)
	key := fs.String("key", "", "private key file; its public key goes to <key>.pub (required)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *key == "" {
		return errors.New("--key is required")
	}
	priv, err := os.ReadFile(*key)
	if err != nil {
		return err
	}
	pub, err := cosign.PublicKeyPEM(priv, []byte(os.Getenv("COSIGN_PASSWORD")))
	if err != nil {
		return err
	}
	return os.WriteFile(*key+".pub", pub, 0o644)
}

func signCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("imagebuild sign", flag.ContinueOnError)
	ref := fs.String("ref", "", "what to sign, e.g. ghcr.io/you/podidentity/charts/podidentity:0.1.0 (required)")
	key := fs.String("key", "", "signing key (PEM; its password in COSIGN_PASSWORD) (required)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *ref == "" || *key == "" {
		return errors.New("--ref and --key are required")
	}
	priv, err := os.ReadFile(*key)
	if err != nil {
		return err
	}
	signer, err := cosign.LoadSigner(priv, []byte(os.Getenv("COSIGN_PASSWORD")))
	if err != nil {
		return err
	}
	d, err := release.SignArtifact(ctx, *ref, signer, remoteOptions()...)
	if err != nil {
		return err
	}
	fmt.Printf("signed %s (%s)\n", *ref, d.DigestStr())
	return nil
}

func verifySignatureCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("imagebuild verify-signature", flag.ContinueOnError)
	ref := fs.String("ref", "", "what to check (required)")
	key := fs.String("key", "", "public key (PEM) (required)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *ref == "" || *key == "" {
		return errors.New("--ref and --key are required")
	}
	pub, err := os.ReadFile(*key)
	if err != nil {
		return err
	}
	verifier, err := cosign.LoadVerifier(pub)
	if err != nil {
		return err
	}
	d, err := release.VerifyArtifact(ctx, *ref, verifier, remoteOptions()...)
	if err != nil {
		return err
	}
	fmt.Printf("verified %s (%s): signed by %s\n", *ref, d.DigestStr(), *key)
	return nil
}
