// Package image assembles the product's images from static binaries, without a Docker daemon: an empty base,
// one layer (the binaries, /etc/passwd and /etc/group naming the image's user, the CA bundle so TLS to Azure
// works) and a config with the entrypoint and user; and an OCI image index of one image per architecture.
// Equal inputs give byte-identical images (fixed times and ownership), so equal binaries give equal digests.
package image

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"path"
	"sort"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// CABundlePath is where the CA bundle lands in every image (and what SSL_CERT_FILE names).
const CABundlePath = "/etc/ssl/certs/ca-certificates.crt"

// Source is the repository the images' org.opencontainers.image.source label names.
const Source = "https://github.com/podidentity/podidentity"

// Binary is a file to put at /<Name>, mode 0755.
type Binary struct {
	Name string
	Data []byte
}

// Spec is one image for one architecture.
type Spec struct {
	// Binaries: the first is the entrypoint; the others sit beside it (the node image's CNI plugin).
	Binaries []Binary
	// UID the image runs as (0 for root).
	UID int
	// Arch is the GOARCH the binaries were built for; the image is linux/<Arch>.
	Arch string
	// Version is the org.opencontainers.image.version label.
	Version string
	// CABundle is the PEM bundle put at CABundlePath (none when empty).
	CABundle []byte
}

// Build assembles the image of a spec, with OCI media types.
func Build(s Spec) (v1.Image, error) {
	if len(s.Binaries) == 0 {
		return nil, fmt.Errorf("an image needs at least one binary")
	}
	if s.Arch == "" {
		return nil, fmt.Errorf("an image needs an architecture")
	}
	entry := "/" + s.Binaries[0].Name
	files := []file{}
	for _, b := range s.Binaries {
		if b.Name == "" || path.Base(b.Name) != b.Name {
			return nil, fmt.Errorf("binary name %q: want a plain file name", b.Name)
		}
		files = append(files, file{name: "/" + b.Name, mode: 0o755, data: b.Data})
	}
	files = append(files,
		file{name: "/etc/passwd", mode: 0o644, data: []byte(fmt.Sprintf("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\npodidentity:x:%d:%d:podidentity:/:/sbin/nologin\n", s.UID, s.UID))},
		file{name: "/etc/group", mode: 0o644, data: []byte(fmt.Sprintf("root:x:0:\nnonroot:x:65532:\npodidentity:x:%d:\n", s.UID))},
	)
	env := []string{"PATH=/"}
	if len(s.CABundle) > 0 {
		files = append(files, file{name: CABundlePath, mode: 0o644, data: s.CABundle})
		env = append(env, "SSL_CERT_FILE="+CABundlePath)
	}
	layerTar, err := tarOf(files)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(layerTar)), nil },
		tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, err
	}
	base := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err := mutate.AppendLayers(base, layer)
	if err != nil {
		return nil, err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cfg = cfg.DeepCopy()
	cfg.OS = "linux"
	cfg.Architecture = s.Arch
	cfg.Created = v1.Time{Time: time.Unix(0, 0).UTC()}
	cfg.Config.Entrypoint = []string{entry}
	cfg.Config.User = fmt.Sprintf("%d:%d", s.UID, s.UID)
	cfg.Config.Env = env
	cfg.Config.Labels = map[string]string{
		"org.opencontainers.image.source":  Source,
		"org.opencontainers.image.version": s.Version,
	}
	return mutate.ConfigFile(img, cfg)
}

// Index is an OCI image index of the images, one per linux/<arch>, in the order of archs.
func Index(images map[string]v1.Image, archs []string) (v1.ImageIndex, error) {
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	var adds []mutate.IndexAddendum
	for _, arch := range archs {
		img, ok := images[arch]
		if !ok {
			return nil, fmt.Errorf("no image for linux/%s", arch)
		}
		adds = append(adds, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{
			MediaType: types.OCIManifestSchema1,
			Platform:  &v1.Platform{OS: "linux", Architecture: arch},
		}})
	}
	if len(adds) != len(images) {
		return nil, fmt.Errorf("%d images for %d architectures", len(images), len(archs))
	}
	return mutate.AppendManifests(idx, adds...), nil
}

type file struct {
	name string
	mode int64
	data []byte
}

// tarOf writes files with fixed ownership and times, so equal inputs give byte-identical layers.
func tarOf(files []file) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	for _, f := range files {
		for d := path.Dir(f.name); d != "/" && !dirs[d]; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	for _, d := range sortedKeys(dirs) {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d[1:] + "/", Mode: 0o755, ModTime: time.Unix(0, 0)}); err != nil {
			return nil, err
		}
	}
	for _, f := range files {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: f.name[1:], Mode: f.mode, Size: int64(len(f.data)), ModTime: time.Unix(0, 0)}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(f.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func sortedKeys(m map[string]bool) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys) // a parent is a prefix of its children, so it sorts first
	return keys
}
