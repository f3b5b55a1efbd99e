// Package image says what the product's images hold: on an empty base, one layer of the static binaries,
// /etc/passwd and /etc/group naming the image's user and the CA bundle (so TLS to Azure works), and a config
// with the entrypoint, user and labels. The assembling itself (layer, config, index) is
// github.com/podidentity/podidentity/test/toolbox/ociimage, shared with the end-to-end suite's images: equal inputs
// give byte-identical images, so equal binaries give equal digests.
package image

import (
	"fmt"
	"path"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/podidentity/podidentity/test/toolbox/ociimage"
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

// Build assembles the image of a spec (ociimage.Build: OCI media types, fixed times and ownership).
func Build(s Spec) (v1.Image, error) {
	if len(s.Binaries) == 0 {
		return nil, fmt.Errorf("an image needs at least one binary")
	}
	if s.Arch == "" {
		return nil, fmt.Errorf("an image needs an architecture")
	}
	var files []ociimage.File
	for _, b := range s.Binaries {
		if b.Name == "" || path.Base(b.Name) != b.Name {
			return nil, fmt.Errorf("binary name %q: want a plain file name", b.Name)
		}
		files = append(files, ociimage.File{Path: "/" + b.Name, Mode: 0o755, Data: b.Data})
	}
	files = append(files, ociimage.UserFiles(
		ociimage.User{Name: "nonroot", UID: 65532, Home: "/home/nonroot"},
		ociimage.User{Name: "podidentity", UID: s.UID, Home: "/"})...)
	env := []string{"PATH=/"}
	if len(s.CABundle) > 0 {
		files = append(files, ociimage.File{Path: CABundlePath, Mode: 0o644, Data: s.CABundle})
		env = append(env, "SSL_CERT_FILE="+CABundlePath)
	}
	layer, err := ociimage.Layer(files)
	if err != nil {
		return nil, err
	}
	return ociimage.Build(layer, ociimage.Config{
		Arch:       s.Arch,
		Entrypoint: []string{"/" + s.Binaries[0].Name},
		Env:        env,
		UID:        s.UID,
		Labels: map[string]string{
			"org.opencontainers.image.source":  Source,
			"org.opencontainers.image.version": s.Version,
		},
	})
}
