package image

import (
	"archive/tar"
	"io"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

func spec(arch string) Spec {
	return Spec{
		Binaries: []Binary{{Name: "podidentity-node", Data: []byte("node-" + arch)}, {Name: "podidentity-cni", Data: []byte("cni")}},
		UID:      65532, Arch: arch, Version: "0.1.0", CABundle: []byte("-----BEGIN CERTIFICATE-----\n"),
	}
}

func TestBuild(t *testing.T) {
	img, err := Build(spec("arm64"))
	if err != nil {
		t.Fatal(err)
	}
	mt, _ := img.MediaType()
	if mt != types.OCIManifestSchema1 {
		t.Errorf("media type %s, want OCI", mt)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.OS != "linux" || cfg.Architecture != "arm64" || cfg.Config.User != "65532:65532" ||
		len(cfg.Config.Entrypoint) != 1 || cfg.Config.Entrypoint[0] != "/podidentity-node" ||
		cfg.Config.Labels["org.opencontainers.image.version"] != "0.1.0" {
		t.Errorf("config: %+v", cfg)
	}
	want := map[string]string{
		"podidentity-node": "node-arm64", "podidentity-cni": "cni",
		"etc/ssl/certs/ca-certificates.crt": "-----BEGIN CERTIFICATE-----\n",
	}
	tr := tar.NewReader(mutate.Extract(img))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		if w, ok := want[h.Name]; ok {
			if string(b) != w {
				t.Errorf("%s = %q, want %q", h.Name, b, w)
			}
			delete(want, h.Name)
		}
	}
	if len(want) != 0 {
		t.Errorf("missing from the layer: %v", want)
	}
}

func TestBuildIsReproducible(t *testing.T) {
	a, _ := Build(spec("amd64"))
	b, _ := Build(spec("amd64"))
	c, _ := Build(spec("arm64"))
	da, _ := a.Digest()
	db, _ := b.Digest()
	dc, _ := c.Digest()
	if da != db {
		t.Errorf("equal inputs, digests %s and %s", da, db)
	}
	if da == dc {
		t.Errorf("different binaries, one digest %s", da)
	}
}

func TestBuildRefuses(t *testing.T) {
	for name, s := range map[string]Spec{
		"no binary":    {Arch: "amd64"},
		"no arch":      {Binaries: []Binary{{Name: "x"}}},
		"path as name": {Arch: "amd64", Binaries: []Binary{{Name: "bin/x"}}},
		"empty name":   {Arch: "amd64", Binaries: []Binary{{}}},
	} {
		if _, err := Build(s); err == nil {
			t.Errorf("%s: built", name)
		}
	}
}
