// Package release pushes the product's images to a registry as a user consumes them, and verifies what is
// there: each image an OCI image index of one image per architecture, tagged with the chart's appVersion;
// the index and each platform image signed (cosign's format, see package cosign); each platform image with
// its SBOM (package sbom), itself signed.
package release

import (
	"context"
	"crypto/sha256"
	"debug/buildinfo"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/sigstore/sigstore/pkg/signature"
	"sigs.k8s.io/yaml"

	"github.com/podidentity/podidentity/hack/tools/imagebuild/internal/cabundle"
	"github.com/podidentity/podidentity/hack/tools/imagebuild/internal/cosign"
	"github.com/podidentity/podidentity/hack/tools/imagebuild/internal/image"
	"github.com/podidentity/podidentity/hack/tools/imagebuild/internal/sbom"
	"github.com/podidentity/podidentity/test/toolbox/ociimage"
)

// ImageSpec is one product image: its name (the repository under the registry), the uid it runs as and its
// binaries (the first is the entrypoint).
type ImageSpec struct {
	Name     string
	UID      int
	Binaries []string
}

// ParseImageSpec reads name:uid[:extra,extra...], e.g. podidentity-node:0:podidentity-cni. The entrypoint is
// the binary called like the image.
func ParseImageSpec(s string) (ImageSpec, error) {
	parts := strings.Split(s, ":")
	if len(parts) < 2 || len(parts) > 3 || parts[0] == "" {
		return ImageSpec{}, fmt.Errorf("image %q: want name:uid or name:uid:extra-binary[,extra-binary...]", s)
	}
	uid, err := strconv.Atoi(parts[1])
	if err != nil || uid < 0 {
		return ImageSpec{}, fmt.Errorf("image %q: uid %q is not a number", s, parts[1])
	}
	spec := ImageSpec{Name: parts[0], UID: uid, Binaries: []string{parts[0]}}
	if len(parts) == 3 {
		for _, x := range strings.Split(parts[2], ",") {
			if x == "" || strings.ContainsRune(x, '/') {
				return ImageSpec{}, fmt.Errorf("image %q: extra binary %q: want a file name", s, x)
			}
			spec.Binaries = append(spec.Binaries, x)
		}
	}
	return spec, nil
}

// AppVersion is the appVersion of a Chart.yaml: the tag of the images the chart deploys.
func AppVersion(chartYAML []byte) (string, error) {
	var chart struct {
		AppVersion string `json:"appVersion"`
	}
	if err := yaml.Unmarshal(chartYAML, &chart); err != nil {
		return "", fmt.Errorf("Chart.yaml: %w", err)
	}
	if chart.AppVersion == "" {
		return "", errors.New("Chart.yaml has no appVersion")
	}
	if _, err := name.NewTag("example.com/x:" + chart.AppVersion); err != nil {
		return "", fmt.Errorf("Chart.yaml appVersion %q is not a valid image tag: %w", chart.AppVersion, err)
	}
	return chart.AppVersion, nil
}

// Repository is where an image lives: <registry>/<image name>.
func Repository(registry, image string) (name.Repository, error) {
	repo, err := name.NewRepository(strings.TrimSuffix(registry, "/")+"/"+image, name.StrictValidation)
	if err != nil {
		return name.Repository{}, fmt.Errorf("registry %q: %w (want host[:port][/path], e.g. ghcr.io/you/podidentity)", registry, err)
	}
	return repo, nil
}

// BinaryPath is where the build puts a binary for an architecture: <dir>/linux_<arch>/<binary>.
func BinaryPath(dir, arch, binary string) string {
	return filepath.Join(dir, "linux_"+arch, binary)
}

// PushOptions say what to push where.
type PushOptions struct {
	Registry string // host[:port][/path]; image i lands at <Registry>/<i.Name>:<Tag>
	Tag      string
	BinDir   string   // binaries at BinaryPath(BinDir, arch, binary)
	Archs    []string // GOARCHes, e.g. amd64, arm64
	Images   []ImageSpec
	Version  string // the images' org.opencontainers.image.version label (default Tag)
	// CABundle goes into every image (package cabundle's PEM), from module cabundle.Module at CAVersion.
	CABundle  []byte
	CAVersion string
	Signer    signature.Signer
	Remote    []remote.Option // authentication, transport, context
	Log       io.Writer
}

// Pushed is one pushed image index.
type Pushed struct {
	Ref       name.Digest
	Platforms map[string]v1.Hash // arch -> platform image digest
}

// Push builds, pushes and signs every image of o, with an SBOM for each platform image.
func Push(ctx context.Context, o PushOptions) ([]Pushed, error) {
	if o.Signer == nil {
		return nil, errors.New("no signing key")
	}
	if o.Version == "" {
		o.Version = o.Tag
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
	if len(o.CABundle) == 0 || o.CAVersion == "" {
		return nil, errors.New("no CA bundle, or no version of it")
	}
	ca := o.CABundle
	caSum := sha256.Sum256(ca)
	caInfo := &sbom.CABundle{Path: image.CABundlePath, SHA256: hex.EncodeToString(caSum[:]), Module: cabundle.Module, Version: o.CAVersion}
	ropts := append([]remote.Option{remote.WithContext(ctx)}, o.Remote...)
	var out []Pushed
	for _, spec := range o.Images {
		p, err := pushOne(o, spec, ca, caInfo, ropts)
		if err != nil {
			return out, fmt.Errorf("%s: %w", spec.Name, err)
		}
		fmt.Fprintf(o.Log, "pushed %s:%s (%s), signed, with an SBOM per platform (%s)\n", p.Ref.Repository, o.Tag, p.Ref.DigestStr(), strings.Join(o.Archs, ", "))
		out = append(out, p)
	}
	return out, nil
}

func pushOne(o PushOptions, spec ImageSpec, ca []byte, caInfo *sbom.CABundle, ropts []remote.Option) (Pushed, error) {
	repo, err := Repository(o.Registry, spec.Name)
	if err != nil {
		return Pushed{}, err
	}
	images := map[string]v1.Image{}
	infos := map[string][]sbom.Binary{}
	for _, arch := range o.Archs {
		s := image.Spec{UID: spec.UID, Arch: arch, Version: o.Version, CABundle: ca}
		for _, b := range spec.Binaries {
			path := BinaryPath(o.BinDir, arch, b)
			data, err := os.ReadFile(path)
			if err != nil {
				return Pushed{}, fmt.Errorf("%w (build the linux/%s binaries first: `make images-push` does)", err, arch)
			}
			info, err := buildinfo.ReadFile(path)
			if err != nil {
				return Pushed{}, fmt.Errorf("%s: no Go build information: %w", path, err)
			}
			if goarch := setting(info, "GOARCH"); goarch != arch {
				return Pushed{}, fmt.Errorf("%s is built for GOARCH=%s, not %s", path, goarch, arch)
			}
			s.Binaries = append(s.Binaries, image.Binary{Name: b, Data: data})
			infos[arch] = append(infos[arch], sbom.Binary{Name: b, Info: info})
		}
		img, err := image.Build(s)
		if err != nil {
			return Pushed{}, err
		}
		images[arch] = img
	}
	idx, err := ociimage.Index(images, o.Archs)
	if err != nil {
		return Pushed{}, err
	}
	tag := repo.Tag(o.Tag)
	if err := remote.WriteIndex(tag, idx, ropts...); err != nil {
		return Pushed{}, pushError(tag.String(), err)
	}
	idxDigest, err := idx.Digest()
	if err != nil {
		return Pushed{}, err
	}
	if err := sign(o.Signer, repo.Digest(idxDigest.String()), ropts); err != nil {
		return Pushed{}, err
	}
	p := Pushed{Ref: repo.Digest(idxDigest.String()), Platforms: map[string]v1.Hash{}}
	for _, arch := range o.Archs {
		d, err := images[arch].Digest()
		if err != nil {
			return Pushed{}, err
		}
		p.Platforms[arch] = d
		if err := sign(o.Signer, repo.Digest(d.String()), ropts); err != nil {
			return Pushed{}, err
		}
		doc, err := sbom.Generate(sbom.Subject{Repository: repo.Name(), Tag: o.Tag, Digest: d.String(), Arch: arch}, infos[arch], caInfo)
		if err != nil {
			return Pushed{}, err
		}
		sbomImg, err := cosign.SBOMImage(doc, sbom.MediaType)
		if err != nil {
			return Pushed{}, err
		}
		sbomTag := cosign.Tag(repo, d, cosign.SBOMSuffix)
		if err := remote.Write(sbomTag, sbomImg, ropts...); err != nil {
			return Pushed{}, pushError(sbomTag.String(), err)
		}
		sbomDigest, err := sbomImg.Digest()
		if err != nil {
			return Pushed{}, err
		}
		if err := sign(o.Signer, repo.Digest(sbomDigest.String()), ropts); err != nil {
			return Pushed{}, err
		}
	}
	return p, nil
}

// sign pushes a signature of d to its signature tag (replacing what was there: a push signs what it pushed).
func sign(signer signature.Signer, d name.Digest, ropts []remote.Option) error {
	img, err := cosign.SignatureImage(signer, d)
	if err != nil {
		return err
	}
	h, err := v1.NewHash(d.DigestStr())
	if err != nil {
		return err
	}
	tag := cosign.Tag(d.Repository, h, cosign.SignatureSuffix)
	if err := remote.Write(tag, img, ropts...); err != nil {
		return pushError(tag.String(), err)
	}
	return nil
}

func pushError(ref string, err error) error {
	return fmt.Errorf("pushing %s: %w (log in first: the registry's credentials are read from ~/.docker/config.json or $DOCKER_CONFIG, as `docker login` or `helm registry login` writes them)", ref, err)
}

func setting(info *buildinfo.BuildInfo, key string) string {
	for _, s := range info.Settings {
		if s.Key == key {
			return s.Value
		}
	}
	return ""
}

// VerifyOptions say what to verify.
type VerifyOptions struct {
	Registry string
	Tag      string
	Archs    []string // exactly the architectures each index must hold
	Images   []ImageSpec
	Verifier signature.Verifier
	Remote   []remote.Option
	Log      io.Writer
}

// Verify checks every image of o: an OCI index at <Registry>/<name>:<Tag> holding exactly o.Archs, each
// platform image of its architecture; the index, each platform image and each SBOM signed by o.Verifier's
// key; each platform image's SBOM a CycloneDX document about that image that lists its binaries. The error
// lists every problem.
func Verify(ctx context.Context, o VerifyOptions) error {
	if o.Log == nil {
		o.Log = io.Discard
	}
	ropts := append([]remote.Option{remote.WithContext(ctx)}, o.Remote...)
	var errs []error
	for _, spec := range o.Images {
		if err := verifyOne(o, spec, ropts); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", spec.Name, err))
			continue
		}
		fmt.Fprintf(o.Log, "verified %s/%s:%s: signed index, %s each signed with a signed SBOM\n", strings.TrimSuffix(o.Registry, "/"), spec.Name, o.Tag, strings.Join(o.Archs, ", "))
	}
	return errors.Join(errs...)
}

func verifyOne(o VerifyOptions, spec ImageSpec, ropts []remote.Option) error {
	repo, err := Repository(o.Registry, spec.Name)
	if err != nil {
		return err
	}
	tag := repo.Tag(o.Tag)
	idx, err := remote.Index(tag, ropts...)
	if err != nil {
		return fmt.Errorf("%s: %w", tag, err)
	}
	m, err := idx.IndexManifest()
	if err != nil {
		return err
	}
	if m.MediaType != types.OCIImageIndex {
		return fmt.Errorf("%s is a %s, want an OCI image index", tag, m.MediaType)
	}
	idxDigest, err := idx.Digest()
	if err != nil {
		return err
	}
	var errs []error
	if err := verifySignature(repo, idxDigest, o.Verifier, ropts); err != nil {
		errs = append(errs, err)
	}
	platforms := map[string]v1.Descriptor{}
	for _, d := range m.Manifests {
		if d.Platform == nil {
			errs = append(errs, fmt.Errorf("manifest %s has no platform", d.Digest))
			continue
		}
		platforms[d.Platform.OS+"/"+d.Platform.Architecture] = d
	}
	if got, want := sortedKeys(platforms), platformList(o.Archs); strings.Join(got, " ") != strings.Join(want, " ") {
		errs = append(errs, fmt.Errorf("%s holds %v, want %v", tag, got, want))
	}
	for _, arch := range o.Archs {
		d, ok := platforms["linux/"+arch]
		if !ok {
			continue
		}
		if err := verifyPlatform(repo, o.Tag, arch, d.Digest, spec.Binaries, o.Verifier, ropts); err != nil {
			errs = append(errs, fmt.Errorf("linux/%s: %w", arch, err))
		}
	}
	return errors.Join(errs...)
}

func verifyPlatform(repo name.Repository, tag, arch string, d v1.Hash, binaries []string, verifier signature.Verifier, ropts []remote.Option) error {
	img, err := remote.Image(repo.Digest(d.String()), ropts...)
	if err != nil {
		return err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return err
	}
	if cfg.OS != "linux" || cfg.Architecture != arch {
		return fmt.Errorf("the image is %s/%s", cfg.OS, cfg.Architecture)
	}
	var errs []error
	if err := verifySignature(repo, d, verifier, ropts); err != nil {
		errs = append(errs, err)
	}
	sbomTag := cosign.Tag(repo, d, cosign.SBOMSuffix)
	sbomImg, err := remote.Image(sbomTag, ropts...)
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("no SBOM at %s: %w", sbomTag, err))...)
	}
	sbomDigest, err := sbomImg.Digest()
	if err != nil {
		return err
	}
	if err := verifySignature(repo, sbomDigest, verifier, ropts); err != nil {
		errs = append(errs, fmt.Errorf("SBOM: %w", err))
	}
	layers, err := sbomImg.Layers()
	if err != nil {
		return err
	}
	if len(layers) != 1 {
		return errors.Join(append(errs, fmt.Errorf("SBOM image %s has %d layers, want 1", sbomTag, len(layers)))...)
	}
	if mt, err := layers[0].MediaType(); err != nil || string(mt) != sbom.MediaType {
		return errors.Join(append(errs, fmt.Errorf("SBOM at %s is %s, want %s", sbomTag, mt, sbom.MediaType))...)
	}
	rc, err := layers[0].Compressed()
	if err != nil {
		return err
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		return err
	}
	doc, err := sbom.Parse(data)
	if err == nil {
		err = sbom.Check(doc, sbom.Subject{Repository: repo.Name(), Tag: tag, Digest: d.String(), Arch: arch}, binaries)
	}
	if err != nil {
		errs = append(errs, fmt.Errorf("SBOM: %w", err))
	}
	return errors.Join(errs...)
}

func verifySignature(repo name.Repository, d v1.Hash, verifier signature.Verifier, ropts []remote.Option) error {
	tag := cosign.Tag(repo, d, cosign.SignatureSuffix)
	sigImg, err := remote.Image(tag, ropts...)
	if err != nil {
		return fmt.Errorf("no signature of %s at %s: %w", d, tag, err)
	}
	return cosign.Verify(sigImg, verifier, repo.Digest(d.String()))
}

func platformList(archs []string) []string {
	var out []string
	for _, a := range archs {
		out = append(out, "linux/"+a)
	}
	sort.Strings(out)
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// SignArtifact signs what ref names (an image, an index, or any OCI artifact such as a helm chart) in
// cosign's format, and returns its digest.
func SignArtifact(ctx context.Context, ref string, signer signature.Signer, ropts ...remote.Option) (name.Digest, error) {
	d, err := resolve(ctx, ref, ropts)
	if err != nil {
		return name.Digest{}, err
	}
	return d, sign(signer, d, append([]remote.Option{remote.WithContext(ctx)}, ropts...))
}

// VerifyArtifact says why what ref names carries no signature by verifier's key (nil when it does), and
// returns its digest.
func VerifyArtifact(ctx context.Context, ref string, verifier signature.Verifier, ropts ...remote.Option) (name.Digest, error) {
	d, err := resolve(ctx, ref, ropts)
	if err != nil {
		return name.Digest{}, err
	}
	h, err := v1.NewHash(d.DigestStr())
	if err != nil {
		return name.Digest{}, err
	}
	return d, verifySignature(d.Repository, h, verifier, append([]remote.Option{remote.WithContext(ctx)}, ropts...))
}

// resolve is the digest of what ref names in its registry.
func resolve(ctx context.Context, ref string, ropts []remote.Option) (name.Digest, error) {
	r, err := name.ParseReference(ref, name.StrictValidation)
	if err != nil {
		return name.Digest{}, fmt.Errorf("%q: %w", ref, err)
	}
	desc, err := remote.Head(r, append([]remote.Option{remote.WithContext(ctx)}, ropts...)...)
	if err != nil {
		return name.Digest{}, fmt.Errorf("%s: %w", ref, err)
	}
	return r.Context().Digest(desc.Digest.String()), nil
}
