package apps

import (
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/podidentity/podidentity/test/toolbox/ociimage"
)

// imageSpec is a single-layer image on an empty base, for linux/amd64.
type imageSpec struct {
	repo       string
	files      []ociimage.File
	entrypoint []string
	env        []string
	workdir    string
	uid        int
}

// userFiles name the image's user, so tools that look the uid up (and node's os.userInfo) find it.
func userFiles(uid int) []ociimage.File {
	return ociimage.UserFiles(ociimage.User{Name: "app", UID: uid, Home: "/tmp"})
}

// writeImage assembles the image and writes it to outTar as a tarball that `ctr -n k8s.io images import` and
// `docker load` accept. The tag is a hash of the content, never latest, so the kubelet never tries to pull
// it, and a changed app gets a new reference.
func writeImage(spec imageSpec, outTar string) (string, error) {
	// BestSpeed: the node image is ~100 MB and is compressed twice (digest, then write); size matters less
	// than CPU here, the tarball never leaves the machine.
	layer, err := ociimage.Layer(spec.files, tarball.WithCompressionLevel(gzip.BestSpeed))
	if err != nil {
		return "", fmt.Errorf("assembling the layer of %s: %w", spec.repo, err)
	}
	img, err := ociimage.Build(layer, ociimage.Config{
		Arch:       "amd64",
		Entrypoint: spec.entrypoint,
		Env:        spec.env,
		WorkingDir: spec.workdir,
		UID:        spec.uid,
		Labels:     map[string]string{"org.opencontainers.image.source": "https://github.com/podidentity/podidentity/tree/main/test/apps"},
	})
	if err != nil {
		return "", err
	}
	// The config names the uncompressed layer, so its digest is a content hash that costs no compression.
	cfgName, err := img.ConfigName()
	if err != nil {
		return "", err
	}
	ref := spec.repo + ":" + cfgName.Hex[:16]
	tag, err := name.NewTag(ref)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(outTar), 0o755); err != nil {
		return "", err
	}
	tmp := outTar + ".tmp"
	if err := tarball.WriteToFile(tmp, tag, img); err != nil {
		_ = os.Remove(tmp)
		return "", fmt.Errorf("writing %s: %w", outTar, err)
	}
	return ref, os.Rename(tmp, outTar)
}

// fileHash is the hex SHA-256 of files' contents, in order.
func fileHash(paths ...string) (string, error) {
	h := sha256.New()
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return "", err
		}
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			return "", err
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// isPackagingNoise says whether a path under node_modules is never loaded by the client in Node: source maps,
// type declarations and TypeScript sources anywhere; and in the Azure SDK's packages (which ship one build
// per platform) the ES-module, browser, Workers and React Native builds, and MSAL for browsers. The client
// is CommonJS, so Node resolves every Azure package to its commonjs build. TestImages runs the client from the
// trimmed image, which is what proves this list safe.
func isPackagingNoise(rel string, d fs.DirEntry) bool {
	base := path.Base(rel)
	if d.IsDir() {
		if base == ".bin" {
			return true
		}
		if strings.HasPrefix(rel, "@azure/") || strings.HasPrefix(rel, "@typespec/") {
			switch base {
			case "esm", "browser", "workerd", "react-native", "dist-browser":
				return true
			}
			return rel == "@azure/msal-browser"
		}
		return false
	}
	return strings.HasSuffix(base, ".map") || strings.HasSuffix(base, ".d.ts") || strings.HasSuffix(base, ".d.mts") ||
		strings.HasSuffix(base, ".d.cts") || (strings.HasSuffix(base, ".ts") && strings.Contains(rel, "/src/"))
}
